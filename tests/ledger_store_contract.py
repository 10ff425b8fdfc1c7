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
from ledger.store import (
    ENTRY_COLUMNS,
    AccountWrite,
    LedgerStore,
    StaleAccountState,
    UsageFilter,
    UsageTotals,
    month_start,
)
from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import fold
from metering.core.money import MICRO
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
        return LedgerStoreContract._stored(events)

    @staticmethod
    def _stored(events: list[Any]) -> tuple[list[Any], Any, list[Any]]:
        """Archive rows, final state and entry rows of folding `events`."""
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

    async def test_usage_totals_sum_the_deductions_a_filter_selects(
        self, store: LedgerStore
    ) -> None:
        facts = Facts("acct-t")
        hour = timedelta(hours=1)
        events = [
            *facts.team(T0, ("s1", "standard"), ("s2", "advanced")),
            facts.usage(T0 + hour, "s1", credits=25_000),  # all of the seat's month
            facts.usage(T0 + 2 * hour, "s1", credits=5),  # all of it shortfall
            facts.buy_pack(T0 + 2.5 * hour, "p1"),
            facts.usage(T0 + 3 * hour, "s1", credits=7),  # paid by the pack
            facts.usage(
                T0 + 4 * hour,
                "s2",
                model="glm-5",
                input_tokens=1_000,
                cached_tokens=2_000,
                output_tokens=300,
            ),
            facts.usage(T0 + 5 * hour, "s2", model="qwen-image-2.0", images=3),
        ]
        archive, _, entries = self._stored(events)
        await store.ensure_archive_month(month_start(T0))
        await store.append(archive, entries)
        rows = [dict(zip(ENTRY_COLUMNS, row, strict=True)) for row in entries]
        glm_micro, image_micro = (
            r["price_micro"]
            for r in rows
            if r["event_type"] == "CreditsDeducted" and r["model"] != "qwen3.6-plus"
        )
        assert glm_micro > 0
        assert image_micro > 0

        def totals(**where: Any) -> Any:
            return store.usage_totals(
                UsageFilter(
                    where.pop("subscription_id", "sub-1"),
                    where.pop("since", None),
                    where.pop("until", None),
                    where.pop("seat_id", None),
                    where.pop("model", None),
                )
            )

        assert await totals() == UsageTotals(
            requests=5,
            price_micro=(25_012 * MICRO) + glm_micro + image_micro,
            seat_paid_micro=(25_000 * MICRO) + glm_micro + image_micro,
            packs_paid_micro=7 * MICRO,
            shortfall_micro=5 * MICRO,
            input_tokens=25_012 * 5_000 + 1_000,
            cached_tokens=2_000,
            output_tokens=300,
            images=3,
        )
        assert await totals(seat_id="s2", model="glm-5") == UsageTotals(
            requests=1,
            price_micro=glm_micro,
            seat_paid_micro=glm_micro,
            input_tokens=1_000,
            cached_tokens=2_000,
            output_tokens=300,
        )
        assert (await totals(model="qwen3.6-plus")).requests == 3
        # from inclusive, to exclusive, by the usage's time
        assert await totals(since=T0 + 2 * hour, until=T0 + 3 * hour) == UsageTotals(
            requests=1, price_micro=5 * MICRO, shortfall_micro=5 * MICRO, input_tokens=25_000
        )
        assert (await totals(since=T0 + 3 * hour)).requests == 3
        assert (await totals(until=T0 + hour)).requests == 0
        for nothing in ({"seat_id": "s3"}, {"model": "gpt-9"}, {"subscription_id": "sub-2"}):
            assert await totals(**nothing) == UsageTotals()

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
