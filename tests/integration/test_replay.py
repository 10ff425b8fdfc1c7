"""`metering replay` and `metering statement` as subprocesses against a ledger that ran for real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from metering.processes import free_port
from metering.stack import Stack
from tests.integration.isolated import TOKEN, IsolatedEnv, isolated_env
from tests.integration.test_ledger import make_load, produce, wait_ready, wait_until_done

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


def metering(env: IsolatedEnv, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", *args],
        env=env.environ(free_port(), **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def replay_report(env: IsolatedEnv, tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    report = tmp_path / "report.json"
    done = metering(env, "replay", "--report", str(report), *args)
    return done.returncode, done.stdout + done.stderr, orjson.loads(report.read_bytes())


async def test_replay_from_the_archive_equals_the_ledger(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    status, output, report = replay_report(env, tmp_path)
    assert (status, report["differences"]) == (0, []), output
    assert report["accounts"] == 20
    assert report["events"] >= 2000
    one = f"{env.name}-acct-3"
    status, output, report = replay_report(
        env, tmp_path, "--account", one, "--until", "2026-02-01T00:00:00Z"
    )
    assert (status, report["accounts"], report["final_states_compared"]) == (0, 1, False), output
    assert "final states not compared" in output


async def test_a_tampered_entry_or_state_is_named(
    ran: tuple[IsolatedEnv, str], tmp_path: Path
) -> None:
    env, _ = ran
    db = await asyncpg.connect(env.database_url)
    try:
        entry_id = await db.fetchval(
            "UPDATE ledger_entries SET body = jsonb_set(body, '{payload,price_micro}', '1') "
            "WHERE event_id = (SELECT event_id FROM ledger_entries "
            "WHERE event_type = 'CreditsDeducted' ORDER BY event_id LIMIT 1) "
            "RETURNING event_id::text"
        )
        status, output, report = replay_report(env, tmp_path)
        assert status == 1
        assert entry_id in output
        assert [d["entry_id"] for d in report["differences"]] == [entry_id]
        assert "payload.price_micro" in report["differences"][0]["what"]

        account = f"{env.name}-acct-5"
        await db.execute(
            "UPDATE ledger_accounts SET state = jsonb_set(state, '{clock}', '\"2030-01-01\"') "
            "WHERE account_id = $1",
            account,
        )
        status, output, report = replay_report(env, tmp_path, "--account", account)
        assert status == 1
        assert f"account {account} state" in output
        assert [(d["account_id"], d["entry_id"]) for d in report["differences"]] == [
            (account, "state")
        ]
    finally:
        await db.close()


async def test_statement_from_the_replay_equals_the_ledgers(ran: tuple[IsolatedEnv, str]) -> None:
    env, url = ran
    subscription = f"{env.name}-sub-0"  # has a pack, runs out: every line of a statement
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for month in ("2026-01", "2026-02", "2026-03"):
            served = await c.get(
                f"/v1/subscriptions/{subscription}/statement", params={"month": month}
            )
            printed = metering(env, "statement", "--subscription", subscription, "--month", month)
            assert printed.returncode == 0, printed.stderr
            assert orjson.loads(printed.stdout) == served.json()


def test_a_bad_database_url_exits_2_naming_it(stack: Stack, tmp_path: Path) -> None:
    env = IsolatedEnv(stack, "rpmissing", stack.database_url.rsplit("/", 1)[0] + "/nope", tmp_path)
    done = metering(env, "replay")
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr
