"""Fixtures shared by the real-peer tests."""

from __future__ import annotations

import pytest

from tests.peers import PROXIES, release_media_ports, require_proxy


@pytest.fixture(params=PROXIES)
def proxy_kind(request) -> str:
    """Each SIP proxy rtpai is tested behind: ``kamailio`` and ``opensips``.

    A missing Kamailio fails in CI; a missing OpenSIPS is skipped everywhere (no Debian
    package: set OPENSIPS to a binary's path).
    """
    require_proxy(request.param)
    return request.param


@pytest.fixture(params=["python", "compiled"])
def native_path(request, monkeypatch) -> str:
    """Each per-packet path (tests/native_paths.py): the Python reference, the C twins."""
    from tests.native_paths import select

    select(request.param, monkeypatch)
    return request.param


@pytest.fixture(autouse=True)
def _media_ports_released():
    """The sipp media ports a test claimed (tests/peers unused_media_port) are free again
    once it is over (its sipp processes are)."""
    yield
    release_media_ports()

