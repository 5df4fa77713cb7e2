"""``make fuzz``: mutated ng datagrams through the dispatcher and through a real rtpai daemon.

    python -m tests.fuzz_ng --count 1000000 --seconds 900          # in-process, the dispatcher
    python -m tests.fuzz_ng --daemon --count 100000 --seconds 300  # a real rtpai over UDP

The seeds are datagrams as Kamailio and OpenSIPS send them (offer, answer, delete, query,
list, ping, statistics; bencode and JSON). Each datagram sent is a seed mutated by one or a
few of: bit flips, byte edits, truncation, splices of two datagrams, structural edits (huge
numbers as integers and strings, lone surrogates, long strings, deep nesting, long lists,
values of the wrong type, keys dropped or spelled otherwise) and JSON variants.

What is checked, per datagram: nothing escapes the dispatcher (in-process) and the daemon stays
up; a datagram with a cookie gets exactly one reply, with its cookie, that decodes and has a
``result``; one without gets nothing. Printed: datagrams sent, crashes, unanswered, replies by
result, and memory (RSS, and the engine's tables in-process) before and after. The exit status
is non-zero if any check failed. Offers that survive mutation set calls up for real (ports, a
WebSocket to a local fake Realtime server); deletes, answers and queries of the same call-ids
find them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import socket
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import trio

from ctl.dispatcher import Handle, Resend
from ctl.ng import (
    MAX_COOKIE_LENGTH,
    NgFramingError,
    bencode,
    decode_reply,
    split_cookie,
)
from tests.fakes.ng import handle

# --- seeds ---------------------------------------------------------------------------------------

CALL_IDS = [f"fuzz-{n}@192.0.2.1" for n in range(8)]
SDP = (
    "v=0\r\no=- 1545997027 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)


def seed_messages(rng: random.Random) -> list[dict[str, Any]]:
    """One of each command, with a call-id from a small set so that commands meet calls."""
    call_id = rng.choice(CALL_IDS)
    tag = rng.choice(["ft1", "ft2"])
    kamailio = {"supports": ["load limit"], "call-id": call_id, "from-tag": tag,
                "received-from": ["IP4", "192.0.2.10"]}
    return [
        {"command": "offer", "flags": ["trust-address", "codec-strip-PCMA"], "sdp": SDP,
         "to-tag": "ours", "replace": ["origin", "session-connection"], "ICE": "remove",
         "profile": "", "via-branch": "z9hG4bK776asdhds", **kamailio},
        {"command": "offer", "sdp": SDP, "call-id": call_id, "from-tag": tag,
         "direction": ["external", "internal"], "transport-protocol": "RTP/AVP"},  # OpenSIPS
        {"command": "answer", "sdp": SDP, "to-tag": "tt1", **kamailio},
        {"command": "delete", "delete delay": 0, "delete-delay": "0", **kamailio},
        {"command": "delete", "call-id": call_id, "flags": ["fatal"]},
        {"command": "query", **kamailio},
        {"command": "list", "limit": 32},
        {"command": "ping"},
        {"command": "statistics"},
        {"command": "play media", "call-id": call_id, "file": "/tmp/x.wav"},
    ]


# --- mutations -----------------------------------------------------------------------------------

HUGE_NUMBERS = [2**63, -(2**63) - 1, 10**400, 2**64, 10**4000]
HUGE_TEXT = ["9" * 400, "-" + "9" * 40, "1e400", "nan", "inf", " 5 ", "0x10", "٣"]
ODD_TEXT = ["\ud800", "x\udfff", "\x00", "\u202e", "é" * 100, "\ufeff", "\U0001f600"]


def _deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


def _mutate_value(rng: random.Random, value: Any) -> Any:
    roll = rng.randrange(12)
    if roll == 0:
        return rng.choice(HUGE_NUMBERS)
    if roll == 1:
        return rng.choice(HUGE_TEXT)
    if roll == 2:
        return rng.choice(ODD_TEXT)
    if roll == 3:
        return "x" * rng.choice([65, 129, 257, 1000, 5000, 33000, 60000])
    if roll == 4:
        return _deep(rng.choice([5, 31, 33, 100, 400]), value)  # deeper: deep_body()
    if roll == 5:  # (of a short value: a peer's datagram is at most 64 KiB anyway)
        return [rng.choice(["f", 1, "x" * 10, [], {}])] * rng.choice([129, 1000, 5000])
    if roll == 6:
        return rng.choice([None, True, 0, -1, 3.5, [], {}, "", {"x": value}])
    if roll == 7 and isinstance(value, str) and len(value) < 1000:
        return value * rng.choice([2, 10, 100])
    if roll == 8:
        return rng.randrange(-(2**70), 2**70)
    if roll == 9 and isinstance(value, str):
        cut = rng.randrange(len(value) + 1)
        return value[:cut] + rng.choice(ODD_TEXT + ["\r\n", "m=audio 1 RTP/AVP 0\r\n" * 300])
    return value


def mutate_structure(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    message = dict(message)
    for _ in range(rng.choice([1, 1, 2, 3])):
        key = rng.choice(list(message) + ["flags", "delete-delay", "limit", "command"])
        roll = rng.randrange(10)
        if roll == 0:
            message.pop(key, None)
        elif roll == 1:
            message[key.replace("-", rng.choice([" ", "_"]))] = message.get(key, "1")
        elif roll == 2:
            message[rng.choice(["x" * 300, "Call-ID", "sdp ", "\u00e9"])] = "v"
        else:
            message[key] = _mutate_value(rng, message.get(key, ""))
    return message


def encode_message(rng: random.Random, message: dict[str, Any]) -> bytes:
    """bencode, or one of JSON's variants; what cannot be encoded a way is encoded another."""
    roll = rng.randrange(10)
    try:
        if roll < 6:
            return bencode(message)
        if roll < 8:
            text = json.dumps(message, ensure_ascii=rng.random() < 0.5)
        else:
            text = json.dumps(message, indent=rng.choice([None, 1]), allow_nan=True)
            text = text.replace("1e400", "Infinity") if "1e400" in text else text
        if rng.random() < 0.1:
            text = rng.choice(["\ufeff", " \n", ""]) + text
        return text.encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return b"d7:command4:pinge"


def deep_body(rng: random.Random) -> bytes:
    """Nesting far deeper than any encoder here would write (or a recursive decoder survive)."""
    depth = rng.choice([33, 1000, 10_000, 30_000])
    if rng.random() < 0.5:
        return b"d7:command4:ping1:x" + b"l" * depth + b"e" * depth + b"e"
    return b'{"command":"ping","x":' + b"[" * depth + b"]" * depth + b"}"


def mutate_bytes(rng: random.Random, data: bytes, other: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        roll = rng.randrange(7)
        if not data:
            break
        at = rng.randrange(len(data))
        if roll == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif roll == 1:
            data[at] = rng.randrange(256)
        elif roll == 2:
            del data[at: at + rng.randrange(1, 8)]
        elif roll == 3:
            data[at:at] = rng.choice([b"e", b"d", b"l", b"i", b"0:", b"99999:", b"i-0e", b"{",
                                      b"\xff", b"\xed\xa0\x80", bytes([rng.randrange(256)])])
        elif roll == 4:
            data = data[:at]  # truncation
        elif roll == 5:
            data = data[:at] + other[rng.randrange(len(other) + 1):]  # a splice
        else:
            data[at:at] = data[at: at + rng.randrange(1, 200)] * rng.randrange(1, 50)
    return bytes(data[:65000])


MAX_UDP_PAYLOAD = 65507  # what one IPv4 UDP datagram carries: no peer can send more


@dataclass
class Datagram:
    data: bytes
    cookie: bytes | None  # None: no valid cookie, no reply expected


def make_datagram(rng: random.Random, serial: int) -> Datagram:
    seeds = seed_messages(rng)
    message = rng.choice(seeds)
    roll = rng.random()
    if roll < 0.15:
        body = encode_message(rng, message)  # intact: offers and deletes that really run
    elif roll < 0.17:
        body = deep_body(rng)
    elif roll < 0.55:
        body = encode_message(rng, mutate_structure(rng, message))
    else:
        body = mutate_bytes(rng, encode_message(rng, message),
                           encode_message(rng, rng.choice(seeds)))
    cookie = b"%x_%d" % (serial, os.getpid())
    roll = rng.random()
    if roll < 0.02:
        data = body  # no cookie at all (or whatever the body's first word is)
    elif roll < 0.03:
        data = b"c" * (MAX_COOKIE_LENGTH + rng.randrange(1, 500)) + b" " + body
    elif roll < 0.04:
        data = cookie + b" "  # a cookie and nothing else
    else:
        data = cookie + b" " + body
    data = data[:MAX_UDP_PAYLOAD]
    try:
        real_cookie, _ = split_cookie(data)
    except NgFramingError:
        real_cookie = None
    return Datagram(data, real_cookie)


def datagrams(seed: int):
    rng = random.Random(seed)
    serial = 0
    while True:
        serial += 1
        yield make_datagram(rng, serial)


# --- checking replies ----------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    with_cookie: int = 0
    crashes: int = 0
    unanswered: int = 0
    bad_replies: int = 0  # replies that do not decode, carry another cookie or no result
    unexpected_replies: int = 0  # replies to datagrams without a (valid) cookie
    results: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    crash_samples: list = field(default_factory=list)

    def reply(self, cookie: bytes, datagram: bytes) -> None:
        try:
            got, reply = decode_reply(datagram)
        except Exception:
            self.bad_replies += 1
            return
        if got != cookie or "result" not in reply:
            self.bad_replies += 1
            return
        self.results[str(reply["result"])] += 1
        if reply["result"] == "error":
            self.reasons[str(reply.get("error-reason"))[:60]] += 1

    @property
    def failures(self) -> int:
        return self.crashes + self.unanswered + self.bad_replies + self.unexpected_replies

    def report(self, label: str, seconds: float, memory: dict[str, tuple[Any, Any]]) -> str:
        lines = [
            f"{label}: {self.sent} datagrams in {seconds:.1f} s "
            f"({self.sent / max(seconds, 1e-9):.0f}/s), {self.with_cookie} with a cookie",
            f"  crashes {self.crashes}, unanswered {self.unanswered}, bad replies "
            f"{self.bad_replies}, unexpected replies {self.unexpected_replies}",
            "  replies by result: " + ", ".join(f"{k} {v}" for k, v in self.results.most_common()),
            "  top error reasons: " + "; ".join(
                f"{k} {v}" for k, v in self.reasons.most_common(8)),
        ]
        for name, (before, after) in memory.items():
            lines.append(f"  {name}: before {before}, after {after}")
        for sample in self.crash_samples[:3]:
            lines.append(f"  crash: {sample}")
        return "\n".join(lines)


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- in-process: the engine's own dispatcher -----------------------------------------------------

FUZZ_ENV = {
    "NG_LISTEN": "127.0.0.1:0",
    # Few ports, so calls are also refused for want of them; a short media timeout ends the
    # calls no mutated delete reaches.
    "RTP_MIN_PORT": "46000", "RTP_MAX_PORT": "46063", "RTP_TIMEOUT": "2",
    "OPENAI_API_KEY": "test-key", "OPENAI_RECONNECT_TIMEOUT": "0",
    "LOG_LEVEL": "critical",
}


def engine_tables(engine) -> dict[str, int]:
    dispatcher = engine.dispatcher
    return {
        "calls": len(engine.calls),
        "ports in use": engine.ports.in_use,
        "reply cache entries": len(dispatcher.cache),
        "reply cache bytes": dispatcher.cache.bytes,
        "command names": len(dispatcher.commands),
        "error reasons": len(dispatcher.errors),
    }


async def answer_in_process(dispatcher, datagram: bytes, source, now: float) -> list[bytes]:
    """What the ng server does with one datagram, without the socket: the replies it sends."""
    match dispatcher.begin(datagram, source, now):
        case Resend(reply):
            return [reply]
        case Handle(cookie, body):
            reply, copies = await handle(dispatcher, cookie, body, source, lambda: now)
            return [reply] * copies
        case _:
            return []


async def fuzz_dispatcher(count: int, seconds: float, seed: int, *, quiet: bool = False,
                          engine_env: dict[str, str] | None = None,
                          datagram_source=None) -> tuple[Tally, dict]:
    """Run ``count`` datagrams (or for ``seconds``) through a real Engine's dispatcher: the
    mutations of ``seed``, or those of ``datagram_source`` (the tests' hypothesis ones)."""
    import logging

    from ctl.config import load_config
    from ctl.engine import Engine
    from tests.fakes.realtime import FakeRealtimeServer

    logging.disable(logging.CRITICAL)  # the engine logs every refused offer at info
    tally = Tally()
    memory: dict[str, tuple[Any, Any]] = {}
    server = FakeRealtimeServer(respond_after_ms=None)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        engine = Engine(load_config(None, environ={**FUZZ_ENV, "OPENAI_URL": url,
                                                   **(engine_env or {})}))
        await nursery.start(engine.run)
        dispatcher = engine.dispatcher
        source = ("192.0.2.1", 5060)
        gc.collect()
        before_rss, before_tables = rss_kib(), engine_tables(engine)
        start = time.monotonic()
        deadline = start + seconds
        recent: OrderedDict[bytes, bytes] = OrderedDict()  # for retransmits of the same bytes
        for n, datagram in enumerate(datagram_source or datagrams(seed)):
            if n >= count or (n % 256 == 0 and time.monotonic() > deadline):
                break
            data = datagram.data
            if n % 97 == 0 and recent:  # now and then a retransmit of an earlier datagram
                data = next(reversed(recent.values()))
                datagram = Datagram(data, split_cookie(data)[0])
            tally.sent += 1
            try:
                replies = await answer_in_process(dispatcher, data, source, trio.current_time())
            except Exception as exc:  # what the fuzz is looking for
                tally.crashes += 1
                tally.crash_samples.append(f"{type(exc).__name__}: {exc!s:.200} <- {data[:120]!r}")
                continue
            if datagram.cookie is None:
                tally.unexpected_replies += len(replies)
                continue
            tally.with_cookie += 1
            recent[datagram.cookie] = data
            if len(recent) > 64:
                recent.popitem(last=False)
            if not replies:
                tally.unanswered += 1
            elif len(replies) > 1:
                tally.bad_replies += 1
            else:
                tally.reply(datagram.cookie, replies[0])
            if not quiet and n and n % 100_000 == 0:
                print(f"  ... {n} datagrams, {time.monotonic() - start:.0f} s, "
                      f"RSS {rss_kib()} KiB, {engine_tables(engine)}", flush=True)
            if n % 64 == 0:
                await trio.lowlevel.checkpoint()  # the calls' tasks run meanwhile
                # The fake Realtime server keeps every session for the tests to inspect; here
                # that would be the fuzz's own memory growing, not the engine's.
                server.sessions.clear()
        elapsed = time.monotonic() - start
        gc.collect()
        memory["RSS KiB"] = (before_rss, rss_kib())
        after_tables = engine_tables(engine)
        for name in before_tables:
            memory[name] = (before_tables[name], after_tables[name])
        memory["_elapsed"] = (0, elapsed)
        nursery.cancel_scope.cancel()
    logging.disable(logging.NOTSET)
    return tally, memory


# --- a real daemon over UDP ----------------------------------------------------------------------

WINDOW = 16  # datagrams in flight: enough to keep the daemon busy, few enough not to drop
RETRANSMIT_AFTER = 1.0  # as the proxy modules: resend the same datagram after 1 s ...
TRIES = 5  # ... up to 5 times; a datagram with no reply then is unanswered


async def fuzz_daemon(count: int, seconds: float, seed: int) -> tuple[Tally, dict]:
    from tests.fakes.daemon import running_daemon
    from tests.fakes.realtime import FakeRealtimeServer

    tally = Tally()
    memory: dict[str, tuple[Any, Any]] = {}
    server = FakeRealtimeServer(respond_after_ms=None)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        env = {**os.environ, **FUZZ_ENV, "NG_LISTEN": f"127.0.0.1:{port}", "OPENAI_URL": url,
               "LOG_LEVEL": "info"}
        async with running_daemon(env) as (process, _log):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.connect(("127.0.0.1", port))
            # cookie -> [data, last sent, tries, replies due]. One reply is due per copy sent:
            # a retransmit, or another datagram whose first word happens to be the same
            # "cookie" (a body sent without one), is answered again from the reply cache.
            pending: OrderedDict[bytes, list] = OrderedDict()
            still_due: Counter[bytes] = Counter()  # further copies of answered datagrams
            room = trio.Event()
            rss_before = rss_kib(process.pid)
            start = time.monotonic()

            async def receive() -> None:
                nonlocal room
                while True:
                    try:
                        datagram = await sock.recv(70000)
                    except ConnectionRefusedError:  # ICMP port unreachable: the daemon is gone
                        continue
                    try:
                        cookie, _ = split_cookie(datagram)
                    except NgFramingError:
                        tally.bad_replies += 1
                        continue
                    entry = pending.pop(cookie, None)
                    if entry is None:
                        if still_due[cookie] > 0:
                            still_due[cookie] -= 1
                            if not still_due[cookie]:
                                del still_due[cookie]
                        else:
                            tally.unexpected_replies += 1
                        continue
                    if entry[3] > 1:
                        still_due[cookie] += entry[3] - 1
                    tally.reply(cookie, datagram)
                    room.set()

            async def retransmit_overdue() -> None:
                now = time.monotonic()
                for cookie, entry in list(pending.items()):
                    if now - entry[1] < RETRANSMIT_AFTER:
                        break
                    if entry[2] >= TRIES:
                        del pending[cookie]
                        tally.unanswered += 1
                        continue
                    entry[1], entry[2], entry[3] = now, entry[2] + 1, entry[3] + 1
                    pending.move_to_end(cookie)
                    with contextlib.suppress(OSError):
                        await sock.send(entry[0])

            receiving = trio.CancelScope()
            received_all = trio.Event()

            async def receive_until_cancelled() -> None:
                try:
                    with receiving:
                        await receive()
                finally:
                    received_all.set()

            nursery.start_soon(receive_until_cancelled)
            deadline = start + seconds
            for n, datagram in enumerate(datagrams(seed)):
                if n >= count or time.monotonic() > deadline or process.returncode is not None:
                    break
                while len(pending) >= WINDOW:
                    room = trio.Event()
                    with trio.move_on_after(RETRANSMIT_AFTER / 4):
                        await room.wait()
                    await retransmit_overdue()
                tally.sent += 1
                try:
                    await sock.send(datagram.data)
                except OSError:  # e.g. EMSGSIZE: not sent, not counted
                    tally.sent -= 1
                    continue
                if datagram.cookie is not None:
                    tally.with_cookie += 1
                    if datagram.cookie in pending:
                        pending[datagram.cookie][3] += 1
                    else:
                        pending[datagram.cookie] = [datagram.data, time.monotonic(), 1, 1]
                if n and n % 20_000 == 0:
                    print(f"  ... {n} datagrams, {time.monotonic() - start:.0f} s, "
                          f"daemon RSS {rss_kib(process.pid)} KiB", flush=True)
            with trio.move_on_after(RETRANSMIT_AFTER * (TRIES + 1)):
                while pending:
                    room = trio.Event()
                    with trio.move_on_after(RETRANSMIT_AFTER / 4):
                        await room.wait()
                    await retransmit_overdue()
            tally.unanswered += len(pending)
            elapsed = time.monotonic() - start
            receiving.cancel()
            await received_all.wait()  # the receiver leaves the socket to us
            alive = process.returncode is None
            if alive:
                ping = b"alive " + bencode({"command": "ping"})
                alive = False
                with trio.move_on_after(2), contextlib.suppress(OSError):
                    await sock.send(ping)
                    while True:
                        reply = await sock.recv(70000)
                        if reply.startswith(b"alive "):
                            break
                    alive = decode_reply(reply)[1].get("result") == "pong"
            if not alive:
                tally.crashes += 1
                tally.crash_samples.append(f"daemon exited: {process.returncode}")
            memory["daemon RSS KiB"] = (rss_before, rss_kib(process.pid) if alive else "gone")
            memory["_elapsed"] = (0, elapsed)
            sock.close()
        nursery.cancel_scope.cancel()
    return tally, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams to send")
    parser.add_argument("--seconds", type=float, default=1800.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--daemon", action="store_true",
                        help="send over UDP to a real rtpai (python -m ctl.daemon) instead")
    args = parser.parse_args(argv)
    if args.daemon:
        tally, memory = trio.run(fuzz_daemon, args.count, args.seconds, args.seed)
        label = "ng fuzz, real daemon over UDP"
    else:
        tally, memory = trio.run(fuzz_dispatcher, args.count, args.seconds, args.seed)
        label = "ng fuzz, in-process dispatcher"
    elapsed = memory.pop("_elapsed")[1]
    print(tally.report(f"{label} (seed {args.seed})", elapsed, memory))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
