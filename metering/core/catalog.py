"""What can be bought: seat tiers and the shared quota pack (design.md §2)."""

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
