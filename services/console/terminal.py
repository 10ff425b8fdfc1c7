"""`metering overview` and `metering usage`: the console's team overview and usage details in
a terminal (or as the APIs' JSON with `--json`), read over HTTP with a token.

The token is `--token`, else `METERING_TOKEN`, else `METERING_ADMIN_TOKEN`; the services are
`QUOTA_URL` and `LEDGER_URL`. Those not set are taken from the running dev stack's `.run/env`
(`METERING_ENV_FILE` names another), like every `metering` command.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from console import formatting
from metering.dev import ENV_FILE, read_env_file

FROM_ENV_FILE = ("QUOTA_URL", "LEDGER_URL", "METERING_ADMIN_TOKEN")
DEFAULT_URLS = {"QUOTA_URL": "http://127.0.0.1:8003", "LEDGER_URL": "http://127.0.0.1:8002"}

Token = Annotated[
    str | None,
    typer.Option(help="team token, read or admin token (default: METERING_TOKEN, the admin's)"),
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON as is")]


def _setting(name: str) -> str | None:
    if os.environ.get(name):
        return os.environ[name]
    path = Path(os.environ.get("METERING_ENV_FILE") or Path(".run") / ENV_FILE)
    if name in FROM_ENV_FILE and path.exists():
        return read_env_file(path).get(name)
    return None


def _fail(message: str, status: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(status)


def _get(service: str, path: str, token: str | None, params: dict[str, str]) -> Any:
    name = f"{service.upper()}_URL"
    base = _setting(name) or DEFAULT_URLS[name]
    credential = token or _setting("METERING_TOKEN") or _setting("METERING_ADMIN_TOKEN")
    if not credential:
        raise _fail("no token: pass --token, or set METERING_TOKEN (or start `make run`)")
    try:
        answer = httpx.get(
            base.rstrip("/") + path,
            params=params,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=30,
        )
    except httpx.HTTPError as error:
        raise _fail(f"{name}: {service} does not answer at {base} ({error})") from None
    if answer.status_code == 401:
        raise _fail(f"{service} refused the token (401)")
    if answer.status_code == 404:
        raise _fail("not found", status=1)
    if answer.status_code != 200:
        detail = answer.text[:300]
        raise _fail(f"{service} answered {answer.status_code}: {detail}", status=1)
    return answer.json()


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def overview_command(
    subscription: Annotated[str, typer.Option(help="the subscription id")],
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Print a subscription's team overview: utilization, seats and packs (quota's figures)."""
    path = f"/v1/subscriptions/{quote(subscription, safe='')}/overview"
    o = _get("quota", path, token, {})
    if as_json:
        typer.echo(json.dumps(o))
        return
    now = datetime.now(UTC)
    typer.echo(
        f"{o['subscription_id']} ({o['status']}): {formatting.percent(o['utilization_percent'])} "
        f"used, {formatting.credits(o['used'])} of {formatting.credits(o['quota'])} credits, "
        f"{formatting.credits(o['remaining'])} remaining"
    )
    typer.echo(
        f"month {formatting.utc_text(o['month_start'])} to {formatting.utc_text(o['month_end'])}"
        f" (resets {formatting.countdown(o['month_end'], now)})"
    )
    typer.echo("\nseats")
    seats = [
        [
            s["member"],
            s["seat_id"],
            s["tier"],
            s["status"] + (f" ({s['reason']})" if s["status"] == "suspended" else ""),
            formatting.credits(s["used"]),
            formatting.credits(s["remaining"]),
            formatting.countdown(s["resets_at"], now),
        ]
        for s in o["seats"]
    ]
    header = ["member", "seat", "tier", "status", "used", "remaining", "resets"]
    for line in _table(header, seats, {4, 5}):
        typer.echo(f"  {line}")
    typer.echo("\npacks")
    packs = [
        [
            p["pack_id"],
            formatting.credits(p["used"]),
            formatting.credits(p["remaining"]),
            f"{formatting.countdown(p['expires_at'], now)} "
            f"({formatting.utc_text(p['expires_at'])})",
        ]
        for p in o["packs"]
    ]
    if packs:
        for line in _table(["pack", "used", "remaining", "expires"], packs, {1, 2}):
            typer.echo(f"  {line}")
    else:
        typer.echo("  none valid now")


def usage_command(
    subscription: Annotated[str, typer.Option(help="the subscription id")],
    from_: Annotated[
        str | None, typer.Option("--from", help="from this time on (RFC 3339 or a date, UTC)")
    ] = None,
    to: Annotated[str | None, typer.Option(help="before this time (exclusive)")] = None,
    seat: Annotated[str | None, typer.Option(help="only this seat")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="at most this many rows")] = 100,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Print a subscription's usage details, newest first, and the totals of the filter (the
    ledger's sums over all its rows, not only those printed)."""
    filters = {
        k: v for k, v in {"from": from_, "to": to, "seat_id": seat, "model": model}.items() if v
    }
    path = f"/v1/subscriptions/{quote(subscription, safe='')}/usage"
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(rows) < limit:
        params = {**filters, "limit": str(min(1000, limit - len(rows)))}
        if cursor:
            params["cursor"] = cursor
        page = _get("ledger", path, token, params)
        rows += page["rows"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    totals = _get("ledger", f"{path}/totals", token, filters)
    if as_json:
        typer.echo(json.dumps({"rows": rows, "next_cursor": cursor, "totals": totals}))
        return
    table = [
        [
            formatting.utc_text(r["deducted_at"]),
            r["request_id"],
            r["seat_id"],
            r["model"],
            formatting.count(r["input_tokens"] + r["cached_tokens"] + r["output_tokens"]),
            formatting.credits(r["credits"]),
        ]
        for r in rows
    ]
    header = ["time", "request", "seat", "model", "tokens", "credits"]
    for line in _table(header, table, {4, 5}):
        typer.echo(line)
    shown = f" (the newest {len(rows):,} shown: raise --limit for more)" if cursor else ""
    typer.echo(
        f"{totals['requests']:,} requests, {formatting.credits(totals['credits'])} credits "
        f"for this filter{shown}"
    )
