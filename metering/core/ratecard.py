"""The versioned rate card: a YAML data file compiled into frozen integer rates.

Every price is a decimal string in the file (at most 6 decimals) and an ``int`` of
micro-credits once loaded. A card that is wrong in any way fails to load with one error
naming the file, the version, the model and the field; nothing is silently defaulted.
"""

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from metering.core.money import parse_credits, to_decimal_string

Modality = Literal["text", "image"]
Source = Literal["published", "operator_set"]
RoundingMode = Literal["half_up", "half_even", "up", "down"]
PriceField = Literal[
    "input_per_million",
    "cached_per_million",
    "output_per_million",
    "thinking_output_per_million",
    "per_image",
    "tool_call_fees",
    "coefficient",
]


class RateCardError(ValueError):
    """The rate card file cannot be used; the message says exactly why."""


class NoRateCardInForce(LookupError):
    """No version of the card is effective yet at the asked time."""


@dataclass(frozen=True, slots=True)
class Rounding:
    unit_micro: int
    mode: RoundingMode


@dataclass(frozen=True, slots=True)
class TokenRates:
    """A text model's rates, in micro-credits per million tokens."""

    input_per_million_micro: int
    cached_per_million_micro: int
    output_per_million_micro: int
    thinking_output_per_million_micro: int
    """The output rate when the request ran in thinking mode."""


@dataclass(frozen=True, slots=True)
class ImageRates:
    """An image model's price per generated image, in micro-credits."""

    per_image_micro: int


@dataclass(frozen=True, slots=True)
class ModelRates:
    """Everything needed to price one model's usage under one card version."""

    model: str
    version: str
    context_window: int
    """Largest input in tokens (for image models, the prompt limit)."""
    source: Source
    operator_set: tuple[PriceField, ...]
    """Fields of a published model whose values the operator set."""
    coefficient: str
    coefficient_millionths: int
    rounding: Rounding
    rates: TokenRates | ImageRates
    tool_call_fees_micro: Mapping[str, int]
    """Micro-credits per call by tool name; ``default`` applies to tools not listed."""

    @property
    def modality(self) -> Modality:
        return "text" if isinstance(self.rates, TokenRates) else "image"


@dataclass(frozen=True, slots=True)
class RateCardVersion:
    version: str
    effective_from: datetime
    models: Mapping[str, ModelRates]


@dataclass(frozen=True, slots=True)
class RateCard:
    source: str
    versions: tuple[RateCardVersion, ...]
    """Ordered by ``effective_from``."""
    starts: tuple[datetime, ...] = field(init=False, repr=False, compare=False)
    """Each version's ``effective_from``: what ``in_force`` bisects (the fold asks once per
    usage, and a key function cost a Python call per step)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(v.effective_from for v in self.versions))

    def in_force(self, at: datetime) -> RateCardVersion:
        """The latest version whose ``effective_from`` is not after ``at``."""
        index = bisect_right(self.starts, at)
        if index == 0:
            first = self.versions[0].effective_from.isoformat()
            raise NoRateCardInForce(
                f"no rate card version is in force at {at.isoformat()} (the first starts {first})"
            )
        return self.versions[index - 1]


def load_rate_card(path: str | Path) -> RateCard:
    """Read and check a rate card file; raises ``RateCardError`` naming the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RateCardError(f"{path}: cannot read the rate card: {error.strerror}") from error
    return parse_rate_card(text, source=str(path))


def parse_rate_card(text: str, *, source: str) -> RateCard:
    """Check and compile a rate card document; ``source`` names it in error messages."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise RateCardError(f"{source}: not valid YAML: {error}") from error
    try:
        card = _CardFile.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(_describe(e, document) for e in error.errors())
        raise RateCardError(f"{source}: {problems}") from None
    return _compile(card, source)


# -- the file's shape --------------------------------------------------------------------


def _decimal_millionths(value: object) -> int:
    if isinstance(value, (bool, float)):
        raise ValueError(f'write {value!r} as a quoted decimal string such as "0.5"')
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a decimal string, got {value!r}")
    return parse_credits(value)


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _has_default_fee(fees: dict[str, int]) -> dict[str, int]:
    if "default" not in fees:
        raise ValueError("needs a 'default' fee for tools that are not listed")
    return fees


Decimal6 = Annotated[int, BeforeValidator(_decimal_millionths)]
ToolFees = Annotated[dict[str, Decimal6], AfterValidator(_has_default_fee)]
_FILE = ConfigDict(extra="forbid", frozen=True)


class _RoundingFile(BaseModel):
    model_config = _FILE
    unit: Annotated[Decimal6, AfterValidator(_positive)]
    mode: RoundingMode
    per: Literal["component"]


class _ModelFile(BaseModel):
    model_config = _FILE
    source: Source
    operator_set: list[PriceField] = Field(default_factory=list)
    context_window: PositiveInt
    coefficient: Annotated[Decimal6, AfterValidator(_positive)]
    tool_call_fees: ToolFees


class _TextModelFile(_ModelFile):
    modality: Literal["text"]
    input_per_million: Decimal6
    cached_per_million: Decimal6
    output_per_million: Decimal6
    thinking_output_per_million: Decimal6
    """The output rate when the request ran in thinking mode."""


class _ImageModelFile(_ModelFile):
    modality: Literal["image"]
    per_image: Decimal6


class _VersionFile(BaseModel):
    model_config = _FILE
    version: Annotated[str, Field(min_length=1)]
    effective_from: AwareDatetime
    rounding: _RoundingFile
    models: Annotated[
        dict[str, Annotated[_TextModelFile | _ImageModelFile, Field(discriminator="modality")]],
        Field(min_length=1),
    ]


class _CardFile(BaseModel):
    model_config = _FILE
    versions: Annotated[list[_VersionFile], Field(min_length=1)]

    @model_validator(mode="after")
    def _versions_distinct(self) -> Self:
        for attribute in ("version", "effective_from"):
            values = [getattr(v, attribute) for v in self.versions]
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"two versions share the same {attribute}: {', '.join(repeated)}")
        return self


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _describe(error: ErrorDetails, document: Any) -> str:
    """Name the version, model and field of a validation error in the card's own terms."""
    location = list(error["loc"])
    where: list[str] = []
    if location[:1] == ["versions"] and len(location) > 1 and isinstance(location[1], int):
        index = location[1]
        version = _lookup(document, "versions", index, "version") or f"#{index + 1}"
        where.append(f"version {version!r}")
        location = location[2:]
        if location[:1] == ["models"] and len(location) > 1:
            where.append(f"model {location[1]!r}")
            location = location[3:] if location[2:3] in (["text"], ["image"]) else location[2:]
    if location:
        where.append("field " + ".".join(str(part) for part in location))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        where.append("field modality")
        message = "must be 'text' or 'image'"
    return f"{', '.join(where) or 'card'}: {message}"


def _lookup(document: Any, *path: str | int) -> Any:
    for step in path:
        try:
            document = document[step]
        except (KeyError, IndexError, TypeError):
            return None
    return document


# -- compiled form -----------------------------------------------------------------------


def _compile(card: _CardFile, source: str) -> RateCard:
    versions = sorted(card.versions, key=lambda v: v.effective_from)
    return RateCard(source=source, versions=tuple(_compile_version(v) for v in versions))


def _compile_version(version: _VersionFile) -> RateCardVersion:
    rounding = Rounding(unit_micro=version.rounding.unit, mode=version.rounding.mode)
    models = {
        name: _compile_model(name, version.version, rounding, model)
        for name, model in sorted(version.models.items())
    }
    return RateCardVersion(version.version, version.effective_from.astimezone(UTC), models)


def _compile_model(
    name: str, version: str, rounding: Rounding, model: _TextModelFile | _ImageModelFile
) -> ModelRates:
    rates: TokenRates | ImageRates
    if isinstance(model, _TextModelFile):
        rates = TokenRates(
            input_per_million_micro=model.input_per_million,
            cached_per_million_micro=model.cached_per_million,
            output_per_million_micro=model.output_per_million,
            thinking_output_per_million_micro=model.thinking_output_per_million,
        )
    else:
        rates = ImageRates(per_image_micro=model.per_image)
    return ModelRates(
        model=name,
        version=version,
        context_window=model.context_window,
        source=model.source,
        operator_set=tuple(model.operator_set),
        coefficient=to_decimal_string(model.coefficient),
        coefficient_millionths=model.coefficient,
        rounding=rounding,
        rates=rates,
        tool_call_fees_micro=dict(sorted(model.tool_call_fees.items())),
    )
