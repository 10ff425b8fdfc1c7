"""Audit replay: rebuild the ledger from the event log in memory and compare it with the live one.

The log is read from one of two sources. The ledger's own archive (`ledger_events_archive`,
read in the order the ledger applied it: per account by Kafka partition and offset) is kept
verbatim so audits do not depend on Kafka retention. The event topic itself is read from its
first offset up to the offsets the ledger stored with its projection, skipping repeated
event ids as the ledger does. Each account's events go through the same pure `fold()` as the
ledger's; every recomputed entry body and final state is compared with what PostgreSQL
holds, all read in one snapshot. The statement of a subscription month can be computed from
the same replay, so an auditor can check the one the ledger serves.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.queues import Queue as ProcessQueue
from typing import Any

import asyncpg
import orjson

from ledger.store import LedgerReads
from metering.core.fold import fold
from metering.core.money import to_decimal_string
from metering.core.ratecard import RateCard
from metering.core.receipts import paid_by_bucket, paid_by_pack
from metering.core.state import AccountState, Subscription
from metering.core.views import subscription_view
from metering.eventlog import LogRead, LogReadError, read_log
from metering.gc_tuning import tune_for_long_lived_state
from metering.statement import PackPaid, SeatModelUsage, build_statement, subscription_month
from schemas.api import Statement
from schemas.envelope import FactEvent, ResultEvent, parse_event, result_json

CHUNK_EVENTS = 20_000
"""Events folded before their accounts are compared (bounds memory and round trips)."""
DETAIL_PATHS = 5
ABSENT = "<absent>"
MAX_JOBS = 4
"""Processes a replay of the archive uses by default at most: each has PostgreSQL scan the
archive and sort its share, so many of them load the live database more than they gain."""
PROGRESS_POLL_SECONDS = 0.2
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")

Progress = Callable[[int, int], None]
"""Called with (events replayed so far, events in the log to replay), after each chunk."""


class ReplayError(Exception):
    """A usage or connection problem (exit status 2); the message names the setting."""


@dataclass(frozen=True)
class Difference:
    """One row where the ledger and the replay disagree."""

    account_id: str
    entry_id: str
    """A ledger entry's event id, or "state" for the account's final state."""
    what: str


@dataclass(frozen=True)
class KafkaSource:
    """Replay from the event topic, up to where the ledger's consumer group has applied it."""

    bootstrap_servers: str
    topic: str
    consumer_group: str
    kafka_options: Mapping[str, Any] = field(default_factory=dict)
    """TLS/SASL options of the Kafka client (`Settings.kafka_options`)."""


@dataclass
class ReplayReport:
    source: str
    """"archive" or "kafka"."""
    until: str | None
    log_positions: dict[int, int] = field(default_factory=dict)
    """Kafka: the next offset per partition the replay read up to (the ledger's)."""
    duplicates_skipped: int = 0
    unparseable_skipped: int = 0
    events: int = 0
    accounts: int = 0
    credits_deducted_micro: int = 0
    final_states_compared: bool = True
    as_of: str | None = None
    balances: list[dict[str, Any]] = field(default_factory=list)
    """With `as_of`: every subscription's balances as they stood then."""
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_json(self) -> bytes:
        body = asdict(self)
        body["credits_deducted"] = to_decimal_string(body.pop("credits_deducted_micro"))
        return orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


async def replay(
    database_url: str,
    card: RateCard,
    accounts: Sequence[str] = (),
    until: datetime | None = None,
    progress: Progress | None = None,
    kafka: KafkaSource | None = None,
    as_of: datetime | None = None,
    jobs: int = 1,
) -> ReplayReport:
    """Replay `accounts` (all when empty) from the ledger's archive of the event log, or from
    `kafka`, and compare with the live ledger. `as_of` replays the events recorded by then
    and reports the balances at that time. `jobs` processes share the archive's accounts (a
    replay from Kafka reads and folds in this one)."""
    until = as_of or until
    report = ReplayReport(
        "archive" if kafka is None else "kafka", None if until is None else until.isoformat()
    )
    report.final_states_compared = until is None
    report.as_of = None if as_of is None else as_of.isoformat()
    tune_for_long_lived_state()  # a replay folds like the services do
    conn = await connect(database_url)
    try:
        # One snapshot: a running ledger writes offsets, archive, entries and states together.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if kafka is None and jobs > 1:
                scope = ArchiveScope(database_url, card, tuple(accounts), until, as_of)
                seen = await _replay_in_processes(conn, scope, jobs, report, progress)
            else:
                if kafka is None:
                    total = await LedgerReads(conn).archived_count(accounts, until)
                    log = archive_accounts(conn, accounts, until)
                else:
                    log, total = await _kafka_accounts(conn, kafka, accounts, until, report)
                seen = await _replay_log(conn, card, log, report, as_of, progress, total)
            if until is None:
                report.differences += await _ledger_only(conn, seen, accounts)
    except asyncpg.UndefinedTableError as error:
        raise ReplayError(f"DATABASE_URL: the ledger's tables are missing ({error})") from None
    except (asyncpg.PostgresError, OSError) as error:
        raise _database_failed(error) from None
    except LogReadError as error:
        raise ReplayError(str(error)) from None
    except BrokenProcessPool as error:
        what = f"a replay process ended abruptly (killed, or out of memory?): {error}"
        raise ReplayError(f"{what}; run it again, or with --jobs 1") from None
    finally:
        await conn.close()
    return report


def default_jobs() -> int:
    """One process per CPU this process may run on, at most `MAX_JOBS`."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cpus))


async def _replay_log(
    conn: asyncpg.Connection,
    card: RateCard,
    log: AsyncIterator[tuple[str, list[FactEvent]]],
    report: ReplayReport,
    as_of: datetime | None,
    progress: Progress | None,
    total: int,
) -> list[str]:
    """Fold and compare `log` chunk by chunk into `report`; the accounts it had."""
    seen: list[str] = []
    async for chunk in _chunks(log):
        report.differences += await _compare_chunk(conn, card, chunk, report, as_of)
        seen += chunk
        report.accounts = len(seen)
        if progress:
            progress(report.events, total)
    return seen


@dataclass(frozen=True)
class ArchiveScope:
    """What a replay of the archive covers, as each of its processes gets it."""

    database_url: str
    card: RateCard
    accounts: tuple[str, ...]
    until: datetime | None
    as_of: datetime | None


def account_ranges(per_account: Sequence[tuple[str, int]], parts: int) -> list[tuple[str, str]]:
    """At most `parts` runs of consecutive accounts (first id, last id), with about as many
    events each: a run ends once the events so far reach its share of the whole. A run is
    never more than one account's events from its share, so the busiest account bounds how
    evenly the runs can be."""
    total = sum(events for _, events in per_account)
    ranges: list[tuple[str, str]] = []
    first: str | None = None
    done = 0
    for account_id, events in per_account:
        if first is None:
            first = account_id
        done += events
        if done * parts >= total * (len(ranges) + 1):
            ranges.append((first, account_id))
            first = None
    return ranges


async def _replay_in_processes(
    conn: asyncpg.Connection,
    scope: ArchiveScope,
    jobs: int,
    report: ReplayReport,
    progress: Progress | None,
) -> list[str]:
    """Replay the archive in `jobs` processes, each a run of accounts in this transaction's
    snapshot, and merge their reports in account order (the order one process reads in)."""
    per_account = await LedgerReads(conn).archived_per_account(scope.accounts, scope.until)
    total = sum(events for _, events in per_account)
    ranges = account_ranges(per_account, jobs)
    if not ranges:
        return []
    snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
    context = multiprocessing.get_context("spawn")  # not a fork of this loop and its threads
    done: ProcessQueue[int] = context.Queue()
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(len(ranges), context, _hold_progress, (done,)) as pool:
        parts = [
            loop.run_in_executor(pool, replay_range, scope, snapshot, between) for between in ranges
        ]
        replayed = 0
        pending: set[asyncio.Future[tuple[ReplayReport, list[str]]]] = set(parts)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_POLL_SECONDS)
            replayed += _drain(done)
            if progress:
                progress(replayed, total)
    seen: list[str] = []
    for part_report, part_seen in await asyncio.gather(*parts):  # raises the first error
        report.events += part_report.events
        report.credits_deducted_micro += part_report.credits_deducted_micro
        report.differences += part_report.differences
        report.balances += part_report.balances
        seen += part_seen
    report.accounts = len(seen)
    return seen


_progress: ProcessQueue[int] | None = None
"""In a replay's process: where it counts the events it has replayed."""


def _hold_progress(done: ProcessQueue[int]) -> None:
    global _progress
    _progress = done


def _drain(done: ProcessQueue[int]) -> int:
    counted = 0
    while True:
        try:
            counted += done.get_nowait()
        except queue.Empty:
            return counted


def replay_range(
    scope: ArchiveScope, snapshot: str, between: tuple[str, str]
) -> tuple[ReplayReport, list[str]]:
    """In a replay's process: the accounts `between` (first and last id) replayed in the
    exported `snapshot`, and the accounts it had."""
    return asyncio.run(_replay_range(scope, snapshot, between))


async def _replay_range(
    scope: ArchiveScope, snapshot: str, between: tuple[str, str]
) -> tuple[ReplayReport, list[str]]:
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ReplayError(f"not a snapshot id: {snapshot!r}")
    tune_for_long_lived_state()
    report = ReplayReport("archive", None)
    report.final_states_compared = scope.until is None

    reported = 0

    def count(events: int, _total: int) -> None:
        nonlocal reported
        if _progress is not None:
            _progress.put(events - reported)
        reported = events

    conn = await connect(scope.database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            log = archive_accounts(conn, scope.accounts, scope.until, between)
            seen = await _replay_log(conn, scope.card, log, report, scope.as_of, count, 0)
    except (asyncpg.PostgresError, OSError) as error:
        raise _database_failed(error) from None
    finally:
        await conn.close()
    return report, seen


def _database_failed(error: Exception) -> ReplayError:
    """What a replay, or one of its processes, says when PostgreSQL fails under it."""
    return ReplayError(f"DATABASE_URL: PostgreSQL failed during the replay: {error}")


async def connect(database_url: str) -> asyncpg.Connection:
    """A connection to the live ledger, or a `ReplayError` naming DATABASE_URL."""
    try:
        return await asyncpg.connect(database_url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as error:
        raise ReplayError(f"DATABASE_URL: cannot connect to PostgreSQL: {error}") from None


async def archive_accounts(
    conn: asyncpg.Connection,
    accounts: Sequence[str],
    until: datetime | None,
    between: tuple[str, str] | None = None,
) -> AsyncIterator[tuple[str, list[FactEvent]]]:
    """Each account's archived events in the order the ledger applied them (in a transaction).

    A server-side cursor streams the archive in large chunks, one account at a time."""
    account_id: str | None = None
    events: list[FactEvent] = []
    rows = LedgerReads(conn).archived_events(accounts, until, CHUNK_EVENTS, between)
    async for row in rows:
        if row["account_id"] != account_id:
            if account_id is not None:
                yield account_id, events
            account_id, events = row["account_id"], []
        events.append(parse_event(row["value"]))
    if account_id is not None:
        yield account_id, events


async def _kafka_accounts(
    conn: asyncpg.Connection,
    kafka: KafkaSource,
    accounts: Sequence[str],
    until: datetime | None,
    report: ReplayReport,
) -> tuple[AsyncIterator[tuple[str, list[FactEvent]]], int]:
    """The topic up to the ledger's stored offsets (read first: they fix the snapshot), and
    how many events that is."""
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_offsets "
        "WHERE consumer_group = $1 AND topic = $2",
        kafka.consumer_group,
        kafka.topic,
    )
    report.log_positions = {row["partition"]: row["next_offset"] for row in rows}
    if not report.log_positions:
        raise ReplayError(
            f"LEDGER_CONSUMER_GROUP: group '{kafka.consumer_group}' has applied nothing of "
            f"{kafka.topic} in this database; check the group and EVENTS_TOPIC"
        )
    read = await read_log(
        kafka.bootstrap_servers, kafka.topic, report.log_positions, kafka.kafka_options
    )
    report.duplicates_skipped, report.unparseable_skipped = read.duplicates, read.unparseable
    total = read.records - read.duplicates - read.unparseable
    return _accounts_in(read, accounts, until), total


async def _accounts_in(
    read: LogRead, accounts: Sequence[str], until: datetime | None
) -> AsyncIterator[tuple[str, list[FactEvent]]]:
    for account_id in sorted(accounts or read.accounts):
        events = read.accounts.get(account_id, [])
        if until is not None:
            events = [event for event in events if event.recorded_at <= until]
        if events:
            yield account_id, events


async def _chunks(
    log: AsyncIterator[tuple[str, list[FactEvent]]],
) -> AsyncIterator[dict[str, list[FactEvent]]]:
    chunk: dict[str, list[FactEvent]] = {}
    size = 0
    async for account_id, events in log:
        chunk[account_id] = events
        size += len(events)
        if size >= CHUNK_EVENTS:
            yield chunk
            chunk, size = {}, 0
    if chunk:
        yield chunk


def ledger_results(events: Sequence[FactEvent], card: RateCard) -> tuple[AccountState, list[Any]]:
    """The fold's final state and the results the ledger stores (seat statuses are quota's)."""
    state, results = fold(events, card)
    return state, [r for r in results if r.event_type != "SeatStatusChanged"]


async def _compare_chunk(
    conn: asyncpg.Connection,
    card: RateCard,
    chunk: dict[str, list[FactEvent]],
    report: ReplayReport,
    as_of: datetime | None,
) -> list[Difference]:
    reads = LedgerReads(conn)
    stored_entries: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for row in await reads.entries_of(list(chunk)):
        stored_entries[row["account_id"]][row["id"]] = (row["source"], row["body"])
    stored_states = await reads.states_of(list(chunk))
    differences = []
    for account_id, events in chunk.items():
        report.events += len(events)
        state, results = ledger_results(events, card)
        report.credits_deducted_micro += sum(
            paid_by_bucket(r.payload.receipt).total_micro
            for r in results
            if r.event_type == "CreditsDeducted"
        )
        stored = stored_entries.get(account_id, {})
        if not report.final_states_compared:  # --until: only the entries of replayed events
            replayed = {event.event_id for event in events}
            stored = {i: entry for i, entry in stored.items() if entry[0] in replayed}
        differences += _entry_differences(account_id, stored, results)
        if as_of is not None:
            report.balances += balances_at(account_id, state, as_of)
        if report.final_states_compared:
            differences += _state_differences(account_id, stored_states.get(account_id), state)
    return differences


def balances_at(account_id: str, state: AccountState, at: datetime) -> list[dict[str, Any]]:
    """Each subscription's and seat's balances at `at`, in credits, as the views compute them."""
    balances = []
    for subscription_id in sorted(state.subscriptions):
        view = subscription_view(state, subscription_id, at)
        assert view is not None
        balances.append(
            {
                "account_id": account_id,
                "subscription_id": subscription_id,
                "status": view.status,
                "month_start": view.month_start.isoformat(),
                "month_end": view.month_end.isoformat(),
                "remaining": to_decimal_string(view.remaining_micro),
                "seats": [
                    {
                        "seat_id": seat.seat_id,
                        "tier": seat.tier,
                        "status": seat.status,
                        "seat_remaining": to_decimal_string(seat.seat_remaining_micro),
                        "shared_remaining": to_decimal_string(seat.shared_remaining_micro),
                    }
                    for seat in view.seats
                ],
            }
        )
    return balances


def _entry_differences(
    account_id: str, stored: dict[str, tuple[str, str]], results: list[ResultEvent]
) -> list[Difference]:
    differences = []
    recomputed = {r.event_id: r for r in results}
    for entry_id, result in recomputed.items():
        if entry_id not in stored:
            what = f"{result.event_type} produced by the replay is missing from the ledger"
            differences.append(Difference(account_id, entry_id, what))
            continue
        body = stored[entry_id][1]
        if body.encode() == result_json(result):
            continue  # the ledger stored the very JSON it published (migration 0012)
        # else compare the data (a body written before as jsonb has another layout)
        ledger, replayed = orjson.loads(body), result.model_dump(mode="json")
        if ledger != replayed:  # the walk below only runs to name what differs
            paths = differing_paths(ledger, replayed)
            differences.append(Difference(account_id, entry_id, "; ".join(paths)))
    differences += [
        Difference(account_id, entry_id, "in the ledger, not produced by the replay")
        for entry_id in sorted(stored.keys() - recomputed.keys())
    ]
    return differences


def _state_differences(
    account_id: str, stored: str | None, state: AccountState
) -> list[Difference]:
    if stored is None:
        return [Difference(account_id, "state", "the ledger has no state for this account")]
    # The request ids are left out on both sides: the ledger rebuilds them from its
    # CreditsDeducted entries, and those are compared one by one.
    ledger = orjson.loads(stored)
    ledger.pop("request_ids", None)  # a state written before they were stored apart
    replayed = orjson.loads(orjson.dumps(state.to_dict(with_request_ids=False)))
    if ledger == replayed:
        return []
    return [Difference(account_id, "state", "; ".join(differing_paths(ledger, replayed)))]


async def _ledger_only(
    conn: asyncpg.Connection, replayed: list[str], requested: Sequence[str]
) -> list[Difference]:
    """Ledger states and entries of accounts the log has no events for."""
    states, entries = await LedgerReads(conn).beyond(replayed, requested)
    what = "in the ledger, but the log has no events for this account"
    return [Difference(account_id, "state", what) for account_id in states] + [
        Difference(account_id, entry_id, what) for account_id, entry_id in entries
    ]


def differing_paths(ledger: Any, replayed: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as "path: ledger X, replay Y" (the first few)."""
    if isinstance(ledger, dict) and isinstance(replayed, dict):
        out: list[str] = []
        for key in sorted(ledger.keys() | replayed.keys()):
            out += differing_paths(
                ledger.get(key, ABSENT), replayed.get(key, ABSENT), f"{path}.{key}".lstrip(".")
            )
        return out[:DETAIL_PATHS]
    if isinstance(ledger, list) and isinstance(replayed, list) and len(ledger) == len(replayed):
        out = []
        for index, (a, b) in enumerate(zip(ledger, replayed, strict=True)):
            out += differing_paths(a, b, f"{path}[{index}]")
        return out[:DETAIL_PATHS]
    if ledger == replayed:
        return []
    return [f"{path or 'value'}: ledger {_short(ledger)}, replay {_short(replayed)}"]


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode() if value is not ABSENT else ABSENT
    return text if len(text) <= 80 else text[:77] + "..."


# -- statements from the replay ----------------------------------------------------------


class UnknownSubscription(LookupError):
    """No archived account holds the subscription."""


async def replayed_statement(
    database_url: str, card: RateCard, subscription_id: str, month: str
) -> Statement:
    """The statement of `subscription_id`'s month, from a fold of its account's archive."""
    conn = await connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            candidates = await LedgerReads(conn).activating_accounts(subscription_id)
            async for _, events in archive_accounts(conn, candidates, None):
                state, results = ledger_results(events, card)
                sub = state.subscriptions.get(subscription_id)
                if sub is not None:
                    return statement_from_results(sub, month, results)
    except asyncpg.UndefinedTableError as error:
        raise ReplayError(f"DATABASE_URL: the ledger's tables are missing ({error})") from None
    finally:
        await conn.close()
    raise UnknownSubscription(f"subscription '{subscription_id}' is not in the archive")


def statement_from_results(sub: Subscription, month: str, results: list[Any]) -> Statement:
    """`build_statement` fed with the sums the ledger's statement endpoint takes from SQL."""
    _, start, end = subscription_month(sub, month)
    usage: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 5)
    pack_paid: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for result in results:
        p = result.payload
        if result.event_type != "CreditsDeducted" or p.subscription_id != sub.subscription_id:
            continue
        if result.occurred_at >= end:
            continue
        for pack_id, micro in paid_by_pack(p.receipt).items():
            before = pack_paid[pack_id]
            before[1] += micro
            if result.occurred_at < start:
                before[0] += micro
        if result.occurred_at >= start:
            paid = paid_by_bucket(p.receipt)
            sums = usage[p.seat_id, p.model]
            for index, micro in enumerate(
                (1, p.price_micro, paid.seat_micro, paid.packs_micro, p.shortfall_micro)
            ):
                sums[index] += micro
    return build_statement(
        sub,
        month,
        [SeatModelUsage(seat, model, *sums) for (seat, model), sums in usage.items()],
        {pack_id: PackPaid(*sums) for pack_id, sums in pack_paid.items()},
    )
