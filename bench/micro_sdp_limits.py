"""How long a hostile SDP offer holds the event loop: parse, negotiate and answer.

    python -m bench.micro_sdp_limits

Prints the median cost of a phone's offer and of offers made of thousands of m-lines and
attributes (the 60 KB one of issue 11), through what an offer's reply waits for. No socket.
"""

from __future__ import annotations

import statistics
import time

from media import sdp

PHONE = (
    "v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
)
HEAD = "v=0\r\no=x 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"


def many_m_lines(size: int) -> str:
    line = "m=video 0 RTP/AVP 96\r\n"
    return HEAD + line * ((size - len(HEAD)) // len(line)) + PHONE.split("t=0 0\r\n")[1]


def many_attributes(size: int) -> str:
    line = "a=rtpmap:96 H264/90000\r\n"
    body = PHONE.split("t=0 0\r\n")[1]
    return HEAD + body + line * ((size - len(HEAD) - len(body)) // len(line))


def many_formats(size: int) -> str:
    body = PHONE.split("t=0 0\r\n")[1]
    return HEAD + "m=audio 40000 RTP/AVP " + "0 " * ((size - len(HEAD) - len(body)) // 2) + body


def worst_within_limits(size: int) -> str:
    """As much work as the limits let through: 8 audio m-lines of 64 payload types (each
    an rtpmap the parser reads), up to MAX_SDP_LINES and the ng limit on the SDP's size."""
    formats = " ".join(str(pt) for pt in range(64))
    per_section = (sdp.MAX_SDP_LINES - HEAD.count("\n")) // sdp.MAX_MEDIA_SECTIONS - 1
    sections = []
    for n in range(sdp.MAX_MEDIA_SECTIONS):
        sections.append(f"m=audio {40000 + 2 * n} RTP/AVP {formats}\r\n")
        sections.extend(f"a=rtpmap:{pt} X{pt}/8000\r\n" for pt in range(per_section))
    text = HEAD + "".join(sections)
    return text[: text.rfind("\r\n", 0, size) + 2]


def one_offer(text: str) -> str:
    try:
        offer = sdp.parse_sdp(text)
        negotiated = sdp.negotiate(offer)
        return sdp.build_answer(offer, negotiated, local_address="192.0.2.1", local_port=30000,
                                session_id=1, session_version=1)
    except sdp.SdpError as exc:
        return exc.reason


def median_ms(text: str, rounds: int = 30) -> tuple[float, str]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        outcome = one_offer(text)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, outcome.split("\r\n")[0][:50]


def main() -> None:
    cases = {
        "phone offer": PHONE,
        "60 KB of m-lines": many_m_lines(60_000),
        "32 KB of m-lines": many_m_lines(32_768),
        "60 KB of attributes": many_attributes(60_000),
        "32 KB of attributes": many_attributes(32_768),
        "32 KB of formats": many_formats(32_768),
        "worst within limits": worst_within_limits(32_768),
    }
    for name, text in cases.items():
        ms, outcome = median_ms(text)
        print(f"{name:22} {len(text):6d} B  {text.count(chr(10)):5d} lines  "
              f"{ms:8.3f} ms  -> {outcome}")


if __name__ == "__main__":
    main()
