"""`metering`: the operator's command line (whole-system dev run, migrations, topics)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from aiokafka.admin import AIOKafkaAdminClient

from metering import dev
from metering.db import migrate_url
from metering.settings import load_settings
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


if __name__ == "__main__":
    app()
