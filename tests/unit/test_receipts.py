"""The one receipt arithmetic (metering/core/receipts.py), and that it agrees with the fold's
conservation: what the buckets paid plus the shortfall is the price."""

from __future__ import annotations

from datetime import timedelta

from event_builders import DEFAULT_CARD, Facts, at

from metering.core.fold import fold
from metering.core.receipts import Paid, paid_by_bucket, paid_by_pack
from schemas.results import ReceiptLine

SEAT: ReceiptLine = {"bucket": "seat", "bucket_id": "s1:2026-01", "amount_micro": 5}
P1: ReceiptLine = {"bucket": "pack", "bucket_id": "p1", "amount_micro": 7}
P2: ReceiptLine = {"bucket": "pack", "bucket_id": "p2", "amount_micro": 11}


def test_a_receipt_splits_into_seat_paid_and_packs_paid() -> None:
    assert paid_by_bucket([]) == Paid(0, 0)
    assert paid_by_bucket([SEAT]) == Paid(5, 0)
    assert paid_by_bucket([SEAT, P1, P2]) == Paid(5, 18)
    assert paid_by_bucket([P1, P2]).total_micro == 18


def test_each_pack_is_summed_by_its_id() -> None:
    assert paid_by_pack([SEAT]) == {}
    assert paid_by_pack([SEAT, P1, P2, P1]) == {"p1": 14, "p2": 11}


def test_the_parts_of_a_real_deduction_add_up_to_its_price() -> None:
    facts = Facts("acct-rc")
    t = at("2026-01-10 09:00")
    events = [
        *facts.team(t, ("s1", "standard")),
        facts.buy_pack(t, "p1"),
        facts.usage(t + timedelta(hours=1), "s1", credits=25_001),
        facts.usage(t + timedelta(hours=2), "s1", credits=700_000),
    ]
    deductions = [
        r.payload for r in fold(events, DEFAULT_CARD)[1] if r.event_type == "CreditsDeducted"
    ]
    splits = [(paid_by_bucket(d.receipt), paid_by_pack(d.receipt)) for d in deductions]
    assert [(p.seat_micro, p.packs_micro) for p, _ in splits] == [
        (25_000_000_000, 1_000_000),
        (0, 624_999_000_000),
    ]
    for d, (paid, packs) in zip(deductions, splits, strict=True):
        assert paid.total_micro + d.shortfall_micro == d.price_micro
        assert sum(packs.values()) == paid.packs_micro
