import copy
import locale
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from event_builders import DEFAULT_CARD, at

from metering.core.ratecard import (
    ImageRates,
    NoRateCardInForce,
    RateCardError,
    TokenRates,
    load_rate_card,
    parse_rate_card,
)

TEXT_MODEL = {
    "modality": "text",
    "source": "operator_set",
    "context_window": 1000,
    "input_per_million": "200",
    "cached_per_million": "20",
    "output_per_million": "1200",
    "thinking_output_per_million": "1500",
    "tool_call_fees": {"default": "0.5"},
    "coefficient": "1",
}
IMAGE_MODEL = {
    "modality": "image",
    "source": "operator_set",
    "context_window": 500,
    "per_image": "100",
    "tool_call_fees": {"default": "0"},
    "coefficient": "1",
}
SHIPPED = Path(__file__).parents[2] / "metering" / "ratecards" / "default.yaml"
CARD = {
    "versions": [
        {
            "version": "v1",
            "effective_from": "2026-01-01T00:00:00Z",
            "rounding": {"unit": "0.01", "mode": "half_up", "per": "component"},
            "models": {"m": TEXT_MODEL, "img": IMAGE_MODEL},
        }
    ]
}


def card_with(change: Callable[[dict[str, Any]], object]) -> str:
    card = copy.deepcopy(CARD)
    change(card)
    return yaml.safe_dump(card, sort_keys=False)


def text_model(card: dict[str, Any]) -> dict[str, Any]:
    model: dict[str, Any] = card["versions"][0]["models"]["m"]
    return model


def second_version(card: dict[str, Any], **fields: str) -> None:
    card["versions"].append({**copy.deepcopy(card["versions"][0]), **fields})


BAD_CARDS: list[tuple[str, str, str]] = [
    (
        "missing rate",
        card_with(lambda c: text_model(c).pop("cached_per_million")),
        "version 'v1', model 'm', field cached_per_million: Field required",
    ),
    (
        "negative rate",
        card_with(lambda c: text_model(c).update(output_per_million="-5")),
        "model 'm', field output_per_million: '-5' is negative",
    ),
    (
        "too many decimals",
        card_with(lambda c: text_model(c).update(input_per_million="0.1234567")),
        "field input_per_million: '0.1234567' has more than 6 decimals",
    ),
    (
        "float instead of a decimal string",
        card_with(lambda c: text_model(c).update(input_per_million=0.5)),
        'field input_per_million: write 0.5 as a quoted decimal string such as "0.5"',
    ),
    (
        "not a number",
        card_with(lambda c: text_model(c).update(coefficient="one")),
        "field coefficient: 'one' is not a decimal number",
    ),
    (
        "zero coefficient",
        card_with(lambda c: text_model(c).update(coefficient="0")),
        "field coefficient: must be greater than 0",
    ),
    (
        "unknown modality",
        card_with(lambda c: text_model(c).update(modality="video")),
        "model 'm', field modality: must be 'text' or 'image'",
    ),
    (
        "text model priced per image",
        card_with(
            lambda c: c["versions"][0]["models"].update(t={**IMAGE_MODEL, "modality": "text"})
        ),
        "model 't', field input_per_million: Field required",
    ),
    (
        "image model with token rates",
        card_with(lambda c: c["versions"][0]["models"]["img"].update(input_per_million="1")),
        "model 'img', field input_per_million: Extra inputs are not permitted",
    ),
    (
        "no default tool fee",
        card_with(lambda c: text_model(c).update(tool_call_fees={"web_search": "1"})),
        "field tool_call_fees: needs a 'default' fee",
    ),
    (
        "missing source",
        card_with(lambda c: text_model(c).pop("source")),
        "model 'm', field source: Field required",
    ),
    (
        "naive effective_from",
        card_with(lambda c: c["versions"][0].update(effective_from="2026-01-01T00:00:00")),
        "version 'v1', field effective_from: Input should have timezone info",
    ),
    (
        "rounding per request",
        card_with(lambda c: c["versions"][0]["rounding"].update(per="request")),
        "version 'v1', field rounding.per: Input should be 'component'",
    ),
    (
        "duplicate version",
        card_with(lambda c: second_version(c, effective_from="2026-02-01T00:00:00Z")),
        "two versions share the same version: v1",
    ),
    (
        "duplicate effective_from",
        card_with(lambda c: second_version(c, version="v2")),
        "two versions share the same effective_from: 2026-01-01 00:00:00+00:00",
    ),
    (
        "no versions",
        "versions: []\n",
        "field versions: List should have at least 1 item",
    ),
    (
        "duplicate model key",
        card_with(lambda c: None).replace("  img:\n", "  m:\n"),
        "duplicate key 'm'",
    ),
    ("not a mapping", "- 1\n", "card: Input should be a valid dictionary"),
    (
        "a version that is not a mapping, named by its place",
        "versions: [v1, v2]\n",
        "card.yaml: version '#1': Input should be a valid dictionary or instance of _VersionFile; "
        "version '#2': Input should be a valid dictionary",
    ),
    (
        "no models",
        card_with(lambda c: c["versions"][0].update(models={})),
        "version 'v1', field models: Dictionary should have at least 1 item",
    ),
    (
        "a model name that is not a string",
        card_with(lambda c: c["versions"][0]["models"].update({5: TEXT_MODEL})),
        "version 'v1', model 5, field [key]: Input should be a valid string",
    ),
    (
        "no modality",
        card_with(lambda c: text_model(c).pop("modality")),
        "version 'v1', model 'm', field modality: must be 'text' or 'image'",
    ),
    (
        "a rate that is a list",
        card_with(lambda c: text_model(c).update(input_per_million=["1"])),
        "model 'm', field input_per_million: expected a decimal string, got ['1']",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in BAD_CARDS], ids=[c[0] for c in BAD_CARDS]
)
def test_bad_card_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(RateCardError) as raised:
        parse_rate_card(text, source="card.yaml")
    assert str(raised.value).startswith("card.yaml: ")
    assert message in str(raised.value)


def test_a_duplicate_key_is_named_with_its_line() -> None:
    with pytest.raises(
        RateCardError, match=r"duplicate key 'm'\n  in \"<unicode string>\", line 20"
    ):
        parse_rate_card(card_with(lambda c: None).replace("  img:\n", "  m:\n"), source="c")


def test_smallest_amounts_and_whole_numbers() -> None:
    """0.000001 is a valid rate, coefficient and rounding unit; an unquoted whole number is
    read as that many credits."""

    def smallest(card: dict[str, Any]) -> None:
        card["versions"][0]["rounding"]["unit"] = "0.000001"
        text_model(card).update(
            coefficient="0.000001", input_per_million=7, cached_per_million="0.000001"
        )

    model = parse_rate_card(card_with(smallest), source="card.yaml").versions[0].models["m"]
    assert model.rounding.unit_micro == 1
    assert (model.coefficient, model.coefficient_millionths) == ("0.000001", 1)
    assert model.rates == TokenRates(7_000_000, 1, 1_200_000_000, 1_500_000_000)


def test_a_card_file_is_read_as_utf8_and_named_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "card.yaml"
    text = card_with(lambda c: None).replace("version: v1", "version: v1-été")
    path.write_bytes(text.encode("utf-8"))
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale must not change how it is read
    try:
        card = load_rate_card(path)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    assert card.source == str(path)
    assert card == parse_rate_card(text, source=str(path))
    assert card.versions[0].models["m"].version == "v1-été"


@pytest.mark.usefixtures("local_zone")
def test_effective_from_in_any_zone_is_kept_in_utc() -> None:
    card = parse_rate_card(
        card_with(lambda c: c["versions"][0].update(effective_from="2026-01-01T02:00:00+02:00")),
        source="card.yaml",
    )
    effective = card.versions[0].effective_from
    assert effective == at("2026-01-01 00:00")
    assert effective.utcoffset() == timedelta(0)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RateCardError, match=r"missing\.yaml: cannot read the rate card"):
        load_rate_card(tmp_path / "missing.yaml")


def test_version_in_force_at_a_time() -> None:
    text = card_with(
        lambda c: second_version(c, version="v2", effective_from="2026-03-01T00:00:00Z")
    )
    card = parse_rate_card(text, source="card.yaml")
    assert card.in_force(at("2026-01-01 00:00")).version == "v1"
    assert card.in_force(at("2026-02-28 23:59")).version == "v1"
    assert card.in_force(at("2026-03-01 00:00")).version == "v2"
    with pytest.raises(NoRateCardInForce) as raised:
        card.in_force(at("2025-12-31 23:59"))
    assert str(raised.value) == (
        "no rate card version is in force at 2025-12-31T23:59:00+00:00 "
        "(the first starts 2026-01-01T00:00:00+00:00)"
    )


def test_rates_compile_to_integer_micro_credits() -> None:
    card = parse_rate_card(card_with(lambda c: None), source="card.yaml")
    assert card.source == "card.yaml"
    version = card.versions[0]
    assert (version.version, version.effective_from) == ("v1", at("2026-01-01 00:00"))
    text = version.models["m"]
    assert (text.model, text.version, text.context_window, text.source) == (
        "m",
        "v1",
        1000,
        "operator_set",
    )
    assert text.operator_set == ()
    assert version.models["img"].context_window == 500
    assert version.models["m"].rates == TokenRates(
        200_000_000, 20_000_000, 1_200_000_000, 1_500_000_000
    )
    assert version.models["m"].tool_call_fees_micro == {"default": 500_000}
    assert version.models["img"].rates == ImageRates(per_image_micro=100_000_000)
    assert version.models["img"].modality == "image"
    assert version.models["m"].rounding.unit_micro == 10_000


def test_shipped_card() -> None:
    card = load_rate_card(SHIPPED)  # loaded here, not at import, for the mutation run to see
    assert card == DEFAULT_CARD
    assert card.source == str(SHIPPED)
    models = card.in_force(at("2026-06-01 00:00")).models
    assert set(models) == {
        "qwen3.6-plus",
        "glm-5",
        "MiniMax-M2.5",
        "deepseek-v3.2",
        "qwen-image-2.0",
        "qwen-image-2.0-pro",
        "wan2.7-image",
        "wan2.7-image-pro",
    }
    qwen = models["qwen3.6-plus"]
    assert qwen.source == "published"
    assert qwen.context_window == 1_000_000
    assert qwen.rates == TokenRates(200_000_000, 20_000_000, 1_200_000_000, 1_200_000_000)
    assert set(qwen.operator_set) == {"thinking_output_per_million", "tool_call_fees"}
    assert all(m.source == "operator_set" for name, m in models.items() if name != "qwen3.6-plus")
    image_models = {name for name, m in models.items() if m.modality == "image"}
    assert image_models == {
        "qwen-image-2.0",
        "qwen-image-2.0-pro",
        "wan2.7-image",
        "wan2.7-image-pro",
    }
