"""The price table (openai_flavor/pricing.py): defaults, the [pricing] rows, a usage's cost."""

from __future__ import annotations

import logging

import pytest

from ctl.config import ConfigError, load_config
from openai_flavor.pricing import DEFAULT_PRICES_AS_OF, PriceTable, parse_models

# Two responses' worth, as the session sums them (openai_flavor/events.py add_usage).
USAGE = {
    "input_tokens": 1_500_000, "output_tokens": 300_000, "total_tokens": 1_800_000,
    "input_token_details": {"text_tokens": 500_000, "audio_tokens": 1_000_000,
                            "cached_tokens": 600_000,
                            "cached_tokens_details": {"text_tokens": 100_000,
                                                      "audio_tokens": 500_000}},
    "output_token_details": {"text_tokens": 100_000, "audio_tokens": 200_000},
}


def table(**env: str) -> PriceTable:
    return PriceTable.from_config(load_config(None, environ=env)["pricing"])


def test_the_default_prices_are_openais_published_ones_with_their_date():
    cost = table().cost("gpt-realtime-2.1", USAGE)
    # text: 0.4M fresh x $4 + 0.1M cached x $0.40 + 0.1M out x $24;
    # audio: 0.5M fresh x $32 + 0.5M cached x $0.40 + 0.2M out x $64.
    expected = 0.4 * 4 + 0.1 * 0.40 + 0.1 * 24 + 0.5 * 32 + 0.5 * 0.40 + 0.2 * 64
    assert cost == {"usd": pytest.approx(expected), "usd micros": round(expected * 1e6),
                    "model": "gpt-realtime-2.1", "prices_as_of": DEFAULT_PRICES_AS_OF}
    mini = table().cost("gpt-realtime-2.1-mini", USAGE)["usd"]
    assert mini == pytest.approx(0.4 * 0.6 + 0.1 * 0.06 + 0.1 * 2.4 + 0.5 * 10 + 0.5 * 0.3
                                 + 0.2 * 20)


def test_without_the_cached_split_cached_tokens_follow_the_input_mix():
    usage = {"input_token_details": {"text_tokens": 250_000, "audio_tokens": 750_000,
                                     "cached_tokens": 400_000}}
    cost = table().cost("gpt-realtime-2.1", usage)["usd"]
    assert cost == pytest.approx(0.15 * 4 + 0.1 * 0.4 + 0.45 * 32 + 0.3 * 0.4)


def test_a_dated_snapshot_is_priced_as_its_model_and_an_unknown_model_is_logged_once(caplog):
    prices = table()
    assert prices.cost("gpt-realtime-2.1-2026-10-01", USAGE) == prices.cost(
        "gpt-realtime-2.1", USAGE) | {"model": "gpt-realtime-2.1-2026-10-01"}
    with caplog.at_level(logging.WARNING, logger="rtpai.pricing"):
        assert prices.cost("someone-elses-model", USAGE) is None
        assert prices.cost("someone-elses-model", USAGE) is None
    assert [r.getMessage() for r in caplog.records] == [
        "no price for model 'someone-elses-model': its calls show no cost (add it to "
        "[pricing] models)"]


def test_configured_prices_add_models_and_replace_defaults_with_their_own_date():
    prices = table(PRICING_MODELS="gpt-realtime-2.1: audio 16/0.2/32, text 2/0.2/12;"
                                  " my-model: audio 1/0/1, text 1/0/1",
                   PRICING_AS_OF="2027-03-01")
    assert prices.cost("gpt-realtime-2.1", USAGE)["prices_as_of"] == "2027-03-01"
    assert prices.cost("gpt-realtime-2.1", USAGE)["usd"] == pytest.approx(
        table().cost("gpt-realtime-2.1", USAGE)["usd"] / 2)
    assert prices.cost("my-model", USAGE)["usd"] == pytest.approx(0.4 + 0.5 + 0.1 + 0.2)
    assert prices.cost("gpt-realtime-2.1-mini", USAGE)["prices_as_of"] == DEFAULT_PRICES_AS_OF


@pytest.mark.parametrize("env, complaint", [
    ({"PRICING_MODELS": "gpt-realtime-2.1: audio 32/64, text 4/0.4/24"},
     "gpt-realtime-2.1 audio: expected INPUT/CACHED/OUTPUT"),
    ({"PRICING_MODELS": "gpt-realtime-2.1 32/0.4/64"}, "cannot read"),
    ({"PRICING_MODELS": "m: audio 1/1/-1, text 1/1/1"}, "m audio"),
    ({"PRICING_AS_OF": "December 2026"}, "[pricing] as_of / PRICING_AS_OF: expected a date"),
])
def test_a_bad_price_is_refused_at_start_up_naming_the_setting(env, complaint):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(None, environ=env)
    assert complaint in str(error.value)


def test_the_ini_form_may_span_lines():
    assert set(parse_models("a: audio 1/2/3, text 4/5/6\n b: audio 1/2/3, text 4/5/6")) == {
        "a", "b"}
