"""Real peers for rtpai's tests: Kamailio, sipp, pcap files and a loopback sniffer.

Helpers, not tests. Everything talks on 127.0.0.1 only.

- `require_tool(name)`: a binary's path, or skip (fail when CI=true).
- `write_rtp_pcap(path, payloads)`: a pcap that sipp's `play_pcap_audio` plays.
- `start_kamailio(tmpdir, sip_port=..., ng_port=...)`: Kamailio 5.6 with
  `kamailio.cfg`, the caller's UAS using an ng engine; async context manager.
- `start_opensips(tmpdir, sip_port=..., ng_port=...)`: the same with OpenSIPS 3.6 and
  `opensips.cfg` (the configuration docs/opensips.md shows); `start_proxy(kind, ...)`
  starts either, and `require_proxy(kind)` skips or fails when it is missing.
- `run_sipp(UAC_SCENARIO, target=..., local_port=..., media_port=..., pcap=...)`.
- `LoopbackCapture(port)`: UDP datagrams to `port` as they cross `lo` (root).

Start order: the ng engine first, then Kamailio (it pings the engine once at
start-up), then sipp.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

HERE = Path(__file__).resolve().parent
KAMAILIO_CFG = HERE / "kamailio.cfg"
OPENSIPS_CFG = HERE / "opensips.cfg"
PROXIES = ("kamailio", "opensips")  # what the end-to-end tests take as a parameter
UAC_SCENARIO = HERE / "uac.xml"
UAC_HOLD_SCENARIO = HERE / "uac_hold.xml"  # re-INVITE: hold, then resume
UAC_WAIT_BYE_SCENARIO = HERE / "uac_wait_bye.xml"  # expects the proxy's BYE
UAC_TRANSFER_SCENARIO = HERE / "uac_transfer.xml"  # expects a REFER to -key target
UAC_REFER_DECLINED_SCENARIO = HERE / "uac_refer_declined.xml"  # answers the REFER 603
GOLDEN = HERE / "golden"
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- tools


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where every peer must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The absolute path of the executable `name` (PATH, then /usr/sbin)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        _unavailable(f"{name} is not installed")
    return os.path.abspath(path)


def require_opensips() -> str:
    """The OpenSIPS binary: ``$OPENSIPS`` (a path), else ``opensips`` on PATH or in sbin.

    OpenSIPS has no Debian package, so its absence is a skip everywhere, CI included
    (issue 19): the one tool whose tests a CI machine may not run.
    """
    path = os.environ.get("OPENSIPS") or shutil.which("opensips") or shutil.which(
        "opensips", path="/usr/local/sbin:/usr/sbin:/sbin")
    if not path:
        pytest.skip("OpenSIPS is not installed (no Debian package): set OPENSIPS to the "
                    "path of an opensips 3.6 binary to run these tests")
    if not os.access(path, os.X_OK):
        pytest.skip(f"OPENSIPS={path} is not an executable")
    return os.path.abspath(path)


def require_proxy(kind: str) -> str:
    """The binary of proxy ``kind`` (see PROXIES), or skip / fail as that tool requires."""
    if kind == "opensips":
        return require_opensips()
    return require_tool(kind)


def require_root() -> None:
    """Raw sockets (sipp's pcap player, LoopbackCapture) need root."""
    if os.geteuid() != 0:
        _unavailable("raw sockets need root (CAP_NET_RAW)")


def unused_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """A port the kernel just handed out on 127.0.0.1 (free, barring a race)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# sipp's media ports: it binds P (audio) and P + 2 (video); P .. P + 3 are kept for it (RTCP
# in other builds). Taken in blocks of 4 above the kernel's ephemeral range, claimed across
# processes by an abstract Unix socket named after the block (see unused_media_port).
MEDIA_BLOCK = 4
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_media_claims: dict[int, socket.socket] = {}


def _media_blocks() -> range:
    """First ports of the 4-port blocks outside the kernel's ephemeral port range."""
    low, high = (int(n) for n in _EPHEMERAL_RANGE.read_text().split())
    first = (high // MEDIA_BLOCK + 1) * MEDIA_BLOCK
    if first + MEDIA_BLOCK <= 65536:
        return range(first, 65536 - MEDIA_BLOCK + 1, MEDIA_BLOCK)
    return range(1024, low - MEDIA_BLOCK + 1, MEDIA_BLOCK)  # the range reaches 65535: below it


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def unused_media_port() -> int:
    """An even UDP port P for sipp's ``-mp``, with P .. P + 3 free, that nothing else takes
    before sipp binds P and P + 2.

    A port the kernel hands out (bind to port 0) is in its ephemeral range, where any socket
    bound to port 0 and any outgoing connection may land on P + 2 between this check and
    sipp's bind: sipp then cannot start and the call fails (seen under load). So P is taken
    above that range (/proc/sys/net/ipv4/ip_local_port_range), where only an explicit bind
    can take a port, and the block is claimed across processes (another test run on the host
    picks from the same blocks) by binding an abstract Unix socket named after it: the
    kernel drops the claim with the process, so a killed run leaves nothing behind. The claim
    holds until ``release_media_ports`` (tests/conftest.py, after each test).
    """
    blocks = _media_blocks()
    for port in random.sample(blocks, len(blocks)):
        if port in _media_claims:
            continue
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            claim.bind(f"\0rtpai-test-media-{port}")
        except OSError:  # another process has it
            claim.close()
            continue
        if all(_udp_free(p) for p in range(port, port + MEDIA_BLOCK)):
            _media_claims[port] = claim
            return port
        claim.close()
    raise RuntimeError(f"no free block of {MEDIA_BLOCK} UDP ports above the ephemeral range")


def release_media_ports() -> None:
    """Give back every block ``unused_media_port`` claimed (its sipp calls are over)."""
    while _media_claims:
        _media_claims.popitem()[1].close()


# --------------------------------------------------------------------------- pcap

# Classic libpcap, microsecond timestamps. sipp's prepare_pcap.c accepts only the
# Ethernet (1) and Linux cooked (113) link types, and packets captured whole
# (caplen == len): Ethernet it is, with zero MACs like on `lo`.
_PCAP_GLOBAL = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_PCAP_MAGIC = 0xA1B2C3D4
_LINKTYPE_ETHERNET = 1
_ETHERTYPE_IPV4 = 0x0800
_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_RTP = struct.Struct("!BBHII")
_RTP_VERSION_2 = 0x80


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp_frame(
    src: tuple[str, int], dst: tuple[str, int], payload: bytes, ident: int
) -> bytes:
    udp = _UDP.pack(src[1], dst[1], _UDP.size + len(payload), 0) + payload  # sipp redoes the sum
    src_ip = ipaddress.IPv4Address(src[0]).packed
    dst_ip = ipaddress.IPv4Address(dst[0]).packed
    header = _IPV4.pack(
        0x45,
        0,
        _IPV4.size + len(udp),
        ident & 0xFFFF,
        0x4000,
        64,
        socket.IPPROTO_UDP,
        0,
        src_ip,
        dst_ip,
    )
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    return _ETHERNET.pack(b"\0" * 6, b"\0" * 6, _ETHERTYPE_IPV4) + header + udp


def write_rtp_pcap(
    path: str | os.PathLike[str],
    payloads: Sequence[bytes],
    *,
    payload_type: int = 0,
    ssrc: int = 0x5EED_CA11,
    seq: int = 1000,
    timestamp: int = 160_000,
    src: tuple[str, int] = (LOOPBACK, 4000),
    dst: tuple[str, int] = (LOOPBACK, 5000),
    ptime_ms: int = 20,
    clock_rate: int = 8000,
) -> list[bytes]:
    """Write one RTP packet per payload, `ptime_ms` apart, and return the RTP datagrams.

    Headers per RFC 3550: V=2, marker on the first packet (start of a talkspurt),
    sequence +1 and timestamp +ptime*clock (160 for 20 ms at 8 kHz) per packet.
    sipp replays the UDP payloads byte for byte; it rewrites only the ports
    (src -> its -mp port, dst -> the answered port) and the UDP checksum.
    """
    samples = ptime_ms * clock_rate // 1000
    datagrams = []
    with open(path, "wb") as f:
        f.write(_PCAP_GLOBAL.pack(_PCAP_MAGIC, 2, 4, 0, 0, 65535, _LINKTYPE_ETHERNET))
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == 0 else 0
            rtp = (
                _RTP.pack(
                    _RTP_VERSION_2,
                    marker | payload_type,
                    (seq + i) & 0xFFFF,
                    (timestamp + i * samples) & 0xFFFFFFFF,
                    ssrc,
                )
                + payload
            )
            frame = _ipv4_udp_frame(src, dst, rtp, ident=i)
            usec = i * ptime_ms * 1000
            f.write(_PCAP_RECORD.pack(usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            datagrams.append(rtp)
    return datagrams


# --------------------------------------------------------------------------- Kamailio


def _tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Kamailio:
    """A running Kamailio from `start_kamailio`."""

    process: trio.Process
    sip_port: int  # the edge socket: send the caller here
    inner_port: int  # the UAS socket, reached through the edge
    http_port: int  # JSON-RPC at http://127.0.0.1:<http_port>/RPC
    ng_port: int
    log_path: Path
    kind = "kamailio"

    @property
    def management_url(self) -> str:
        """rtpai's ``[proxy] url`` for this Kamailio."""
        return f"http://{LOOPBACK}:{self.http_port}/RPC"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def rpc(self, method: str, *params: object) -> object:
        """Call a Kamailio RPC command over JSON-RPC/HTTP; return its `result`.

        E.g. `await kamailio.rpc("dlg.list")`,
        `await kamailio.rpc("dlg.terminate_dlg", call_id, from_tag, to_tag)`.
        """
        body = json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
        ).encode()
        request = (
            f"POST /RPC HTTP/1.1\r\nHost: {LOOPBACK}:{self.http_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        stream = await trio.open_tcp_stream(LOOPBACK, self.http_port)
        async with stream:
            await stream.send_all(request)
            response = await _read_http_response(stream)
        reply = json.loads(response)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")


async def _read_http_response(stream: trio.abc.ReceiveStream) -> bytes:
    """The body of one HTTP/1.1 response with a Content-Length (as xhttp sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            raise RuntimeError(f"HTTP connection closed mid-header: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"HTTP error: {status!r}")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while length is None or len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            break
        body += chunk
    return body if length is None else body[:length]


async def _sip_options_answered(port: int) -> None:
    """Return once something answers a SIP OPTIONS on 127.0.0.1:port.

    Retransmitted every 100 ms, like a SIP client would (T1 is 500 ms): this is
    the readiness signal; the caller bounds it.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind((LOOPBACK, 0))
        local = sock.getsockname()[1]
        options = (
            f"OPTIONS sip:probe@{LOOPBACK}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{local};branch=z9hG4bK-probe-{port}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:harness@{LOOPBACK}>;tag=probe\r\n"
            f"To: <sip:probe@{LOOPBACK}:{port}>\r\n"
            f"Call-ID: probe-{local}@{LOOPBACK}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        while True:
            # ICMP port unreachable from the previous probe: nobody listening yet
            with suppress(ConnectionRefusedError):
                await sock.sendto(options, (LOOPBACK, port))
            with trio.move_on_after(0.1):
                while True:
                    try:
                        data = await sock.recv(65535)
                    except ConnectionRefusedError:
                        break
                    if data.startswith(b"SIP/2.0 "):
                        return


async def ready_or_exited(
    process: trio.Process, probe: Callable[[], Awaitable[object]], timeout: float
) -> bool:
    """True once ``probe()`` returns; False if the process exits first or ``timeout`` passes."""
    ready = False
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:

            async def exited() -> None:
                await process.wait()
                nursery.cancel_scope.cancel()

            async def probed() -> None:
                nonlocal ready
                await probe()
                ready = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(exited)
            nursery.start_soon(probed)
    return ready


@asynccontextmanager
async def supervised(
    name: str,
    command: Sequence[str],
    log_path: Path,
    ready: Callable[[], Awaitable[None]],
    ready_timeout: float,
    env: dict[str, str] | None = None,
) -> AsyncIterator[trio.Process]:
    """Run ``command`` (its own session, output to ``log_path``) until the block ends.

    Yields once ``ready()`` returned, or raises with the log's tail if the process exited or
    was not ready within ``ready_timeout``. An exception from the block gets the log's tail as
    a note. On exit: SIGTERM, then SIGKILL to the process group after 5 s.
    """
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env=env,
        )
    try:
        if not await ready_or_exited(process, ready, ready_timeout):
            why = (
                f"exited with {process.returncode}"
                if process.returncode is not None
                else f"not ready within {ready_timeout} s"
            )
            raise RuntimeError(f"{name} did not start: {why}\n{_tail(log_path)}")
        try:
            yield process
        except Exception as exc:
            exc.add_note(f"--- {name} log ({log_path}), tail ---\n{_tail(log_path)}")
            raise
    finally:
        await _stop(process)


@asynccontextmanager
async def start_kamailio(
    tmpdir: str | os.PathLike[str],
    *,
    sip_port: int,
    ng_port: int,
    http_port: int | None = None,
    inner_port: int | None = None,
    ng_socks: str | None = None,
    dialog_timeout: int | None = None,
    ready_timeout: float = 10.0,
) -> AsyncIterator[Kamailio]:
    """Run `kamailio.cfg` in the foreground until the block ends.

    Start the ng engine at 127.0.0.1:ng_port first: Kamailio pings it once at
    start-up. Ready means both SIP sockets answer an OPTIONS. On exit: SIGTERM,
    then SIGKILL to the process group after 5 s. Kamailio's stderr log is
    `<tmpdir>/kamailio.log`; its tail is attached to any exception from the block.
    ``ng_socks`` replaces the one engine with a set (``udp:h:p1 udp:h:p2=2``);
    ``dialog_timeout`` (seconds) ends every dialog with a BYE to both legs that long after
    it was answered (the dialog module's default_timeout; the default is 12 hours).
    """
    kamailio = require_tool("kamailio")
    tmp = Path(tmpdir)
    rundir = tmp / "kamailio-run"
    rundir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or unused_port(socket.SOCK_STREAM)
    inner_port = inner_port or unused_port()
    log_path = tmp / "kamailio.log"
    # -A defines are tokens, not expanded inside quoted strings: NG_SOCK brings its quotes.
    defines = {
        "SIP_PORT": sip_port,
        "INNER_PORT": inner_port,
        "HTTP_PORT": http_port,
        "NG_SOCK": f'"{ng_socks or f"udp:{LOOPBACK}:{ng_port}"}"',
    }
    if dialog_timeout is not None:
        defines["DLG_TIMEOUT"] = dialog_timeout
    command = [kamailio, "-DD", "-E", "-f", str(KAMAILIO_CFG), "-Y", str(rundir), "-w", str(rundir)]
    for name, value in defines.items():
        command += ["-A", f"{name}={value}"]

    async def answered_options() -> None:
        await _sip_options_answered(sip_port)
        await _sip_options_answered(inner_port)

    async with supervised("kamailio", command, log_path, answered_options,
                          ready_timeout) as process:
        yield Kamailio(process, sip_port, inner_port, http_port, ng_port, log_path)


async def _stop(process: trio.Process, grace: float = 5.0) -> None:
    """SIGTERM, wait `grace` seconds, then SIGKILL the whole process group."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


# --------------------------------------------------------------------------- OpenSIPS


@dataclass
class Opensips:
    """A running OpenSIPS from `start_opensips`."""

    process: trio.Process
    sip_port: int  # the edge socket: send the caller here
    inner_port: int  # the UAS socket, reached through the edge
    http_port: int  # MI (JSON-RPC) at http://127.0.0.1:<http_port>/mi
    ng_port: int
    log_path: Path
    kind = "opensips"

    @property
    def management_url(self) -> str:
        """rtpai's ``[proxy] url`` for this OpenSIPS."""
        return f"http://{LOOPBACK}:{self.http_port}/mi"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def mi(self, method: str, **params: object) -> object:
        """Call an MI command over mi_http (JSON-RPC); return its ``result``."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).encode()
        request = (
            f"POST /mi HTTP/1.1\r\nHost: {LOOPBACK}:{self.http_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        stream = await trio.open_tcp_stream(LOOPBACK, self.http_port)
        async with stream:
            await stream.send_all(request)
            reply = json.loads(await _read_http_response(stream))
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")


# The addresses opensips.cfg is written with (as docs/opensips.md shows it): start_opensips
# puts free ports in their place, and fails if one is not there any more, so the file and the
# harness cannot drift apart unnoticed.
_OPENSIPS_SIP = "127.0.0.1:5060"
_OPENSIPS_INNER = "127.0.0.1:5062"
_OPENSIPS_INNER_CHECK = "$socket_in(port) == 5062"
_OPENSIPS_HTTP = 'modparam("httpd", "port", 8888)'
_OPENSIPS_NG = "udp:127.0.0.1:2223"
_OPENSIPS_MPATH = 'mpath="/opt/opensips/lib64/opensips/modules/"'
_OPENSIPS_DLG_TIMEOUT = 'modparam("dialog", "default_timeout", 43200)'


def opensips_modules_dir(binary: str) -> Path:
    """Where the modules of this opensips binary are: ``$OPENSIPS_MODULES``, else beside
    its prefix (a source build's lib64/ or lib/), else a distribution's directory."""
    if os.environ.get("OPENSIPS_MODULES"):
        return Path(os.environ["OPENSIPS_MODULES"])
    prefix = Path(binary).resolve().parent.parent
    candidates = [prefix / "lib64/opensips/modules", prefix / "lib/opensips/modules",
                  Path("/usr/lib/x86_64-linux-gnu/opensips/modules"),
                  Path("/usr/lib/opensips/modules")]
    for candidate in candidates:
        if (candidate / "dialog.so").exists():
            return candidate
    pytest.skip(f"no OpenSIPS modules found for {binary}: set OPENSIPS_MODULES")


def opensips_config(text: str, *, sip_port: int, inner_port: int, http_port: int,
                    ng_port: int, modules: Path, ng_socks: str | None = None,
                    dialog_timeout: int | None = None) -> str:
    """opensips.cfg with the test's ports and module directory in place of its own;
    ``ng_socks`` replaces the one engine with a set (``udp:h:p1 udp:h:p2=2``),
    ``dialog_timeout`` the dialogs' lifetime (seconds)."""
    for written, wanted in (
        (_OPENSIPS_SIP, f"127.0.0.1:{sip_port}"),
        (_OPENSIPS_INNER, f"127.0.0.1:{inner_port}"),
        (_OPENSIPS_INNER_CHECK, f"$socket_in(port) == {inner_port}"),
        (_OPENSIPS_HTTP, f'modparam("httpd", "port", {http_port})'),
        (_OPENSIPS_NG, ng_socks or f"udp:127.0.0.1:{ng_port}"),
        (_OPENSIPS_MPATH, f'mpath="{modules}/"'),
        (_OPENSIPS_DLG_TIMEOUT,
         f'modparam("dialog", "default_timeout", {dialog_timeout or 43200})'),
    ):
        assert written in text, f"opensips.cfg no longer has {written!r}: update tests/peers"
        text = text.replace(written, wanted)
    return text


@asynccontextmanager
async def start_opensips(
    tmpdir: str | os.PathLike[str],
    *,
    sip_port: int,
    ng_port: int,
    http_port: int | None = None,
    inner_port: int | None = None,
    ng_socks: str | None = None,
    dialog_timeout: int | None = None,
    ready_timeout: float = 10.0,
) -> AsyncIterator[Opensips]:
    """Run `opensips.cfg` (main process in the foreground) until the block ends.

    As `start_kamailio`: the ng engine first; ready when both SIP sockets answer an OPTIONS
    and the MI port accepts; SIGTERM then SIGKILL on exit; the log is
    `<tmpdir>/opensips.log`, its tail attached to any exception from the block.
    """
    opensips = require_opensips()
    tmp = Path(tmpdir)
    rundir = tmp / "opensips-run"
    rundir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or unused_port(socket.SOCK_STREAM)
    inner_port = inner_port or unused_port()
    config = rundir / "opensips.cfg"
    config.write_text(opensips_config(
        OPENSIPS_CFG.read_text(), sip_port=sip_port, inner_port=inner_port,
        http_port=http_port, ng_port=ng_port, modules=opensips_modules_dir(opensips),
        ng_socks=ng_socks, dialog_timeout=dialog_timeout))
    log_path = tmp / "opensips.log"
    command = [opensips, "-F", "-f", str(config), "-w", str(rundir), "-m", "64", "-M", "8"]

    async def answered() -> None:
        await _sip_options_answered(sip_port)
        await _sip_options_answered(inner_port)
        while True:
            try:
                stream = await trio.open_tcp_stream(LOOPBACK, http_port)
            except OSError:
                await trio.sleep(0.05)  # polling a port that is not open yet: no event
                continue
            await stream.aclose()
            return

    async with supervised("opensips", command, log_path, answered, ready_timeout) as process:
        yield Opensips(process, sip_port, inner_port, http_port, ng_port, log_path)


def start_proxy(kind: str, tmpdir: str | os.PathLike[str], **options: Any):
    """`start_kamailio` or `start_opensips` (``kind`` is one of PROXIES)."""
    if kind == "opensips":
        return start_opensips(tmpdir, **options)
    if kind == "kamailio":
        return start_kamailio(tmpdir, **options)
    raise ValueError(f"unknown proxy {kind!r}")


# --------------------------------------------------------------------------- sipp


class SippFailed(AssertionError):
    """sipp ended with a failed call; the message carries its logs."""


async def run_sipp(
    scenario: str | os.PathLike[str],
    *,
    target: tuple[str, int],
    local_port: int,
    media_port: int,
    pcap: str | os.PathLike[str],
    pause_ms: int = 1000,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
    check: bool = True,
    logdir: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one call of `scenario` (e.g. UAC_SCENARIO) against `target`.

    The pcap is the `[pcap]` keyword (-key), `pause_ms` sipp's -d (the
    scenario's `<pause/>`). Bounded twice: sipp's own -timeout / -recv_timeout,
    and `timeout` here (the process is killed). With `check`, a non-zero exit
    raises SippFailed with sipp's error and message logs.
    """
    sipp = require_tool("sipp")
    logs = Path(logdir) if logdir is not None else Path(pcap).resolve().parent
    error_file = logs / f"sipp-{local_port}-errors.log"
    message_file = logs / f"sipp-{local_port}-messages.log"
    sipp_timeout_s = max(1, int(timeout) - 2)
    command = [sipp, f"{target[0]}:{target[1]}", "-sf", str(scenario), "-m", "1", "-l", "1"]
    command += ["-i", LOOPBACK, "-p", str(local_port), "-mi", LOOPBACK, "-mp", str(media_port)]
    command += ["-key", "pcap", str(Path(pcap).resolve()), "-d", str(pause_ms)]
    command += ["-timeout", f"{sipp_timeout_s}s", "-timeout_error", "-recv_timeout", "5000"]
    command += ["-nostdin", "-trace_err", "-error_file", str(error_file)]
    command += ["-trace_msg", "-message_file", str(message_file), *extra]
    with trio.fail_after(timeout):
        result = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    if check and result.returncode != 0:
        raise SippFailed(
            f"sipp exited with {result.returncode}: {' '.join(command)}\n"
            f"--- stderr ---\n{result.stderr.decode(errors='replace')[-3000:]}\n"
            f"--- errors ({error_file}) ---\n{_tail(error_file)}\n"
            f"--- messages ({message_file}) ---\n{_tail(message_file, 120)}"
        )
    return result


# --------------------------------------------------------------------------- loopback sniffer

_ETH_P_ALL = 0x0003
_PACKET_OUTGOING = 4  # linux/if_packet.h: lo shows each packet out and in; keep "in"


@dataclass(frozen=True)
class UdpDatagram:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def parse_loopback_frame(frame: bytes) -> UdpDatagram | None:
    """An Ethernet (zero MACs on lo) / IPv4 / UDP frame, or None if it is anything else."""
    if len(frame) < _ETHERNET.size + _IPV4.size + _UDP.size:
        return None
    if _ETHERNET.unpack_from(frame)[2] != _ETHERTYPE_IPV4:
        return None
    ip = _ETHERNET.size
    ver_ihl, _, total_length, _, flags_fragment, _, proto, _, src, dst = _IPV4.unpack_from(
        frame, ip
    )
    if ver_ihl >> 4 != 4 or proto != socket.IPPROTO_UDP:
        return None
    if flags_fragment & 0x3FFF:  # a fragment (MF or offset): not a whole datagram
        return None
    udp = ip + (ver_ihl & 0x0F) * 4
    sport, dport, length, _ = _UDP.unpack_from(frame, udp)
    if length < _UDP.size or udp + length > ip + total_length:
        return None
    return UdpDatagram(
        (socket.inet_ntoa(src), sport),
        (socket.inet_ntoa(dst), dport),
        bytes(frame[udp + _UDP.size : udp + length]),
    )


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not name it
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # linux/filter.h
_BPF_INSTRUCTION = struct.Struct("HBBI")  # struct sock_filter: code, jt, jf, k


def udp_dst_port_filter(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for Ethernet/IPv4/UDP to ``port``, unfragmented (tcpdump's
    "ip and udp dst port PORT"): the kernel drops everything else before it is queued."""
    return [
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 8, _ETHERTYPE_IPV4),  # not IPv4: drop
        (0x30, 0, 0, 23),  # ldb [23]: IP protocol
        (0x15, 0, 6, socket.IPPROTO_UDP),  # not UDP: drop
        (0x28, 0, 0, 20),  # ldh [20]: flags + fragment offset
        (0x45, 4, 0, 0x1FFF),  # a fragment: drop
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
        (0x48, 0, 0, 16),  # ldh [x+16]: UDP destination port
        (0x15, 0, 1, port),
        (0x06, 0, 0, 0x40000),  # keep the packet (up to 256 KiB)
        (0x06, 0, 0, 0),  # drop
    ]


def attach_filter(sock: socket.socket | trio.socket.SocketType,
                  program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with ``program`` (struct sock_fprog: length, then a pointer)."""
    code = ctypes.create_string_buffer(b"".join(_BPF_INSTRUCTION.pack(*i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


class LoopbackCapture:
    """UDP datagrams to `port` as they cross `lo`, whoever sends or receives them.

    A raw AF_PACKET socket (root) bound to lo, read from `__aenter__` on by a task of its
    own, so open it before the traffic starts:

        async with LoopbackCapture(media_port) as capture:
            ...
            datagram = await capture.receive()   # UdpDatagram(src, dst, payload)

    The raw socket would see every packet on lo (twice: out and in), WebSocket and SIP and
    every other test's on the machine included: under load its reader fell behind and the
    kernel dropped our RTP with the rest. So a BPF filter keeps only UDP to `port` in the
    kernel, and a reader drains it continuously into a channel bounded at `keep` datagrams.
    """

    def __init__(self, port: int, *, interface: str = "lo", rcvbuf: int = 16 << 20,
                 keep: int = 100_000) -> None:
        self.port = port
        self.interface = interface
        self._rcvbuf = rcvbuf
        self._send, self._receive = trio.open_memory_channel[UdpDatagram](keep)
        self.dropped = 0  # datagrams to `port` that did not fit in `keep`
        self._nursery_manager = trio.open_nursery()

    async def __aenter__(self) -> LoopbackCapture:
        require_root()
        sock = trio.socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        try:
            attach_filter(sock, udp_dst_port_filter(self.port))
            # Root may go past net.core.rmem_max (~208 KiB) with SO_RCVBUFFORCE.
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self._rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            await sock.bind((self.interface, 0))
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        nursery = await self._nursery_manager.__aenter__()
        nursery.start_soon(self._read, sock)
        self._nursery = nursery
        return self

    async def _read(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                frame, address = await sock.recvfrom(65536)
                if address[2] == _PACKET_OUTGOING:
                    continue
                datagram = parse_loopback_frame(frame)
                if datagram is not None and datagram.dst[1] == self.port:
                    try:
                        self._send.send_nowait(datagram)
                    except trio.WouldBlock:
                        self.dropped += 1

    async def __aexit__(self, *exc_info: object) -> bool | None:
        self._nursery.cancel_scope.cancel()
        return await self._nursery_manager.__aexit__(*exc_info)

    async def receive(self) -> UdpDatagram:
        """The next datagram to `port` (bound it with trio.fail_after)."""
        return await self._receive.receive()
