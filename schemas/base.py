"""Building blocks shared by every document of the public contract."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypedDict

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

SCHEMA_VERSION = 1
"""Version of every event and HTTP body in this package; bump it with the topic suffix."""

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)

IDENTIFIER_MAX_LENGTH = 200
_INVISIBLE = (
    r"\x00-\x1f\x7f-\x9f"  # C0 controls, DEL, C1 controls (PostgreSQL cannot store NUL)
    r"\u00ad\u061c\u180e"  # soft hyphen, Arabic letter mark, Mongolian vowel separator
    r"\u200b-\u200f"  # zero-width space, non-joiner, joiner; left-to-right/right-to-left marks
    r"\u2028-\u202e"  # line and paragraph separators; bidi embeddings and overrides
    r"\u2060-\u206f"  # word joiner, invisible operators, bidi isolates, deprecated formats
    r"\ufeff\ufff9-\ufffb"  # zero-width no-break space (BOM), interlinear annotations
)
IDENTIFIER_PATTERN = rf"^[^{_INVISIBLE}]{{1,{IDENTIFIER_MAX_LENGTH}}}$"
"""1 to 200 characters, none of them invisible or able to reorder what is shown: no control
character (C0, DEL, C1), no bidi mark, embedding, override or isolate, no zero-width or other
format character, no line or paragraph separator. Ids are shown to people (consoles, CSV
exports, statements) and compared byte for byte: two ids must never look alike by hiding
characters or by reordering them (README, "Identifiers")."""
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
EventId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
    Field(description="UUID text, lower case"),
]
Count = Annotated[int, Field(ge=0)]
Micro = Annotated[int, Field(ge=0, description="integer micro-credits (1 credit = 1,000,000)")]
Tier = Literal["standard", "advanced", "premium"]
ToolCalls = dict[Identifier, Count]


def _rfc3339_text(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an RFC 3339 timestamp with a zone, e.g. 2026-05-01T12:00:00Z")


EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""Times a client sends lie in [EARLIEST, LATEST): anything else is a typo or an attack."""


def _sane_time(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError("must lie between 2000-01-01 and 2099-12-31 (UTC)")
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_sane_time),
    Field(strict=False),
]
"""A zoned timestamp in an HTTP body: RFC 3339 text (JSON has no datetime type to be strict
about), parsed even though the body's other fields are strict; naive times and times
outside sane years are refused."""

MAX_QUANTITY = 1_000_000_000
"""The most tokens, images or calls of one kind a report may carry; the rate card's context
window bounds tokens further."""
Quantity = Annotated[int, Field(ge=0, le=MAX_QUANTITY)]
ReportedToolCalls = Annotated[dict[Identifier, Quantity], Field(max_length=100)]


class Contract(BaseModel):
    """Base of every contract model: unknown fields and wrong types are rejected, values frozen."""

    model_config = STRICT

    @classmethod
    def trusted(cls, fields: dict[str, Any], /) -> Self:
        """Build an instance from values the core computed itself, skipping validation; the
        instance takes ``fields`` as its own (the caller must not change it afterwards).

        Validation costs several times more than the rest of a deduction; the unit tests
        re-validate every result the fold builds this way, so the shapes cannot drift. A dict,
        not keywords: packing 19 keywords into a dict cost 2.5 us a deduction, more than the
        instance (issue 17). With every field given, as the fold always gives them, the
        instances of a class share one set of field names (pydantic copies it before changing
        it, and a frozen model never changes it).
        """
        instance = _new_object(cls)
        _set_slot(instance, "__dict__", fields)
        every = _EVERY_FIELD.get(cls)
        if every is None:
            every = _EVERY_FIELD[cls] = set(cls.model_fields)
        _set_slot(
            instance,
            "__pydantic_fields_set__",
            every if len(fields) == len(every) else set(fields),
        )
        _set_slot(instance, "__pydantic_extra__", None)
        _set_slot(instance, "__pydantic_private__", None)
        return instance


_EVERY_FIELD: dict[type[BaseModel], set[str]] = {}
"""Each contract class's field names, shared by its `trusted` instances that set them all."""
_new_object = object.__new__
_set_slot = object.__setattr__
"""Bound once: `trusted` runs for every result of the fold."""


class UsageCounts(Contract):
    """What a model call used: the quantities pricing reads (design.md §3)."""

    input_tokens: Quantity = 0
    cached_tokens: Quantity = 0
    output_tokens: Quantity = 0
    thinking: bool = False
    tool_calls: ReportedToolCalls = Field(default_factory=dict)
    images: Quantity = 0


class UsageCountsFields(TypedDict):
    """A ``UsageCounts``' fields by name, as in its ``__dict__`` (or a subclass's): what the
    core reads where each attribute of a pydantic model would cost a ``__getattr__`` hook's
    lookup (issue 17). tests/unit/test_schemas.py checks the names against the models."""

    input_tokens: int
    cached_tokens: int
    output_tokens: int
    thinking: bool
    tool_calls: Mapping[str, int]
    images: int


class SubscriptionTerm(Contract):
    """When a subscription starts and, if it does not renew until cancelled, when it ends."""

    started_at: Timestamp
    expires_at: Timestamp | None = None
    """None: the subscription renews until cancelled."""

    @model_validator(mode="after")
    def _ends_after_start(self) -> Self:
        if self.expires_at is not None and self.expires_at <= self.started_at:
            raise ValueError("expires_at must be later than started_at")
        return self
