"""The front (``[ng] workers`` > 1): one ng socket, many worker processes behind it.

Why a front and not N processes on one SO_REUSEPORT socket: the kernel would spread a call's
datagrams over the processes by the proxy's address and port, so an offer and its delete could
reach different processes; and ``list``/``statistics`` must speak for the host. The front reads
only the command and the call's identifiers of each datagram (ctl/routing.py peek) and hands it
to the worker that owns the call (a stable hash of the call-id) over that worker's channel
(ctl/channel.py); the worker replies from the same ng socket (inherited), so the proxy sees one
engine at one address, as with rtpengine, and the reply does not wait for the front. For
offers and deletes the worker then tells the front the outcome.

What the front does itself:

- ``[ng] allow``: datagrams from other sources are dropped here, never reaching a worker.
- ``ping`` answers ``pong`` while at least one worker is up, and an error while none is: the
  proxies' liveness probe (Kamailio's and OpenSIPS's rtpengine modules disable an engine
  whose ping gets anything but ``pong``, at once, and fail over to the rest of the set; a
  ping left unanswered costs the proxy's worker its whole retransmit timeout first). Any other
  request while no worker is up gets an error at once (an offer: ``load limit``), never
  silence. ``list`` and ``statistics`` ask every live worker and merge the parts
  (ctl/host_wide.py, which also answers their retransmits from a reply cache).
- ``load limit`` counts the host: an offer for a new call is refused when the workers' calls
  (each reply and each STATUS carries its worker's count) plus the offers on their way reach
  ``[ng] max_sessions``; the proxy then tries the next engine of its set.
- A worker that dies: its calls (the offers it accepted without a delete since, as the front
  saw them) are ended through the proxy (``[proxy]``: the proxy BYEs both legs), each with the
  reason; it is restarted with a bounded backoff; meanwhile its new offers get ``load limit``
  (the proxy moves them elsewhere) and its other requests an error. The other workers and
  their calls are separate processes: they do not notice (test_workers measures their pacing).
- SIGTERM: every worker drains as a single rtpai does (ctl/daemon.py), the front serving their
  deletes meanwhile; every wait on a worker is bounded, then it is killed.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import signal
import socket
from typing import Any

import trio

from ctl.acl import SourceFilter
from ctl.channel import HEADER, Envelope, Kind, pack, pktinfo_ancillary, unpack
from ctl.config import Config, load_config
from ctl.host_wide import REASON_NO_WORKER, HostWide
from ctl.ng import REASON_SESSION_LIMIT, NgError, decode_request, encode_reply
from ctl.ng_server import IP_PKTINFO, MAX_DATAGRAM, reply_from
from ctl.routing import HOST_WIDE, Route, Unroutable, owner, peek
from ctl.workers import WORKER_START_TIMEOUT, WorkerPool, WorkerProcess

log = logging.getLogger("rtpai.front")

# Datagrams taken per wake-up (as ctl/ng_server.py's RECEIVE_BATCH).
RECEIVE_BATCH = 16
REASON_WORKER_DOWN = "rtpai worker restarting"
_PKTINFO_SPACE = socket.CMSG_SPACE(64)


class Front:
    """The parent process of ``[ng] workers`` > 1; ``run`` serves until cancelled."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.pool = WorkerPool(config, config_path, self._read_channel)
        self.workers = self.pool.workers
        self.acl = SourceFilter(config["ng"]["allow"])
        self.draining = False
        self.denied = 0
        self.route_failures = 0  # datagrams a bug in routing dropped (logged each)
        self.dropped = 0  # datagrams a full channel could not take (the proxy retransmits)
        self._tags = itertools.count(1)
        self._pending: dict[int, tuple[WorkerProcess, Route, bool]] = {}  # tag -> (w, r, new)
        self.host_wide = HostWide(self.workers, self._send, self._add_figures, self._tags)
        self._sock: socket.socket | None = None
        self._wildcard = False
        self._writable = trio.Lock()
        self._nursery: trio.Nursery | None = None

    # --- the ng socket ---------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.config["ng"]["listen"]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._wildcard = ipaddress.ip_address(host).is_unspecified
        sock = socket.socket(family, socket.SOCK_DGRAM)
        with sock:
            sock.setblocking(False)
            if self._wildcard:
                if family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.bind((host, port))
            self._sock = sock
            self.pool.ng_fd = sock.fileno()  # the workers reply from it (ctl/channel.py)
            bound = sock.getsockname()[:2]
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for worker in self.workers:
                        nursery.start_soon(self.pool.supervise, worker, nursery)
                    # Served at once, also while the workers start: until one is up, a ping
                    # gets an error and an offer `load limit`, at once (a proxy waiting for
                    # replies that do not come would disable us only after its timeouts).
                    nursery.start_soon(self._receive, sock)
                    with trio.move_on_after(WORKER_START_TIMEOUT):
                        for worker in self.workers:
                            await worker.settled.wait()
                    log.info("ng: listening on %s:%s; %d workers ready of %d", bound[0],
                             bound[1], self.live_workers(), len(self.workers))
                    if not self.live_workers():
                        log.error("ng: no worker is up: ping is answered with an error (the "
                                  "proxy uses the other engines of its set) until one is")
                    task_status.started(bound)
            finally:
                await self.pool.stop()

    async def _receive(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(RECEIVE_BATCH):
                try:
                    if self._wildcard:
                        datagram, ancillary, _, source = sock.recvmsg(MAX_DATAGRAM,
                                                                      _PKTINFO_SPACE)
                        via = reply_from(ancillary)
                        pktinfo = via[0][2] if via else b""
                    else:
                        datagram, source = sock.recvfrom(MAX_DATAGRAM)
                        pktinfo = b""
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.debug("ng: receive failed: %s", exc)
                    continue
                try:
                    self._route(datagram, source[:2], pktinfo)
                except Exception:
                    # A bug routing one datagram costs that datagram (the proxy retransmits),
                    # never the front and with it every call of the host.
                    self.route_failures += 1
                    log.exception("ng: routing a datagram from %s failed", source[0])

    def _route(self, datagram: bytes, source: tuple[str, int], pktinfo: bytes) -> None:
        if self.acl and not self.acl.allows(source[0]):
            self.denied += 1
            return
        cookie, space, body = datagram.partition(b" ")
        if not space:
            return  # no cookie: nothing to answer with (as a single rtpai)
        try:
            route: Route | None = peek(body)
        except Unroutable:
            route = None  # a worker decodes it and answers rtpengine's exact error
        if route is not None and route.command == "ping":
            # Answered here and now: the proxies' liveness probe, as cheap as it can be. A
            # front without a live worker is not a live engine: the error makes both proxy
            # modules disable this engine at once (anything but `pong` fails their test; they
            # ping again before using it, so it is back as soon as a worker is).
            as_json = body.lstrip().startswith(b"{")
            reply = ({"result": "pong"} if self.live_workers() else
                     {"result": "error", "error-reason": REASON_NO_WORKER})
            self._send_now(encode_reply(cookie, reply, as_json=as_json), source, pktinfo)
            return
        if route is not None and route.command in HOST_WIDE:
            assert self._nursery is not None
            self.host_wide.arrive(self._nursery, cookie, body, source, pktinfo)
            return
        if route is None or route.call_id is None:
            worker = next((w for w in self.workers if w.alive), None)
            if worker is not None:
                self._forward(worker, datagram, source, pktinfo, 0)
            else:  # an error now, not the proxy's timeout
                self._refuse(cookie, body, source, pktinfo, REASON_NO_WORKER,
                             load_limit=route is not None and route.command == "offer")
            return
        worker = self.workers[owner(route.call_id, len(self.workers))]
        new_call = (route.command == "offer" and route.call_id not in worker.book
                    and not self._offer_on_its_way(route.call_id))
        if not worker.alive or (new_call and self._full()):
            # Refused: an offer with load limit (the proxy goes on to the next engine).
            if worker.alive:
                reason = REASON_SESSION_LIMIT
            else:
                reason = REASON_WORKER_DOWN if self.live_workers() else REASON_NO_WORKER
            self._refuse(cookie, body, source, pktinfo, reason,
                         load_limit=route.command == "offer")
            return
        tag = 0
        if route.command in ("offer", "delete"):
            tag = next(self._tags)
            self._pending[tag] = (worker, route, new_call)
        self._forward(worker, datagram, source, pktinfo, tag)

    def _offer_on_its_way(self, call_id: bytes) -> bool:
        """An offer of ``call_id`` is with its worker, its outcome not yet read: a re-offer
        sent as soon as its reply came (the worker replies straight to the proxy, ahead of
        telling the front) is not a new call, whatever the host's load."""
        return any(new and route.call_id == call_id for _, route, new in self._pending.values())

    def live_workers(self) -> int:
        return sum(w.alive for w in self.workers)

    def _full(self) -> bool:
        limit = self.config["ng"]["max_sessions"]
        if self.draining:
            return True
        if not limit:
            return False
        on_the_way = sum(1 for _, _, new in self._pending.values() if new)
        return sum(w.calls for w in self.workers) + on_the_way >= limit

    def _forward(self, worker: WorkerProcess, datagram: bytes, source: tuple[str, int],
                 pktinfo: bytes, tag: int) -> None:
        assert worker.channel is not None
        try:
            worker.channel.send(pack(Envelope(Kind.REQUEST, source, tag, pktinfo=pktinfo),
                                     datagram))
        except OSError:  # full (a burst) or gone: dropped, the proxy retransmits
            self.dropped += 1
            self._pending.pop(tag, None)

    def _refuse(self, cookie: bytes, body: bytes, source: tuple[str, int], pktinfo: bytes,
                reason: str, *, load_limit: bool) -> None:
        try:
            request = decode_request(body)
        except NgError as exc:
            reply = {"result": "error", "error-reason": exc.reason}
            as_json = body.lstrip().startswith(b"{")
        else:
            as_json = request.is_json
            if load_limit and request.supports("load limit"):
                reply = {"result": "load limit", "message": reason}
            else:
                reply = {"result": "error", "error-reason": reason}
        self._send_now(encode_reply(cookie, reply, as_json=as_json), source, pktinfo)

    def _send_now(self, datagram: bytes, source: tuple[str, int], pktinfo: bytes) -> bool:
        """Send without waiting; False when the socket's buffer is full."""
        assert self._sock is not None
        try:
            if pktinfo:
                self._sock.sendmsg([datagram], pktinfo_ancillary(pktinfo), 0, source)
            else:
                self._sock.sendto(datagram, source)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("ng: cannot reply to %s: %s", source, exc)
        return True

    async def _send(self, datagram: bytes, source: tuple[str, int], pktinfo: bytes,
                    copies: int = 1) -> None:
        for _ in range(copies):
            while not self._send_now(datagram, source, pktinfo):
                async with self._writable:  # control-path back-pressure
                    await trio.lowlevel.wait_writable(self._sock)

    # --- replies from the workers ---------------------------------------------------------

    async def _read_channel(self, worker: WorkerProcess, channel: socket.socket) -> None:
        """A worker's messages until its end closes; the pool runs it for each start."""
        try:
            await self._read_messages(worker, channel)
        finally:
            for tag in [t for t, (w, _, _) in self._pending.items() if w is worker]:
                del self._pending[tag]

    async def _read_messages(self, worker: WorkerProcess, channel: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(channel)
            while True:
                try:
                    message = channel.recv(HEADER.size + MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if not message:
                    return  # the worker's end is closed: it is exiting
                envelope, datagram = unpack(message)
                worker.calls = envelope.calls
                if envelope.kind == Kind.READY:
                    worker.alive = True
                    worker.settled.set()
                elif envelope.kind == Kind.ANSWERED:
                    self._on_answered(worker, envelope)
                elif envelope.kind == Kind.REPLY:
                    await self._on_reply(envelope, datagram)

    async def _on_reply(self, envelope: Envelope, datagram: bytes) -> None:
        """A worker's part of a host-wide command (or, from a worker without the ng socket,
        a reply to send on)."""
        if self.host_wide.on_part(envelope.tag, datagram):
            return
        if datagram:
            await self._send(datagram, envelope.source, envelope.pktinfo, envelope.copies)

    def _on_answered(self, worker: WorkerProcess, envelope: Envelope) -> None:
        """The outcome of an offer or delete the worker has answered: its book of calls."""
        pending = self._pending.pop(envelope.tag, None)
        if pending is None or not envelope.ok:
            return
        _, route, new_call = pending
        if route.command == "offer":
            worker.remember(route.call_id, route.from_tag, route.to_tag)
            if new_call:
                # The worker counted its calls as it sent the reply, before the new call
                # existed (it is made once the reply is out: ReplyFirst): count it here until
                # the worker's next reply or STATUS.
                worker.calls = envelope.calls + 1
        elif route.command == "delete" and route.via_branch is None:
            worker.book.pop(route.call_id, None)

    # --- host-wide commands (ctl/host_wide.py) -------------------------------------------

    def _add_figures(self, reply: dict[str, Any]) -> None:
        """The front's own figures in the host's ``statistics``."""
        reply.setdefault("statistics", {}).setdefault("rtpai", {})["front"] = self.figures()
        control = reply["statistics"].setdefault("controlstatistics", {})
        control["denied"] = control.get("denied", 0) + self.denied

    def figures(self) -> dict[str, int]:
        """The front's own counts (in `statistics` under rtpai.front)."""
        return {"workers": len(self.workers), "alive": self.live_workers(),
                "restarts": sum(w.restarts for w in self.workers),
                "dropped": self.dropped + self.host_wide.dropped,
                "retransmits": self.host_wide.retransmits,
                "crash hangups": self.pool.crash_hangups}

    async def drain(self, grace: float) -> None:
        """SIGTERM: new calls refused here; every worker drains (bounded: WorkerPool.drain)."""
        self.draining = True
        await self.pool.drain(grace)

    # --- operator signals ------------------------------------------------------------------

    def summary(self) -> str:
        """SIGUSR1: the front's line; each worker is sent SIGUSR1 and logs its own."""
        for worker in self.workers:
            worker.signal(signal.SIGUSR1)
        calls = ", ".join(f"w{w.index}: {w.calls}" if w.alive else f"w{w.index}: down"
                          for w in self.workers)
        return f"front: calls {calls}; {self.figures()}"

    def reload(self) -> None:
        """SIGHUP: the front's ``[ng] allow``; each worker reloads its own settings."""
        try:
            self.acl = SourceFilter(load_config(self.config_path)["ng"]["allow"])
        except Exception as exc:  # the workers log the error in full
            log.error("front: configuration not reloaded: %s", exc)
        for worker in self.workers:
            worker.signal(signal.SIGHUP)
