"""The price catalogue's parsing and the spend bound H (extproc/pricing/), without I/O.

Expected prices are OpenRouter's decimal USD strings converted by hand (1 USD = 10^12
picodollars); expected bounds are worked out from the rules in the issue (input bytes plus
overheads, output cap, highest price), not from the module."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.catalogue import DEFAULT_FREE_MODELS, DEFAULT_RATE_LIMITED_TO_DEATH, Catalogue, FreeModel
from extproc.local.mock_upstream import MockOptions, _plan, openrouter_models, vercel_models
from extproc.money import usd_to_microdollars
from extproc.pricing.bound import (
    IMAGE_TOKENS,
    MAX_CHOICES,
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    TOOLS_OVERHEAD_TOKENS,
    largest_max_tokens,
    spend_bound,
)
from extproc.pricing.candidates import candidate_models
from extproc.pricing.catalogue import PriceCatalogue, PricesUnavailable, PriceTable, accept
from extproc.pricing.prices import ModelPrices, parse_openrouter_models, parse_vercel_models

CATALOGUE = Catalogue.build(
    tuple(FreeModel.model_validate(m) for m in DEFAULT_FREE_MODELS), DEFAULT_RATE_LIMITED_TO_DEATH
)


def entry(model_id: str = "acme/model", **pricing: Any) -> dict[str, Any]:
    """An OpenRouter `/models` entry; `context_length` and `max_out` (the top provider's max
    completion tokens) are the entry's, the rest its prices."""
    context_length = pricing.pop("context_length", 200_000)
    max_out = pricing.pop("max_out", 64_000)
    return {
        "id": model_id,
        "context_length": context_length,
        "pricing": {"prompt": "0.000003", "completion": "0.000015", **pricing},
        "top_provider": {"context_length": 200_000, "max_completion_tokens": max_out},
    }


def parsed(*entries: dict[str, Any]) -> dict[str, ModelPrices]:
    return parse_openrouter_models({"data": list(entries)}).models


# ---------------------------------------------------------------- parsing


def test_prices_are_exact_integer_picodollars() -> None:
    [prices] = parsed(
        entry(
            prompt="0.000003",
            completion="0.000015",
            input_cache_read="0.0000003",
            input_cache_write="0.00000375",
            request="0.005",
            image="0.0048",
            web_search="0.01",
            internal_reasoning="0.00002",
        )
    ).values()
    assert (prices.prompt, prices.completion) == (3_000_000, 15_000_000)
    assert (prices.input_cache_read, prices.input_cache_write) == (300_000, 3_750_000)
    assert (prices.request, prices.image, prices.web_search) == (5_000_000_000, 4_800_000_000, 10_000_000_000)
    assert prices.internal_reasoning == 20_000_000
    assert prices.context_length == 200_000 and prices.max_completion_tokens == 64_000
    # The bound's prices: the dearest input (a cache write) and output (reasoning) token.
    assert (prices.input_token_max, prices.output_token_max) == (3_750_000, 20_000_000)
    assert all(isinstance(v, int) for k, v in prices.as_json().items() if k != "model_id" and v is not None)


def test_a_price_finer_than_a_picodollar_is_rounded_up() -> None:
    [prices] = parsed(entry(prompt="0.0000000000001")).values()  # 0.1 picodollar
    assert prices.prompt == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt": "-1"},  # openrouter/auto: priced by the model it picks
        {"prompt": "NaN"},
        {"completion": "Infinity"},
        {"prompt": "cheap"},
        {"prompt": ""},
        {"prompt": True},
        {"prompt": None},  # a required price missing
        {"completion": {"usd": 1}},
        {"prompt": "2"},  # $2 per token: absurd
        {"request": "1e9"},
        {"image": "-0.01"},
        {"overrides": "double above 200k"},
        {"overrides": [{"prompt": "-5"}]},
        {"context_length": 0},
        {"context_length": "200000"},
        {"context_length": 10**12},
        {"max_out": -1},
        {"max_out": 1.5},
    ],
)
def test_a_garbage_entry_is_refused_whole(bad: dict[str, Any]) -> None:
    answer = parse_openrouter_models({"data": [entry("good/model"), entry("bad/model", **bad)]})
    assert list(answer.models) == ["good/model"]
    assert "bad/model" in answer.refused


def test_long_context_bands_and_extra_price_fields_raise_the_bound_prices() -> None:
    [prices] = parsed(
        entry(
            prompt="0.00000125",
            completion="0.00001",
            audio="0.000004",
            image_output="0.00003",
            overrides=[{"min_prompt_tokens": 200_000, "prompt": "0.0000025", "completion": "0.000015"}],
        )
    ).values()
    assert prices.prompt == 1_250_000  # the base price, as published
    assert prices.input_token_max == 4_000_000  # audio input is dearer than the long-context band
    assert prices.output_token_max == 15_000_000 + 30_000_000  # the band, plus an image per output token


def test_vercel_shape_and_its_unknown_fields() -> None:
    answer = parse_vercel_models(
        {
            "data": [
                {
                    "id": "zai/glm-5",
                    "context_window": 200_000,
                    "max_tokens": 128_000,
                    "pricing": {"input": "0.000001", "output": "0.0000032", "input_cache_read": "0.0000002"},
                },
                {
                    "id": "odd/model",
                    "context_window": 1000,
                    "max_tokens": 100,
                    "pricing": {"input": "0.000001", "output": "0.000001", "per_second": "0.1"},
                },
            ]
        }
    )
    assert answer.models["zai/glm-5"].completion == 3_200_000
    assert answer.models["zai/glm-5"].max_completion_tokens == 128_000
    assert "odd/model" in answer.refused  # a price of unknown unit cannot be bounded


@pytest.mark.parametrize("answer", [None, [], {"data": None}, {"models": []}, "data"])
def test_an_answer_without_a_data_list_is_not_a_catalogue(answer: object) -> None:
    from extproc.pricing.prices import BadAnswer

    with pytest.raises(BadAnswer):
        parse_openrouter_models(answer)


def table(*entries: dict[str, Any], provider: str = "openrouter") -> PriceTable:
    return PriceTable.build(provider, parsed(*entries), fetched_at=1_000.0)


def test_partial_or_mostly_refused_answers_do_not_replace_the_last_good_table() -> None:
    last = table(*(entry(f"m/{i}") for i in range(10)))
    assert accept(parse_openrouter_models({"data": [entry(f"m/{i}") for i in range(10)]}), last) is None
    # Half the models missing: a cut answer, not a new catalogue.
    assert accept(parse_openrouter_models({"data": [entry(f"m/{i}") for i in range(4)]}), last) is not None
    # A third of the entries garbage.
    garbage = [entry(f"m/{i}") for i in range(8)] + [entry(f"x/{i}", prompt="-1") for i in range(4)]
    assert accept(parse_openrouter_models({"data": garbage}), last) is not None
    assert accept(parse_openrouter_models({"data": []}), None) is not None


# ---------------------------------------------------------------- the catalogue


def test_an_unknown_model_is_bounded_at_the_tables_highest_prices() -> None:
    catalogue = PriceCatalogue()
    catalogue.replace(
        table(
            entry("cheap/a", prompt="0.0000001", completion="0.0000002", context_length=8_000),
            entry("dear/b", prompt="0.00001", completion="0.00006", context_length=1_000_000, max_out=None),
        )
    )
    unknown = catalogue.prices_for("openrouter", "nobody/knows")
    assert unknown.input_token_max == 10_000_000 and unknown.output_token_max == 60_000_000
    assert unknown.context_length == 1_000_000
    assert unknown.output_cap == 1_000_000  # one model publishes no output cap: its context bounds it
    # A routing suffix keeps the model's own prices.
    assert catalogue.prices_for("openrouter", "cheap/a:nitro").prompt == 100_000
    # No Vercel table yet: the highest of every table.
    assert catalogue.prices_for("vercel", "cheap/a") == catalogue.tables["openrouter"].highest


def test_no_table_at_all_is_unavailable_never_free() -> None:
    with pytest.raises(PricesUnavailable):
        PriceCatalogue().prices_for("openrouter", "openai/gpt-4o")


def test_candidates_include_vercel_for_models_in_the_split() -> None:
    # z-ai/glm-5 takes part in the Vercel A/B (contract 3.5), under Vercel's id (3.6).
    assert candidate_models("z-ai/glm-5", {}, CATALOGUE, routed_to="openrouter") == (
        ("openrouter", "z-ai/glm-5"),
        ("vercel", "zai/glm-5"),
    )
    assert candidate_models("anthropic/claude-sonnet-4.6", {}, CATALOGUE, routed_to="openrouter") == (
        ("openrouter", "anthropic/claude-sonnet-4.6"),
    )
    denied = {"provider": {"data_collection": "deny"}}
    assert len(candidate_models("z-ai/glm-5", denied, CATALOGUE, routed_to="openrouter")) == 1


# ---------------------------------------------------------------- the bound

PRICES = ModelPrices(
    model_id="acme/model",
    prompt=1_000_000,
    completion=2_000_000,
    request=0,
    image=0,
    internal_reasoning=0,
    input_cache_read=0,
    input_cache_write=0,
    web_search=0,
    context_length=100_000,
    max_completion_tokens=4_000,
    input_token_max=1_000_000,
    output_token_max=2_000_000,
    request_max=0,
    image_max=0,
    web_search_max=0,
)  # $1 per million input tokens, $2 per million output tokens


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "acme/model", "messages": [{"role": "user", "content": "hello"}], **fields}


def json_size(value: Any) -> int:
    import orjson

    return len(orjson.dumps(value))


def test_bound_of_a_small_request() -> None:
    request = body(max_tokens=100)
    bound = spend_bound(request, [PRICES])
    expected_input = json_size(request) + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS
    assert bound.input_tokens == expected_input
    assert bound.output_tokens == 100
    # 1 µ$ per input token, 2 µ$ per output token.
    assert bound.microdollars == expected_input + 200
    assert bound.total_tokens == expected_input + 100


def test_without_max_tokens_the_output_is_the_models_cap() -> None:
    assert spend_bound(body(), [PRICES]).output_tokens == 4_000
    assert spend_bound(body(max_tokens=10**9), [PRICES]).output_tokens == 4_000
    no_cap = ModelPrices(**{**PRICES.as_json(), "max_completion_tokens": None})
    assert spend_bound(body(), [no_cap]).output_tokens == 100_000


@pytest.mark.parametrize(
    "value", [-5, 0, "lots", True, None, [], {"n": 1}, float("nan"), "1e999999999", 99.2, 100.0, " 250 "]
)
def test_only_a_positive_integer_max_tokens_limits_the_reply(value: Any) -> None:
    # A provider may refuse, round or ignore anything else: the model's cap bounds all three.
    assert spend_bound(body(max_tokens=value), [PRICES]).output_tokens == 4_000
    assert spend_bound(body(max_completion_tokens=value), [PRICES]).output_tokens == 4_000


def test_both_limits_and_a_reasoning_budget() -> None:
    # Both sent: the larger, since providers differ in which they read.
    assert spend_bound(body(max_tokens=10, max_completion_tokens=300), [PRICES]).output_tokens == 300
    # An explicit reasoning budget on top of the reply's.
    assert spend_bound(body(max_tokens=10, reasoning={"max_tokens": 500}), [PRICES]).output_tokens == 510


def test_the_input_never_exceeds_the_context_and_media_without_a_byte_bound_take_it_all() -> None:
    huge = body(messages=[{"role": "user", "content": "x" * 500_000}])
    assert spend_bound(huge, [PRICES]).input_tokens == 100_000
    audio = body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}])
    assert spend_bound(audio, [PRICES]).input_tokens == 100_000


def test_images_count_per_image_not_per_byte() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 50_000}}
    request = body(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}])
    priced = ModelPrices(**{**PRICES.as_json(), "image_max": 5_000_000_000})  # half a cent per image
    bound = spend_bound(request, [priced], body_bytes=json_size(request))
    expected_input = (
        json_size(request) - json_size(image) + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS + IMAGE_TOKENS
    )
    assert bound.input_tokens == expected_input
    assert bound.microdollars == expected_input + 5_000 + 2 * 4_000


def test_tools_n_request_fees_and_web_search() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with_tools = spend_bound(body(tools=tools), [PRICES])
    assert (
        with_tools.input_tokens
        == json_size(body(tools=tools)) + MESSAGE_OVERHEAD_TOKENS + REQUEST_OVERHEAD_TOKENS + TOOLS_OVERHEAD_TOKENS
    )
    single = spend_bound(body(max_tokens=100), [PRICES]).microdollars
    assert spend_bound(body(max_tokens=100, n=3), [PRICES]).microdollars >= 3 * single - 3
    assert spend_bound(body(max_tokens=100, n="many"), [PRICES]).choices == MAX_CHOICES
    fee = ModelPrices(**{**PRICES.as_json(), "request_max": 7_000_000})  # 7 µ$ a request
    assert (
        spend_bound(body(max_tokens=100), [fee]).microdollars
        == spend_bound(body(max_tokens=100), [PRICES]).microdollars + 7
    )
    search = ModelPrices(**{**PRICES.as_json(), "web_search_max": 10**10})  # 1 cent a search
    plain = spend_bound(body(max_tokens=100), [search]).microdollars
    online = spend_bound(body(max_tokens=100), [search], model_id="acme/model:online").microdollars
    plugin = spend_bound(body(max_tokens=100, plugins=[{"id": "web"}]), [search]).microdollars
    assert online - plain >= 10_000 and plugin - plain >= 20_000  # a search, or 5 plugin results


def test_every_candidate_counts_at_its_highest() -> None:
    dear_vercel = ModelPrices(**{**PRICES.as_json(), "output_token_max": 9_000_000, "max_completion_tokens": 8_000})
    both = spend_bound(body(), [PRICES, dear_vercel])
    assert both.output_tokens == 8_000 and both.output_picodollars_per_token == 9_000_000


def test_largest_max_tokens_that_fits() -> None:
    bound = spend_bound(body(), [PRICES])  # input I µ$, up to 4,000 output tokens at 2 µ$
    fixed = bound.fixed_picodollars // 10**6
    assert largest_max_tokens(bound, bound.microdollars) == 4_000  # H fits whole
    assert largest_max_tokens(bound, fixed + 1_000) == 500
    lowered = bound.with_output_tokens(500)
    assert lowered.microdollars <= fixed + 1_000 and lowered.output_tokens == 500
    assert largest_max_tokens(bound, fixed + 2 * 256) == 256  # input plus the minimum reply
    assert largest_max_tokens(bound, fixed + 2 * 255) is None
    assert largest_max_tokens(bound, fixed + 2 * 100, minimum_reply_tokens=100) == 100
    assert largest_max_tokens(bound, 0) is None and largest_max_tokens(bound, -5) is None


# ---------------------------------------------------------------- the mock's bill never exceeds H

MOCK_PRICES = parse_openrouter_models(openrouter_models()).models
MOCK_VERCEL = parse_vercel_models(vercel_models()).models

text = st.text(st.characters(codec="utf-8"), max_size=300)
part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.just({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "tool"]),
        "content": st.one_of(text, st.lists(part, max_size=3)),
    }
)
limit = st.one_of(st.none(), st.integers(-3, 3000), st.floats(allow_nan=True), st.text(max_size=5))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from([*MOCK_PRICES, "unknown/model"]),
    messages=st.lists(message, min_size=1, max_size=6),
    max_tokens=limit,
    max_completion_tokens=limit,
    chunks=st.integers(0, 3000),
    reasoning_words=st.integers(0, 200),
    cached_share=st.floats(0, 1),
    tools=st.booleans(),
    n=st.one_of(st.none(), st.integers(1, 3)),
)
def test_the_mocks_bill_never_exceeds_the_bound(
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: Any,
    max_completion_tokens: Any,
    chunks: int,
    reasoning_words: int,
    cached_share: float,
    tools: bool,
    n: int | None,
) -> None:
    request: dict[str, Any] = {"model": model, "messages": messages}
    for key, value in (("max_tokens", max_tokens), ("max_completion_tokens", max_completion_tokens), ("n", n)):
        if value is not None:
            request[key] = value
    if tools:
        request["tools"] = [{"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}]
    prompt_tokens = max(1, json_size(messages) // 4)
    # What a provider can report: cache reads are part of the prompt.
    request["mock"] = {
        "chunks": chunks,
        "reasoning": " ".join(["r"] * reasoning_words),
        "cached_tokens": int(prompt_tokens * cached_share),
    }
    catalogue = PriceCatalogue()
    catalogue.replace(PriceTable.build("openrouter", MOCK_PRICES, 0.0))
    catalogue.replace(PriceTable.build("vercel", MOCK_VERCEL, 0.0))
    candidates = catalogue.candidates(candidate_models(model, request, CATALOGUE, routed_to="openrouter"))
    bound = spend_bound(request, candidates, model_id=model)

    plan = _plan(request, MockOptions())
    # A provider never writes more than the model's output cap (the mock has no cap of its own).
    completion = min(len(plan.tokens) + len(plan.reasoning_tokens), bound.output_tokens_limit)
    content = min(len(plan.tokens), completion)
    usage = plan.usage(content, completion - content)
    choices = n or 1
    assert choices * usd_to_microdollars(usage["cost"]) <= bound.microdollars
    exact = Decimal(repr(usage["cost"])) * 10**6 * choices
    assert exact <= bound.microdollars
    assert usage["prompt_tokens"] <= bound.input_tokens and usage["completion_tokens"] <= bound.output_tokens
