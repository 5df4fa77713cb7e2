"""docs/examples/rtpai.service, the unit docs/deploy.md describes, as systemd reads it.

``systemd-analyze verify`` checks every key and that ExecStart's binary exists. The unit names
where a package install puts it (/opt/rtpai/venv/bin/rtpai), which the test machine lacks: the
test verifies a copy whose ExecStart names an executable it creates, the only line changed.
A misspelt key or a bad value is a warning on stderr with exit status 0, so stderr must be empty.
"""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

from ctl.config import load_config
from tests.peers import require_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "examples" / "rtpai.service"
INSTALLED_BINARY = "/opt/rtpai/venv/bin/rtpai"


def service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = tmp_path / "rtpai"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    unit = tmp_path / "rtpai.service"
    unit.write_text(unit_text.replace(INSTALLED_BINARY, str(binary)))
    return subprocess.run(
        [require_tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )


def test_the_unit_verifies_cleanly(tmp_path):
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    result = verify(text, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rtpai.service" not in result.stderr, result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above is not vacuous: a misspelt key is reported."""
    result = verify(UNIT.read_text().replace("LimitNOFILE=", "LimitNOFILES="), tmp_path)
    assert "Unknown key 'LimitNOFILES'" in result.stderr


def test_the_unit_outlasts_the_drain_and_needs_no_capability():
    service = service_section()
    defaults = load_config(None, environ={})
    proxy = defaults["proxy"]
    # What SIGTERM may take (ctl/daemon.py, Engine.drain): the grace, then the hang-ups'
    # bound. systemd's SIGKILL must come after both, or calls are cut without their BYE.
    drain = defaults["ng"]["shutdown_grace"] + proxy["timeout"] * (1 + proxy["retries"]) + 1
    assert float(service["TimeoutStopSec"]) > drain
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # Three descriptors a call: the limit must carry far more calls than one process paces.
    assert int(service["LimitNOFILE"]) >= 3 * 10_000
    # Every default port is >= 1024: no capability at all.
    assert defaults["ng"]["listen"][1] >= 1024 and defaults["rtp"]["min_port"] >= 1024
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
