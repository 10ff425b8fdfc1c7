"""What every `LedgerStore` must do, as one abstract test class.

Subclassed per implementation (the pattern of eventsourcing's tests/persistence.py):
tests/unit/test_stores.py runs it against `MemoryLedgerStore`, and
tests/integration/test_stores.py against `PostgresLedgerStore` on a migrated database.
The subclass provides the `store` fixture (an empty store) and `outbox`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ledger.policy import archive_row, entry_row
from ledger.store import AccountWrite, LedgerStore, StaleAccountState, month_start
from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import fold
from metering.publishing import Outgoing
from metering.snapshots import snapshot_json
from tests.unit.event_builders import DEFAULT_CARD, Facts, at

T0 = at("2026-01-10 09:00")


class LedgerStoreContract:
    """Not collected itself (no `Test` prefix): its subclasses are."""

    @pytest.fixture
    async def store(self) -> Any:
        raise NotImplementedError

    async def outbox(self, store: Any) -> list[tuple[str, str, bytes]]:
        """(topic, key, value) of the queued messages, in order."""
        raise NotImplementedError

    @staticmethod
    def _folded(account_id: str, usage_at: list[Any]) -> tuple[list[Any], Any, list[Any]]:
        """Archive rows, final state and entry rows of a team whose seat has usages at the
        given times (each recorded then)."""
        facts = Facts(account_id)
        events = facts.team(T0, ("s1", "standard"))
        events += [facts.usage(t, "s1", credits=1, recorded=t) for t in usage_at]
        state, results = fold(events, DEFAULT_CARD)
        by_source = {e.event_id: e for e in events}
        entries = [
            entry_row(by_source[r.payload.usage_event_id], r, r.model_dump_json())
            if r.event_type == "CreditsDeducted"
            else entry_row(events[0], r, r.model_dump_json())
            for r in results
            if r.event_type != "SeatStatusChanged"
        ]
        archive = [archive_row(_Record(i), e) for i, e in enumerate(events)]
        return archive, state, entries

    async def test_an_empty_store_holds_nothing(self, store: LedgerStore) -> None:
        assert await store.archived(["00000000-0000-0000-0000-000000000001"]) == set()
        assert await store.archived([]) == set()
        assert await store.accounts(["nobody"]) == {}
        assert await store.subscription_account("sub-1") is None

    async def test_archived_events_are_found_by_id(self, store: LedgerStore) -> None:
        archive, _, entries = self._folded("acct-a", [T0 + timedelta(hours=1)])
        await store.ensure_archive_month(month_start(T0))
        await store.append(archive, entries)
        ids = [str(row[0]) for row in archive]
        assert await store.archived([*ids, "00000000-0000-0000-0000-000000000001"]) == set(ids)

    async def test_an_archive_row_needs_its_month(self, store: LedgerStore) -> None:
        archive, _, _ = self._folded("acct-m", [])
        with pytest.raises(Exception, match="partition"):  # PostgreSQL's error or the twin's
            await store.append(archive, [])

    async def test_each_write_must_advance_the_stored_version_by_one(
        self, store: LedgerStore
    ) -> None:
        _, state, _ = self._folded("acct-v", [])
        text = snapshot_json(state)
        await store.store_accounts([AccountWrite("acct-v", text, 1)])
        (stored,) = (await store.accounts(["acct-v", "other"])).values()
        assert stored.version == 1
        assert snapshot_json(stored.state) == text
        with pytest.raises(StaleAccountState):
            await store.store_accounts([AccountWrite("acct-v", text, 1)])

    async def test_a_new_account_takes_the_version_it_is_written_with(
        self, store: LedgerStore
    ) -> None:
        _, state, _ = self._folded("acct-n", [])
        await store.store_accounts([AccountWrite("acct-n", snapshot_json(state), 2)])
        assert (await store.accounts(["acct-n"]))["acct-n"].version == 2

    async def test_a_later_version_replaces_the_state(self, store: LedgerStore) -> None:
        _, state, _ = self._folded("acct-w", [])
        await store.store_accounts([AccountWrite("acct-w", snapshot_json(state), 1)])
        _, later, _ = self._folded("acct-w", [T0 + timedelta(hours=1)])
        await store.store_accounts([AccountWrite("acct-w", snapshot_json(later), 2)])
        stored = (await store.accounts(["acct-w"]))["acct-w"]
        assert (stored.version, snapshot_json(stored.state)) == (2, snapshot_json(later))

    async def test_loaded_states_remember_their_recent_request_ids(
        self, store: LedgerStore
    ) -> None:
        old, recent = T0 + timedelta(hours=1), T0 + REQUEST_ID_MEMORY + timedelta(hours=3)
        archive, state, entries = self._folded("acct-r", [old, recent])
        for month in {month_start(row[1]) for row in archive}:
            await store.ensure_archive_month(month)
        await store.append(archive, entries)
        await store.store_accounts([AccountWrite("acct-r", snapshot_json(state), 1)])
        loaded = (await store.accounts(["acct-r"]))["acct-r"].state
        assert loaded.to_dict() == state.to_dict()
        assert loaded.request_ids == state.request_ids
        assert len(state.request_ids) == 1  # the old one is forgotten

    async def test_the_first_account_to_hold_a_subscription_keeps_it(
        self, store: LedgerStore
    ) -> None:
        await store.add_subscriptions([("sub-1", "acct-1")])
        await store.add_subscriptions([("sub-1", "acct-2"), ("sub-2", "acct-2")])
        assert await store.subscription_account("sub-1") == "acct-1"
        assert await store.subscription_account("sub-2") == "acct-2"

    async def test_outgoing_messages_are_queued_in_order(self, store: LedgerStore) -> None:
        sent = [Outgoing("t.ledger", "k1", b"1"), Outgoing("t.dlq", "k2", b"2")]
        await store.add_outgoing(sent)
        await store.add_outgoing([])
        await store.add_outgoing(sent[:1])
        queued = await self.outbox(store)
        assert queued == [(m.topic, m.key, m.value) for m in [*sent, sent[0]]]


class _Record:
    """The fields of a consumer record an archive row takes."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "t.events", 0, offset
        self.key, self.value = b"key", b"{}"
