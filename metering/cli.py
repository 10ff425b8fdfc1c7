"""`metering`: the operator's command line (whole-system dev run, migrations, topics)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.admin import AIOKafkaAdminClient

from metering import dev
from metering.core.money import to_decimal_string
from metering.core.ratecard import RateCard
from metering.db import migrate_url
from metering.replay import (
    ReplayError,
    ReplayReport,
    UnknownSubscription,
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
)
topics_app = typer.Typer(help="The contract's Kafka topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@app.command("dev")
def dev_command(
    state_dir: Annotated[Path, typer.Option(help="where state and logs are kept")] = Path(".run"),
    base_port: Annotated[
        int, typer.Option(min=1, max=65533, help="ingest's port; ledger, quota: the next two")
    ] = dev.BASE_PORT,
) -> None:
    """Start the embedded stack and the three services (what `make run` does)."""
    raise typer.Exit(dev.run(state_dir, base_port))


@app.command()
def migrate() -> None:
    """Apply the database migrations not yet applied to DATABASE_URL."""
    settings = load_settings()
    applied = asyncio.run(migrate_url(settings.database_url))
    typer.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


@topics_app.command("create")
def topics_create() -> None:
    """Create the contract's topics that are missing on KAFKA_BOOTSTRAP_SERVERS."""
    settings = load_settings()
    specs = contract_topics(settings.events_partitions)
    created = asyncio.run(
        ensure_topics(settings.kafka_bootstrap_servers, specs, settings.topic_replication_factor)
    )
    typer.echo("created: " + ", ".join(created) if created else "all topics exist")


@topics_app.command("list")
def topics_list() -> None:
    """List the contract's topics with their partition counts, and say which are missing."""
    settings = load_settings()

    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        finally:
            await admin.close()

    found = asyncio.run(describe())
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
    try:
        settings = load_settings()
        return settings, settings.rate_card()
    except SettingsError as error:
        typer.echo(error.code, err=True)
        raise typer.Exit(2) from None


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


@app.command("replay")
def replay_command(
    account: Annotated[
        list[str] | None, typer.Option(help="replay only this account (repeatable)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="only events recorded at or before this RFC 3339 time")
    ] = None,
    report: Annotated[Path, typer.Option(help="where the JSON report is written")] = Path(
        "replay-report.json"
    ),
) -> None:
    """Rebuild the ledger from its archive of the event log with the pure fold, and compare
    it with the live one.

    Exit status: 0 identical, 1 any difference (listed in the report), 2 usage or connection
    error.
    """
    until_time = _until(until)
    settings, card = _settings_and_card()
    started = time.monotonic()
    last_progress = started

    def progress(events: int, accounts: int) -> None:
        nonlocal last_progress
        now = time.monotonic()
        if now - last_progress >= PROGRESS_SECONDS:
            last_progress = now
            rate = events / (now - started)
            print(
                f"replayed {events:,} events, {accounts:,} accounts ({rate:,.0f}/s)",
                file=sys.stderr,
            )

    try:
        result = asyncio.run(
            replay(settings.database_url, card, account or (), until_time, progress)
        )
    except ReplayError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    report.write_bytes(result.to_json())
    _print_summary(result, time.monotonic() - started, report)
    raise typer.Exit(0 if result.identical else 1)


def _print_summary(result: ReplayReport, seconds: float, report: Path) -> None:
    rate = result.events / seconds if seconds > 0 else 0.0
    typer.echo(
        f"replayed {result.events:,} events of {result.accounts:,} accounts from the "
        f"archive in {seconds:.1f} s ({rate:,.0f} events/s)"
    )
    typer.echo(f"credits deducted: {to_decimal_string(result.credits_deducted_micro)}")
    if not result.final_states_compared:
        typer.echo(f"entries compared up to {result.until}; final states not compared")
    if result.identical:
        typer.echo(f"differences: 0, identical to the ledger (report: {report})")
        return
    typer.echo(f"differences: {len(result.differences)} (report: {report})")
    for difference in result.differences[:SHOWN_DIFFERENCES]:
        typer.echo(f"  account {difference.account_id} {difference.entry_id}: {difference.what}")


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
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except UnknownSubscription as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(body.model_dump_json())


if __name__ == "__main__":
    app()
