"""`metering replay` and `metering statement` as subprocesses against a ledger that ran for real."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from metering import replay as replay_module
from metering.core.fold import fold
from metering.core.money import to_decimal_string
from metering.core.views import subscription_view
from metering.replay import ArchiveScope, ReplayError, replay_range
from metering.stack import Stack
from schemas.envelope import parse_event
from tests.integration.isolated import TOKEN, IsolatedEnv, isolated_env
from tests.integration.test_ledger import CARD, make_load, produce, wait_ready, wait_until_done

pytestmark = pytest.mark.integration


@pytest.fixture
async def ran(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[IsolatedEnv, str]]:
    """A ledger that has applied a small load: the env and the ledger's URL."""
    async with isolated_env(stack, tmp_path, "rp") as env:
        load = make_load(env.name, accounts=20, usages_per_account=100)
        await produce(stack.kafka_bootstrap_servers, env.events_topic, load.messages)
        _, url = env.start("ledger")
        await wait_ready(url, env)
        db = await asyncpg.connect(env.database_url)
        try:
            await wait_until_done(db, env, len(load.messages))
        finally:
            await db.close()
        yield env, url


@pytest.mark.parametrize("source", ["archive", "kafka"])
async def test_replay_equals_the_ledger(
    ran: tuple[IsolatedEnv, str], tmp_path: Path, source: str
) -> None:
    env, _ = ran
    report_path = tmp_path / "report.json"
    status, output, report = env.replay(report_path, "--source", source)
    assert (status, report.get("differences")) == (0, []), output
    assert (report["source"], report["accounts"]) == (source, 20)
    assert report["events"] >= 2000
    one = f"{env.name}-acct-3"
    status, output, report = env.replay(
        report_path, "--source", source, "--account", one, "--until", "2026-02-01T00:00:00Z"
    )
    assert (status, report["accounts"], report["final_states_compared"]) == (0, 1, False), output
    assert "final states not compared" in output


async def test_kafka_replay_reads_up_to_the_ledgers_offsets_and_skips_what_it_skipped(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    db = await asyncpg.connect(env.database_url)
    try:
        stored = {
            row["partition"]: row["next_offset"]
            for row in await db.fetch("SELECT partition, next_offset FROM consumer_offsets")
        }
        archived = await db.fetchval("SELECT count(*) FROM ledger_events_archive")
    finally:
        await db.close()
    status, output, report = env.replay(tmp_path / "report.json", "--source", "kafka")
    assert status == 0, output
    assert {int(p): o for p, o in report["log_positions"].items()} == stored
    assert report["events"] == archived
    assert report["events"] + report["unparseable_skipped"] == sum(stored.values())


async def test_as_of_prints_the_balances_of_that_time(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    one = f"{env.name}-acct-1"
    before = "2026-01-01T00:00:00Z"  # before the load's first event
    status, output, report = env.replay(tmp_path / "r.json", "--account", one, "--as-of", before)
    assert (status, report["events"], report["balances"]) == (0, 0, []), output

    as_of = datetime(2026, 1, 20, tzinfo=UTC)
    status, output, report = env.replay(
        tmp_path / "r.json", "--account", one, "--as-of", as_of.isoformat()
    )
    assert status == 0, output
    assert f"balances as of {as_of.isoformat()}" in output
    db = await asyncpg.connect(env.database_url)
    try:
        archived = [
            parse_event(row["value"])
            for row in await db.fetch(
                "SELECT value FROM ledger_events_archive "
                'WHERE account_id = $1 AND recorded_at <= $2 ORDER BY partition, "offset"',
                one,
                as_of,
            )
        ]
    finally:
        await db.close()
    state, _ = fold(archived, CARD)
    view = subscription_view(state, f"{env.name}-sub-1", as_of)
    assert view is not None
    [balance] = report["balances"]
    assert balance["remaining"] == to_decimal_string(view.remaining_micro)
    assert [s["seat_remaining"] for s in balance["seats"]] == [
        to_decimal_string(s.seat_remaining_micro) for s in view.seats
    ]
    assert view.remaining_micro < view.quota_micro, "some usage must have been charged by then"


async def test_a_tampered_entry_or_state_is_named(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    db = await asyncpg.connect(env.database_url)
    try:
        entry_id = await db.fetchval(
            "UPDATE ledger_entries "
            "SET body = jsonb_set(body::jsonb, '{payload,price_micro}', '1')::text "
            "WHERE event_id = (SELECT event_id FROM ledger_entries "
            "WHERE event_type = 'CreditsDeducted' ORDER BY event_id LIMIT 1) "
            "RETURNING event_id::text"
        )
        for source in ("archive", "kafka"):
            status, output, report = env.replay(tmp_path / "r.json", "--source", source)
            assert status == 1, output
            assert entry_id in output
            assert [d["entry_id"] for d in report["differences"]] == [entry_id]
            assert "payload.price_micro" in report["differences"][0]["what"]

        account = f"{env.name}-acct-5"
        await db.execute(
            "UPDATE ledger_accounts "
            "SET state = jsonb_set(state::jsonb, '{clock}', '\"2030-01-01\"')::text "
            "WHERE account_id = $1",
            account,
        )
        status, output, report = env.replay(tmp_path / "r.json", "--account", account)
        assert status == 1
        assert f"account {account} state" in output
        assert [(d["account_id"], d["entry_id"]) for d in report["differences"]] == [
            (account, "state")
        ]
    finally:
        await db.close()


async def test_a_replay_in_processes_reports_what_one_process_does(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    db = await asyncpg.connect(env.database_url)
    try:  # a difference in a run of accounts other than the first, and one in the first
        tampered = await db.fetch(
            "UPDATE ledger_entries "
            "SET body = jsonb_set(body::jsonb, '{payload,price_micro}', '1')::text "
            "WHERE event_id IN (SELECT DISTINCT ON (account_id) event_id FROM ledger_entries "
            "WHERE event_type = 'CreditsDeducted' AND account_id = ANY($1) "
            "ORDER BY account_id, event_id) RETURNING account_id",
            [f"{env.name}-acct-0", f"{env.name}-acct-9"],
        )
        assert len(tampered) == 2
    finally:
        await db.close()
    reports = {}
    for jobs in ("1", "3"):
        status, output, _ = env.replay(tmp_path / f"r{jobs}.json", "--jobs", jobs)
        assert status == 1, output
        reports[jobs] = (tmp_path / f"r{jobs}.json").read_bytes()
    assert reports["1"] == reports["3"]
    assert len(orjson.loads(reports["3"])["differences"]) == 2
    as_of = "2026-01-20T00:00:00Z"
    for jobs in ("1", "2"):
        status, output, _ = env.replay(tmp_path / f"a{jobs}.json", "--as-of", as_of, "--jobs", jobs)
        assert status == 0, output
        reports[jobs] = (tmp_path / f"a{jobs}.json").read_bytes()
    assert reports["1"] == reports["2"]
    assert len(orjson.loads(reports["2"])["balances"]) == 20


async def test_each_process_of_a_replay_reads_the_snapshot_it_was_given(
    ran: tuple[IsolatedEnv, str],
) -> None:
    env, _ = ran
    one = f"{env.name}-acct-4"
    scope = ArchiveScope(env.database_url, CARD, (one,), None, None)
    held, other = await asyncpg.connect(env.database_url), await asyncpg.connect(env.database_url)
    try:
        async with held.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await held.fetchval("SELECT pg_export_snapshot()")
            await other.execute(  # committed after the snapshot: the replay must not see it
                "UPDATE ledger_entries "
                "SET body = jsonb_set(body::jsonb, '{payload,price_micro}', '1')::text "
                "WHERE account_id = $1",
                one,
            )
            report, seen = await asyncio.to_thread(replay_range, scope, snapshot, (one, one))
        assert (seen, report.differences) == ([one], [])
        assert report.events >= 100
        with pytest.raises(ReplayError, match="not a snapshot id"):
            await asyncio.to_thread(replay_range, scope, "bad' snapshot", (one, one))
    finally:
        await held.close()
        await other.close()


def _ends_abruptly(*_: object) -> None:
    os._exit(9)


async def test_a_replay_process_that_dies_is_an_error_that_names_it(
    ran: tuple[IsolatedEnv, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, _ = ran
    monkeypatch.setattr(replay_module, "replay_range", _ends_abruptly)
    with pytest.raises(ReplayError, match="a replay process ended abruptly"):
        await replay_module.replay(env.database_url, CARD, jobs=2)


async def test_a_replay_from_kafka_in_processes_exits_2_naming_jobs(
    ran: tuple[IsolatedEnv, str],
) -> None:
    env, _ = ran
    done = env.cli("replay", "--source", "kafka", "--jobs", "2")
    assert done.returncode == 2
    assert "--jobs" in done.stderr


async def test_statement_from_the_replay_equals_the_ledgers(ran: tuple[IsolatedEnv, str]) -> None:
    env, url = ran
    subscription = f"{env.name}-sub-0"  # has a pack, runs out: every line of a statement
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for month in ("2026-01", "2026-02", "2026-03"):
            served = await c.get(
                f"/v1/subscriptions/{subscription}/statement", params={"month": month}
            )
            printed = env.cli("statement", "--subscription", subscription, "--month", month)
            assert printed.returncode == 0, printed.stderr
            assert orjson.loads(printed.stdout) == served.json()


def test_a_bad_database_url_exits_2_naming_it(stack: Stack, tmp_path: Path) -> None:
    env = IsolatedEnv(stack, "rpmissing", stack.database_url.rsplit("/", 1)[0] + "/nope", tmp_path)
    done = env.cli("replay")
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr


async def test_kafka_replay_of_a_group_that_applied_nothing_exits_2_naming_it(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    done = env.cli("replay", "--source", "kafka", LEDGER_CONSUMER_GROUP="nobody")
    assert done.returncode == 2
    assert "LEDGER_CONSUMER_GROUP" in done.stderr
    assert "'nobody'" in done.stderr
