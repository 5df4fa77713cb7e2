"""Configuration: an INI file (``--config``) and the environment, the environment winning.

Every setting is declared once, by the plane it belongs to, with its section, key (and aliases),
the environment variable that overrides it, its default and its parser: ``[ng]``, ``[proxy]``
and ``[log]`` here, ``[rtp]`` in media/settings.py, the AI flavor's section in its package
(found through the flavor registry, media/flavor.py). :data:`SETTINGS` is all of them.
Start-up validates all of them and names the setting (``[openai] temperature /
OPENAI_TEMPERATURE``) in every error, so a typo never surfaces as a failed call hours later.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# The one place ctl/ names an AI flavor: importing its package registers it (media/flavor.py).
import openai_flavor  # noqa: F401
from ctl.acl import parse_networks
from ctl.logs import LEVELS, LOG_FORMATS, LOGGERS, logger_levels
from media import flavor as flavors
from media.settings import (
    RECORDING_SETTINGS,
    RTP_SETTINGS,
    Setting,
    float_range,
    int_range,
    ip_address,
    one_of,
    optional_http_url,
    optional_text,
)

# The AI flavor this daemon runs, by its registry name (also its section, [openai]).
FLAVOR = "openai"


class ConfigError(Exception):
    """A setting that is missing or out of range; the message names it and its allowed values."""


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


def optional_host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` as :func:`host_port`, or empty (the feature is off)."""
    return host_port(text) if text.strip() else None


MAX_WORKERS = 256


def worker_count(text: str) -> int:
    """``[ng] workers``: 1..MAX_WORKERS, or ``auto``: the CPUs this process may run on
    (``sched_getaffinity``: a container's or taskset's limit, not the machine's count)."""
    value = text.strip().lower()
    if value == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
    try:
        return int_range(1, MAX_WORKERS)(value)
    except ValueError:
        raise ValueError(f"expected 'auto' or an integer from 1 to {MAX_WORKERS}") from None


_NG_SETTINGS: tuple[Setting, ...] = (
    Setting("ng", "listen", "NG_LISTEN", "127.0.0.1:2223", host_port,
            help="UDP address of the ng control socket (on a wildcard address each reply "
                 "leaves from the address its request reached, as the proxies expect)"),
    Setting("ng", "allow", "NG_ALLOW", "", parse_networks,
            help="addresses/CIDRs allowed to send ng commands, comma- or space-separated "
                 "(empty: anyone who reaches the socket; others are dropped and counted)"),
    Setting("ng", "max_sessions", "NG_MAX_SESSIONS", "0", int_range(0, 1_000_000),
            help="concurrent calls before offers get 'load limit' (0 = unlimited); with "
                 "workers, the host's calls"),
    Setting("ng", "workers", "NG_WORKERS", "1", worker_count,
            help="processes serving calls behind the one ng address: a number, or 'auto' "
                 "(the CPUs rtpai may run on); 1 = one process, no front (ctl/front.py)"),
)
_CONTROL_SETTINGS: tuple[Setting, ...] = (
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
    Setting("log", "level", "LOG_LEVEL", "info", one_of(*LEVELS)),
    Setting("log", "format", "LOG_FORMAT", "text", one_of(*LOG_FORMATS),
            help="text: one line per record, as before; json: one JSON object per line, "
                 "with call_id and from_tag fields on every line about a call"),
    Setting("log", "levels", "LOG_LEVELS", "", logger_levels,
            help="levels of single loggers over [log] level, e.g. "
                 "'media=debug, ng=warning' (loggers: " + ", ".join(LOGGERS) + ")"),
    Setting("metrics", "listen", "METRICS_LISTEN", "", optional_host_port,
            help="TCP address of the Prometheus /metrics endpoint, e.g. 127.0.0.1:9105 "
                 "(empty: off)"),
)

# Call detail records (ctl/cdr.py).
_CDR_SETTINGS: tuple[Setting, ...] = (
    Setting("cdr", "file", "CDR_FILE", None, optional_text,
            help="JSON-lines file each ended call's record is appended to"),
    # Secret: a collector's URL often carries a token; the start-up log shows only <set>.
    Setting("cdr", "url", "CDR_URL", None, optional_http_url, secret=True,
            help="http(s) URL each ended call's record is POSTed to (JSON)"),
    Setting("cdr", "timeout", "CDR_TIMEOUT", "5", float_range(0.1, 60.0),
            help="seconds for one POST attempt"),
    Setting("cdr", "retries", "CDR_RETRIES", "3", int_range(0, 10),
            help="POST attempts after the first, with doubling back-off from 0.5 s"),
    Setting("cdr", "queue", "CDR_QUEUE", "1000", int_range(1, 1_000_000),
            help="records waiting per destination; past it new ones are dropped and counted"),
    Setting("cdr", "drain_timeout", "CDR_DRAIN_TIMEOUT", "5", float_range(0.0, 600.0),
            help="seconds at shutdown for the records still queued"),
)

# In the order the start-up log and the reload's list of changes show them.
SETTINGS: tuple[Setting, ...] = (
    *_NG_SETTINGS, *RTP_SETTINGS, *flavors.get(FLAVOR).settings, *_CONTROL_SETTINGS,
    *RECORDING_SETTINGS, *_CDR_SETTINGS,
)


PROFILE_PREFIX = f"{FLAVOR}:"


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
    # The flavor's named sections as built: prefix -> name -> object ([mcp:NAME]).
    named: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    def secrets(self) -> list[str]:
        """Every secret value configured, for the log redaction (ctl/logs.py): the secret
        settings of every section and profile, and a password written into a proxy URL."""
        found: list[str] = []
        for setting in SETTINGS:
            if not setting.secret:
                continue
            values = [self.values[setting.section][setting.key]]
            if setting.section == FLAVOR:
                values += [profile[setting.key] for profile in self.profiles.values()]
            for value in values:
                if isinstance(value, str):
                    found.append(value)
                    found.extend(_url_secrets(value))
        found.extend(_url_secrets(self.values["proxy"]["url"]))
        for kind in flavors.get(FLAVOR).named:
            for built in self.named.get(kind.prefix, {}).values():
                for value in kind.secrets(built):
                    found.append(value)
                    found.extend(_url_secrets(value))
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
    for kind in flavors.get(FLAVOR).named:
        known[kind.prefix + ":"] = {setting.key for setting in kind.settings}
    for section in ini.sections():
        base = FLAVOR if section.startswith(PROFILE_PREFIX) else section
        prefix, colon, _ = section.partition(":")
        if colon and prefix + ":" in known:
            base = prefix + ":"
        if base not in known:
            continue  # sections of other tools may share the file
        for key in ini.options(section):
            if key not in known[base]:
                raise ConfigError(
                    f"[{section}] {key}: unknown setting (known: {', '.join(sorted(known[base]))})"
                )


def _named(ini: configparser.ConfigParser,
           environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every ``[PREFIX:NAME]`` section of the flavor's named kinds, validated and built."""
    named: dict[str, dict[str, Any]] = {}
    for kind in flavors.get(FLAVOR).named:
        built = named.setdefault(kind.prefix, {})
        for section in ini.sections():
            prefix, colon, name = section.partition(":")
            if prefix != kind.prefix or not colon:
                continue
            values = {}
            for setting in kind.settings:
                raw = ini.get(section, setting.key, fallback=setting.default)
                try:
                    values[setting.key] = None if raw is None else setting.parse(raw)
                except ValueError as exc:
                    shown = "" if setting.secret else f" (got {raw!r})"
                    raise ConfigError(f"[{section}] {setting.key}: {exc}{shown}") from None
            try:
                built[name.strip()] = kind.build(name.strip(), values, environ)
            except ValueError as exc:
                raise ConfigError(f"[{section}] {exc}") from None
    return named


def _resolve_named(values: dict[str, Any], named: Mapping[str, Mapping[str, Any]],
                   label: str) -> None:
    """The flavor row named like a kind of section lists names: it gets the built objects."""
    for prefix, built in named.items():
        names = values.get(prefix)
        if not names or not isinstance(names[0], str):
            continue  # empty, or already resolved (a profile's copy of [openai]'s)
        missing = [name for name in names if name not in built]
        if missing:
            raise ConfigError(f"{label} {prefix}: no [{prefix}:{missing[0]}] section")
        values[prefix] = tuple(built[name] for name in names)


def _profiles(
    ini: configparser.ConfigParser, base: Mapping[str, Any],
    named: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, Any]]:
    flavor = flavors.get(FLAVOR)
    profiles: dict[str, dict[str, Any]] = {}
    for section in ini.sections():
        if not section.startswith(PROFILE_PREFIX):
            continue
        name = section[len(PROFILE_PREFIX):].strip()
        if not name:
            raise ConfigError(f"[{section}]: a profile needs a name, e.g. [openai:sales]")
        values = dict(base)
        for setting in flavor.settings:
            if setting.section != FLAVOR:
                continue  # its other sections are not per profile
            for key in (setting.key, *setting.aliases):
                if ini.has_option(section, key):
                    raw = ini.get(section, key)
                    try:
                        values[setting.key] = setting.parse(raw)
                    except ValueError as exc:
                        shown = "" if setting.secret else f" (got {raw!r})"
                        raise ConfigError(f"[{section}] {setting.key}: {exc}{shown}") from None
                    break
        _resolve_named(values, named, f"[{section}]")
        try:
            flavor.check(values, lambda key, section=section: f"[{section}] {key}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
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
    pairs = (rtp["max_port"] - rtp["min_port"] - (rtp["min_port"] & 1) + 1) // 2
    if values["ng"]["workers"] > pairs:
        raise ConfigError(
            f"[ng] workers / NG_WORKERS: {values['ng']['workers']} workers need at least as "
            f"many RTP port pairs; [rtp] min_port..max_port has {pairs}"
        )
    metrics_listen = values["metrics"]["listen"]
    if metrics_listen is not None and metrics_listen[1] + values["ng"]["workers"] - 1 > 65535:
        # Worker i serves its metrics on port + i (ctl/workers.py): all of them must exist.
        raise ConfigError(
            f"[metrics] listen / METRICS_LISTEN: {values['ng']['workers']} workers serve "
            f"metrics on port {metrics_listen[1]} and the ports above it, past 65535")
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
    recording = values["recording"]
    if recording["mode"] != "off" and not (os.path.isdir(recording["dir"])
                                           and os.access(recording["dir"], os.W_OK | os.X_OK)):
        raise ConfigError(
            f"[recording] dir / RECORDING_DIR: {recording['dir']!r} is not a writable directory "
            f"(required with [recording] mode = {recording['mode']})")
    cdr_file = values["cdr"]["file"]
    if cdr_file and not os.path.isdir(os.path.dirname(os.path.abspath(cdr_file))):
        raise ConfigError(f"[cdr] file / CDR_FILE: the directory of {cdr_file!r} does not exist")
    flavor = flavors.get(FLAVOR)
    labels = {setting.key: setting.label for setting in flavor.settings
              if setting.section == FLAVOR}
    named = _named(ini, environ)
    _resolve_named(values[FLAVOR], named, f"[{FLAVOR}]")
    try:
        flavor.check(values[FLAVOR], labels.__getitem__)  # across rows, which no parser can
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        values=values, explicit=frozenset(explicit),
        profiles=_profiles(ini, values[FLAVOR], named), named=named,
    )


