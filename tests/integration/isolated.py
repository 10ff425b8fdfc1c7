"""A service test's own database, topics and consumer groups on the session's stack.

Tests that count everything on a topic or in a table (the ledger's equality checks, quota's
restart) cannot share them with other tests; they run the services as real processes
pointed at names of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from metering.db import migrate_url
from metering.processes import die_with_parent, free_port, stop_process
from metering.stack import Stack
from metering.topics import TopicSpec, ensure_topics

TOKEN = "isolated-test-token"
SECRET = "isolated-test-key-hash-secret"
PARTITIONS = 6


@dataclass
class IsolatedEnv:
    """One test's names, and the service processes it started."""

    stack: Stack
    name: str
    database_url: str
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def events_topic(self) -> str:
        return f"{self.name}.events"

    @property
    def ledger_topic(self) -> str:
        return f"{self.name}.ledger"

    @property
    def seat_status_topic(self) -> str:
        return f"{self.name}.seat-status"

    @property
    def dlq_topic(self) -> str:
        return f"{self.name}.dlq"

    def environ(self, port: int, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack.environ(),
            "DATABASE_URL": self.database_url,
            "EVENTS_TOPIC": self.events_topic,
            "LEDGER_TOPIC": self.ledger_topic,
            "SEAT_STATUS_TOPIC": self.seat_status_topic,
            "DLQ_TOPIC": self.dlq_topic,
            "LEDGER_CONSUMER_GROUP": f"{self.name}-ledger",
            "QUOTA_CONSUMER_GROUP": f"{self.name}-quota",
            "METERING_ADMIN_TOKEN": TOKEN,
            "API_KEY_HASH_SECRET": SECRET,
            "HTTP_PORT": str(port),
            **extra,
        }

    def start(self, service: str, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
        """`python -m <service>` on a free port; returns the process and its URL."""
        port = free_port()
        with (self.logs / f"{service}-{len(self.processes)}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", service],
                env=self.environ(port, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.processes.append(process)
        return process, f"http://127.0.0.1:{port}"

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """`metering <args>` with this env's settings, as an operator would run it."""
        return subprocess.run(
            [sys.executable, "-m", "metering.cli", *args],
            env=self.environ(free_port(), **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def replay(self, report: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
        """`metering replay`: exit status, everything printed, and the JSON report."""
        done = self.cli("replay", "--report", str(report), *args)
        body = orjson.loads(report.read_bytes()) if report.exists() else {}
        return done.returncode, done.stdout + done.stderr, body

    def log_tail(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("*.log")))


@asynccontextmanager
async def isolated_env(stack: Stack, logs: Path, prefix: str) -> AsyncIterator[IsolatedEnv]:
    """A fresh migrated database and fresh topics; stops the test's processes at the end."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    database_url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    await migrate_url(database_url)
    env = IsolatedEnv(stack, name, database_url, logs)
    forever = {"retention.ms": "-1"}
    await ensure_topics(
        stack.kafka_bootstrap_servers,
        [
            TopicSpec(env.events_topic, PARTITIONS, forever),
            TopicSpec(env.ledger_topic, PARTITIONS, forever),
            TopicSpec(env.seat_status_topic, PARTITIONS, {"cleanup.policy": "compact"}),
            TopicSpec(env.dlq_topic, 1, forever),
        ],
    )
    try:
        yield env
    finally:
        for process in env.processes:
            stop_process(process)
