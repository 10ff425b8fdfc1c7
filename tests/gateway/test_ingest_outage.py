"""Stretch: ingest unreachable, or its answers lost, while members make calls through the
gateway. Every call is charged exactly once: the callback retries under the same call id and
ingest counts a repeat once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from metering_litellm.harness import Gateway, run_gateway
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import MODEL, authorized, eventually, new_team, usage_rows
from tests.gateway.flaky import FlakyForwarder
from tests.gateway.test_litellm_gateway import HELLO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def flaky_ingest(services: dict[str, str]) -> AsyncIterator[FlakyForwarder]:
    address = urlsplit(services["ingest"])
    forwarder = FlakyForwarder(address.hostname or "127.0.0.1", address.port or 80)
    await forwarder.start()
    yield forwarder
    await forwarder.stop()


@pytest.fixture(scope="session")
def flaky_gateway(
    services: dict[str, str],
    flaky_ingest: FlakyForwarder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    port = flaky_ingest._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with run_gateway(
        tmp_path_factory.mktemp("flaky-gateway"),
        quota_url=services["quota"],
        ingest_url=f"http://127.0.0.1:{port}",
        gateway_token=ADMIN_TOKEN,
        extra_env={"METERING_USAGE_ATTEMPTS": "8", "METERING_USAGE_BACKOFF_SECONDS": "0.25"},
    ) as running:
        yield running


@pytest.mark.parametrize("failure", ["down", "swallow"])
async def test_calls_during_an_ingest_outage_are_charged_once(
    failure: str,
    flaky_ingest: FlakyForwarder,
    flaky_gateway: Gateway,
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    services: dict[str, str],
) -> None:
    team = await new_team(ingest)
    await authorized(quota, team.seat.api_key, 200)
    client = openai.AsyncOpenAI(
        base_url=f"{flaky_gateway.url}/v1", api_key=team.seat.api_key, max_retries=0
    )
    try:
        flaky_ingest.mode = failure
        for _ in range(5):
            await client.chat.completions.create(model=MODEL, messages=HELLO)
        await asyncio.sleep(1.5)  # the reports fail, and are tried again
        flaky_ingest.mode = "up"
    finally:
        flaky_ingest.mode = "up"
        await client.close()

    rows = await usage_rows(ledger, team, 5)
    assert len({row["request_id"] for row in rows}) == 5
    await asyncio.sleep(2)
    assert len(await usage_rows(ledger, team, 5)) == 5
    async with httpx.AsyncClient(
        base_url=services["quota"], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        seat = await eventually(
            lambda: admin.get(f"/v1/seats/{team.seat.seat_id}"),
            lambda a: Decimal(a.json()["used"]) >= Decimal("15.90"),
        )
    assert Decimal(seat.json()["used"]) == Decimal("15.90")
