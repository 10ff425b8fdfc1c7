"""Usage details: deductions as rows for people, their cursors and their CSV form.

One row per deduction (one model request), with the buckets that paid for it as parts: a
team admin looks for a request and wants to see its usage and price once, not once per
bucket. Rows are newest first; a cursor is the (time, id) of the last row of a page,
opaque to clients (url-safe base64 of JSON).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from metering.core.money import to_decimal_string as credits
from schemas.api import PaidFrom, UsageRow


class BadCursor(ValueError):
    """A cursor this service did not make."""


def encode_cursor(deducted_at: datetime, event_id: str) -> str:
    raw = orjson.dumps([deducted_at.isoformat(), event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, event_id = orjson.loads(raw)
        deducted_at = datetime.fromisoformat(when)
    except (binascii.Error, ValueError, TypeError) as error:
        raise BadCursor(f"cursor {cursor!r} is not one this API returned") from error
    if deducted_at.tzinfo is None or not isinstance(event_id, str):
        raise BadCursor(f"cursor {cursor!r} is not one this API returned")
    try:
        uuid.UUID(event_id)
        deducted_at = in_utc(deducted_at)
    except ValueError as error:
        raise BadCursor(f"cursor {cursor!r} is not one this API returned") from error
    return deducted_at, event_id


def in_utc(moment: datetime) -> datetime:
    """`moment` in UTC, or ValueError when that falls outside years 1 to 9999 (e.g.
    0001-01-01T00:00:00+01:00), which neither Python nor PostgreSQL can hold."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is out of range") from None


_PRODUCT = {"seat": "seat_quota", "pack": "shared_pack"}


def usage_row(deduction: dict[str, Any]) -> UsageRow:
    """The row of one ``CreditsDeducted`` event (its JSON body as stored in the ledger)."""
    p = deduction["payload"]
    used = p["usage"]
    return UsageRow(
        deducted_at=datetime.fromisoformat(deduction["occurred_at"]),
        request_id=p["request_id"],
        event_id=deduction["event_id"],
        seat_id=p["seat_id"],
        key_id=p["key_id"],
        model=p["model"],
        tier=p["tier"],
        input_tokens=used["input_tokens"],
        cached_tokens=used["cached_tokens"],
        output_tokens=used["output_tokens"],
        thinking=used["thinking"],
        images=used["images"],
        tool_calls=used["tool_calls"],
        coefficient=p["coefficient"],
        rate_card_version=p["rate_card_version"],
        credits=credits(p["price_micro"]),
        paid_from=paid_from(p["receipt"]),
        shortfall=credits(p["shortfall_micro"]),
    )


def paid_from(receipt: Iterable[dict[str, Any]]) -> list[PaidFrom]:
    """A deduction's receipt lines as the usage details show them (the product that paid)."""
    return [
        PaidFrom(
            product=_PRODUCT[line["bucket"]],
            bucket_id=line["bucket_id"],
            credits=credits(line["amount_micro"]),
        )
        for line in receipt
    ]


CSV_COLUMNS = (
    "deducted_at",
    "request_id",
    "seat_id",
    "key_id",
    "model",
    "tier",
    "deducted_product",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "thinking",
    "images",
    "tool_calls",
    "coefficient",
    "credits",
    "shortfall",
    "rate_card_version",
    "event_id",
)


def csv_header() -> str:
    return _csv_line(CSV_COLUMNS)


def csv_rows(rows: Iterable[UsageRow]) -> str:
    """Rows as CSV lines; the products paid are ``product:bucket=credits`` joined by ``; ``
    and the tool calls ``tool=count`` joined by ``; ``."""
    return "".join(
        _csv_line(
            (
                row.deducted_at.isoformat(),
                row.request_id,
                row.seat_id,
                row.key_id,
                row.model,
                row.tier,
                "; ".join(f"{p.product}:{p.bucket_id}={p.credits}" for p in row.paid_from),
                row.input_tokens,
                row.cached_tokens,
                row.output_tokens,
                "true" if row.thinking else "false",
                row.images,
                "; ".join(f"{tool}={n}" for tool, n in sorted(row.tool_calls.items())),
                row.coefficient,
                row.credits,
                row.shortfall,
                row.rate_card_version,
                row.event_id,
            )
        )
        for row in rows
    )


def _csv_line(values: Iterable[object]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(safe_cell(v) for v in values)
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def safe_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, with a leading single quote
    (shown as text, the value still readable); numbers and other cells as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
