"""What every `QuotaStore` must do, as one abstract test class.

Subclassed per implementation (the pattern of eventsourcing's tests/persistence.py):
tests/unit/test_stores.py runs it against `MemoryQuotaStore`, and
tests/integration/test_stores.py against `PostgresQuotaStore` on a migrated database.
The subclass provides the `store` fixture (an empty store for one group) and `outbox`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from metering.core.fold import fold
from metering.core.state import AccountState
from metering.publishing import Outgoing
from metering.snapshots import snapshot_json
from quota.seat_status import Published
from quota.store import AccountRow, QuotaStore
from tests.unit.event_builders import DEFAULT_CARD, Facts, at

T0 = at("2026-01-10 09:00")


def folded(account_id: str, usages: int = 0) -> AccountState:
    """A team of one seat whose key made `usages` requests, an hour apart."""
    facts = Facts(account_id)
    events = facts.team(T0, ("s1", "standard"))
    events += [facts.usage(T0 + timedelta(hours=n + 1), "s1", credits=1) for n in range(usages)]
    return fold(events, DEFAULT_CARD)[0]


class QuotaStoreContract:
    """Not collected itself (no `Test` prefix): its subclasses are."""

    @pytest.fixture
    async def store(self) -> Any:
        raise NotImplementedError

    async def outbox(self, store: Any) -> list[tuple[str, str, bytes]]:
        """(topic, key, value) of the queued messages, in order."""
        raise NotImplementedError

    async def test_an_empty_store_holds_nothing(self, store: QuotaStore) -> None:
        assert await store.applied_offsets("t.events") == {}
        assert await store.accounts() == []
        assert await store.accounts(0) == []
        assert await store.statuses() == {}
        assert await store.forget_request_ids() == 0

    async def test_accounts_come_back_by_partition(self, store: QuotaStore) -> None:
        a, b = folded("acct-a"), folded("acct-b")
        await store.store_accounts(
            [AccountRow("acct-a", 0, snapshot_json(a)), AccountRow("acct-b", 1, snapshot_json(b))],
            [],
        )
        everything = {
            s.account_id: (s.partition, s.state.to_dict()) for s in await store.accounts()
        }
        assert everything == {"acct-a": (0, a.to_dict()), "acct-b": (1, b.to_dict())}
        assert [s.account_id for s in await store.accounts(1)] == ["acct-b"]
        assert await store.accounts(2) == []

    async def test_a_later_write_replaces_the_state_and_its_partition(
        self, store: QuotaStore
    ) -> None:
        await store.store_accounts([AccountRow("acct-m", 0, snapshot_json(folded("acct-m")))], [])
        later = folded("acct-m", usages=2)
        await store.store_accounts([AccountRow("acct-m", 4, snapshot_json(later))], [])
        (stored,) = await store.accounts()
        assert (stored.partition, snapshot_json(stored.state)) == (4, snapshot_json(later))

    async def test_request_ids_come_back_while_remembered_and_are_then_forgotten(
        self, store: QuotaStore
    ) -> None:
        state = folded("acct-r", usages=1)
        clock = state.clock
        assert clock is not None
        deducted = [
            ("acct-r", "kept", clock + timedelta(hours=1)),
            ("acct-r", "moved", clock - timedelta(hours=1)),
            ("acct-r", "moved", clock + timedelta(hours=2)),  # the last time given wins
            ("acct-r", "gone", clock),
        ]
        await store.store_accounts([AccountRow("acct-r", 0, snapshot_json(state))], deducted)
        (stored,) = await store.accounts(0)
        assert stored.state.request_ids == {
            "kept": clock + timedelta(hours=1),
            "moved": clock + timedelta(hours=2),
        }
        assert await store.forget_request_ids() == 1  # "gone": remembered until the clock
        assert await store.forget_request_ids() == 0
        (stored,) = await store.accounts()
        assert set(stored.state.request_ids) == {"kept", "moved"}

    async def test_the_last_published_status_of_each_seat_is_kept(self, store: QuotaStore) -> None:
        suspended = Published("suspended", "quota_exhausted")
        await store.store_statuses({"s1": ("acct-1", Published("active", "seat_added"))})
        await store.store_statuses({"s1": ("acct-1", suspended), "s2": ("acct-2", suspended)})
        await store.store_statuses({})
        assert await store.statuses() == {"s1": ("acct-1", suspended), "s2": ("acct-2", suspended)}
        assert await store.statuses(["acct-2", "other"]) == {"s2": ("acct-2", suspended)}
        assert await store.statuses([]) == {}

    async def test_outgoing_messages_are_queued_in_order(self, store: QuotaStore) -> None:
        sent = [Outgoing("t.status", "s1", b"1"), Outgoing("t.status", "s2", b"2")]
        await store.add_outgoing(sent)
        await store.add_outgoing([])
        await store.add_outgoing(sent[:1])
        assert await self.outbox(store) == [(m.topic, m.key, m.value) for m in [*sent, sent[0]]]
