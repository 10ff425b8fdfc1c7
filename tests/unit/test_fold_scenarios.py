"""Scenarios from design.md §2-§4, as a table: facts in, receipts, statuses and rejections out."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from event_builders import DEFAULT_CARD, Facts, at, payloads

from metering.core.fold import fold
from metering.core.money import MICRO, parse_credits
from metering.core.views import seat_view, subscription_view
from schemas.envelope import FactEvent

Amount = int | str
"""Credits: an int, or a decimal string such as "3.18"."""


@dataclass
class Scenario:
    name: str
    events: list[FactEvent]
    receipts: dict[str, list[tuple[str, Amount]]] = field(default_factory=dict)
    """request id -> (bucket id, credits) in drawing order; "shortfall" names the uncovered part."""
    statuses: list[tuple[str, str, str]] = field(default_factory=list)
    """(seat, status, reason) of every SeatStatusChanged, in order (seat_added ones left out)."""
    rejections: list[str] = field(default_factory=list)
    expired_packs: list[tuple[str, Amount]] = field(default_factory=list)
    views: list[tuple[str, datetime, Amount, Amount, str]] = field(default_factory=list)
    """(seat, at, seat remaining, shared remaining, status) from seat_view."""
    remaining: dict[str, tuple[Amount, Amount]] = field(default_factory=dict)
    """request id -> (seat remaining, shared remaining) as its deduction reports them."""


def micro(amount: Amount) -> int:
    return parse_credits(amount) if isinstance(amount, str) else amount * MICRO


JAN31 = at("2026-01-31 10:00")


def seed_example() -> Scenario:
    f = Facts()
    return Scenario(
        "seed price example",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(
                at("2026-02-01 00:00"),
                request_id="r1",
                input_tokens=8_349,
                cached_tokens=40_794,
                output_tokens=573,
            ),
        ],
        receipts={"r1": [("seat-1:2026-01", "3.18")]},
        views=[("seat-1", at("2026-02-01 00:00"), "24996.82", 0, "active")],
    )


def packs_soonest_expiry_first() -> Scenario:
    f = Facts()
    return Scenario(
        "seat month first, then packs by soonest expiry, ties by id",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.buy_pack(at("2026-02-10 00:00"), "pack-b"),
            f.buy_pack(at("2026-02-01 00:00"), "pack-c"),
            f.buy_pack(at("2026-02-01 00:00"), "pack-a"),
            f.usage(at("2026-02-15 00:00"), request_id="r1", credits=725_000),
            f.usage(at("2026-02-16 00:00"), request_id="r2", credits=500_000),
            # packs a and c expire on Mar 1; their forfeiture is final 72 h later
            f.usage(at("2026-03-04 00:00"), request_id="r3", credits=30_000),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 25_000), ("pack-a", 625_000), ("pack-c", 75_000)],
            "r2": [("pack-c", 500_000)],
            "r3": [("seat-1:2026-02", 25_000), ("pack-b", 5_000)],
        },
        expired_packs=[("pack-a", 0), ("pack-c", 50_000)],
        views=[("seat-1", at("2026-03-04 00:00"), 0, 620_000, "active")],
        # what the packs valid at the usage's time have left, all of them summed
        remaining={"r1": (0, 1_175_000), "r2": (0, 675_000), "r3": (0, 620_000)},
    )


def late_usage_draws_on_expired_pack() -> Scenario:
    f = Facts()
    return Scenario(
        "a call made while a pack was valid, reported after its expiry (within the lateness "
        "allowed), draws on it; the forfeiture counts what is left once the allowance passed",
        [
            *f.team(at("2026-01-01 00:00"), ("seat-1", "standard")),
            f.usage(at("2026-01-02 00:00"), request_id="r0", credits=25_000),
            f.buy_pack(at("2026-01-05 00:00"), "pack-a"),
            # pack-a expires Feb 5; the call of Feb 4 23:00 is reported on Feb 6
            f.usage(
                at("2026-02-04 23:00"),
                request_id="r1",
                credits=100_000,
                recorded=at("2026-02-06 00:00"),
            ),
            f.usage(at("2026-02-06 01:00"), request_id="r2", credits=30_000),
            f.usage(at("2026-02-09 00:00"), request_id="r3", credits=1_000),
        ],
        receipts={
            "r0": [("seat-1:2026-01", 25_000)],
            "r1": [("seat-1:2026-02", 25_000), ("pack-a", 75_000)],
            "r2": [("shortfall", 30_000)],
            "r3": [("shortfall", 1_000)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "pack_purchased"),
            ("seat-1", "suspended", "quota_exhausted"),
        ],
        expired_packs=[("pack-a", 550_000)],
    )


def pack_expiry_ties_by_purchase() -> Scenario:
    f = Facts()
    return Scenario(
        "packs expiring together: earliest purchase first (Jan 30 and Jan 31 both end Feb 28)",
        [
            *f.team(at("2026-01-01 00:00"), ("seat-1", "standard")),
            f.usage(at("2026-01-02 00:00"), request_id="r0", credits=25_000),
            f.buy_pack(at("2026-01-31 10:00"), "pack-a"),
            f.buy_pack(at("2026-01-30 10:00"), "pack-z"),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=700_000),
        ],
        receipts={
            "r0": [("seat-1:2026-01", 25_000)],
            "r1": [("seat-1:2026-02", 25_000), ("pack-z", 625_000), ("pack-a", 50_000)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "pack_purchased"),
        ],
    )


def month_bounds_from_jan31() -> Scenario:
    f = Facts()
    return Scenario(
        "a start on Jan 31 ends February on the 28th and March on the 31st",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-02-28 09:59"), request_id="r1", credits=1),
            f.usage(at("2026-02-28 10:00"), request_id="r2", credits=1),
            f.usage(at("2026-03-31 09:59"), request_id="r3", credits=1),
            f.usage(at("2026-03-31 10:00"), request_id="r4", credits=1),
            f.usage(at("2026-04-30 10:00"), request_id="r5", credits=1),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 1)],
            "r2": [("seat-1:2026-02", 1)],
            "r3": [("seat-1:2026-02", 1)],
            "r4": [("seat-1:2026-03", 1)],
            "r5": [("seat-1:2026-04", 1)],
        },
    )


def upgrade_now_downgrade_next_month() -> Scenario:
    f = Facts()
    return Scenario(
        "upgrade applies to the current month, downgrade from the next",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=20_000),
            f.change_tier(at("2026-02-02 00:00"), "seat-1", "advanced"),
            f.usage(at("2026-02-03 00:00"), request_id="r2", credits=85_000),
            f.change_tier(at("2026-02-04 00:00"), "seat-1", "standard"),
            f.usage(at("2026-03-01 00:00"), request_id="r3", credits=30_000),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 20_000)],
            "r2": [("seat-1:2026-01", 80_000), ("shortfall", 5_000)],
            "r3": [("seat-1:2026-02", 25_000), ("shortfall", 5_000)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "month_rolled_over"),
            ("seat-1", "suspended", "quota_exhausted"),
        ],
        views=[("seat-1", at("2026-02-04 00:00"), 0, 0, "suspended")],
    )


def upgrade_resumes() -> Scenario:
    f = Facts()
    return Scenario(
        "an exhausted seat resumes when upgraded",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=25_000),
            f.change_tier(at("2026-02-02 00:00"), "seat-1", "premium"),
            f.usage(at("2026-02-03 00:00"), request_id="r2", credits=1),
        ],
        receipts={"r1": [("seat-1:2026-01", 25_000)], "r2": [("seat-1:2026-01", 1)]},
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "tier_upgraded"),
        ],
        views=[("seat-1", at("2026-02-03 00:00"), 224_999, 0, "active")],
    )


def late_usage_after_rollover() -> Scenario:
    f = Facts()
    return Scenario(
        "late usage after a rollover draws from its own, older month",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-03-01 00:00"), request_id="r1", credits=10),
            f.usage(at("2026-02-27 23:00"), request_id="late", credits=24_000),
            f.usage(at("2026-02-27 23:30"), request_id="later", credits=2_000),
        ],
        receipts={
            "r1": [("seat-1:2026-02", 10)],
            "late": [("seat-1:2026-01", 24_000)],
            "later": [("seat-1:2026-01", 1_000), ("shortfall", 1_000)],
        },
        views=[("seat-1", at("2026-03-01 00:00"), 24_990, 0, "active")],
    )


def late_usage_recorded_after_rollover() -> Scenario:
    f = Facts()
    month_end = at("2026-02-28 10:00")
    return Scenario(
        "late usage using up the ended month, recorded after it, leaves the seat active",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(
                month_end - timedelta(seconds=1),
                request_id="late",
                credits=25_000,
                recorded=month_end + timedelta(seconds=5),
            ),
        ],
        receipts={"late": [("seat-1:2026-01", 25_000)]},
        views=[("seat-1", month_end, 25_000, 0, "active")],
    )


def exhaustion_then_pack() -> Scenario:
    f = Facts()
    return Scenario(
        "exhaustion suspends with the month end as reset; a pack purchase resumes",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=25_001),
            f.buy_pack(at("2026-02-02 00:00"), "pack-a"),
            f.usage(at("2026-02-03 00:00"), request_id="r2", credits=10),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 25_000), ("shortfall", 1)],
            "r2": [("pack-a", 10)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "pack_purchased"),
        ],
        views=[
            ("seat-1", at("2026-02-03 00:00"), 0, 624_990, "active"),
            ("seat-1", at("2026-03-01 23:59"), 25_000, 624_990, "active"),
            ("seat-1", at("2026-03-02 00:00"), 25_000, 0, "active"),
        ],
    )


def pack_drained_suspends_other_seats() -> Scenario:
    f = Facts()
    return Scenario(
        "draining the last pack suspends every seat whose month is used up",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard")),
            f.buy_pack(at("2026-02-01 00:00"), "pack-a"),
            f.usage(at("2026-02-02 00:00"), "seat-2", request_id="r1", credits=25_000),
            f.usage(at("2026-02-03 00:00"), "seat-1", request_id="r2", credits=650_000),
        ],
        receipts={
            "r1": [("seat-2:2026-01", 25_000)],
            "r2": [("seat-1:2026-01", 25_000), ("pack-a", 625_000)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-2", "suspended", "quota_exhausted"),
        ],
    )


def rollover_resumes() -> Scenario:
    f = Facts()
    return Scenario(
        "the month rolling over resumes a suspended seat at the next fact",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=25_000),
            f.usage(at("2026-03-01 00:00"), "seat-2", request_id="r2", credits=1),
        ],
        receipts={"r1": [("seat-1:2026-01", 25_000)], "r2": [("seat-2:2026-02", 1)]},
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "month_rolled_over"),
        ],
        views=[
            ("seat-1", at("2026-02-28 09:59"), 0, 0, "suspended"),
            ("seat-1", at("2026-02-28 10:00"), 25_000, 0, "active"),
        ],
    )


def cancelled_subscription() -> Scenario:
    f = Facts()
    return Scenario(
        "cancellation suspends every seat; later usage and packs are refused, earlier usage counts",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "premium")),
            f.cancel(at("2026-02-10 00:00")),
            f.usage(at("2026-02-11 00:00"), request_id="after", credits=1),
            f.usage(at("2026-02-09 00:00"), request_id="before", credits=1),
            f.buy_pack(at("2026-02-12 00:00"), "pack-a"),
            f.cancel(at("2026-02-13 00:00")),
        ],
        receipts={"before": [("seat-1:2026-01", 1)]},
        statuses=[
            ("seat-1", "suspended", "subscription_cancelled"),
            ("seat-2", "suspended", "subscription_cancelled"),
        ],
        rejections=[
            "subscription_inactive",
            "subscription_inactive",
            "subscription_already_cancelled",
        ],
        views=[("seat-1", at("2026-02-11 00:00"), 24_999, 0, "suspended")],
    )


def expired_subscription() -> Scenario:
    f = Facts()
    return Scenario(
        "a subscription reaching expires_at suspends its seats when the next fact arrives",
        [
            f.activate(JAN31, expires_at=at("2026-02-28 10:00")),
            f.add_seat(JAN31, "seat-1"),
            f.issue_key(JAN31, "seat-1"),
            f.usage(at("2026-02-28 09:00"), request_id="r1", credits=1),
            f.usage(at("2026-02-28 11:00"), request_id="r2", credits=1),
            f.activate(at("2026-03-01 00:00"), sub="sub-2"),
        ],
        receipts={"r1": [("seat-1:2026-01", 1)]},
        statuses=[("seat-1", "suspended", "subscription_expired")],
        rejections=["subscription_inactive"],
    )


def refused_facts() -> Scenario:
    f = Facts()
    t = at("2026-02-01 00:00")
    return Scenario(
        "facts that do not fit are rejected with a reason and change nothing",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard")),
            f.usage(t, request_id="r1", credits=1),
            f.usage(t, request_id="r1", credits=1),
            f.usage(t, "seat-9", request_id="r2", credits=1),
            f.usage(t, key="key-9", request_id="r3", credits=1),
            f.usage(t, key="key-seat-2", request_id="r4", credits=1),
            f.usage(t, model="gpt-5", request_id="r5", credits=1),
            f.usage(t, sub="sub-9", request_id="r6", credits=1),
            f.usage(t, model="wan2.7-image", request_id="r7", images=2),
            f.usage(t, request_id="r8", images=1),
            f.activate(t, sub="sub-2"),
            f.activate(t),
            f.add_seat(t, "seat-3", sub="sub-9"),
            f.add_seat(t, "seat-1"),
            f.issue_key(t, "seat-1"),
            f.revoke_key(t, "key-seat-1"),
            f.revoke_key(t, "key-seat-1"),
            f.usage(at("2026-02-02 00:00"), request_id="r9", credits=1),
            f.usage(at("2026-01-31 23:00"), request_id="r10", credits=1),
            f.remove_seat(t, "seat-2"),
            f.usage(at("2026-02-02 00:00"), "seat-2", request_id="r11", credits=1),
            f.issue_key(t, "seat-2", key="key-new"),
            f.remove_seat(t, "seat-2"),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 1)],
            "r7": [("seat-1:2026-01", 320)],
            "r10": [("seat-1:2026-01", 1)],
        },
        statuses=[("seat-2", "suspended", "seat_removed")],
        rejections=[
            "duplicate_request_id",
            "unknown_seat",
            "unknown_key",
            "key_not_for_seat",
            "unknown_model",
            "unknown_subscription",
            "unpriceable_usage",
            "account_has_active_subscription",
            "duplicate_subscription",
            "unknown_subscription",
            "duplicate_seat",
            "duplicate_key",
            "key_revoked",
            "key_revoked",
            "seat_inactive",
            "seat_inactive",
            "seat_inactive",
        ],
    )


def downgrade_waits_for_next_month() -> Scenario:
    f = Facts()
    return Scenario(
        "a downgrade keeps the month's higher quota; the lower one applies from the next month",
        [
            *f.team(JAN31, ("seat-1", "advanced")),
            f.usage(at("2026-02-01 00:00"), request_id="r1", credits=10_000),
            f.change_tier(at("2026-02-02 00:00"), "seat-1", "standard"),
            f.usage(at("2026-02-03 00:00"), request_id="r2", credits=50_000),
            f.usage(at("2026-03-01 00:00"), request_id="r3", credits=30_000),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 10_000)],
            "r2": [("seat-1:2026-01", 50_000)],
            "r3": [("seat-1:2026-02", 25_000), ("shortfall", 5_000)],
        },
        statuses=[("seat-1", "suspended", "quota_exhausted")],
        views=[
            ("seat-1", at("2026-02-27 00:00"), 40_000, 0, "active"),
            ("seat-1", at("2026-02-28 10:00"), 0, 0, "suspended"),  # 25,000 of 25,000 used
        ],
    )


def premium_to_advanced_is_a_downgrade() -> Scenario:
    f = Facts()
    return Scenario(
        "tiers rank standard < advanced < premium: premium to advanced waits for the next month",
        [
            *f.team(JAN31, ("seat-1", "premium"), ("seat-2", "advanced")),
            f.change_tier(at("2026-02-01 00:00"), "seat-1", "advanced"),
            f.change_tier(at("2026-02-01 00:00"), "seat-2", "premium"),
            f.usage(at("2026-02-02 00:00"), request_id="r1", credits=200_000),
            f.usage(at("2026-02-02 00:00"), "seat-2", request_id="r2", credits=200_000),
            f.usage(at("2026-03-01 00:00"), request_id="r3", credits=200_000),
        ],
        receipts={
            "r1": [("seat-1:2026-01", 200_000)],
            "r2": [("seat-2:2026-01", 200_000)],
            "r3": [("seat-1:2026-02", 100_000), ("shortfall", 100_000)],
        },
        statuses=[("seat-1", "suspended", "quota_exhausted")],
    )


def packs_valid_from_purchase_to_expiry() -> Scenario:
    f = Facts()
    return Scenario(
        "a pack pays for calls from its purchase instant up to (not at) its expiry; "
        "a late report of a call made before the purchase does not draw on it",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r0", credits=25_000),
            f.buy_pack(at("2026-02-10 00:00"), "pack-a"),
            f.usage(
                at("2026-02-09 23:00"),
                request_id="before",
                credits=1,
                recorded=at("2026-02-10 01:00"),
            ),
            f.usage(at("2026-02-10 00:00"), request_id="at_purchase", credits=1),
            f.usage(at("2026-03-01 00:00"), request_id="r3", credits=25_000),
            f.usage(at("2026-03-09 23:59"), request_id="last", credits=1),
            f.usage(at("2026-03-10 00:00"), request_id="at_expiry", credits=1),
        ],
        receipts={
            "r0": [("seat-1:2026-01", 25_000)],
            "before": [("shortfall", 1)],
            "at_purchase": [("pack-a", 1)],
            "r3": [("seat-1:2026-02", 25_000)],
            "last": [("pack-a", 1)],
            "at_expiry": [("shortfall", 1)],
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "pack_purchased"),
            ("seat-1", "suspended", "quota_exhausted"),
        ],
        views=[
            ("seat-1", at("2026-02-09 23:59"), 0, 0, "suspended"),
            ("seat-1", at("2026-02-10 00:00"), 0, 624_998, "active"),
            ("seat-1", at("2026-03-09 23:59"), 0, 624_998, "active"),
            ("seat-1", at("2026-03-10 00:00"), 0, 0, "suspended"),
        ],
    )


def every_pack_forfeiture_reported_once() -> Scenario:
    f = Facts()
    return Scenario(
        "each pack's forfeiture is reported once, 72 h after its expiry, whatever came before",
        [
            *f.team(at("2026-01-01 00:00"), ("seat-1", "standard")),
            f.buy_pack(at("2026-01-05 00:00"), "pack-a"),  # expires Feb 5, final Feb 8
            f.buy_pack(at("2026-01-20 00:00"), "pack-b"),  # expires Feb 20, final Feb 23
            f.usage(at("2026-02-07 23:00"), request_id="r1", credits=1),
            f.usage(at("2026-02-09 00:00"), request_id="r2", credits=1),
            f.usage(at("2026-02-24 00:00"), request_id="r3", credits=1),
            f.usage(at("2026-02-25 00:00"), request_id="r4", credits=1),
            f.usage(at("2026-03-10 00:00"), request_id="r5", credits=1),
        ],
        receipts={
            **{f"r{n}": [("seat-1:2026-02", 1)] for n in range(1, 5)},
            "r5": [("seat-1:2026-03", 1)],
        },
        expired_packs=[("pack-a", 625_000), ("pack-b", 625_000)],
    )


def cancelled_before_expiry() -> Scenario:
    f = Facts()
    return Scenario(
        "a plan ends at the earlier of its cancellation and its expiry",
        [
            f.activate(JAN31, expires_at=at("2026-03-31 10:00")),
            f.add_seat(JAN31, "seat-1"),
            f.issue_key(JAN31, "seat-1"),
            f.cancel(at("2026-02-10 00:00")),
            f.usage(at("2026-02-11 00:00"), request_id="r1", credits=1),
            f.activate(at("2026-02-12 00:00"), sub="sub-2"),
        ],
        statuses=[("seat-1", "suspended", "subscription_cancelled")],
        rejections=["subscription_inactive"],
    )


def expired_plan_cannot_be_cancelled() -> Scenario:
    f = Facts()
    return Scenario(
        "an expired plan stays expired: a cancellation after it is refused",
        [
            f.activate(JAN31, expires_at=at("2026-02-28 10:00")),
            f.add_seat(JAN31, "seat-1"),
            f.cancel(at("2026-02-28 10:00")),
            f.cancel(at("2026-03-01 00:00")),
        ],
        statuses=[("seat-1", "suspended", "subscription_expired")],
        rejections=["subscription_inactive", "subscription_inactive"],
    )


def late_usage_draining_a_pack_suspends_the_seats_relying_on_it() -> Scenario:
    f = Facts()
    return Scenario(
        "a late call of last month that drains a pack still valid now suspends the seats "
        "whose month is used up, though the caller's own status does not change",
        [
            *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "standard")),
            f.buy_pack(at("2026-02-25 00:00"), "pack-a"),
            f.usage(at("2026-03-01 00:00"), "seat-2", request_id="r1", credits=25_001),
            f.usage(
                at("2026-02-27 00:00"),
                "seat-1",
                request_id="late",
                credits=649_999,
                recorded=at("2026-03-01 01:00"),
            ),
        ],
        receipts={
            "r1": [("seat-2:2026-02", 25_000), ("pack-a", 1)],
            "late": [("seat-1:2026-01", 25_000), ("pack-a", 624_999)],
        },
        statuses=[("seat-2", "suspended", "quota_exhausted")],
        remaining={"r1": (0, 624_999), "late": (0, 0)},
    )


def pack_dated_after_its_recording() -> Scenario:
    f = Facts()
    return Scenario(
        "a purchase dated ahead of the server's clock counts from when it was recorded",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(at("2026-02-01 00:00"), request_id="r0", credits=25_000),
            f.buy_pack(
                at("2026-02-10 00:00"), "pack-a", purchased_at=at("2026-02-10 04:00")
            ),  # recorded at 00:00:01
            f.usage(at("2026-02-10 01:00"), request_id="r1", credits=1),
            f.usage(at("2026-03-10 00:00:02"), request_id="r2", credits=25_001),
        ],
        receipts={
            "r0": [("seat-1:2026-01", 25_000)],
            "r1": [("pack-a", 1)],
            "r2": [("seat-1:2026-02", 25_000), ("shortfall", 1)],  # expired Mar 10 00:00:01
        },
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "pack_purchased"),
            ("seat-1", "suspended", "quota_exhausted"),
        ],
        views=[("seat-1", at("2026-02-10 00:00:01"), 0, 624_999, "active")],
    )


def usage_before_its_key_was_issued() -> Scenario:
    f = Facts()
    month_end = at("2026-02-28 10:00")
    return Scenario(
        "a gateway clock behind ours: usage dated before its key's issue is charged at the "
        "issue, in that month",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.issue_key(month_end, "seat-1", key="key-new"),
            f.usage(
                month_end - timedelta(seconds=30),
                key="key-new",
                request_id="r1",
                credits=1,
                recorded=month_end + timedelta(seconds=2),
            ),
        ],
        receipts={"r1": [("seat-1:2026-02", 1)]},
    )


def plans_back_to_back() -> Scenario:
    f = Facts()

    def plan(when: str, sub: str, start: str, end: str | None) -> FactEvent:
        event: FactEvent = f.event(
            "SubscriptionActivated",
            at(when),
            subscription_id=sub,
            started_at=at(start),
            expires_at=None if end is None else at(end),
        )
        return event

    return Scenario(
        "plans may follow each other: one starting as another ends, one ending as a scheduled "
        "one starts; a plan cancelled to end at its start blocks nothing",
        [
            plan("2026-02-01 00:00", "sub-1", "2026-02-01 00:00", "2026-03-01 00:00"),
            plan("2026-02-02 00:00", "sub-2", "2026-03-01 00:00", "2026-04-01 00:00"),
            plan("2026-02-03 00:00", "sub-3", "2026-05-01 00:00", "2026-06-01 00:00"),
            plan("2026-02-04 00:00", "sub-4", "2026-04-01 00:00", "2026-05-01 00:00"),
            plan("2026-02-05 00:00", "sub-5", "2026-04-30 23:59", "2026-05-01 00:01"),
            plan("2026-02-06 00:00", "sub-6", "2026-07-01 00:00", None),
            f.event(
                "SubscriptionCancelled",
                at("2026-02-07 00:00"),
                subscription_id="sub-6",
                at=at("2026-07-01 00:00"),
            ),
            plan("2026-02-08 00:00", "sub-7", "2026-06-01 00:00", None),
        ],
        rejections=["account_has_active_subscription"],
    )


def gateway_clock_ahead() -> Scenario:
    f = Facts()
    month_end = at("2026-02-28 10:00")
    return Scenario(
        "usage dated after it was recorded (the gateway's clock runs ahead) is charged as of "
        "its recording",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.usage(
                month_end + timedelta(seconds=30),
                request_id="r1",
                credits=1,
                recorded=month_end - timedelta(seconds=1),
            ),
        ],
        receipts={"r1": [("seat-1:2026-01", 1)]},
    )


def time_falls_due_at_the_exact_instant() -> Scenario:
    f = Facts()
    month_end = at("2026-02-28 10:00")
    return Scenario(
        "a fact recorded exactly when a month ends, or when a forfeiture becomes final, sees it",
        [
            *f.team(JAN31, ("seat-1", "standard")),
            f.buy_pack(at("2026-02-01 00:00"), "pack-a"),  # expires Mar 1, final Mar 4
            f.usage(at("2026-02-02 00:00"), request_id="r1", credits=650_000),
            f.revoke_key(month_end - timedelta(seconds=1), "key-9"),  # recorded at month_end
            f.revoke_key(at("2026-03-03 23:59:59"), "key-9"),  # recorded Mar 4 00:00
        ],
        receipts={"r1": [("seat-1:2026-01", 25_000), ("pack-a", 625_000)]},
        statuses=[
            ("seat-1", "suspended", "quota_exhausted"),
            ("seat-1", "active", "month_rolled_over"),
        ],
        rejections=["unknown_key", "unknown_key"],
        expired_packs=[("pack-a", 0)],
    )


SCENARIOS: list[Callable[[], Scenario]] = [
    seed_example,
    packs_soonest_expiry_first,
    late_usage_draws_on_expired_pack,
    pack_expiry_ties_by_purchase,
    month_bounds_from_jan31,
    upgrade_now_downgrade_next_month,
    upgrade_resumes,
    late_usage_after_rollover,
    late_usage_recorded_after_rollover,
    exhaustion_then_pack,
    pack_drained_suspends_other_seats,
    rollover_resumes,
    cancelled_subscription,
    expired_subscription,
    refused_facts,
    downgrade_waits_for_next_month,
    premium_to_advanced_is_a_downgrade,
    packs_valid_from_purchase_to_expiry,
    every_pack_forfeiture_reported_once,
    cancelled_before_expiry,
    expired_plan_cannot_be_cancelled,
    late_usage_draining_a_pack_suspends_the_seats_relying_on_it,
    pack_dated_after_its_recording,
    usage_before_its_key_was_issued,
    plans_back_to_back,
    gateway_clock_ahead,
    time_falls_due_at_the_exact_instant,
]


@pytest.mark.parametrize("build", SCENARIOS, ids=lambda build: build.__name__)
def test_scenario(build: Callable[[], Scenario]) -> None:
    scenario = build()
    state, results = fold(scenario.events, DEFAULT_CARD)

    receipts = {
        d.request_id: [(line["bucket_id"], line["amount_micro"]) for line in d.receipt]
        + ([("shortfall", d.shortfall_micro)] if d.shortfall_micro else [])
        for d in payloads(results, "CreditsDeducted")
    }
    expected = {
        request: [(bucket, micro(amount)) for bucket, amount in lines]
        for request, lines in scenario.receipts.items()
    }
    assert receipts == expected

    statuses = [
        (s.seat_id, s.status, s.reason)
        for s in payloads(results, "SeatStatusChanged")
        if s.reason != "seat_added"
    ]
    assert statuses == scenario.statuses
    assert [r.reason for r in payloads(results, "FactRejected")] == scenario.rejections
    expired = [(p.pack_id, p.unused_micro) for p in payloads(results, "PackExpired")]
    assert expired == [(pack, micro(unused)) for pack, unused in scenario.expired_packs]

    left = {
        d.request_id: (d.seat_remaining_micro, d.shared_remaining_micro)
        for d in payloads(results, "CreditsDeducted")
        if d.request_id in scenario.remaining
    }
    assert left == {r: (micro(a), micro(b)) for r, (a, b) in scenario.remaining.items()}

    for seat, when, seat_left, shared_left, status in scenario.views:
        view = seat_view(state, seat, when)
        assert view is not None
        got = (view.seat_remaining_micro, view.shared_remaining_micro, view.status)
        assert got == (micro(seat_left), micro(shared_left), status), (seat, when)


def test_team_overview() -> None:
    f = Facts()
    events = [
        *f.team(JAN31, ("seat-1", "standard"), ("seat-2", "advanced"), ("seat-3", "premium")),
        f.buy_pack(at("2026-02-01 00:00"), "pack-a"),
        f.buy_pack(at("2026-02-20 00:00"), "pack-b"),
        f.usage(at("2026-02-02 00:00"), "seat-1", credits=30_000),
        f.usage(at("2026-02-03 00:00"), "seat-2", credits=10_000),
        f.remove_seat(at("2026-02-04 00:00"), "seat-3"),
    ]
    state, _ = fold(events, DEFAULT_CARD)
    overview = subscription_view(state, "sub-1", at("2026-02-10 00:00"))
    assert overview is not None
    assert [s.seat_id for s in overview.seats] == ["seat-1", "seat-2"]
    assert [(p.pack_id, p.valid, p.remaining_micro) for p in overview.packs] == [
        ("pack-a", True, micro(620_000)),
        ("pack-b", False, micro(625_000)),
    ]
    assert overview.quota_micro == micro(25_000 + 100_000 + 625_000)
    assert overview.used_micro == micro(25_000 + 10_000 + 5_000)
    assert overview.remaining_micro == micro(90_000 + 620_000)
    assert overview.utilization_basis_points == 533  # 40,000 / 750,000 = 5.33 %
    assert overview.status == "active"
    assert (overview.month_start, overview.month_end) == (JAN31, at("2026-02-28 10:00"))
    assert subscription_view(state, "sub-9", JAN31) is None
    assert seat_view(state, "seat-9", JAN31) is None
    removed = seat_view(state, "seat-3", at("2026-02-10 00:00"))
    assert removed is not None
    assert (removed.status, removed.reason, removed.resets_at) == (
        "suspended",
        "seat_removed",
        None,
    )
