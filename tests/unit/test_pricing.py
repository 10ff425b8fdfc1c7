from dataclasses import dataclass, field
from typing import Any

import pytest
from event_builders import DEFAULT_CARD, at

from metering.core.pricing import PricedUsage, UnpriceableUsage, price, priced_usage
from metering.core.ratecard import ModelRates, RoundingMode, parse_rate_card


@dataclass(frozen=True)
class _Counts:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    thinking: bool = False
    tool_calls: dict[str, int] = field(default_factory=dict)
    images: int = 0


def usage(**counts: Any) -> PricedUsage:
    return priced_usage(_Counts(**counts))


def model(name: str, mode: RoundingMode = "half_up", coefficient: str = "1.5") -> ModelRates:
    card = parse_rate_card(
        f"""
versions:
  - version: v7
    effective_from: "2026-01-01T00:00:00Z"
    rounding: {{unit: "0.01", mode: {mode}, per: component}}
    models:
      text:
        modality: text
        source: operator_set
        context_window: 1000
        input_per_million: "100"
        cached_per_million: "10"
        output_per_million: "1000"
        thinking_output_per_million: "3000"
        tool_call_fees: {{default: "0.5", web_search: "2"}}
        coefficient: "{coefficient}"
      image:
        modality: image
        source: operator_set
        context_window: 1000
        per_image: "40.004"
        tool_call_fees: {{default: "1"}}
        coefficient: "{coefficient}"
""",
        source="test",
    )
    return card.versions[0].models[name]


def test_seed_example_costs_3_18_credits() -> None:
    qwen = DEFAULT_CARD.in_force(at("2026-02-01 00:00")).models["qwen3.6-plus"]
    quote = price(qwen, usage(input_tokens=8_349, cached_tokens=40_794, output_tokens=573))
    assert quote.components == [
        {"name": "input", "quantity": 8_349, "credits_micro": 1_670_000},
        {"name": "cached", "quantity": 40_794, "credits_micro": 820_000},
        {"name": "output", "quantity": 573, "credits_micro": 690_000},
    ]
    assert quote.total_micro == 3_180_000
    assert (quote.rate_card_version, quote.coefficient) == ("2026-01", "1")


def test_thinking_prices_output_at_the_thinking_rate() -> None:
    quote = price(model("text"), usage(output_tokens=1_000, thinking=True))
    # 1,000 tokens * 3,000 per million * 1.5 = 4.5 credits
    assert quote.components == [{"name": "thinking", "quantity": 1_000, "credits_micro": 4_500_000}]


def test_tool_calls_are_one_component_with_named_and_default_fees() -> None:
    quote = price(model("text"), usage(tool_calls={"web_search": 2, "code": 3, "none": 0}))
    # (2 * 2 + 3 * 0.5) * 1.5 = 8.25 credits for 5 calls
    assert quote.components == [{"name": "tools", "quantity": 5, "credits_micro": 8_250_000}]
    assert quote.coefficient == "1.5"


def test_image_models_price_per_image_not_tokens() -> None:
    quote = price(model("image"), usage(images=3, input_tokens=500))
    # 3 * 40.004 * 1.5 = 180.018 -> 180.02
    assert quote.components == [{"name": "images", "quantity": 3, "credits_micro": 180_020_000}]
    assert quote.total_micro == 180_020_000


def test_images_on_a_text_model_cannot_be_priced() -> None:
    with pytest.raises(UnpriceableUsage, match="text is a text model and cannot price images"):
        price(model("text"), usage(images=1))


def test_nothing_used_costs_nothing() -> None:
    assert price(model("text"), usage()).total_micro == 0
    assert price(model("text"), usage()).components == []


@pytest.mark.parametrize(
    ("mode", "tokens", "credits_micro"),
    [
        # 50 input tokens * 100 per million * 1 = 0.005 credits: a tie at the 0.01 unit
        ("half_up", 50, 10_000),
        ("half_even", 50, 0),
        ("half_even", 150, 20_000),
        ("half_even", 250, 20_000),  # a tie at an even quotient stays down
        ("half_even", 350, 40_000),
        ("half_even", 251, 30_000),
        ("half_up", 250, 30_000),
        ("up", 100, 10_000),  # exact: nothing to round
        ("up", 101, 20_000),
        ("down", 199, 10_000),
        ("down", 99, 0),
        ("up", 1, 10_000),
        ("half_up", 49, 0),
    ],
)
def test_rounding_modes(mode: RoundingMode, tokens: int, credits_micro: int) -> None:
    quote = price(model("text", mode, coefficient="1"), usage(input_tokens=tokens))
    assert quote.total_micro == credits_micro


@pytest.mark.parametrize(
    ("mode", "images_micro", "tools_micro"),
    [
        # 1 image * 40.004 * 1.5 = 60.006; 2 web searches * 2 * 1.0015 = 4.006
        ("up", 60_010_000, 4_010_000),
        ("down", 60_000_000, 4_000_000),
        ("half_up", 60_010_000, 4_010_000),
    ],
)
def test_images_and_tool_calls_round_by_the_cards_mode(
    mode: RoundingMode, images_micro: int, tools_micro: int
) -> None:
    image = model("image", mode)
    assert price(image, usage(images=1)).total_micro == images_micro
    text = model("text", mode, coefficient="1.0015")
    tools = price(text, usage(tool_calls={"web_search": 2}))
    assert tools.components == [{"name": "tools", "quantity": 2, "credits_micro": tools_micro}]


def test_a_quote_names_its_model_version_and_coefficient() -> None:
    quote = price(model("image"), usage(images=1))
    assert (quote.model, quote.rate_card_version, quote.coefficient) == ("image", "v7", "1.5")
    text = price(model("text"), usage(input_tokens=1))
    assert (text.model, text.rate_card_version) == ("text", "v7")
