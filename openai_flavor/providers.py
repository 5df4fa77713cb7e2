"""The servers that speak OpenAI's Realtime protocol, and how each differs: one table.

``[openai] provider = openai | azure | xai`` picks a row; the rest of rtpai reads the row and
never the provider's name. What each row says, and where it comes from (docs/openai.md has the
same table for users, with what was and was not verified against each provider's public docs):

==============  ======================  =========================  ==========================
                openai                  azure                      xai
==============  ======================  =========================  ==========================
URL             wss://api.openai.com/   the resource's own:        wss://api.x.ai/v1/realtime
                v1/realtime             wss://R.openai.azure.com/
                                        openai/v1/realtime
model in URL    ?model=MODEL            ?model=DEPLOYMENT (GA);    ?model=MODEL, only when
                                        with api_version (the      model is set
                                        preview path /openai/
                                        realtime): ?api-version=
                                        V&deployment=DEPLOYMENT
auth header     Authorization: Bearer   api-key: KEY (default), or Authorization: Bearer
                                        Bearer (an Entra token)
session shape   GA (or beta)            GA (or beta)               xAI's: voice and
                                                                   turn_detection at the top,
                                                                   audio.{input,output}.format
                                                                   with its rate
voices          alloy ... cedar         as OpenAI                  Ara, Eve, Leo, Rex, Sal
truncate        conversation.item.      same                       not documented: not sent
                truncate                                           (the server stops itself)
first event     session.created         same                       conversation.created
==============  ======================  =========================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# OpenAI's voices (reference: audio.output.voice); Azure serves the same models.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin",
                 "cedar")
# xAI's documented voices, spelt as its docs spell them (the configuration takes any case).
XAI_VOICES = ("Ara", "Eve", "Leo", "Rex", "Sal")


@dataclass(frozen=True)
class Provider:
    name: str
    default_url: str | None  # None: the user's own endpoint is required (Azure's resource)
    voices: tuple[str, ...]
    default_voice: str | None  # None: voice is sent only when configured (the server's own)
    default_auth: str  # "bearer" or "api-key"
    shape: str  # "openai" (the ga/beta dialects) or "xai"
    truncate: bool  # conversation.item.truncate is part of its protocol
    # Session fields only OpenAI's own GA server documents (sent to it and to Azure).
    ga_extras: bool


PROVIDERS = {
    "openai": Provider("openai", "wss://api.openai.com/v1/realtime", OPENAI_VOICES, "alloy",
                       "bearer", "openai", truncate=True, ga_extras=True),
    "azure": Provider("azure", None, OPENAI_VOICES, "alloy", "api-key", "openai",
                      truncate=True, ga_extras=True),
    "xai": Provider("xai", "wss://api.x.ai/v1/realtime", XAI_VOICES, None, "bearer", "xai",
                    truncate=False, ga_extras=False),
}


def voice_name(provider: Provider, configured: str | None) -> str | None:
    """The voice to send, spelt as the provider documents it; None: send none."""
    if configured is None:
        return provider.default_voice
    return next(v for v in provider.voices if v.lower() == configured.lower())


def session_url(provider: Provider, url: str, model: str | None,
                api_version: str | None) -> str:
    """The endpoint to open, with the model (or Azure's deployment) in the query; a query
    the user already wrote into ``url`` wins over ours."""
    parts = urlsplit(url)
    given = {key for key, _ in parse_qsl(parts.query)}
    query: dict[str, str] = {}
    if provider.name == "azure" and api_version:
        query = {"api-version": api_version, "deployment": model or ""}
    elif model:
        query = {"model": model}
    extra = urlencode({k: v for k, v in query.items() if k not in given})
    joined = "&".join(q for q in (parts.query, extra) if q)
    return urlunsplit(parts._replace(query=joined))


def auth_headers(provider: Provider, auth: str | None, key: str | None,
                 dialect: str) -> list[tuple[str, str]]:
    """The upgrade's credentials (and the beta interface's header, on OpenAI's own server)."""
    if (auth or provider.default_auth) == "api-key":
        headers = [("api-key", key or "")]
    else:
        headers = [("Authorization", f"Bearer {key}")]
    if dialect == "beta" and provider.name == "openai":
        headers.append(("OpenAI-Beta", "realtime=v1"))
    return headers
