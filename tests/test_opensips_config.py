"""docs/opensips.md shows the configuration the end-to-end tests run, byte for byte."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.peers import OPENSIPS_CFG, opensips_config, opensips_modules_dir, require_opensips

DOC = Path(__file__).resolve().parents[1] / "docs" / "opensips.md"


def doc_configuration() -> str:
    """The code block under the page's "## The configuration" heading."""
    section = DOC.read_text().split("\n## The configuration\n", 1)[1]
    match = re.match(r"\s*```\n(.*?)```\n", section, re.DOTALL)
    assert match, "docs/opensips.md: no code block under '## The configuration'"
    return match.group(1)


def test_the_page_shows_the_tested_configuration():
    assert doc_configuration() == OPENSIPS_CFG.read_text()


def test_the_harness_moves_only_ports_and_the_module_directory():
    written = OPENSIPS_CFG.read_text()
    moved = opensips_config(written, sip_port=15060, inner_port=15062, http_port=18888,
                            ng_port=12223, modules=Path("/somewhere/modules"))
    assert "socket=udp:127.0.0.1:15060" in moved and "socket=udp:127.0.0.1:15062" in moved
    assert '$du = "sip:127.0.0.1:15062"' in moved and "$socket_in(port) == 15062" in moved
    assert "Contact: <sip:rtpai@127.0.0.1:15062>" in moved
    assert 'modparam("httpd", "port", 18888)' in moved
    assert 'modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:12223")' in moved
    assert 'mpath="/somewhere/modules/"' in moved
    statements = [line for line in moved.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in statements if re.search(r"\b(5060|5062|8888|2223)\b", line)]


def test_opensips_accepts_the_configuration(tmp_path):
    binary = require_opensips()
    config = tmp_path / "opensips.cfg"
    config.write_text(opensips_config(
        OPENSIPS_CFG.read_text(), sip_port=15060, inner_port=15062, http_port=18888,
        ng_port=12223, modules=opensips_modules_dir(binary)))
    result = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config file ok" in result.stdout + result.stderr


@pytest.mark.parametrize("module", ["proto_udp", "sipmsgops", "dialog", "rtpengine", "mi_http"])
def test_the_modules_the_issue_found_missing_are_loaded(module):
    assert f'loadmodule "{module}.so"' in OPENSIPS_CFG.read_text()
