"""What a deduction's receipt adds up to: the one place that sums receipt lines.

A receipt (design §4) lists the buckets that paid one usage, in deduction order: at most one
``seat`` line (the seat's quota for the month that contains the usage) and one ``pack`` line
per shared pack drawn from. Every line pays more than zero; what no bucket paid is the
deduction's shortfall, so ``sum(receipt) + shortfall == price``.

The ledger's entry rows (``seat_paid_micro``, ``packs_paid_micro``), its credit metrics, the
replay's totals and the statements rebuilt from a replay all read a receipt through these
functions. The SQL twin of `paid_by_pack` is the ledger's statement query (``_PACK_PAID`` in
services/ledger/store.py), which sums the same lines inside PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from schemas.results import ReceiptLine


class Paid(NamedTuple):
    """What the seat's month and the shared packs paid of one deduction."""

    seat_micro: int
    packs_micro: int

    @property
    def total_micro(self) -> int:
        return self.seat_micro + self.packs_micro


def paid_by_bucket(receipt: Iterable[ReceiptLine]) -> Paid:
    """The seat-paid and pack-paid parts of a receipt."""
    seat = packs = 0
    for line in receipt:
        if line["bucket"] == "seat":
            seat += line["amount_micro"]
        else:
            packs += line["amount_micro"]
    return Paid(seat, packs)


def paid_by_pack(receipt: Iterable[ReceiptLine]) -> dict[str, int]:
    """What each shared pack paid of a receipt, by pack id (packs that paid nothing absent)."""
    paid: dict[str, int] = {}
    for line in receipt:
        if line["bucket"] == "pack":
            paid[line["bucket_id"]] = paid.get(line["bucket_id"], 0) + line["amount_micro"]
    return paid
