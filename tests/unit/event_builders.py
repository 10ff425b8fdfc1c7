"""Builders of well-formed facts for one account, with deterministic ids, for the unit tests."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from metering.core.ratecard import RateCard, load_rate_card
from schemas.envelope import FACT_ADAPTER, FactEvent, ResultEvent

DEFAULT_CARD: RateCard = load_rate_card(
    Path(__file__).parents[2] / "metering" / "ratecards" / "default.yaml"
)
TOKENS_PER_CREDIT = 5_000
"""qwen3.6-plus input tokens per credit (200 credits per million)."""
_NAMESPACE = uuid.UUID("0f2c6f4e-0000-4000-8000-000000000000")


def at(text: str) -> datetime:
    """``at("2026-01-31 10:00")`` -> an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class Facts:
    """Facts of one account. Defaults: subscription ``sub-1``, key ``key-<seat>``."""

    def __init__(self, account_id: str = "acct-1") -> None:
        self.account_id = account_id
        self.count = 0

    def event(
        self, event_type: str, when: datetime, recorded: datetime | None = None, **payload: Any
    ) -> FactEvent:
        """A fact that occurred at ``when``, recorded a second later unless ``recorded``."""
        self.count += 1
        return FACT_ADAPTER.validate_python(
            {
                "event_id": str(uuid.uuid5(_NAMESPACE, f"{self.account_id}/{self.count}")),
                "event_type": event_type,
                "schema_version": 1,
                "occurred_at": when,
                "recorded_at": recorded or when + timedelta(seconds=1),
                "account_id": self.account_id,
                "payload": payload,
            }
        )

    def activate(
        self, when: datetime, sub: str = "sub-1", expires_at: datetime | None = None
    ) -> FactEvent:
        return self.event(
            "SubscriptionActivated",
            when,
            subscription_id=sub,
            started_at=when,
            expires_at=expires_at,
        )

    def cancel(self, when: datetime, sub: str = "sub-1") -> FactEvent:
        return self.event("SubscriptionCancelled", when, subscription_id=sub, at=when)

    def add_seat(
        self, when: datetime, seat: str = "seat-1", tier: str = "standard", sub: str = "sub-1"
    ) -> FactEvent:
        return self.event(
            "SeatAdded", when, subscription_id=sub, seat_id=seat, tier=tier, member=f"{seat}@team"
        )

    def change_tier(self, when: datetime, seat: str, tier: str, sub: str = "sub-1") -> FactEvent:
        return self.event("SeatTierChanged", when, subscription_id=sub, seat_id=seat, tier=tier)

    def remove_seat(self, when: datetime, seat: str, sub: str = "sub-1") -> FactEvent:
        return self.event("SeatRemoved", when, subscription_id=sub, seat_id=seat)

    def issue_key(
        self, when: datetime, seat: str = "seat-1", key: str | None = None, sub: str = "sub-1"
    ) -> FactEvent:
        return self.event(
            "ApiKeyIssued",
            when,
            subscription_id=sub,
            seat_id=seat,
            key_id=key or f"key-{seat}",
            key_hash="ab" * 32,
        )

    def revoke_key(self, when: datetime, key: str) -> FactEvent:
        return self.event("ApiKeyRevoked", when, key_id=key)

    def buy_pack(
        self, when: datetime, pack: str, sub: str = "sub-1", purchased_at: datetime | None = None
    ) -> FactEvent:
        return self.event(
            "SharedPackPurchased",
            when,
            subscription_id=sub,
            pack_id=pack,
            purchased_at=purchased_at or when,
        )

    def usage(
        self,
        when: datetime,
        seat: str = "seat-1",
        *,
        credits: int = 0,
        key: str | None = None,
        request_id: str | None = None,
        model: str = "qwen3.6-plus",
        sub: str = "sub-1",
        recorded: datetime | None = None,
        **counts: Any,
    ) -> FactEvent:
        """A usage; ``credits=n`` makes it cost exactly n credits of qwen3.6-plus input."""
        fields: dict[str, Any] = {
            "input_tokens": credits * TOKENS_PER_CREDIT,
            "cached_tokens": 0,
            "output_tokens": 0,
            "thinking": False,
            "tool_calls": {},
            "images": 0,
        }
        fields.update(counts)
        return self.event(
            "UsageRecorded",
            when,
            recorded,
            request_id=request_id or f"req-{self.count + 1}",
            subscription_id=sub,
            seat_id=seat,
            key_id=key or f"key-{seat}",
            model=model,
            **fields,
        )

    def team(self, when: datetime, *seats: tuple[str, str]) -> list[FactEvent]:
        """Activate ``sub-1`` at ``when`` with ``(seat, tier)`` seats, each with its key."""
        events = [self.activate(when)]
        for seat, tier in seats:
            events += [self.add_seat(when, seat, tier), self.issue_key(when, seat)]
        return events


def payloads(results: list[ResultEvent], event_type: str) -> list[Any]:
    return [r.payload for r in results if r.event_type == event_type]
