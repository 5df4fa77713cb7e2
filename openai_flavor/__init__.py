"""The OpenAI Realtime flavor of rtpai's AI session.

Importing the package registers it as ``openai`` (media/flavor.py): its ``[openai]`` rows, its
settings and its session factory. The control plane reaches it only through that registry.
"""

from media import flavor as _registry
from openai_flavor.mcp import MCP_SETTINGS, McpServer, build_server
from openai_flavor.session import RealtimeSession
from openai_flavor.settings import OPENAI_SETTINGS, RealtimeSettings, check_tools


def _configure(values, explicit: frozenset[str]) -> RealtimeSettings:
    return RealtimeSettings.from_config(values, explicit=explicit)


FLAVOR = _registry.register(_registry.Flavor(
    name="openai",
    settings=OPENAI_SETTINGS,
    configure=_configure,
    check=check_tools,
    new_session=RealtimeSession,
    # [mcp:NAME]: remote MCP servers the Realtime server calls for the model.
    named=(_registry.NamedSections("mcp", MCP_SETTINGS, build_server, McpServer.secrets),),
))
