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
from ctl.ng import decode_reply, encode_request

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
    datagram = encode_request(cookie, command, params)
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


def format_query(call_id: str, reply: dict[str, Any]) -> str:
    """One call, readable: media, counters, the AI session, usage and transcript."""
    ours = reply.get("rtpai") or {}
    ai = ours.get("ai") or {}
    stream = _first_stream(reply)
    totals = reply.get("totals") or {}
    usage = ai.get("usage") or {}
    lines = [
        f"call {call_id}: {ours.get('state')}"
        + (f" ({ours['end reason']})" if ours.get("end reason") else ""),
        f"  media    {ours.get('codec')}/{ours.get('ptime')} ms, local "
        f"{stream.get('local address')}:{stream.get('local port')}, remote {_endpoint(stream)}",
        f"  rtp in   {ours.get('rtp in')}",
        f"  rtp out  {ours.get('rtp out')}",
        f"  totals   RTP {totals.get('RTP')}  RTCP {totals.get('RTCP')}",
        f"  dropped  {ours.get('dropped')}",
        f"  ai       {ai.get('state')} {ai.get('model')} ({ai.get('dialect')}), "
        f"{ai.get('responses', 0)} responses, {ai.get('barge-ins', 0)} barge-ins",
        f"  usage    {usage.get('total_tokens', 0)} tokens "
        f"(in {usage.get('input_tokens', 0)}, out {usage.get('output_tokens', 0)})",
    ]
    for line in ai.get("transcript") or []:
        lines.append(f"  {line.get('role', '?'):>9}: {line.get('text', '')}")
    return "\n".join(lines)


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
    else:
        if reply.get("warning"):
            print(f"warning: {reply['warning']}", file=sys.stderr)
        print(json.dumps({k: v for k, v in reply.items() if k != "result"}, indent=2,
                         default=str))
    return 0 if reply.get("result") in ("ok", "pong") else 1


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
    args = parser.parse_args(argv)

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
