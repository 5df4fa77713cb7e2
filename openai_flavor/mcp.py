"""Native MCP tools: ``[mcp:NAME]`` sections, each a remote MCP server the model calls itself.

The Realtime server (OpenAI's GA interface) connects to the MCP server, lists its tools and
runs the model's calls; rtpai only declares it in ``session.update`` (a tool of type ``mcp``).
A section or profile offers the servers its ``mcp`` row names::

    [mcp:crm]
    server_url = https://mcp.example.com/sse
    allowed_tools = lookup_customer, open_ticket
    headers = Authorization=CRM_MCP_TOKEN      # the header's value from $CRM_MCP_TOKEN
    [openai]
    mcp = crm

Header values come from the environment (read at start-up, a missing variable is an error)
and are secrets: never logged, never in an error message. ``require_approval`` is ``never``:
during a phone call nobody can approve a tool call, and a call left waiting for an approval
would leave the caller in silence, so any other value is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from media.settings import Setting, one_of, optional_text, word_list

# OpenAI's server_label rule is not published; the label is the section's name, so keep it to
# what a function name may hold (letters, digits, _ and -).
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# An HTTP header name (RFC 9110 token) and an environment variable name.
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def https_url(value: str) -> str:
    value = value.strip()
    if not value.startswith(("https://", "http://")):
        raise ValueError("expected an https:// (or http://) URL")
    return value


def header_sources(value: str) -> tuple[tuple[str, str], ...]:
    """``Header=ENV_VAR, ...``: each header's value is read from the environment variable."""
    pairs = []
    for part in word_list(value):
        header, _, env = part.partition("=")
        header, env = header.strip(), env.strip()
        if not _HEADER.match(header) or not _ENV.match(env):
            raise ValueError("expected Header-Name=ENV_VARIABLE, comma-separated")
        pairs.append((header, env))
    return tuple(pairs)


MCP_SETTINGS: tuple[Setting, ...] = (
    # Secret: a server URL may carry a token (the start-up log shows <set>/<unset>).
    Setting("mcp", "server_url", "", None, https_url, secret=True,
            help="the MCP server's URL (required)"),
    Setting("mcp", "description", "", None, optional_text,
            help="what the server offers, for the model"),
    Setting("mcp", "allowed_tools", "", "", word_list,
            help="the server's tools the model may call (empty: all it lists)"),
    Setting("mcp", "headers", "", "", header_sources,
            help="Header=ENV_VAR pairs: headers sent to the MCP server, their values read "
                 "from the environment"),
    Setting("mcp", "require_approval", "", "never", one_of("never"),
            help="only never: nobody can approve a tool call during a phone call"),
)


@dataclass(frozen=True)
class McpServer:
    label: str
    server_url: str = field(repr=False)
    description: str | None = None
    allowed_tools: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # values: secrets

    def tool(self) -> dict[str, Any]:
        """The GA ``session.tools`` entry."""
        tool: dict[str, Any] = {"type": "mcp", "server_label": self.label,
                                "server_url": self.server_url, "require_approval": "never"}
        if self.description:
            tool["server_description"] = self.description
        if self.allowed_tools:
            tool["allowed_tools"] = list(self.allowed_tools)
        if self.headers:
            tool["headers"] = dict(self.headers)
        return tool

    def secrets(self) -> list[str]:
        return [self.server_url, *self.headers.values()]


def build_server(name: str, values: Mapping[str, Any], environ: Mapping[str, str]) -> McpServer:
    """One ``[mcp:NAME]`` section's validated values -> the server; ValueError says why."""
    if not _LABEL.match(name):
        raise ValueError("the name must be 1-64 letters, digits, _ or -")
    if not values["server_url"]:
        raise ValueError("server_url: required")
    headers = {}
    for header, env in values["headers"]:
        if env not in environ:
            raise ValueError(f"headers: the environment variable {env} is not set")
        headers[header] = environ[env]
    return McpServer(name, values["server_url"], values["description"],
                     values["allowed_tools"], headers)
