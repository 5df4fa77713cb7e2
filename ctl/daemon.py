"""``rtpai``: the daemon. Loads the configuration, then serves ng until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys

import trio

from ctl import gcstats
from ctl.config import ConfigError, load_config
from ctl.engine import Engine

log = logging.getLogger("rtpai")


async def serve(engine: Engine) -> None:
    """Run the engine until a termination signal arrives, then cancel every call."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(engine.run)
            log.info("rtpai ready: ng on %s:%s", *address)
            async for signum in signals:
                log.info("received %s: draining, then shutting down", signal.Signals(signum).name)
                # A second signal during the drain stops at once.
                nursery.start_soon(_cancel_on_next_signal, signals, nursery.cancel_scope)
                await engine.drain(engine.config["ng"]["shutdown_grace"])
                nursery.cancel_scope.cancel()
                break


async def _cancel_on_next_signal(signals, scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.warning("received %s again: stopping now", signal.Signals(signum).name)
        scope.cancel()
        return


# Descriptors a call holds: its RTP and RTCP sockets and its WebSocket.
FDS_PER_CALL = 3


def raise_descriptor_limit(
    getrlimit=resource.getrlimit, setrlimit=resource.setrlimit
) -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; return (before, after).

    A common soft default is 1024, i.e. ~330 calls at 3 descriptors each: below what one rtpai
    process carries (docs/performance.md). The hard limit is the administrator's word.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rtpai", description="RTP engine for AI voice agents (rtpengine ng protocol)"
    )
    parser.add_argument("--config", "-c", help="INI configuration file (environment wins)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"rtpai: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config["log"]["level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("configuration: %r", config)
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("open-file limit raised from %d to %d (~%d calls)", before, after,
                 after // FDS_PER_CALL)
    engine = Engine(config)
    gcstats.tune_for_server()  # everything built so far lives as long as the process
    try:
        trio.run(serve, engine)
    except OSError as exc:
        print(f"rtpai: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
