"""Quota's projection (policy, memory, snapshots) against the in-memory store: no Kafka, no
PostgreSQL. (tests/integration/test_quota.py and test_quota_restart.py run it for real.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import orjson

from metering.consumer import Record
from metering.core.catalog import REQUEST_ID_MEMORY
from metering.core.fold import fold
from metering.snapshots import snapshot_json
from quota.policy import QuotaBatch, fold_event
from quota.projection import QuotaProjection
from quota.seat_status import Published
from quota.store import MemoryQuotaStore
from tests.unit.event_builders import DEFAULT_CARD, Facts, at
from tests.unit.projections import Transactions, records

T0 = at("2026-01-10 09:00")
EVENTS = "test.events"


class _Conn:
    def transaction(self, **_: Any) -> Any:
        return asynccontextmanager(_nothing)()


async def _nothing() -> AsyncIterator[None]:
    yield


class _Pool:
    def acquire(self) -> Any:
        @asynccontextmanager
        async def conn() -> AsyncIterator[_Conn]:
            yield _Conn()

        return conn()


class Quota(Transactions[MemoryQuotaStore, QuotaProjection]):
    """A quota projection over a memory store, with the consumer's commit and rollback."""

    def __init__(self, store: MemoryQuotaStore | None = None, now: datetime = T0) -> None:
        self.store = store or MemoryQuotaStore()
        self.now = now
        self.projection = QuotaProjection(
            DEFAULT_CARD,
            lambda: _Pool(),  # type: ignore[arg-type, return-value]
            group="test-group",
            events_topic=EVENTS,
            seat_status_topic="test.seat-status",
            clock=lambda: self.now,
            on_commit=lambda: None,
            store=lambda _conn, _group: self.store,
        )

    def committing(self, batch: list[Record]) -> None:
        offsets = self.store.offsets.setdefault(EVENTS, {})
        for record in batch:
            offsets[record.partition] = record.offset + 1

    def statuses(self) -> list[tuple[str, str]]:
        return [(m.key, orjson.loads(m.value)["payload"]["status"]) for m in self.store.outbox]


def exhausting(facts: Facts) -> list[Any]:
    return [
        *facts.team(T0, ("s1", "standard")),
        facts.usage(T0 + timedelta(hours=1), "s1", credits=25_000, request_id="r-all"),
    ]


async def test_a_batch_stores_states_request_ids_and_the_statuses_it_publishes() -> None:
    quota, facts = Quota(), Facts("acct-q")
    events = exhausting(facts)
    await quota.batch(records(events))
    state = fold(events, DEFAULT_CARD)[0]
    assert quota.store.states["acct-q"] == (0, snapshot_json(state))
    assert list(quota.store.request_ids) == [("acct-q", "r-all")]
    assert quota.statuses() == [("s1", "active"), ("s1", "suspended")]
    assert quota.store.published["s1"] == ("acct-q", Published("suspended", "quota_exhausted"))
    assert quota.projection.index.account_of_seat("s1") is not None


async def test_a_status_already_published_is_not_published_again() -> None:
    batch, facts = QuotaBatch(), Facts("acct-p")
    state = fold(facts.team(T0, ("s1", "standard")), DEFAULT_CARD)[0]
    usage = facts.usage(T0 + timedelta(hours=1), "s1", credits=25_000, request_id="r-p")
    published = {"s1": Published("suspended", "quota_exhausted")}
    assert fold_event(state, usage, DEFAULT_CARD, published, batch) == []
    assert batch.touched == {"acct-p"}
    assert batch.deducted[0][1] == "r-p"


def test_the_request_ids_to_store_are_those_deducted_until_a_repeat_can_no_longer_come() -> None:
    """quota folds without building deductions; it stores each deducted request id with the
    time the fold remembers it until, and none of a rejected usage."""
    batch, facts = QuotaBatch(), Facts("acct-d")
    state = fold(facts.team(T0, ("s1", "standard")), DEFAULT_CARD)[0]
    charged = T0 + timedelta(hours=1)
    for usage in [
        facts.usage(charged, "s1", credits=1, request_id="r-1"),
        facts.usage(charged, "s1", credits=1, request_id="r-1"),  # a repeat: rejected
        facts.usage(charged, "s1", credits=1, request_id="r-2", key="key-none"),  # rejected
        facts.usage(charged + timedelta(minutes=1), "s1", credits=1, request_id="r-3"),
    ]:
        fold_event(state, usage, DEFAULT_CARD, {}, batch)
    assert batch.deducted == [
        ("acct-d", "r-1", charged + REQUEST_ID_MEMORY),
        ("acct-d", "r-3", charged + timedelta(minutes=1) + REQUEST_ID_MEMORY),
    ]


async def test_a_restart_loads_what_was_stored() -> None:
    first, facts = Quota(), Facts("acct-s")
    events = exhausting(facts)
    await first.batch(records(events))
    again = Quota(first.store)
    await again.projection.start()
    assert again.projection.ready()
    state = again.projection.index.accounts["acct-s"]
    assert snapshot_json(state) == first.store.states["acct-s"][1]
    assert set(state.request_ids) == {"r-all"}
    # the stored status is known: the same status is not published twice
    later = facts.usage(T0 + timedelta(hours=2), "s1", credits=1)
    await again.batch(records([later], first=len(events)))
    assert again.statuses() == first.statuses()


async def test_a_rolled_back_batch_is_reloaded_from_the_store_before_the_next() -> None:
    quota, facts = Quota(), Facts("acct-r")
    team = facts.team(T0, ("s1", "standard"))
    usage = [facts.usage(T0 + timedelta(hours=1), "s1", credits=10, request_id="r-1")]
    await quota.batch(records(team))
    await quota.rolled_back_batch(records(usage, first=len(team)))
    await quota.batch(records(usage, first=len(team)))  # read again from the stored offset
    assert quota.store.states["acct-r"][1] == snapshot_json(fold(team + usage, DEFAULT_CARD)[0])
    assert list(quota.store.request_ids) == [("acct-r", "r-1")]  # charged, not a duplicate


async def test_the_timer_publishes_what_time_changed_and_stores_it() -> None:
    quota, facts = Quota(), Facts("acct-t")
    await quota.batch(records(exhausting(facts)))
    assert await quota.projection.publish_time_changes() == 0  # nothing due yet
    quota.now = at("2026-02-10 09:00:01")  # the month rolled over
    assert await quota.projection.publish_time_changes() == 1
    assert quota.statuses()[-1] == ("s1", "active")
    assert quota.store.published["s1"][1].status == "active"


async def test_request_ids_past_their_memory_are_forgotten() -> None:
    quota, facts = Quota(), Facts("acct-f")
    await quota.batch(records(exhausting(facts)))
    assert await quota.projection.forget_request_ids() == 0
    later = at("2026-02-20 09:00")
    await quota.batch(records([facts.buy_pack(later, "p1")], first=5))
    assert await quota.projection.forget_request_ids() == 1
