"""What ingest checks beyond a body's shape, and the envelopes it appends.

Pure functions: the clock reading (`now`) and the rate card come in as arguments.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from ingest.directory import KeyRecord
from metering.core.catalog import MAX_PRICE_MICRO
from metering.core.pricing import UnpriceableUsage, price, priced_usage
from metering.core.ratecard import NoRateCardInForce, RateCard
from schemas.api import UsageReport
from schemas.base import SCHEMA_VERSION, Contract


@dataclass(frozen=True)
class UsageWindow:
    """How far from ingest's clock a usage's `occurred_at` may be."""

    max_future_skew: timedelta
    max_lateness: timedelta


class FieldProblem(NamedTuple):
    """Why one field is refused: for the caller (`message`) and for metrics (`reason`)."""

    field: str
    message: str
    reason: str


def usage_problems(
    report: UsageReport,
    card: RateCard,
    window: UsageWindow,
    now: datetime,
    key: KeyRecord | None,
) -> list[FieldProblem]:
    """Each reason a well-formed report could not take effect (design.md §4a), judged as
    the fold will judge it: at ``t = min(occurred_at, now)``, no earlier than its key's issue.
    ``key`` is what the registry knows of the report's key (None: nothing).

    The report's time is compared in UTC: pydantic gives each parsed time its own zone
    object, which Python asks for its offset at every comparison with another zone's time
    (0.59 µs a comparison, against 0.04 in one zone; up to ten of them a report)."""
    problems = []
    occurred_at = report.occurred_at.astimezone(UTC)
    if occurred_at > now + window.max_future_skew:
        problems.append(
            FieldProblem(
                "occurred_at",
                f"is more than {_human(window.max_future_skew)} in the future of ingest's clock "
                f"({now.isoformat()}); check the gateway's clock",
                "occurred_in_future",
            )
        )
    elif occurred_at < now - window.max_lateness:
        problems.append(
            FieldProblem(
                "occurred_at",
                f"is older than the lateness bound of {_human(window.max_lateness)}; "
                "usage this late is no longer accepted",
                "occurred_too_late",
            )
        )
    t = min(occurred_at, now)
    if key is not None and t < key.issued_at:
        t = min(key.issued_at, now)  # the gateway's clock runs behind: the call came after it
    problems.extend(_pricing_problems(report, card, t))
    if problems:
        return problems
    return _plan_problems(report, occurred_at, key, t, window)


def _pricing_problems(report: UsageReport, card: RateCard, t: datetime) -> list[FieldProblem]:
    try:
        models = card.in_force(t).models
    except NoRateCardInForce as error:
        return [FieldProblem("occurred_at", str(error), "no_rate_card_in_force")]
    model = models.get(report.model)
    if model is None:
        return [
            FieldProblem(
                "model",
                f"model '{report.model}' not found or not supported by the rate card",
                "unknown_model",
            )
        ]
    if model.modality == "text":
        tokens = report.input_tokens + report.cached_tokens
        if tokens > model.context_window:
            return [
                FieldProblem(
                    "input_tokens",
                    f"input and cached tokens ({tokens}) exceed {report.model}'s context of "
                    f"{model.context_window} tokens",
                    "tokens_beyond_context",
                )
            ]
        if report.output_tokens > model.context_window:
            return [
                FieldProblem(
                    "output_tokens",
                    f"output tokens exceed {report.model}'s context of "
                    f"{model.context_window} tokens",
                    "tokens_beyond_context",
                )
            ]
    try:
        quote = price(model, priced_usage(report))
    except UnpriceableUsage as error:
        return [FieldProblem("images", str(error), "unpriceable_usage")]
    if quote.total_micro > MAX_PRICE_MICRO:
        return [FieldProblem("body", "the usage would cost more than any request may", "too_dear")]
    return []


def _plan_problems(
    report: UsageReport,
    occurred_at: datetime,
    key: KeyRecord | None,
    t: datetime,
    window: UsageWindow,
) -> list[FieldProblem]:
    """Whether the report's key, seat and subscription could be charged at ``t``
    (``occurred_at``: the report's, in UTC)."""
    if key is None or key.key_id != report.key_id or key.account_id != report.account_id:
        return [FieldProblem("key_id", f"API key '{report.key_id}' is not known", "unknown_key")]
    if key.subscription_id != report.subscription_id or key.seat_id != report.seat_id:
        return [
            FieldProblem(
                "key_id",
                f"API key '{key.key_id}' belongs to seat '{key.seat_id}' of subscription "
                f"'{key.subscription_id}'",
                "key_not_for_seat",
            )
        ]
    if occurred_at < key.issued_at - window.max_future_skew:
        return [
            FieldProblem(
                "occurred_at",
                f"is before API key '{key.key_id}' was issued ({key.issued_at.isoformat()})",
                "key_not_yet_issued",
            )
        ]
    if key.revoked_at is not None and key.revoked_at <= t:
        return [
            FieldProblem(
                "key_id",
                f"API key '{key.key_id}' was revoked at {key.revoked_at.isoformat()}",
                "key_revoked",
            )
        ]
    if t < key.started_at or (key.ends_at is not None and key.ends_at <= t):
        return [
            FieldProblem(
                "occurred_at",
                f"subscription '{key.subscription_id}' is not active at {t.isoformat()}",
                "subscription_not_active",
            )
        ]
    if t < key.seat_added_at or (key.seat_removed_at is not None and key.seat_removed_at <= t):
        return [
            FieldProblem(
                "occurred_at",
                f"seat '{key.seat_id}' is not active at {t.isoformat()}",
                "seat_not_active",
            )
        ]
    return []


def _human(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds} seconds"


def envelope(
    event_type: str,
    payload: Contract,
    *,
    event_id: uuid.UUID,
    account_id: str,
    occurred_at: datetime,
    recorded_at: datetime,
) -> bytes:
    """The JSON of a `metering.events.v1` message (the contract's envelope)."""
    return _envelope_json(
        event_type, payload.model_dump(mode="json"), event_id, account_id, occurred_at, recorded_at
    )


def _envelope_json(
    event_type: str,
    payload: dict[str, Any],
    event_id: uuid.UUID,
    account_id: str,
    occurred_at: datetime,
    recorded_at: datetime,
) -> bytes:
    """The envelope's layout, around a payload already in its JSON shape. orjson writes the
    times: the text of `isoformat()` (tests/unit/test_ingest_rules.py checks it) at a quarter
    of its cost."""
    return orjson.dumps(
        {
            "event_id": str(event_id),
            "event_type": event_type,
            "schema_version": SCHEMA_VERSION,
            "occurred_at": occurred_at,
            "recorded_at": recorded_at,
            "account_id": account_id,
            "payload": payload,
        }
    )


_CARRIED_BY_ENVELOPE = frozenset({"account_id", "occurred_at"})


def usage_envelope(
    report: UsageReport, dumped: dict[str, Any], *, event_id: uuid.UUID, recorded_at: datetime
) -> bytes:
    """The JSON of a report's `UsageRecorded` event; `dumped` is `report.model_dump(mode="json")`.

    The payload is the report less what the envelope carries, taken from the one dump ingest
    makes of each report (it digests the same dump): a validated report is not dumped,
    validated again as a `UsageRecorded` and dumped a second time (issue 17). That it is
    exactly `UsageRecorded`'s own JSON is tested (tests/unit/test_ingest_rules.py).
    """
    payload = {k: v for k, v in dumped.items() if k not in _CARRIED_BY_ENVELOPE}
    return _envelope_json(
        "UsageRecorded", payload, event_id, report.account_id, report.occurred_at, recorded_at
    )
