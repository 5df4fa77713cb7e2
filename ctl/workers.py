"""Worker processes behind the front (``[ng] workers`` > 1): starting, watching, restarting.

One Python process runs on one core at a time (the GIL); a worker per CPU makes a host use all
of them behind one ng address, as rtpengine's threads do. Each worker is a whole single-process
rtpai (its own trio loop, media poller and clock, AI sessions) with a disjoint slice of
``[rtp] min_port..max_port`` (ctl/routing.py port_slice), fed by the front over its channel
(ctl/channel.py) instead of a UDP socket. A worker is a fresh interpreter (``python -m
ctl.workers``), not a fork of the front: nothing of the front's trio loop or sockets leaks
into it, and a restart is the same as the first start.

``main`` here is the worker's entry point; :class:`WorkerProcess` is the front's handle on one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial

import trio

from ctl.channel import Sender, channel_pair, serve_channel
from ctl.config import Config, ConfigError, load_config
from ctl.proxy import ProxyEvent, ProxyNotifier
from ctl.routing import port_slice

log = logging.getLogger("rtpai.front")

# A worker that does not say READY in this long (an interpreter start and the config: ~0.5 s
# on an idle host) is killed and counted as a failed start.
WORKER_START_TIMEOUT = 30.0
# Restart backoff: a worker that crashes at once must not spin a core; one that ran for
# STABLE_AFTER seconds is restarted at once again.
RESTART_MIN = 0.2
RESTART_MAX = 10.0
STABLE_AFTER = 30.0
# Calls remembered per worker (for the hang-ups after a crash), beyond which the oldest are
# forgotten: a call that ended without a delete reaching the front (proxy did not hang up)
# would otherwise stay for good.
BOOK_LIMIT = 200_000


def worker_config(config: Config, index: int, count: int) -> Config:
    """Worker ``index``'s configuration: its slice of the port range, one process."""
    rtp = dict(config["rtp"])
    rtp["min_port"], rtp["max_port"] = port_slice(rtp["min_port"], rtp["max_port"], count, index)
    ng = {**config["ng"], "workers": 1}
    metrics = dict(config["metrics"])
    if metrics["listen"] is not None:
        # Each worker serves its own calls' /metrics: port + index (Prometheus scrapes every
        # worker as a target; a front-side merge would hold every scrape on N round trips).
        host, port = metrics["listen"]
        metrics["listen"] = (host, port + index)
    return replace(config, values={**config.values, "rtp": rtp, "ng": ng, "metrics": metrics})


class WorkerProcess:
    """The front's handle on worker ``index``: its process, channel, and the calls it holds.

    ``book`` maps each call-id whose offer the worker accepted (and no delete has ended) to
    its (call-id, from-tag, to-tag): what the proxy needs to end the call if the worker dies.
    """

    def __init__(self, index: int, count: int, config_path: str | None) -> None:
        self.index = index
        self.count = count
        self.config_path = config_path
        self.process: trio.Process | None = None
        self.channel: socket.socket | None = None
        self.sender: Sender | None = None
        self.alive = False  # READY said, not exited: requests may be sent
        # The first start settled: READY said, or the process exited without it (the front's
        # own start waits for this, not for a READY that may never come).
        self.settled = trio.Event()
        self.calls = 0  # as last reported by the worker
        self.restarts = 0
        self.book: OrderedDict[bytes, tuple[str, str | None, str | None]] = OrderedDict()

    def command(self, fd: int, ng_fd: int | None) -> list[str]:
        command = [sys.executable, "-m", "ctl.workers", "--index", str(self.index),
                   "--count", str(self.count), "--channel-fd", str(fd)]
        if ng_fd is not None:
            command += ["--ng-fd", str(ng_fd)]
        if self.config_path:
            command += ["--config", self.config_path]
        return command

    async def start(self, ng_fd: int | None = None) -> socket.socket:
        """Start the process (given the front's ng socket to reply from); returns the
        front's end of its channel."""
        front_end, worker_end = channel_pair()
        fds = (worker_end.fileno(),) + ((ng_fd,) if ng_fd is not None else ())
        with worker_end:
            # Its own session: a terminal's Ctrl-C reaches the front only, which drains the
            # workers itself (a worker hit twice would stop at once instead of draining).
            self.process = await trio.lowlevel.open_process(
                self.command(worker_end.fileno(), ng_fd), pass_fds=fds,
                start_new_session=True, stdin=subprocess.DEVNULL,
            )
        self.channel = front_end
        self.sender = Sender(front_end)
        log.info("worker %d started (pid %d)", self.index, self.process.pid)
        return front_end

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    def remember(self, call_id: bytes, from_tag: str | None, to_tag: str | None) -> None:
        self.book[call_id] = (call_id.decode("utf-8", "replace"), from_tag, to_tag)
        self.book.move_to_end(call_id)
        if len(self.book) > BOOK_LIMIT:
            self.book.popitem(last=False)

    def stopped(self) -> None:
        """The process has exited: no more requests until it is started again."""
        self.alive = False
        self.settled.set()
        if self.channel is not None:
            self.channel.close()
        self.channel = self.sender = None


# Hang-up requests to the proxy at once after a worker died.
MAX_HANGUPS = 16


class WorkerPool:
    """The front's workers: their lives (start, restart with backoff, drain, stop) and the
    hang-ups of a dead one's calls. ``read_channel(worker, channel)`` is the front's reader
    of a worker's messages, run for each start until the channel closes."""

    def __init__(self, config: Config, config_path: str | None,
                 read_channel: Callable[[WorkerProcess, socket.socket], Awaitable[None]]):
        count = config["ng"]["workers"]
        self.workers = [WorkerProcess(i, count, config_path) for i in range(count)]
        proxy = config["proxy"]
        self.proxy = ProxyNotifier(proxy["type"], proxy["url"], timeout=proxy["timeout"],
                                   retries=proxy["retries"])
        self._read_channel = read_channel
        self.ng_fd: int | None = None  # the front's ng socket, which workers reply from
        self.stopping = False  # no more restarts
        self.crash_hangups = 0

    async def supervise(self, worker: WorkerProcess, nursery: trio.Nursery) -> None:
        """Run ``worker`` until the pool stops: started, read, and after a death its calls
        ended (a task of ``nursery``) and started again after a backoff."""
        backoff = RESTART_MIN
        while not self.stopping:
            started = trio.current_time()
            code = await self._run_once(worker)
            if self.stopping:
                return
            log.error("worker %d stopped (%s): ending its %d calls through the proxy; "
                      "restarting in %g s", worker.index, describe_exit(code),
                      len(worker.book), backoff)
            calls, worker.book = list(worker.book.values()), type(worker.book)()
            nursery.start_soon(self._end_calls, worker.index, calls, describe_exit(code))
            if trio.current_time() - started >= STABLE_AFTER:
                backoff = RESTART_MIN
            await trio.sleep(backoff)
            backoff = min(2 * backoff, RESTART_MAX)
            worker.restarts += 1

    async def _run_once(self, worker: WorkerProcess) -> int | None:
        channel = await worker.start(self.ng_fd)
        assert worker.process is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_channel, worker, channel)

                async def started_in_time() -> None:
                    await trio.sleep(WORKER_START_TIMEOUT)
                    if not worker.alive:
                        log.error("worker %d not ready in %g s: killing it", worker.index,
                                  WORKER_START_TIMEOUT)
                        worker.signal(signal.SIGKILL)

                nursery.start_soon(started_in_time)
                await worker.process.wait()
                nursery.cancel_scope.cancel()
        finally:
            worker.stopped()
        return worker.process.returncode

    async def _end_calls(self, index: int, calls: list, why: str) -> None:
        """The dead worker's calls, ended through the proxy (its BYE reaches both legs)."""
        limiter = trio.CapacityLimiter(MAX_HANGUPS)

        async def end(call_id: str, from_tag: str | None, to_tag: str | None) -> None:
            async with limiter:
                event = ProxyEvent("hangup", call_id, from_tag or "", to_tag,
                                   f"rtpai worker {index} stopped ({why})")
                if await self.proxy.notify(event):
                    self.crash_hangups += 1

        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(end, *call)

    async def drain(self, grace: float) -> None:
        """SIGTERM: every worker drains (its own grace, then the proxy hang-ups); bounded."""
        self.stopping = True
        for worker in self.workers:
            worker.signal(signal.SIGTERM)
        bound = grace + self.proxy.timeout * (1 + self.proxy.retries) + 5
        with trio.move_on_after(bound):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()

    async def stop(self) -> None:
        """On the way out: whatever still runs is told to stop at once, then killed."""
        self.stopping = True
        with trio.CancelScope(shield=True):
            for worker in self.workers:
                worker.signal(signal.SIGTERM)
                worker.signal(signal.SIGTERM)  # a second one: stop now, no drain
            with trio.move_on_after(5):
                for worker in self.workers:
                    if worker.process is not None:
                        await worker.process.wait()
            for worker in self.workers:
                worker.signal(signal.SIGKILL)
                if worker.process is not None:
                    await worker.process.wait()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _WorkerName(logging.Filter):
    """Names the worker in every line's logger name (text and JSON alike): ``rtpai[w1]``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"[w{index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


def main(argv: list[str] | None = None) -> int:
    """A worker: one single-process rtpai engine served by the front's channel."""
    from ctl import gcstats
    from ctl.daemon import RedactSecrets, configure_logging, reload_config, serve
    from ctl.engine import Engine

    parser = argparse.ArgumentParser(prog="rtpai-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--ng-fd", type=int, help="the front's ng socket, to reply from")
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    channel = socket.socket(fileno=args.channel_fd)
    channel.setblocking(False)
    ng = None
    if args.ng_fd is not None:
        ng = socket.socket(fileno=args.ng_fd)  # inherited from the front; never read here
        ng.setblocking(False)
    try:
        config = worker_config(load_config(args.config), args.index, args.count)
    except (ConfigError, ValueError) as exc:
        print(f"rtpai worker {args.index}: configuration error: {exc}", file=sys.stderr)
        return 2
    logs = config["log"]
    redactor: RedactSecrets = configure_logging(logs["level"], config.secrets(),
                                                format=logs["format"], levels=logs["levels"])
    for handler in logging.getLogger().handlers:  # every line says which worker wrote it
        handler.addFilter(_WorkerName(args.index))
    engine = Engine(config)
    gcstats.tune_for_server()
    run = partial(engine.run, control=partial(serve_channel, channel, engine.dispatcher,
                                              engine.active_calls, ng))

    def reload() -> None:
        # As the single process does (the front sends SIGHUP on): [openai], [log] and
        # [ng] allow apply live; the file's ranges are sliced as at start-up, so a reload
        # that changed nothing says nothing needs a restart.
        reload_config(engine, args.config, redactor,
                      adapt=lambda new: worker_config(new, args.index, args.count))

    try:
        trio.run(partial(serve, engine, reload, run=run,
                         ready=f"worker {args.index} ready: ports {config['rtp']['min_port']}.."
                               f"{config['rtp']['max_port']} (%s %s)"))
    except Exception:
        log.critical("rtpai worker stopped by an internal error", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
