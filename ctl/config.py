"""Configuration: an INI file (``--config``) and the environment, the environment winning.

Every setting is declared once in :data:`SETTINGS` with its section, key (and aliases), the
environment variable that overrides it, its default and its parser. Start-up validates all of
them and names the setting (``[openai] temperature / OPENAI_TEMPERATURE``) in every error, so
a typo never surfaces as a failed call hours later.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ctl.acl import parse_networks
from openai_flavor.settings import VOICES, parse_tools


class ConfigError(Exception):
    """A setting that is missing or out of range; the message names it and its allowed values."""


# --- value parsers: each raises ValueError with the allowed range --------------------------------


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number from {low} to {high}") from None
        if not (low <= value <= high):  # also rejects nan
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def max_tokens(text: str) -> int | float:
    """1..4096 or ``inf`` (the Realtime API's own range for a response's output tokens)."""
    value = text.strip().lower()
    if value in {"inf", "infinity", "unlimited"}:
        return math.inf
    return int_range(1, 4096)(value)


def ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare port (then 127.0.0.1)."""
    value = text.strip()
    if value.isdigit():
        host, port = "127.0.0.1", value
    elif value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    try:
        return ip_address(host), int_range(0, 65535)(port)  # 0: any free port (tests)
    except ValueError:
        raise ValueError("expected HOST:PORT with an IP address, e.g. 127.0.0.1:2223") from None


def text(value: str) -> str:
    return value


def optional_text(value: str) -> str | None:
    return value or None


def codec_preference(value: str) -> tuple[str, ...] | None:
    """``offer`` (None: the offer's order) or an ordered subset of PCMU, PCMA."""
    text = value.strip()
    if text.lower() == "offer":
        return None
    codecs = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    if not codecs or any(c not in ("PCMU", "PCMA") for c in codecs) or len(set(codecs)) != len(
        codecs
    ):
        raise ValueError("expected 'offer' or a list of PCMU and PCMA, e.g. 'PCMA,PCMU'")
    return codecs


def api_key(value: str) -> str | None:
    """An API key: surrounding whitespace is dropped (a key pasted with its newline, an
    ``export`` with a trailing space); anything else but printable ASCII is refused.

    A key goes into an HTTP header verbatim: a newline, tab or non-ASCII character left in it
    makes the request invalid, and the HTTP library's error then quotes the whole header (the
    key with it). So it is refused here, at start-up, with a message that never shows it.
    """
    value = value.strip()
    if not value:
        return None
    if not all("!" <= char <= "~" for char in value):
        raise ValueError(
            "the key contains whitespace, a control character or a non-ASCII character "
            "inside it (keys are printable ASCII; the value is not shown)"
        )
    return value


def optional_http_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("ws://", "wss://")):
        raise ValueError("expected a ws:// or wss:// URL")
    return value


def word_list(value: str) -> tuple[str, ...]:
    """A comma-separated list; blanks are ignored."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def tool_declarations(value: str) -> tuple[dict[str, Any], ...]:
    """A JSON array of tools (``name``, ``description``, ``parameters``), or ``@/path/to.json``."""
    value = value.strip()
    if not value:
        return ()
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as handle:
                value = handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return parse_tools(json.loads(value))
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON array of tools: {exc.msg}") from None


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    env: str
    default: str | None
    parse: Callable[[str], Any]
    aliases: tuple[str, ...] = ()
    secret: bool = False
    help: str = ""

    @property
    def label(self) -> str:
        return f"[{self.section}] {self.key} / {self.env}"


SETTINGS: tuple[Setting, ...] = (
    Setting("ng", "listen", "NG_LISTEN", "127.0.0.1:2223", host_port,
            help="UDP address of the ng control socket (on a wildcard address each reply "
                 "leaves from the address its request reached, as the proxies expect)"),
    Setting("ng", "allow", "NG_ALLOW", "", parse_networks,
            help="addresses/CIDRs allowed to send ng commands, comma- or space-separated "
                 "(empty: anyone who reaches the socket; others are dropped and counted)"),
    Setting("ng", "max_sessions", "NG_MAX_SESSIONS", "0", int_range(0, 1_000_000),
            help="concurrent calls before offers get 'load limit' (0 = unlimited)"),
    Setting("rtp", "ip", "RTP_IP", None, optional_text,
            help="address advertised in SDP answers (default: bind_ip)"),
    Setting("rtp", "bind_ip", "RTP_BIND_IP", "127.0.0.1", ip_address,
            help="address the RTP/RTCP sockets bind to"),
    Setting("rtp", "min_port", "RTP_MIN_PORT", "30000", int_range(1024, 65534)),
    Setting("rtp", "max_port", "RTP_MAX_PORT", "40000", int_range(1025, 65535)),
    Setting("rtp", "timeout", "RTP_TIMEOUT", "60", int_range(0, 86400),
            help="seconds without caller RTP before the call is ended (0 = never)"),
    Setting("rtp", "codecs", "RTP_CODECS", "offer", codec_preference,
            help="'offer' (the caller's order decides between PCMU and PCMA) or our order, "
                 "e.g. 'PCMA,PCMU' or only 'PCMU'"),
    Setting("rtp", "send_silence", "RTP_SEND_SILENCE", "true", parse_bool,
            help="send G.711 silence frames while the AI is quiet (false: send nothing, the "
                 "timestamps still advance)"),
    Setting("rtp", "reorder_packets", "RTP_REORDER_PACKETS", "2", int_range(0, 16),
            help="packets held waiting for a missing one before it is counted lost"),
    Setting("rtp", "ai_batch_ms", "RTP_AI_BATCH_MS", "0", int_range(0, 200),
            help="caller audio to the AI in messages of this many ms (0: each packet as it "
                 "arrives, the least latency; 40 halves the WebSocket messages for <= 60 ms "
                 "more; see docs/performance.md)"),
    Setting("rtp", "strict_source", "RTP_STRICT_SOURCE", "false", parse_bool,
            help="accept RTP only from the address:port of the SDP (no NAT latching)"),
    Setting("rtp", "relatch", "RTP_RELATCH", "sdp", one_of("never", "sdp", "silence"),
            help="when another source may take over a latched call: never, sdp (only the "
                 "SDP's address), silence (also any, after 2 s without the latched source)"),
    Setting("openai", "key", "OPENAI_API_KEY", None, api_key, aliases=("openai_key",),
            secret=True, help="API key (required unless disabled)"),
    Setting("openai", "url", "OPENAI_URL", "wss://api.openai.com/v1/realtime", url,
            help="Realtime endpoint; ?model= is added"),
    Setting("openai", "model", "OPENAI_API_MODEL", "gpt-realtime-2.1", text),
    Setting("openai", "dialect", "OPENAI_API_DIALECT", "ga", one_of("ga", "beta")),
    Setting("openai", "disable", "OPENAI_DISABLE", "false", parse_bool,
            help="refuse offers (OpenSIPS fails over on it with extra_failover_error)"),
    Setting("openai", "voice", "OPENAI_VOICE", "alloy", one_of(*VOICES)),
    Setting("openai", "instructions", "OPENAI_INSTRUCTIONS", None, optional_text),
    Setting("openai", "welcome_message", "OPENAI_WELCOME_MSG", None, optional_text),
    Setting("openai", "welcome_interruptible", "OPENAI_WELCOME_INTERRUPTIBLE", "true", parse_bool,
            help="false: the caller cannot barge in until the welcome message has played"),
    Setting("openai", "temperature", "OPENAI_TEMPERATURE", "0.8", float_range(0.6, 1.2)),
    Setting("openai", "max_tokens", "OPENAI_MAX_TOKENS", "inf", max_tokens),
    Setting("openai", "turn_detection_type", "OPENAI_TURN_DETECT_TYPE", "server_vad",
            one_of("server_vad", "semantic_vad", "none")),
    Setting("openai", "turn_detection_silence_ms", "OPENAI_TURN_DETECT_SILENCE_MS", "200",
            int_range(0, 10_000)),
    Setting("openai", "turn_detection_threshold", "OPENAI_TURN_DETECT_THRESHOLD", "0.5",
            float_range(0.0, 1.0)),
    Setting("openai", "turn_detection_prefix_ms", "OPENAI_TURN_DETECT_PREFIX_MS", "300",
            int_range(0, 10_000)),
    Setting("openai", "turn_detection_eagerness", "OPENAI_TURN_DETECT_EAGERNESS", "auto",
            one_of("low", "medium", "high", "auto")),
    Setting("openai", "transcription_model", "OPENAI_TRANSCRIPTION_MODEL",
            "gpt-4o-mini-transcribe", text,
            help="model transcribing the caller; 'none' turns caller transcripts off"),
    Setting("openai", "end_call_tool", "OPENAI_END_CALL_TOOL", "true", parse_bool),
    Setting("openai", "dtmf_terminator", "OPENAI_DTMF_TERMINATOR", "#", one_of("#", "*", "none"),
            help="the key that ends a keypad sequence at once (else a 1.5 s pause does)"),
    Setting("openai", "transfer_target", "OPENAI_TRANSFER_TARGET", None, optional_text),
    Setting("openai", "transfer_allow", "OPENAI_TRANSFER_ALLOW", "", word_list),
    Setting("openai", "tools", "OPENAI_TOOLS", "", tool_declarations),
    # Secret: webhook URLs often carry a token; the start-up log shows only <set>/<unset>.
    Setting("openai", "tool_webhook", "OPENAI_TOOL_WEBHOOK", "", optional_http_url, secret=True),
    Setting("openai", "tool_timeout", "OPENAI_TOOL_TIMEOUT", "5", float_range(0.1, 60.0)),
    Setting("openai", "reconnect_timeout", "OPENAI_RECONNECT_TIMEOUT", "20",
            float_range(0.0, 600.0)),
    # The AI link's watchdog: a bound on every phase (docs/reliability.md).
    Setting("openai", "connect_timeout", "OPENAI_CONNECT_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for the TCP connection and the TLS handshake"),
    Setting("openai", "upgrade_timeout", "OPENAI_UPGRADE_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for the server's answer to the WebSocket upgrade"),
    Setting("openai", "session_timeout", "OPENAI_SESSION_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for session.created, and for session.updated after session.update"),
    Setting("openai", "response_timeout", "OPENAI_RESPONSE_TIMEOUT", "10",
            float_range(1.0, 300.0),
            help="seconds the server may stay silent while a response is expected"),
    Setting("openai", "ping_interval", "OPENAI_PING_INTERVAL", "5", float_range(0.0, 300.0),
            help="seconds between keepalive pings; each pong is due before the next ping "
                 "(0 = no keepalive)"),
    Setting("openai", "send_timeout", "OPENAI_SEND_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds the socket may take no output at all while output waits"),
    Setting("openai", "send_buffer_bytes", "OPENAI_SEND_BUFFER_BYTES", "262144",
            int_range(16 * 1024, 16 * 1024 * 1024),
            help="output waiting for the socket past which caller audio is dropped; past 4 "
                 "times it the connection is given up"),
    Setting("openai", "max_message_bytes", "OPENAI_MAX_MESSAGE_BYTES", "1048576",
            int_range(64 * 1024, 16 * 1024 * 1024),
            help="largest server message; a bigger one closes the connection (1009)"),
    Setting("openai", "reconnect_tone", "OPENAI_RECONNECT_TONE", "false", parse_bool,
            help="play a short two-beep cue to the caller when the AI link is lost mid-call"),
    Setting("ng", "shutdown_grace", "NG_SHUTDOWN_GRACE", "30", int_range(0, 3600),
            help="on SIGTERM: seconds for calls to finish (new offers get 'load limit') before "
                 "the rest are hung up through the proxy"),
    Setting("proxy", "type", "PROXY_TYPE", "none",
            one_of("none", "kamailio", "opensips", "webhook"),
            help="how rtpai ends and transfers calls"),
    Setting("proxy", "url", "PROXY_URL", None, optional_http_url,
            help="the proxy's management URL (Kamailio JSON-RPC, OpenSIPS MI) or the webhook"),
    Setting("proxy", "timeout", "PROXY_TIMEOUT", "2", float_range(0.1, 60.0)),
    Setting("proxy", "retries", "PROXY_RETRIES", "2", int_range(0, 10)),
    Setting("proxy", "hangup_timeout", "PROXY_HANGUP_TIMEOUT", "10", float_range(0.1, 600.0),
            help="seconds to wait for the proxy's delete after asking it to end or transfer "
                 "a call; then rtpai ends the call itself"),
    Setting("log", "level", "LOG_LEVEL", "info",
            one_of("debug", "info", "warning", "error", "critical")),
)


PROFILE_PREFIX = "openai:"


@dataclass(frozen=True)
class Config:
    """Validated settings by section; ``explicit`` records which ones the user set.

    ``profiles`` maps a profile name to its complete ``[openai]`` values: the section
    ``[openai:NAME]`` layered over ``[openai]`` (file and environment). An ng offer selects
    one with ``profile=NAME``, so a proxy can give each number its own voice and prompt.
    """

    values: Mapping[str, Mapping[str, Any]]
    explicit: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    def is_set(self, section: str, key: str) -> bool:
        return (section, key) in self.explicit

    def secrets(self) -> list[str]:
        """Every secret value configured, for the log redaction (ctl/logs.py): the secret
        settings of every section and profile, and a password written into a proxy URL."""
        found: list[str] = []
        for setting in SETTINGS:
            if not setting.secret:
                continue
            values = [self.values[setting.section][setting.key]]
            if setting.section == "openai":
                values += [profile[setting.key] for profile in self.profiles.values()]
            for value in values:
                if isinstance(value, str):
                    found.append(value)
                    found.extend(_url_secrets(value))
        found.extend(_url_secrets(self.values["proxy"]["url"]))
        return found

    def __repr__(self) -> str:
        # Secrets never reach logs: a Config printed anywhere shows only whether a key is set.
        shown = {
            s.label: ("<set>" if self.values[s.section][s.key] else "<unset>")
            if s.secret
            else self.values[s.section][s.key]
            for s in SETTINGS
        }
        return f"Config({shown})"


def _url_secrets(url: str | None) -> list[str]:
    """The password of ``scheme://user:password@host`` and a query string (webhook tokens)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    return [part for part in (password, parts.query) if part]


def _read_ini(path: str | None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise ConfigError(f"config file {path} is not valid INI: {exc}") from None
    return parser


def _check_known_keys(ini: configparser.ConfigParser) -> None:
    """A misspelt key would silently keep its default: refuse it, naming the known ones."""
    known: dict[str, set[str]] = {}
    for setting in SETTINGS:
        known.setdefault(setting.section, set()).update((setting.key, *setting.aliases))
    for section in ini.sections():
        base = "openai" if section.startswith(PROFILE_PREFIX) else section
        if base not in known:
            continue  # sections of other tools may share the file
        for key in ini.options(section):
            if key not in known[base]:
                raise ConfigError(
                    f"[{section}] {key}: unknown setting (known: {', '.join(sorted(known[base]))})"
                )


def _profiles(
    ini: configparser.ConfigParser, base: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    openai_settings = [s for s in SETTINGS if s.section == "openai"]
    profiles: dict[str, dict[str, Any]] = {}
    for section in ini.sections():
        if not section.startswith(PROFILE_PREFIX):
            continue
        name = section[len(PROFILE_PREFIX):].strip()
        if not name:
            raise ConfigError(f"[{section}]: a profile needs a name, e.g. [openai:sales]")
        values = dict(base)
        for setting in openai_settings:
            for key in (setting.key, *setting.aliases):
                if ini.has_option(section, key):
                    raw = ini.get(section, key)
                    try:
                        values[setting.key] = setting.parse(raw)
                    except ValueError as exc:
                        shown = "" if setting.secret else f" (got {raw!r})"
                        raise ConfigError(f"[{section}] {setting.key}: {exc}{shown}") from None
                    break
        profiles[name] = values
    return profiles


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the INI file, overlay the environment, validate. Raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    ini = _read_ini(path)
    _check_known_keys(ini)
    values: dict[str, dict[str, Any]] = {}
    explicit: set[tuple[str, str]] = set()
    for setting in SETTINGS:
        raw = setting.default
        source = "default"
        if ini.has_section(setting.section):
            for name in (setting.key, *setting.aliases):
                if ini.has_option(setting.section, name):
                    raw, source = ini.get(setting.section, name), "file"
                    break
        if setting.env in environ:
            raw, source = environ[setting.env], "environment"
        if source != "default":
            explicit.add((setting.section, setting.key))
        try:
            value = setting.parse(raw) if raw is not None else None
        except ValueError as exc:
            # The offending value is echoed only for settings that are not secret.
            shown = "" if setting.secret else f" (got {raw!r})"
            raise ConfigError(f"{setting.label}: {exc}{shown}") from None
        values.setdefault(setting.section, {})[setting.key] = value

    proxy = values["proxy"]
    if proxy["type"] != "none" and not proxy["url"]:
        raise ConfigError(f"[proxy] url / PROXY_URL: required with [proxy] type = {proxy['type']}")
    rtp = values["rtp"]
    if rtp["min_port"] > rtp["max_port"] - 1:
        raise ConfigError(
            "[rtp] min_port / RTP_MIN_PORT must be below [rtp] max_port / RTP_MAX_PORT "
            "(a call needs an even RTP port and the odd RTCP port above it)"
        )
    if rtp["ip"] is None:
        if ipaddress.ip_address(rtp["bind_ip"]).is_unspecified:
            raise ConfigError(
                "[rtp] ip / RTP_IP: required when [rtp] bind_ip is a wildcard address "
                "(the SDP answer must carry an address the caller can reach)"
            )
        rtp["ip"] = rtp["bind_ip"]
    else:
        try:
            rtp["ip"] = ip_address(rtp["ip"])
        except ValueError as exc:
            raise ConfigError(f"[rtp] ip / RTP_IP: {exc} (got {rtp['ip']!r})") from None
    _check_tools(values["openai"])
    return Config(
        values=values, explicit=frozenset(explicit), profiles=_profiles(ini, values["openai"])
    )


def _check_tools(openai: dict[str, Any]) -> None:
    """Checks across the tool settings, which no single parser can make."""
    if openai["tools"] and not openai["tool_webhook"]:
        raise ConfigError(
            "[openai] tool_webhook / OPENAI_TOOL_WEBHOOK: required when [openai] tools / "
            "OPENAI_TOOLS declares tools (their calls are forwarded to it)"
        )
