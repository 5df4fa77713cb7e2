"""What a call's tokens cost: the ``[pricing]`` table per model and the cost of a usage block.

OpenAI bills the Realtime API per token, at different prices for audio and text and for
fresh, cached and generated tokens (USD per 1M tokens). The defaults below are OpenAI's list
prices for the Realtime models as published in December 2026 (OpenAI's API pricing page,
models gpt-realtime-2.1 and gpt-realtime-2.1-mini); they change, and contracts differ, so
``[pricing] models`` adds or replaces models and ``[pricing] as_of`` dates those prices.
Every cost carries the date of the prices it used, so a record read a year later says what it
was computed from. The cost is an estimate: the caller's transcription (billed separately,
by its own model) is not included.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from media.settings import Setting

log = logging.getLogger("rtpai.pricing")

PER_TOKENS = 1_000_000  # prices are per million tokens


@dataclass(frozen=True)
class ModelPrices:
    """USD per 1M tokens, and the day these prices were taken."""

    audio_input: float
    audio_cached: float
    audio_output: float
    text_input: float
    text_cached: float
    text_output: float
    as_of: str  # YYYY-MM-DD


DEFAULT_PRICES_AS_OF = "2026-12-01"
DEFAULT_PRICES: dict[str, ModelPrices] = {
    "gpt-realtime-2.1": ModelPrices(32, 0.40, 64, 4, 0.40, 24, DEFAULT_PRICES_AS_OF),
    "gpt-realtime-2.1-mini": ModelPrices(10, 0.30, 20, 0.60, 0.06, 2.40, DEFAULT_PRICES_AS_OF),
}

# A dated snapshot of a model ("gpt-realtime-2.1-2026-10-01") is priced as the model.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_ENTRY = re.compile(
    r"^\s*(?P<model>[A-Za-z0-9._:-]+)\s*:\s*audio\s+(?P<audio>[^,]+?)\s*,\s*text\s+(?P<text>.+?)\s*$"
)


def _three_prices(text: str, what: str) -> tuple[float, float, float]:
    parts = text.split("/")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(not 0 <= value < 10_000 for value in values):
        raise ValueError(f"{what}: expected INPUT/CACHED/OUTPUT USD per 1M tokens, e.g. "
                         "32/0.40/64")
    return values  # type: ignore[return-value]


def parse_models(value: str, as_of: str = DEFAULT_PRICES_AS_OF) -> dict[str, ModelPrices]:
    """``MODEL: audio IN/CACHED/OUT, text IN/CACHED/OUT; ...`` (USD per 1M tokens)."""
    models: dict[str, ModelPrices] = {}
    for entry in value.replace("\n", ";").split(";"):
        if not entry.strip():
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"cannot read {entry.strip()[:60]!r}: expected 'MODEL: audio "
                             "IN/CACHED/OUT, text IN/CACHED/OUT', entries separated by ';'")
        model = match["model"]
        audio = _three_prices(match["audio"], model + " audio")
        text = _three_prices(match["text"], model + " text")
        models[model] = ModelPrices(*audio, *text, as_of=as_of)
    return models


def parse_date(value: str) -> str:
    try:
        return datetime.date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise ValueError("expected a date, YYYY-MM-DD") from None


def models_text(value: str) -> str:
    """Checked as the table will read it (with its date, once both rows are read)."""
    parse_models(value)
    return value


PRICING_SETTINGS: tuple[Setting, ...] = (
    Setting("pricing", "models", "PRICING_MODELS", "", models_text,
            help="prices per model, added to or replacing the defaults: 'MODEL: audio "
                 "IN/CACHED/OUT, text IN/CACHED/OUT; ...' in USD per 1M tokens"),
    Setting("pricing", "as_of", "PRICING_AS_OF", DEFAULT_PRICES_AS_OF, parse_date,
            help="the date of the prices in [pricing] models (YYYY-MM-DD), shown with every "
                 "cost"),
)


class PriceTable:
    """The prices rtpai knows; :meth:`cost` of a session's usage. One per configuration: an
    unknown model is logged once per table (a reload builds a new one)."""

    def __init__(self, models: Mapping[str, ModelPrices]) -> None:
        self.models = dict(models)
        self._unknown_logged: set[str] = set()

    @classmethod
    def defaults(cls) -> PriceTable:
        return cls(DEFAULT_PRICES)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> PriceTable:
        return cls({**DEFAULT_PRICES, **parse_models(section["models"], section["as_of"])})

    def prices_for(self, model: str) -> ModelPrices | None:
        prices = self.models.get(model)
        if prices is None:
            prices = self.models.get(_SNAPSHOT_SUFFIX.sub("", model))
        if prices is None and model not in self._unknown_logged:
            self._unknown_logged.add(model)
            log.warning("no price for model %r: its calls show no cost (add it to "
                        "[pricing] models)", model[:80])
        return prices

    def cost(self, model: str, usage: Mapping[str, Any]) -> dict[str, Any] | None:
        """``{"usd", "usd micros", "model", "prices_as_of"}`` for a session's summed usage
        (the shape of ``response.done``'s), or None when the model has no price."""
        prices = self.prices_for(model)
        if prices is None:
            return None
        usd = usage_cost(prices, usage)
        # bencode, the proxies' encoding of the ng reply, has no floats (they are rounded to
        # integers): the same figure in millionths of a dollar survives it.
        return {"usd": round(usd, 6), "usd micros": round(usd * 1_000_000), "model": model,
                "prices_as_of": prices.as_of}


def usage_cost(prices: ModelPrices, usage: Mapping[str, Any]) -> float:
    """USD for ``usage``. Cached input tokens are part of the input counts and billed at the
    cached price; without the per-kind split of cached tokens (older servers), they are
    split between text and audio in proportion to the input."""
    given = usage.get("input_token_details") or {}
    taken = usage.get("output_token_details") or {}
    text_in = _number(given.get("text_tokens"))
    audio_in = _number(given.get("audio_tokens"))
    cached = _number(given.get("cached_tokens"))
    split = given.get("cached_tokens_details")
    if isinstance(split, Mapping):
        cached_text = _number(split.get("text_tokens"))
        cached_audio = _number(split.get("audio_tokens"))
    else:
        total_in = text_in + audio_in
        cached_text = cached * text_in / total_in if total_in else 0.0
        cached_audio = cached - cached_text
    cached_text, cached_audio = min(cached_text, text_in), min(cached_audio, audio_in)
    dollars = (
        (text_in - cached_text) * prices.text_input
        + cached_text * prices.text_cached
        + (audio_in - cached_audio) * prices.audio_input
        + cached_audio * prices.audio_cached
        + _number(taken.get("text_tokens")) * prices.text_output
        + _number(taken.get("audio_tokens")) * prices.audio_output
    )
    return dollars / PER_TOKENS


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0
