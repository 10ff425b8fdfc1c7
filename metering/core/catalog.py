"""What can be bought: seat tiers and the shared quota pack (design.md §2)."""

from datetime import timedelta
from typing import Final

from metering.core.money import MICRO
from schemas.base import Tier

TIER_QUOTA_MICRO: Final[dict[Tier, int]] = {
    "standard": 25_000 * MICRO,
    "advanced": 100_000 * MICRO,
    "premium": 250_000 * MICRO,
}
"""Credits per seat per subscription month."""

TIER_RANK: Final[dict[Tier, int]] = {"standard": 0, "advanced": 1, "premium": 2}
"""Ordering of tiers: a change to a higher rank is an upgrade."""

PACK_CREDITS_MICRO: Final = 625_000 * MICRO
PACK_VALIDITY_MONTHS: Final = 1


def is_upgrade(current: Tier, new: Tier) -> bool:
    return TIER_RANK[new] > TIER_RANK[current]


USAGE_LATENESS_LIMIT: Final = timedelta(hours=72)
"""The latest a usage may be reported after it happened (ingest's
``USAGE_MAX_LATENESS_SECONDS`` may be set lower, never higher). A pack's unused credits are
forfeited for good only once this much time has passed its expiry: until then a late
report of a call made while the pack was valid still draws on it."""

REQUEST_ID_MEMORY: Final = USAGE_LATENESS_LIMIT + timedelta(hours=1)
"""How long after a usage's time its request id is remembered to refuse a second charge:
as long as a report of it can still be accepted, plus a margin for clock skew."""

MAX_PRICE_MICRO: Final = 10**15
"""The most one request may cost (a billion credits): anything dearer is a hostile or broken
report, refused rather than stored (it would overflow the ledger's 64-bit sums)."""
