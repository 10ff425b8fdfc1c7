"""Pricing one request under one rate card model, in exact integer arithmetic.

Each component's exact cost is ``quantity * rate * coefficient``; it is rounded to the
card's unit (0.01 credit = 10,000 micro by default) and the price is the sum of the rounded
components. The seed example: qwen3.6-plus, 8,349 input, 40,794 cached and 573 output tokens
costs 1.67 + 0.82 + 0.69 = 3.18 credits.
"""

from dataclasses import dataclass
from typing import cast

from metering.core.ratecard import ModelRates, RoundingMode, TokenRates
from schemas.base import UsageCountsFields
from schemas.results import ComponentName, PriceComponent

_PER_MILLION_TOKENS = 10**12
"""Denominator of tokens * (micro-credits per million tokens) * (coefficient millionths)."""
_PER_ITEM = 10**6
"""Denominator of items * (micro-credits per item) * (coefficient millionths)."""


PricedUsage = UsageCountsFields
"""The fields of a usage that set its price: a ``UsageRecorded``'s, a usage report's or a
quote request's ``__dict__`` (a pydantic model's fields, by name). A dict, not the model: each
attribute of a pydantic model costs a ``__getattr__`` hook's lookup, and the fold read ~30 a
usage, 12 % of its instructions (issue 17)."""


def priced_usage(usage: object) -> PricedUsage:
    """The ``PricedUsage`` of a model or dataclass that has its fields (by name)."""
    return cast(PricedUsage, usage.__dict__)


class UnpriceableUsage(ValueError):
    """The usage has a part its model cannot price (images on a text model)."""


@dataclass(slots=True)
class Quote:
    """A usage's price under one model: its components and their total. A plain dataclass:
    compiled, a named tuple's ``__new__`` ran as Python and a frozen dataclass's ``__init__``
    cost 7,500 instructions, once per usage (issue 17); nothing changes a quote."""

    model: str
    rate_card_version: str
    coefficient: str
    components: list[PriceComponent]
    total_micro: int


def price(model: ModelRates, usage: PricedUsage) -> Quote:
    """Price ``usage`` under ``model``'s rates; parts with a zero quantity are left out.

    Image models are priced per image (their token counts are recorded, not priced);
    tool calls are priced for every model.
    """
    components: list[PriceComponent] = []
    unit = model.rounding.unit_micro
    mode = model.rounding.mode
    coefficient = model.coefficient_millionths
    rates = model.rates
    if isinstance(rates, TokenRates):
        if usage["images"]:
            raise UnpriceableUsage(f"{model.model} is a text model and cannot price images")
        per_unit = _PER_MILLION_TOKENS * unit
        if usage["thinking"]:
            output_name: ComponentName = "thinking"
            output_rate = rates.thinking_output_per_million_micro
        else:
            output_name, output_rate = "output", rates.output_per_million_micro
        parts: tuple[tuple[ComponentName, int, int], ...] = (
            ("input", usage["input_tokens"], rates.input_per_million_micro),
            ("cached", usage["cached_tokens"], rates.cached_per_million_micro),
            (output_name, usage["output_tokens"], output_rate),
        )
        for name, quantity, rate in parts:
            if quantity:
                units = _round(quantity * rate * coefficient, per_unit, mode)
                components.append(
                    {"name": name, "quantity": quantity, "credits_micro": units * unit}
                )
    elif usage["images"]:
        units = _round(
            usage["images"] * rates.per_image_micro * coefficient, _PER_ITEM * unit, mode
        )
        components.append(
            {"name": "images", "quantity": usage["images"], "credits_micro": units * unit}
        )

    tool_calls = usage["tool_calls"]
    if tool_calls:
        calls = sum(tool_calls.values())
        if calls:
            fees = model.tool_call_fees_micro
            default = fees["default"]
            cost = sum(n * fees.get(tool, default) for tool, n in tool_calls.items())
            units = _round(cost * coefficient, _PER_ITEM * unit, mode)
            components.append({"name": "tools", "quantity": calls, "credits_micro": units * unit})

    total = sum(c["credits_micro"] for c in components)
    return Quote(model.model, model.version, model.coefficient, components, total)


def _round(numerator: int, denominator: int, mode: RoundingMode) -> int:
    """``numerator / denominator`` rounded to an integer by ``mode`` (both non-negative).

    Each component's exact cost is ``quantity * rate * coefficient / denominator``, rounded
    to the card's unit: the caller passes ``denominator * unit`` and multiplies back.
    """
    quotient = numerator // denominator  # not divmod: compiled, that boxes both into a tuple
    remainder = numerator - quotient * denominator
    if not remainder or mode == "down":
        return quotient
    if mode == "up":
        return quotient + 1
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and (mode == "half_up" or quotient % 2)):
        return quotient + 1
    return quotient
