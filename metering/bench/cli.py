"""`metering bench`: the command (registered in `metering.cli`); the work is in `run`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

Seconds = Annotated[float | None, typer.Option(min=0.5, help="seconds (default: full or quick)")]


def bench_command(
    out: Annotated[Path, typer.Option(help="where results.json, summary.md and the PNG go")] = Path(
        "bench"
    ),
    quick: Annotated[
        bool, typer.Option(help="a smoke run: a few seconds per phase, a small fleet")
    ] = False,
    broker_seconds: Seconds = None,
    burst_seconds: Seconds = None,
    sustained_seconds: Seconds = None,
    single_seconds: Seconds = None,
    freshness_seconds: Seconds = None,
    authorize_seconds: Seconds = None,
    fold_seconds: Seconds = None,
    accounts: Annotated[
        int | None, typer.Option(min=1, help="subscriptions (accounts); default 10,000")
    ] = None,
    seats: Annotated[
        int | None, typer.Option(min=1, help="most seats per subscription (1 to this); default 2")
    ] = None,
    provision_concurrency: Annotated[
        int | None, typer.Option(min=1, help="teams provisioned at once; default 64")
    ] = None,
    freshness_rate: Annotated[
        float | None, typer.Option(min=1, help="(c)'s offered events/s (default: 50% of (b)'s)")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="state and service logs (default .run/bench-<time>)")
    ] = None,
    ingest_url: Annotated[
        str | None, typer.Option(help="use running services (with --ledger-url, --quota-url)")
    ] = None,
    ledger_url: Annotated[str | None, typer.Option()] = None,
    quota_url: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Measure the broker's ceiling, end-to-end throughput (batches and single posts),
    freshness and a new key's delay, authorize, the pure fold, replay and quota's memory per
    account on this machine; write results.json, summary.md and a PNG plot.

    The stack comes from the stack starter (KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else
    Docker, else embedded); the services are started on the run's own database and topics,
    unless --ingest-url, --ledger-url and --quota-url name running ones (then
    METERING_ADMIN_TOKEN and EVENTS_TOPIC must be theirs).
    """
    from metering.bench.run import Options, run_bench

    options = Options.quick_defaults(out) if quick else Options(out=out)
    durations = options.durations
    given = {
        "broker": broker_seconds,
        "burst": burst_seconds,
        "sustained": sustained_seconds,
        "single": single_seconds,
        "freshness": freshness_seconds,
        "authorize": authorize_seconds,
        "fold": fold_seconds,
    }
    durations = replace(durations, **{k: v for k, v in given.items() if v is not None})
    urls = (ingest_url, ledger_url, quota_url)
    if any(urls) and not all(urls):
        raise typer.BadParameter("give --ingest-url, --ledger-url and --quota-url together")
    options = replace(
        options,
        durations=durations,
        accounts=accounts or options.accounts,
        seats=(1, seats) if seats else options.seats,
        provision_concurrency=provision_concurrency or options.provision_concurrency,
        freshness_rate=freshness_rate,
        state_dir=state_dir,
        ingest_url=ingest_url,
        ledger_url=ledger_url,
        quota_url=quota_url,
    )
    try:
        results = run_bench(options, log=lambda line: typer.echo(line, err=True))
    except OSError as error:  # click would take a broken pipe for its own stdout's, silently
        raise RuntimeError(f"the bench failed: {error!r}") from error
    typer.echo((out / "summary.md").read_text())
    if not results["figures"]:
        raise typer.Exit(1)
