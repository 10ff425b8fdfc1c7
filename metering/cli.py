"""`metering`: the operator's command line (whole-system dev run, migrations, topics).

Commands that reach the broker or the database read `.run/env`, written by `make run`, for
the settings not set in the environment, and say so on stderr: after `make run`, `metering
replay` just works. Usage and connection errors are one line naming the setting, exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import re
import sys
import time
from collections.abc import Coroutine, Iterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import rich.console
import rich.progress
import typer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from console.terminal import overview_command, usage_command
from metering import dev
from metering.bench.cli import bench_command
from metering.core.money import to_decimal_string
from metering.core.ratecard import RateCard
from metering.db import migrate_url
from metering.replay import (
    MAX_JOBS,
    KafkaSource,
    Progress,
    ReplayError,
    ReplayReport,
    UnknownSubscription,
    default_jobs,
    replay,
    replayed_statement,
)
from metering.settings import Settings, SettingsError, load_settings
from metering.statement import MonthOutsideSubscription
from metering.topics import contract_topics, ensure_topics

app = typer.Typer(
    help="Token Plan metering: operator commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs reflow: docstring line breaks are not kept
)
topics_app = typer.Typer(help="The contract's Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.command("bench")(bench_command)

T = TypeVar("T")

#: Where `make run` writes the running dev stack's settings (`metering dev --state-dir`).
DEV_ENV_FILE = Path(".run") / dev.ENV_FILE
#: The settings a command may take from it.
DEV_SETTINGS = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "METERING_ADMIN_TOKEN")
NO_STACK_HINT = "start the dev stack (`make run`, which writes .run/env) or set it"


def _version(show: bool) -> None:
    if show:
        typer.echo(f"metering {importlib.metadata.version('token-plan-metering')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Token Plan metering: operator commands."""


def use_dev_stack_settings(env_file: Path | None = None) -> None:
    """Take the dev stack's settings from `.run/env` for those not set, and say so.

    `METERING_ENV_FILE` names another file (e.g. `make run STATE_DIR=...`'s `env`).
    """
    path = env_file or Path(os.environ.get("METERING_ENV_FILE") or DEV_ENV_FILE)
    if not path.exists():
        return
    found = dev.read_env_file(path)
    taken = [name for name in DEV_SETTINGS if name in found and not os.environ.get(name)]
    for name in taken:
        os.environ[name] = found[name]
    if taken:
        typer.echo(f"metering: {', '.join(taken)} from {path} (the dev stack)", err=True)


def fail(message: str) -> typer.Exit:
    """One line on stderr naming the setting and what to do; exit status 2."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _settings() -> Settings:
    """The settings (the dev stack's where unset), or exit 2 naming each bad variable."""
    use_dev_stack_settings()
    try:
        return load_settings()
    except SettingsError as error:
        raise fail(" ".join(str(error.code).split())) from None


def _on_kafka(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` against the broker; an unreachable broker is one line and exit 2."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the one line below says it
    try:
        return asyncio.run(work)
    except (KafkaError, OSError) as error:
        raise fail(
            f"KAFKA_BOOTSTRAP_SERVERS: cannot reach Kafka at {settings.kafka_bootstrap_servers} "
            f"({error}); {NO_STACK_HINT}"
        ) from None


@app.command("dev")
def dev_command(
    state_dir: Annotated[Path, typer.Option(help="where state and logs are kept")] = Path(".run"),
    base_port: Annotated[
        int,
        typer.Option(
            min=1, max=65532, help="ingest's port; ledger, quota, console: the next three"
        ),
    ] = dev.BASE_PORT,
) -> None:
    """Start the embedded stack, the three services and the console (what `make run` does)."""
    raise typer.Exit(dev.run(state_dir, base_port))


@app.command()
def migrate() -> None:
    """Apply the database migrations not yet applied to DATABASE_URL."""
    settings = _settings()
    try:
        applied = asyncio.run(migrate_url(settings.database_url))
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        raise fail(
            f"DATABASE_URL: cannot use PostgreSQL at {settings.database_url} "
            f"({type(error).__name__}: {error}); {NO_STACK_HINT}"
        ) from None
    typer.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


@topics_app.command("create")
def topics_create() -> None:
    """Create the contract's topics that are missing on KAFKA_BOOTSTRAP_SERVERS."""
    settings = _settings()
    specs = contract_topics(settings.events_partitions)
    created = _on_kafka(
        settings,
        ensure_topics(
            settings.kafka_bootstrap_servers,
            specs,
            settings.topic_replication_factor,
            settings.kafka_options(),
        ),
    )
    typer.echo("created: " + ", ".join(created) if created else "all topics exist")


@topics_app.command("list")
def topics_list() -> None:
    """List the contract's topics with their partition counts; exit 1 if any is missing."""
    settings = _settings()

    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap_servers, **settings.kafka_options()
        )
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        finally:
            await admin.close()

    found = _on_kafka(settings, describe())
    missing = False
    for spec in contract_topics(settings.events_partitions):
        if spec.name in found:
            typer.echo(f"{spec.name:<26} {found[spec.name]} partitions")
        else:
            missing = True
            typer.echo(f"{spec.name:<26} MISSING (run `metering topics create`)")
    raise typer.Exit(1 if missing else 0)


SHOWN_DIFFERENCES = 5
PROGRESS_SECONDS = 2.0


def _settings_and_card() -> tuple[Settings, RateCard]:
    """The settings and rate card, or exit status 2 with the bad variable named."""
    settings = _settings()
    try:
        return settings, settings.rate_card()
    except SettingsError as error:
        raise fail(str(error.code)) from None


def _hint(error: Exception) -> str:
    """What to do about a connection error (they name their setting first)."""
    text = str(error)
    if "cannot connect" in text or "cannot reach" in text:
        return f"; {NO_STACK_HINT}"
    return ""


def _until(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no time zone (e.g. 2026-02-01T00:00:00Z)")
    return parsed


def _month(value: str) -> str:
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise typer.BadParameter(f"{value!r} is not a month (YYYY-MM)")
    return value


class LogSourceName(StrEnum):
    archive = "archive"
    kafka = "kafka"


@app.command("replay")
def replay_command(
    source: Annotated[
        LogSourceName,
        typer.Option(
            help="archive: the ledger's PostgreSQL copy of the log; kafka: EVENTS_TOPIC from "
            "its first offset up to where the ledger's group applied it"
        ),
    ] = LogSourceName.archive,
    account: Annotated[
        list[str] | None, typer.Option(help="replay only this account (repeatable)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="only events recorded at or before this RFC 3339 time")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            help="replay the events recorded by this RFC 3339 time and print every "
            "subscription's balances as they stood then"
        ),
    ] = None,
    report: Annotated[Path, typer.Option(help="where the JSON report is written")] = Path(
        ".run/replay-report.json"
    ),
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes that share the archive's accounts (default: one per CPU, at most "
            f"{MAX_JOBS}); a replay from Kafka runs in one",
        ),
    ] = None,
) -> None:
    """Rebuild the ledger from the event log with the pure fold, and compare it with the
    live one.

    Exit status: 0 identical, 1 any difference (listed in the report), 2 usage or connection
    error.
    """
    until_time, as_of_time = _until(until), _until(as_of)
    if until_time and as_of_time:
        raise typer.BadParameter("give --until or --as-of, not both")
    if source is LogSourceName.kafka and (jobs or 1) > 1:
        raise typer.BadParameter("--jobs: a replay from Kafka reads and folds in one process")
    settings, card = _settings_and_card()
    kafka = None
    if source is LogSourceName.kafka:
        kafka = KafkaSource(
            settings.kafka_bootstrap_servers,
            settings.events_topic,
            settings.ledger_consumer_group,
            settings.kafka_options(),
        )
    started = time.monotonic()
    try:
        with replay_progress() as progress:
            result = asyncio.run(
                replay(
                    settings.database_url,
                    card,
                    account or (),
                    until_time,
                    progress,
                    kafka=kafka,
                    as_of=as_of_time,
                    jobs=jobs or default_jobs(),
                )
            )
    except ReplayError as error:
        raise fail(f"{error}{_hint(error)}") from None
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(result.to_json())
    _print_summary(result, time.monotonic() - started, report)
    raise typer.Exit(0 if result.identical else 1)


@contextlib.contextmanager
def replay_progress() -> Iterator[Progress]:
    """A progress bar on a terminal; elsewhere (CI logs) a line every few seconds."""
    if sys.stderr.isatty():
        with rich.progress.Progress(
            *rich.progress.Progress.get_default_columns(),
            rich.progress.TextColumn("{task.completed:,} events"),
            console=rich.console.Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("replaying", total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    started = last = time.monotonic()

    def report_line(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            rate = done / (now - started)
            print(f"replayed {done:,} of {total:,} events ({rate:,.0f}/s)", file=sys.stderr)

    yield report_line


def _print_summary(result: ReplayReport, seconds: float, report: Path) -> None:
    rate = result.events / seconds if seconds > 0 else 0.0
    where = "the archive" if result.source == "archive" else "Kafka"
    typer.echo(
        f"replayed {result.events:,} events of {result.accounts:,} accounts from {where} "
        f"in {seconds:.1f} s ({rate:,.0f} events/s)"
    )
    if result.source == "kafka":
        positions = ", ".join(f"{p}:{o}" for p, o in sorted(result.log_positions.items()))
        typer.echo(
            f"read up to the ledger's offsets (partition:offset) {positions}; skipped "
            f"{result.duplicates_skipped:,} repeated and {result.unparseable_skipped:,} "
            "unparseable records, as the ledger does"
        )
    typer.echo(f"credits deducted: {to_decimal_string(result.credits_deducted_micro)}")
    if result.as_of:
        _print_balances(result)
    if not result.final_states_compared:
        typer.echo(f"entries compared up to {result.until}; final states not compared")
    if result.identical:
        typer.echo(f"differences: 0, identical to the ledger (report: {report})")
        return
    typer.echo(f"differences: {len(result.differences)} (report: {report})")
    for difference in result.differences[:SHOWN_DIFFERENCES]:
        typer.echo(f"  account {difference.account_id} {difference.entry_id}: {difference.what}")


def _print_balances(result: ReplayReport) -> None:
    typer.echo(f"balances as of {result.as_of} (credits):")
    for sub in result.balances:
        typer.echo(
            f"  {sub['subscription_id']} ({sub['status']}, month {sub['month_start']} to "
            f"{sub['month_end']}): {sub['remaining']} remaining"
        )
        for seat in sub["seats"]:
            typer.echo(
                f"    {seat['seat_id']:<24} {seat['tier']:<9} {seat['status']:<10} "
                f"seat {seat['seat_remaining']:>14}  shared {seat['shared_remaining']:>14}"
            )


@app.command("statement")
def statement_command(
    subscription: Annotated[str, typer.Option(help="the subscription id")],
    month: Annotated[
        str,
        typer.Option(
            help="calendar month its subscription month starts in (YYYY-MM)",
            callback=_month,
        ),
    ],
) -> None:
    """Print a subscription month's statement computed from a replay of the archive.

    The JSON is the same as the ledger's `GET /v1/subscriptions/{id}/statement?month=`.
    """
    settings, card = _settings_and_card()
    try:
        body = asyncio.run(replayed_statement(settings.database_url, card, subscription, month))
    except (ReplayError, MonthOutsideSubscription) as error:
        raise fail(f"{error}{_hint(error)}") from None
    except UnknownSubscription as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(body.model_dump_json())


app.command("overview")(overview_command)
app.command("usage")(usage_command)


if __name__ == "__main__":
    app()
