"""``rtpai-ctl``: talk ng to rtpai (or any rtpengine) by hand."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import time
from typing import Any

from ctl.config import host_port
from ctl.ng import decode_reply

# As the proxy modules do: resend the same datagram (same cookie) after 1 s, five times.
RETRANSMIT_INTERVAL = 1.0
RETRANSMITS = 5


class NgClientError(Exception):
    pass


def send_command(
    address: tuple[str, int], command: str, params: dict[str, Any] | None = None,
    *, retransmits: int = RETRANSMITS, interval: float = RETRANSMIT_INTERVAL,
) -> dict[str, Any]:
    """Send one ng command and wait for its reply, retransmitting like the proxy modules."""
    cookie = secrets.token_hex(6).encode()
    # JSON, which rtpai (and rtpengine) answer in JSON: bencode has no floats, and an
    # operator wants the jitter, the transcript's times and the cost as they are.
    datagram = cookie + b" " + json.dumps({"command": command, **(params or {})}).encode()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.settimeout(interval)
        for _ in range(1 + retransmits):
            sock.send(datagram)
            try:
                while True:
                    reply_cookie, reply = decode_reply(sock.recv(65535))
                    if reply_cookie == cookie:
                        return reply
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise NgClientError(f"nothing listens on {address[0]}:{address[1]}") from None
    raise NgClientError(f"no reply from {address[0]}:{address[1]}")


def _endpoint(stream: dict[str, Any]) -> str:
    endpoint = stream.get("endpoint") or {}
    return f"{endpoint['address']}:{endpoint['port']}" if endpoint.get("address") else "-"


def _first_stream(reply: dict[str, Any]) -> dict[str, Any]:
    for tag in (reply.get("tags") or {}).values():
        for media in tag.get("medias") or []:
            for stream in media.get("streams") or []:
                return stream
    return {}


def format_sessions(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A table of calls, one line each, as ``rtpengine-ctl list sessions`` shows them."""
    header = ("CALL-ID", "STATE", "AGE", "CODEC", "LOCAL", "REMOTE", "IN", "OUT", "AI")
    lines = [header]
    now = time.time()
    for call_id, reply in rows:
        if reply.get("result") != "ok":
            lines.append((call_id, "gone", "-", "-", "-", "-", "-", "-", "-"))
            continue
        ours = reply.get("rtpai") or {}
        stream = _first_stream(reply)
        lines.append((
            call_id,
            str(ours.get("state", "?")),
            f"{now - int(reply.get('created', now)):.0f}s",
            f"{ours.get('codec', '?')}/{ours.get('ptime', '?')}ms",
            str(stream.get("local port", "-")),
            _endpoint(stream),
            str((ours.get("rtp in") or {}).get("packets", 0)),
            str((ours.get("rtp out") or {}).get("packets", 0)),
            str((ours.get("ai") or {}).get("state", "-")),
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )


def _count_bytes(counts: dict[str, Any] | None) -> str:
    counts = counts or {}
    size = counts.get("bytes", 0)
    shown = f"{size / 1024:.0f} KB" if size >= 10 * 1024 else f"{size} B"
    return f"{counts.get('packets', 0)} ({shown})"


def _tokens(usage: dict[str, Any]) -> str:
    given = usage.get("input_token_details") or {}
    taken = usage.get("output_token_details") or {}
    return (f"{usage.get('total_tokens', 0)} total: in text {given.get('text_tokens', 0)} "
            f"audio {given.get('audio_tokens', 0)} (cached {given.get('cached_tokens', 0)}), "
            f"out text {taken.get('text_tokens', 0)} audio {taken.get('audio_tokens', 0)}")


def format_query(call_id: str, reply: dict[str, Any]) -> str:
    """One call, readable: media and packets, the AI session's figures, cost, transcript."""
    ours = reply.get("rtpai") or {}
    ai = ours.get("ai") or {}
    stream = _first_stream(reply)
    usage = ai.get("usage") or {}
    cost = ai.get("cost")
    created = reply.get("created")
    age = f" ({time.time() - created:.0f} s ago)" if isinstance(created, int | float) else ""
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created))
            if isinstance(created, int | float) else "?")
    dropped = {k: v for k, v in (ours.get("dropped") or {}).items() if v}
    mos = _mos_text(reply)
    lines = [
        f"call {call_id}: {ours.get('state')}"
        + (f" ({ours['end reason']})" if ours.get("end reason") else ""),
        f"  started    {when}{age}",
        f"  media      {ours.get('codec')}/{ours.get('ptime')} ms, local "
        f"{stream.get('local address')}:{stream.get('local port')}, remote {_endpoint(stream)}",
        f"  packets    in {_count_bytes(ours.get('rtp in'))}, out "
        f"{_count_bytes(ours.get('rtp out'))}, lost {ours.get('lost', 0)}, jitter "
        f"{ours.get('jitter ms', 0)} ms" + (f", MOS {mos}" if mos else ""),
        "  dropped    " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"),
        f"  AI         {ai.get('state')} {ai.get('model')} ({ai.get('dialect')}), "
        f"{ai.get('responses', 0)} responses, {ai.get('barge-ins', 0)} barge-ins, "
        f"{ai.get('reconnects', 0)} reconnects",
        f"  tokens     {_tokens(usage)}",
        "  cost       " + (f"${cost['usd']:.4f} ({cost['model']}, prices of "
                           f"{cost['prices_as_of']})" if isinstance(cost, dict) else "unknown"),
    ]
    latency = ai.get("response latency ms")
    if latency:
        lines.append(f"  latency    {latency}")
    recording = ours.get("recording")
    if recording:
        lines.append(f"  recording  {recording.get('status')} {recording.get('file') or ''}"
                     + (f" ({recording['error']})" if recording.get("error") else ""))
    transcript = ai.get("transcript") or []
    if transcript:
        lines.append("  transcript" + (f" (the {ai['transcript omitted']} earliest entries "
                                        "omitted)" if ai.get("transcript omitted") else ""))
    for line in transcript:
        at = line.get("at s")
        stamp = f"[{at:7.1f}s] " if isinstance(at, int | float) else ""
        lines.append(f"    {stamp}{line.get('role', '?'):>9}: {line.get('text', '')}")
    return "\n".join(lines)


def _mos_text(reply: dict[str, Any]) -> str:
    averages = [entry["average MOS"]["MOS"] for entry in (reply.get("SSRC") or {}).values()
                if isinstance(entry, dict) and entry.get("average MOS")]
    return " / ".join(f"{mos / 10:.1f}" for mos in averages)


def _read_sdp(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _print_reply(reply: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(reply, indent=2, default=str))
    elif reply.get("result") not in ("ok", "pong"):
        print(f"{reply.get('result')}: {reply.get('error-reason') or reply.get('message')}",
              file=sys.stderr)
    elif args.command in ("offer", "answer"):
        sys.stdout.write(reply.get("sdp", ""))
    elif args.command == "ping":
        print(reply["result"])
    elif args.command == "list" and args.ids_only:
        for call_id in reply.get("calls", []):
            print(call_id)
    elif args.command == "list":
        rows = [(call_id, send_command(args.address, "query", {"call-id": call_id}))
                for call_id in reply.get("calls", [])]
        print(format_sessions(rows))
    elif args.command == "query":
        print(format_query(args.call_id, reply))
    elif args.command in ("start recording", "stop recording", "pause recording"):
        print(reply["result"])
    else:
        if reply.get("warning"):
            print(f"warning: {reply['warning']}", file=sys.stderr)
        print(json.dumps({k: v for k, v in reply.items() if k != "result"}, indent=2,
                         default=str))
    return 0 if reply.get("result") in ("ok", "pong") else 1


def _top(args: argparse.Namespace) -> int:
    from ctl import top  # curses is loaded only for this command

    try:
        address = host_port(args.ng)
    except ValueError as exc:
        print(f"rtpai-ctl: {exc}", file=sys.stderr)
        return 2

    def send(command: str, params: dict[str, Any]) -> dict[str, Any]:
        return send_command(address, command, params, retransmits=top.QUERY_RETRANSMITS,
                            interval=top.QUERY_INTERVAL)

    if args.once:
        frame = top.fetch(send, limit=args.limit)
        print("\n".join(top.render(frame, width=200, address=args.ng)))
        return 1 if frame.error else 0
    return top.run_curses(send, address=args.ng, interval=max(args.interval, 0.2),
                          limit=args.limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtpai-ctl", description="Send ng commands to rtpai")
    parser.add_argument("--ng", default=os.environ.get("NG_LISTEN", "127.0.0.1:2223"),
                        help="the engine's ng address (default: $NG_LISTEN or 127.0.0.1:2223)")
    parser.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ping")
    for name in ("offer", "answer"):
        sub = commands.add_parser(name)
        sub.add_argument("--call-id", required=True)
        sub.add_argument("--from-tag", required=True)
        sub.add_argument("--to-tag")
        sub.add_argument("--sdp-file", required=True, help="file with the SDP, or - for stdin")
    for name in ("delete", "query"):
        sub = commands.add_parser(name)
        sub.add_argument("--call-id", required=True)
        sub.add_argument("--from-tag")
        sub.add_argument("--to-tag")
    sub = commands.add_parser("list")
    sub.add_argument("--limit", type=int, default=32)
    sub.add_argument("--ids-only", action="store_true", help="print call-ids only")
    commands.add_parser("statistics")
    for name in ("start-recording", "stop-recording", "pause-recording"):
        sub = commands.add_parser(name, help=f"the ng '{name.replace('-', ' ')}' command")
        sub.add_argument("--call-id", required=True)
        sub.add_argument("--from-tag")
    sub = commands.add_parser("top", help="the calls as a live table (q quits)")
    sub.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sub.add_argument("--limit", type=int, default=200, help="calls shown at most")
    sub.add_argument("--once", action="store_true", help="print one frame and exit")
    args = parser.parse_args(argv)
    args.command = args.command.replace("-", " ")  # the ng command's name
    if args.command == "top":
        return _top(args)

    params: dict[str, Any] = {}
    for key in ("call_id", "from_tag", "to_tag"):
        if getattr(args, key, None):
            params[key.replace("_", "-")] = getattr(args, key)
    if getattr(args, "sdp_file", None):
        params["sdp"] = _read_sdp(args.sdp_file)
    if args.command == "list":
        params["limit"] = args.limit
    try:
        args.address = host_port(args.ng)
        reply = send_command(args.address, args.command, params)
        return _print_reply(reply, args)
    except (NgClientError, ValueError, OSError) as exc:
        print(f"rtpai-ctl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
