"""The OpenAI flavor of rtpai's AI session: the Realtime API, and GPT-Live (openai_flavor/live/).

Importing the package registers it as ``openai`` (media/flavor.py): its ``[openai]`` rows, its
settings and its session factory. The control plane reaches it only through that registry.
``[openai] api`` (and each profile's) picks the protocol a call's session speaks.
"""

import dataclasses

from media import flavor as _registry
from openai_flavor.live.session import LiveSession
from openai_flavor.live.settings import LIVE_SETTINGS, LiveSettings, check_live
from openai_flavor.mcp import MCP_SETTINGS, McpServer, build_server
from openai_flavor.pricing import PRICING_SETTINGS, PriceTable
from openai_flavor.session import RealtimeSession
from openai_flavor.settings import OPENAI_SETTINGS, RealtimeSettings, check_tools


def _configure(values, explicit: frozenset[str],
               sections=None) -> RealtimeSettings | LiveSettings:
    settings = RealtimeSettings.from_config(values, explicit=explicit)
    if sections is not None:
        # [pricing] is the flavor's too, but one table for all profiles.
        settings = dataclasses.replace(settings,
                                       prices=PriceTable.from_config(sections["pricing"]))
    if values["api"] == "live":
        return LiveSettings.from_config(values, settings, explicit)
    return settings


def _check(values, label) -> None:
    check_tools(values, label)
    check_live(values, label)


def _new_session(settings, bridge, poller) -> RealtimeSession:
    """The call's session, in the protocol its settings name."""
    if isinstance(settings, LiveSettings):
        return LiveSession(settings, bridge, poller)
    return RealtimeSession(settings, bridge, poller)


FLAVOR = _registry.register(_registry.Flavor(
    name="openai",
    settings=(*OPENAI_SETTINGS, *LIVE_SETTINGS, *PRICING_SETTINGS),
    configure=_configure,
    check=_check,
    new_session=_new_session,
    # [mcp:NAME]: remote MCP servers the Realtime server calls for the model.
    named=(_registry.NamedSections("mcp", MCP_SETTINGS, build_server, McpServer.secrets),),
))
