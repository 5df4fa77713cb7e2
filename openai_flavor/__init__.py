"""The OpenAI Realtime flavor of rtpai's AI session.

Importing the package registers it as ``openai`` (media/flavor.py): its ``[openai]`` rows, its
settings and its session factory. The control plane reaches it only through that registry.
"""

import dataclasses

from media import flavor as _registry
from openai_flavor.mcp import MCP_SETTINGS, McpServer, build_server
from openai_flavor.pricing import PRICING_SETTINGS, PriceTable
from openai_flavor.session import RealtimeSession
from openai_flavor.settings import OPENAI_SETTINGS, RealtimeSettings, check_tools


def _configure(values, explicit: frozenset[str], sections=None) -> RealtimeSettings:
    settings = RealtimeSettings.from_config(values, explicit=explicit)
    if sections is None:
        return settings
    # [pricing] is the flavor's too, but one table for all profiles.
    return dataclasses.replace(settings, prices=PriceTable.from_config(sections["pricing"]))


FLAVOR = _registry.register(_registry.Flavor(
    name="openai",
    settings=OPENAI_SETTINGS + PRICING_SETTINGS,
    configure=_configure,
    check=check_tools,
    new_session=RealtimeSession,
    # [mcp:NAME]: remote MCP servers the Realtime server calls for the model.
    named=(_registry.NamedSections("mcp", MCP_SETTINGS, build_server, McpServer.secrets),),
))
