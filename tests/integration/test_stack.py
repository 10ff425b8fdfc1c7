"""The stack starter: its order of choice, that it really prepares both, and that it cleans up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaProducer

from metering.stack import POSTGRES_SETTINGS, Stack, start_stack
from metering.topics import DLQ, EVENTS, LEDGER, SEAT_STATUS
from tests.integration.kafka_reading import read_until

pytestmark = pytest.mark.integration


def _bytes(size: str) -> int:
    """'512MB' → bytes (PostgreSQL's units: kB, MB, GB are powers of 1024)."""
    units = {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    return int(size[:-2]) * units[size[-2:]]


def _servers(owner_pid: int, state_dir: Path) -> set[int]:
    """The broker (a child of the owner) and the database (named by its data directory)."""
    pids = {child.pid for child in psutil.Process(owner_pid).children(recursive=True)}
    for process in psutil.process_iter(["cmdline"]):
        if str(state_dir) in " ".join(process.info["cmdline"] or []):
            pids.add(process.pid)
    return {pid for pid in pids if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _all_gone(pids: set[int], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(pid) for pid in pids)


def test_environment_variables_win_over_embedded(stack: Stack, tmp_path: Path) -> None:
    environ = stack.environ()

    def no_docker() -> bool:
        raise AssertionError("an external stack must not even look for Docker")

    before = _servers(os.getpid(), tmp_path.resolve())
    with start_stack(tmp_path, environ=environ, docker_available=no_docker) as chosen:
        assert chosen.kafka_bootstrap_servers == stack.kafka_bootstrap_servers
        assert chosen.database_url == stack.database_url
        assert (chosen.kafka_origin, chosen.database_origin) == ("external", "external")
        assert _servers(os.getpid(), tmp_path.resolve()) == before, "nothing new is started"


def test_embedded_when_no_env_and_no_docker(tmp_path: Path) -> None:
    before = _servers(os.getpid(), tmp_path.resolve())
    with start_stack(tmp_path, environ={}, docker_available=lambda: False) as chosen:
        assert (chosen.kafka_origin, chosen.database_origin) == ("embedded", "embedded")
        servers = _servers(os.getpid(), tmp_path.resolve()) - before
        assert len(servers) >= 2, "the broker and the database should be running"
        assert asyncio.run(_settings(chosen.database_url)) == _IN_BYTES
    assert _all_gone(servers), "stopping the stack must stop its servers"
    with start_stack(tmp_path, environ={}, docker_available=lambda: False) as again:
        assert asyncio.run(_settings(again.database_url)) == _IN_BYTES, "a restart keeps them"
    conf = (tmp_path / "postgres" / "postgresql.conf").read_text()
    assert conf.count("metering.conf") == 1, "the settings are included once"


_IN_BYTES = {name: _bytes(value) for name, value in POSTGRES_SETTINGS.items()}


async def _settings(url: str) -> dict[str, int]:
    """The running database's values of `POSTGRES_SETTINGS`, in bytes."""
    conn = await asyncpg.connect(url)
    try:
        return {name: _bytes(await conn.fetchval(f"SHOW {name}")) for name in POSTGRES_SETTINGS}
    finally:
        await conn.close()


async def test_contract_topics_exist_and_carry_messages(stack: Stack) -> None:
    key = f"probe-{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        partitions = await producer.partitions_for(EVENTS)
        assert len(partitions) == 6
        for topic in (LEDGER, SEAT_STATUS, DLQ):
            assert await producer.partitions_for(topic)
        await producer.send_and_wait(EVENTS, b'{"probe": 1}', key=key)
    finally:
        await producer.stop()

    found = await read_until(
        stack.kafka_bootstrap_servers,
        EVENTS,
        wanted=lambda r: r.key == key,
        done=lambda records: len(records) >= 1,
    )
    assert [r.value for r in found] == [b'{"probe": 1}']


async def test_migrations_ran(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
        assert "0001_consumer_offsets.sql" in names
    finally:
        await conn.close()


def test_sigterm_stops_everything_it_started(tmp_path: Path) -> None:
    """A stack owner killed politely (SIGTERM, as CI or Kubernetes do) leaves nothing behind."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from metering.stack import start_stack\n"
        f"state = Path({str(tmp_path)!r})\n"
        "with start_stack(state, environ={}, docker_available=lambda: False):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        servers = _servers(owner.pid, tmp_path.resolve())
        assert len(servers) >= 2, "the broker and the database should be running"
        owner.send_signal(signal.SIGTERM)
        owner.wait(30)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert _all_gone(servers)
