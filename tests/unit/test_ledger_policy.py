"""The ledger's projection policy and its cache, against the in-memory store: no Kafka, no
PostgreSQL. (tests/integration/test_ledger.py runs the same projection for real.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import orjson
import pytest

from ledger.policy import Tally, not_yet_archived, parse
from ledger.projection import LedgerProjection, LedgerTopics
from ledger.store import MemoryLedgerStore, StaleAccountState
from metering.core.fold import fold
from metering.core.state import AccountState
from metering.publishing import BrokerUnavailable, Outgoing
from metering.snapshots import snapshot_json
from schemas.envelope import FactEvent
from tests.unit.event_builders import DEFAULT_CARD, Facts, at
from tests.unit.projections import Transactions, records

TOPICS = LedgerTopics(ledger="test.ledger", dlq="test.dlq")
T0 = at("2026-01-10 09:00")


class Ledger(Transactions[MemoryLedgerStore, LedgerProjection]):
    """A projection over a memory store, with the consumer's commit and rollback."""

    def __init__(
        self,
        store: MemoryLedgerStore | None = None,
        publish_now: Callable[[Sequence[Outgoing]], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store or MemoryLedgerStore()
        self.tallies: list[Tally] = []
        self.publish_now = publish_now
        self.projection = self.new_projection()

    def new_projection(self) -> LedgerProjection:
        return LedgerProjection(
            DEFAULT_CARD,
            TOPICS,
            on_commit=lambda: None,
            store=lambda _conn: self.store,
            on_tally=self.tallies.append,
            publish_now=self.publish_now,
        )

    def state(self, account_id: str) -> Any:
        return orjson.loads(self.store.states[account_id][0])


def folded(events: list[FactEvent]) -> tuple[Any, list[str]]:
    """The pure fold's stored state and the bodies of the entries the ledger keeps."""
    state, results = fold(events, DEFAULT_CARD)
    kept = [r.model_dump_json() for r in results if r.event_type != "SeatStatusChanged"]
    return orjson.loads(snapshot_json(state)), kept


def _team_and_usage(facts: Facts) -> list[FactEvent]:
    return [
        *facts.team(T0, ("s1", "standard")),
        facts.buy_pack(T0, "p1"),
        facts.usage(T0 + timedelta(hours=1), "s1", credits=25_001),
    ]


async def test_a_batch_writes_what_the_pure_fold_gives() -> None:
    ledger, facts = Ledger(), Facts("acct-a")
    events = _team_and_usage(facts)
    await ledger.batch(records(events))
    state, bodies = folded(events)
    assert ledger.state("acct-a") == state
    assert ledger.store.states["acct-a"][1] == 1
    assert [e["body"] for e in ledger.store.entries] == bodies
    assert list(ledger.store.archive) == [e.event_id for e in events]
    assert ledger.store.subscriptions == {"sub-1": "acct-a"}
    assert [m.value.decode() for m in ledger.store.outbox] == bodies
    (deducted,) = [e for e in ledger.store.entries if e["event_type"] == "CreditsDeducted"]
    assert (deducted["seat_paid_micro"], deducted["packs_paid_micro"]) == (25_000 * 10**6, 10**6)
    (tally,) = ledger.tallies
    assert tally.credits == {
        ("qwen3.6-plus", "standard", "seat"): 25_000 * 10**6,
        ("qwen3.6-plus", "standard", "pack"): 10**6,
    }
    assert tally.subscription_credits == {("sub-1", "standard"): 25_001 * 10**6}


async def test_duplicate_event_ids_are_skipped_in_a_batch_and_across_batches() -> None:
    ledger, facts = Ledger(), Facts("acct-d")
    events = _team_and_usage(facts)
    await ledger.batch(records([*events, events[-1]]))
    await ledger.batch(records(events, first=len(events) + 1))
    state, bodies = folded(events)
    assert ledger.state("acct-d") == state
    assert [e["body"] for e in ledger.store.entries] == bodies
    assert [t.duplicates for t in ledger.tallies] == [1, len(events)]
    assert ledger.store.states["acct-d"][1] == 1  # nothing new: the state is not rewritten
    assert not_yet_archived([], {"x"}) == []


async def test_a_rolled_back_batch_drops_the_states_it_touched() -> None:
    ledger, facts = Ledger(), Facts("acct-r")
    first = facts.team(T0, ("s1", "standard"))
    later = [facts.usage(T0 + timedelta(hours=1), "s1", credits=10)]
    await ledger.batch(records(first))
    await ledger.rolled_back_batch(records(later, first=len(first)))
    assert ledger.tallies[1:] == []  # a batch's tally is published only once it commits
    await ledger.batch(records(later, first=len(first)))  # read again from the stored offset
    state, bodies = folded(first + later)
    assert ledger.state("acct-r") == state  # the usage is charged once, not twice
    assert [e["body"] for e in ledger.store.entries] == bodies
    assert ledger.store.states["acct-r"][1] == 2


async def test_a_state_another_member_wrote_is_refused_then_reloaded() -> None:
    ledger, facts = Ledger(), Facts("acct-f")
    first = facts.team(T0, ("s1", "standard"))
    await ledger.batch(records(first, partition=3))
    # another member takes partition 3 over and applies a usage (same tables)
    other = Ledger(ledger.store)
    usage = facts.usage(T0 + timedelta(hours=1), "s1", credits=10)
    await other.batch(records([usage], partition=3, first=len(first)))
    later = [facts.usage(T0 + timedelta(hours=2), "s1", credits=20)]
    with pytest.raises(StaleAccountState):  # still cached at version 1
        await ledger.batch(records(later, partition=3, first=len(first) + 1))
    assert len(ledger.store.entries) == len(folded([*first, usage])[1])  # nothing written
    await ledger.batch(records(later, partition=3, first=len(first) + 1))  # the retry reloads
    assert ledger.state("acct-f") == folded([*first, usage, *later])[0]
    assert ledger.store.states["acct-f"][1] == 3


async def test_forget_drops_only_the_accounts_of_the_partitions_named() -> None:
    ledger = Ledger()
    a, b = Facts("acct-p0"), Facts("acct-p1")
    await ledger.batch(records([a.activate(T0)], partition=0) + records([b.activate(T0)], 1))
    ledger.store.states["acct-p0"] = (snapshot_json(AccountState()), 7)  # written elsewhere
    ledger.store.states["acct-p1"] = (snapshot_json(AccountState()), 7)
    ledger.projection.forget([0])
    await ledger.batch(records([a.add_seat(T0, "s1", "standard")], partition=0, first=1))
    assert ledger.store.states["acct-p0"][1] == 8  # reloaded: written over version 7
    with pytest.raises(StaleAccountState):  # still cached at version 1
        await ledger.batch(records([b.add_seat(T0, "s1", "standard")], partition=1, first=1))


async def test_a_rejected_fact_is_archived_recorded_counted_and_published() -> None:
    ledger, facts = Ledger(), Facts("acct-x")
    events = [*facts.team(T0, ("s1", "standard")), facts.usage(T0, "no-such-seat", credits=1)]
    await ledger.batch(records(events))
    (rejected,) = [e for e in ledger.store.entries if e["event_type"] == "FactRejected"]
    assert rejected["source_event_id"] == events[-1].event_id
    assert rejected["reason"]
    assert events[-1].event_id in ledger.store.archive
    assert ledger.tallies[0].rejected == {rejected["reason"]: 1}
    assert rejected["body"] in [m.value.decode() for m in ledger.store.outbox]


async def test_unparseable_records_become_dead_letters_and_the_rest_goes_on() -> None:
    ledger, facts = Ledger(), Facts("acct-z")
    activate = facts.activate(T0)
    await ledger.batch(records([b"not json", activate]))
    dlq = [m for m in ledger.store.outbox if m.topic == TOPICS.dlq]
    assert len(dlq) == 1
    assert ledger.tallies[0].dead_letters == 1
    assert list(ledger.store.archive) == [activate.event_id]
    parsed, dead = parse(records([b"{}"]))
    assert parsed == []
    assert dead[0][1].startswith("not a valid event")


class PublishingLedger(Ledger):
    """A ledger that publishes each batch's results before its commit (as the service does)."""

    def __init__(self, broker_up: bool = True) -> None:
        self.published: list[list[str]] = []
        self.broker_up = broker_up
        super().__init__(publish_now=self._publish)

    async def _publish(self, messages: Sequence[Outgoing]) -> None:
        if not self.broker_up:
            raise BrokerUnavailable("the broker did not acknowledge")
        self.published.append([m.value.decode() for m in messages])


async def test_results_are_published_before_the_commit_and_not_written_to_the_outbox() -> None:
    ledger, facts = PublishingLedger(), Facts("acct-p")
    events = _team_and_usage(facts)
    await ledger.batch(records(events))
    _, bodies = folded(events)
    assert ledger.published == [bodies]
    assert ledger.store.outbox == []


async def test_a_broker_that_does_not_acknowledge_rolls_the_batch_back() -> None:
    ledger, facts = PublishingLedger(broker_up=False), Facts("acct-b")
    events = _team_and_usage(facts)
    with pytest.raises(BrokerUnavailable):
        await ledger.batch(records(events))
    assert ledger.store.entries == []
    assert ledger.store.states == {}
    assert ledger.tallies == []
    ledger.broker_up = True
    await ledger.batch(records(events))  # read again from the stored offsets
    state, bodies = folded(events)
    assert ledger.state("acct-b") == state
    assert ledger.published == [bodies]


async def test_a_batch_published_but_not_committed_publishes_the_same_results_again() -> None:
    """At least once, with the same ids: what consumers of the ledger topic may see."""
    ledger, facts = PublishingLedger(), Facts("acct-c")
    first = facts.team(T0, ("s1", "standard"))
    later = [facts.usage(T0 + timedelta(hours=1), "s1", credits=10)]
    await ledger.batch(records(first))
    await ledger.rolled_back_batch(records(later, first=len(first)))
    await ledger.batch(records(later, first=len(first)))
    assert ledger.published[1] == ledger.published[2]  # the same bodies, event ids included
    state, bodies = folded(first + later)
    assert ledger.state("acct-c") == state
    assert [e["body"] for e in ledger.store.entries] == bodies
