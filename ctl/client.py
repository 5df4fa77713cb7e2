"""``rtpai-ctl``: talk ng to rtpai (or any rtpengine) by hand."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
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
    elif args.command == "list":
        for call_id in reply.get("calls", []):
            print(call_id)
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
        reply = send_command(host_port(args.ng), args.command, params)
    except (NgClientError, ValueError, OSError) as exc:
        print(f"rtpai-ctl: {exc}", file=sys.stderr)
        return 2
    return _print_reply(reply, args)


if __name__ == "__main__":
    sys.exit(main())
