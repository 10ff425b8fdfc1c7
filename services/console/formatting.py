"""Numbers and times for people: thousands separators, two decimals for credits, UTC times
(the page's tiny script adds the viewer's local time beside them) and countdowns."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from markupsafe import Markup, escape

NONE = "\N{EN DASH}"
"""Shown where there is no value."""
CENT = Decimal("0.01")


def credits(value: str | Decimal | None) -> str:
    """`"24996.8200"` → `24,996.82`; credits are decimal strings in the APIs, never floats."""
    if value is None or value == "":
        return NONE
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return str(value)
    return f"{amount.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


def count(value: int | None) -> str:
    """`40794` → `40,794`."""
    return NONE if value is None else f"{value:,}"


def percent(value: str | Decimal) -> str:
    """`"12.5"` → `12.50 %`."""
    return f"{Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP):,.2f} %"


def parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def utc_text(value: str | datetime | None) -> str:
    """`2026-11-29 15:03:58 UTC`."""
    if value is None:
        return NONE
    return parse_time(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(value: str | datetime | None) -> Markup:
    """A `<time>` in UTC, readable without JavaScript; the page's script adds local time."""
    if value is None:
        return Markup(NONE)
    moment = parse_time(value)
    iso = moment.isoformat().replace("+00:00", "Z")
    return Markup(
        f'<time datetime="{escape(iso)}">{escape(utc_text(moment))}</time>'
        f'<span class="local" data-utc="{escape(iso)}"></span>'
    )


def countdown(value: str | datetime | None, now: datetime) -> str:
    """How long until `value`: `in 3 d 4 h`, `in 5 h 2 min`, `in 40 s`, or `passed`."""
    if value is None:
        return NONE
    seconds = int((parse_time(value) - now).total_seconds())
    if seconds <= 0:
        return "passed"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"in {days} d {hours} h"
    if hours:
        return f"in {hours} h {minutes} min"
    if minutes:
        return f"in {minutes} min {secs} s"
    return f"in {secs} s"


REASONS = {
    "quota_exhausted": "the seat's monthly credits and the team's packs are used up",
    "subscription_cancelled": "the subscription was cancelled",
    "subscription_expired": "the subscription has expired",
    "subscription_not_started": "the subscription has not started yet",
    "seat_removed": "the seat was removed",
}


def reason(value: str | None) -> str:
    if value is None:
        return ""
    return REASONS.get(value, value.replace("_", " "))
