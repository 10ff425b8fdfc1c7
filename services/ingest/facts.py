"""What ingest checks beyond a body's shape, and the envelopes it appends.

Pure functions: the clock reading (`now`) and the rate card come in as arguments.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson

from metering.core.ratecard import NoRateCardInForce, RateCard
from schemas.api import UsageReport
from schemas.base import SCHEMA_VERSION, Contract
from schemas.facts import UsageRecorded


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
    report: UsageReport, card: RateCard, window: UsageWindow, now: datetime
) -> list[FieldProblem]:
    """Each reason to refuse an otherwise well-formed report."""
    problems = []
    if report.occurred_at > now + window.max_future_skew:
        problems.append(
            FieldProblem(
                "occurred_at",
                f"is more than {_human(window.max_future_skew)} in the future of ingest's clock "
                f"({now.isoformat()}); check the gateway's clock",
                "occurred_in_future",
            )
        )
    elif report.occurred_at < now - window.max_lateness:
        problems.append(
            FieldProblem(
                "occurred_at",
                f"is older than the lateness bound of {_human(window.max_lateness)}; "
                "usage this late is no longer accepted",
                "occurred_too_late",
            )
        )
    try:
        models = card.in_force(report.occurred_at).models
    except NoRateCardInForce as error:
        problems.append(FieldProblem("occurred_at", str(error), "no_rate_card_in_force"))
    else:
        if report.model not in models:
            problems.append(
                FieldProblem(
                    "model",
                    f"model '{report.model}' not found or not supported by the rate card",
                    "unknown_model",
                )
            )
    return problems


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
    return orjson.dumps(
        {
            "event_id": str(event_id),
            "event_type": event_type,
            "schema_version": SCHEMA_VERSION,
            "occurred_at": occurred_at.isoformat(),
            "recorded_at": recorded_at.isoformat(),
            "account_id": account_id,
            "payload": payload.model_dump(mode="json"),
        }
    )


def usage_recorded(report: UsageReport) -> UsageRecorded:
    """The event payload of a usage report: the report less what the envelope carries."""
    return UsageRecorded.model_validate(report.model_dump(exclude={"account_id", "occurred_at"}))
