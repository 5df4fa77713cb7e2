"""``rtpai``: the daemon. Loads the configuration, then serves ng until SIGTERM/SIGINT.

Signals (docs/configuration.md, "Signals"): none of them kills a call without a drain.

* SIGTERM, SIGINT: drain (new offers refused, calls given ``[ng] shutdown_grace`` to end, the
  rest hung up through the proxy), then exit 0. A second one during the drain stops at once.
* SIGHUP: reload the configuration file and the environment; ``[log]``, the ``[openai]``
  settings and profiles and ``[pricing]`` apply from then on (to new calls); anything else
  that changed is named in a warning and waits for a restart. An invalid file changes nothing.
* SIGUSR1: one log line with the engine's state (calls, ports, AI sessions).
* SIGUSR2, SIGALRM: logged and ignored (their default action would kill every call).
* SIGPIPE: ignored, as Python ignores it from start-up (a closed socket is an EPIPE error).
* SIGXFSZ: ignored, so that a write past a file-size limit (``LimitFSIZE``, ``ulimit -f``) is
  an EFBIG error of that recording alone (docs/recording.md), not the end of every call.
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

from ctl import gcstats
from ctl.config import SETTINGS, Config, ConfigError, load_config
from ctl.engine import Engine
from ctl.logs import RedactSecrets, apply_levels, configure_logging, set_format
from media import native

log = logging.getLogger("rtpai")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Default-fatal signals someone may send by mistake (a log rotation script's USR1, a stray
# alarm): caught so that they cannot end every call at once.
HANDLED_SIGNALS = (
    *sorted(STOP_SIGNALS), signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM,
)
# Sections a reload applies; the others (ng socket, RTP ports and addresses, proxy) are bound
# into sockets and calls at start-up and need a restart.
RELOADABLE_SECTIONS = frozenset({"openai", "log", "pricing"})
# Single settings of other sections that apply live: the ng source list, so that adding or
# removing a proxy does not cost a restart (and every call with it).
RELOADABLE_SETTINGS = frozenset({("ng", "allow")})


async def serve(engine: Engine, reload: Callable[[], None] | None = None, *,
                run: Callable[..., Awaitable[object]] | None = None,
                ready: str = "rtpai ready: ng on %s:%s") -> None:
    """Run the engine until a termination signal arrives, then drain it; see the module doc.

    ``reload`` is what SIGHUP does (None: the signal is logged and ignored). ``run`` replaces
    ``engine.run`` (a worker serves its front's channel, ctl/workers.py), and ``ready`` is the
    line logged once it has started (formatted with the address it started with). ``engine``
    may be the front (ctl/front.py), which has the same ``run``, ``drain``, ``summary``.
    """
    with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(run or engine.run)
            log.info(ready, *address)
            draining = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum in STOP_SIGNALS:
                    if draining:
                        log.warning("received %s again: stopping now", name)
                        nursery.cancel_scope.cancel()
                        return
                    draining = True
                    log.info("received %s: draining, then shutting down", name)
                    nursery.start_soon(_drain_then_stop, engine, nursery.cancel_scope)
                elif signum == signal.SIGUSR1:
                    log.info("received %s: %s", name, engine.summary())
                elif signum == signal.SIGHUP and reload is not None:
                    log.info("received %s: reloading the configuration", name)
                    reload()
                else:
                    log.info("received %s: ignored", name)


async def _drain_then_stop(engine: Engine, scope: trio.CancelScope) -> None:
    await engine.drain(engine.config["ng"]["shutdown_grace"])
    scope.cancel()


def reload_config(
    engine: Engine, path: str | None, redactor: RedactSecrets, *, environ=None,
    adapt: Callable[[Config], Config] | None = None,
) -> Config | None:
    """SIGHUP's work: re-read the file and the environment; apply what can change live.

    ``adapt`` turns the file's configuration into this process's (a worker's port slice,
    ctl/workers.py), so that only what the user changed is named as needing a restart.
    Returns the new configuration, or None when it is invalid (then nothing changes).
    """
    try:
        new = load_config(path, environ)
        if adapt is not None:
            new = adapt(new)
    except (ConfigError, ValueError) as exc:  # ValueError: a range too small to slice
        log.error("configuration not reloaded, nothing changed: %s", exc)
        return None
    # First: a new key must be redacted before anything can log it.
    redactor.add(new.secrets())
    apply_levels(new["log"]["level"], new["log"]["levels"])
    set_format(new["log"]["format"], redactor)
    engine.reload_ai_settings(new)
    engine.dispatcher.allow_sources(new["ng"]["allow"])
    old = engine.config
    restart = [
        setting.label
        for setting in SETTINGS
        if setting.section not in RELOADABLE_SECTIONS
        and (setting.section, setting.key) not in RELOADABLE_SETTINGS
        and new[setting.section][setting.key] != old[setting.section][setting.key]
    ]
    if restart:
        log.warning("changed settings that need a restart (not applied): %s", ", ".join(restart))
    log.info("configuration reloaded: [openai] (and profiles %s) apply to new calls; "
             "log level %s; [ng] allow: %s", ", ".join(sorted(new.profiles)) or "none",
             new["log"]["level"], ", ".join(str(n) for n in new["ng"]["allow"]) or "anyone")
    return new


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
    logs = config["log"]
    redactor = configure_logging(logs["level"], config.secrets(), format=logs["format"],
                                 levels=logs["levels"])
    log.info("configuration: %r", config)
    # The one start-up line about the per-packet path (media/native.py): compiled, or pure
    # Python and why. A missing build is worth a warning (it costs CPU), a forced one is not.
    compiled, path = native.describe()
    log.log(logging.INFO if compiled or native.FORCED_PURE else logging.WARNING, "%s", path)
    before, after = raise_descriptor_limit()
    if after != before:
        log.info("open-file limit raised from %d to %d (~%d calls)", before, after,
                 after // FDS_PER_CALL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if config["ng"]["workers"] > 1:
        # One front process owns the ng socket; the calls live in the workers (ctl/front.py).
        from ctl.front import Front

        front = Front(config, args.config)
        log.info("[ng] workers = %d: this process is the front", len(front.workers))
        runs: tuple = (serve, front, front.reload)
    else:
        engine = Engine(config)
        runs = (serve, engine, lambda: reload_config(engine, args.config, redactor))
    gcstats.tune_for_server()  # everything built so far lives as long as the process
    try:
        trio.run(*runs)
    except OSError as exc:
        print(f"rtpai: {exc}", file=sys.stderr)
        return 1
    except Exception:
        # Through the log, not Python's default hook: the redacting handler sees the
        # traceback's text before it is written.
        log.critical("rtpai stopped by an internal error", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
