"""ingest when things go wrong: a broker that stops answering, restarts, several replicas."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from metering.dev import run_services, wait_until_ready
from metering.processes import free_port_run
from metering.stack import Stack, start_stack
from metering.topics import EVENTS
from schemas.envelope import parse_event
from tests.conftest import ADMIN_TOKEN, SECRETS
from tests.integration.kafka_reading import read_until
from tests.integration.test_ingest import async_team, team, usage

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of this test's own: pausing its broker disturbs no other test."""
    with start_stack(tmp_path / "stack", environ={}, docker_available=lambda: False) as stack:
        yield stack


def embedded_broker_process(stack: Stack) -> psutil.Process:
    """The embedded broker of `stack`, a child of this process (to pause and resume it)."""
    port = stack.kafka_bootstrap_servers.rsplit(":", 1)[1]
    for child in psutil.Process(os.getpid()).children(recursive=True):
        if f"127.0.0.1:{port}" in " ".join(child.cmdline()) and "broker" in child.cmdline():
            return child
    raise AssertionError("the embedded broker is not a child of this process")


async def test_a_paused_broker_gets_503_and_nothing_is_half_accepted(
    private_stack: Stack, tmp_path: Path
) -> None:
    with run_services(
        private_stack, tmp_path, SECRETS, free_port_run(1), names=["ingest"]
    ) as running:
        wait_until_ready(running)
        url = running[0].url
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as client:
            account = await async_team(client, "outage")
            before, during, after = (usage(account, n) for n in ("before", "during", "after"))
            seat_path = f"/v1/subscriptions/sub-{account}/seats"
            seat = {"seat_id": f"seat2-{account}", "tier": "standard", "member": "bo"}
            once = {"Idempotency-Key": f"seat2-{account}"}
            assert (await client.post("/v1/usage", json=before)).status_code == 202
            broker = embedded_broker_process(private_stack)
            broker.send_signal(signal.SIGSTOP)
            try:
                refused = await client.post("/v1/usage", json=during)
                assert refused.status_code == 503
                assert refused.headers["retry-after"]
                assert refused.headers["content-type"] == "application/problem+json"
                batch = await client.post("/v1/usage/batch", json={"reports": [after]})
                assert batch.status_code == 503
                refused_seat = await client.post(seat_path, json=seat, headers=once)
                assert refused_seat.status_code == 503, refused_seat.text
            finally:
                broker.send_signal(signal.SIGCONT)
            retried = await client.post("/v1/usage", json=during)
            assert retried.status_code in (200, 202)
            assert (await client.post("/v1/usage", json=after)).status_code in (200, 202)
            added = await client.post(seat_path, json=seat, headers=once)
            assert added.status_code in (200, 201), added.text

    records = await read_until(
        private_stack.kafka_bootstrap_servers,
        EVENTS,
        wanted=lambda r: r.key == account.encode() and b"UsageRecorded" in (r.value or b""),
        done=lambda found: len(found) >= 3,
    )
    events = [parse_event(r.value or b"") for r in records]
    ids_by_request: dict[str, set[str]] = {}
    for event in events:
        ids_by_request.setdefault(event.payload.request_id, set()).add(event.event_id)  # type: ignore[union-attr]
    assert set(ids_by_request) == {"before", "during", "after"}
    # A report refused with 503 may still reach the log later, but only ever under one id.
    assert all(len(ids) == 1 for ids in ids_by_request.values())
    assert retried.json()["event_id"] in ids_by_request["during"]
    # The plan command refused with 503 was stored: its retry and the relay publish it under
    # the one id the retry answers with.
    seat_facts = await read_until(
        private_stack.kafka_bootstrap_servers,
        EVENTS,
        wanted=lambda r: r.key == account.encode() and b'"SeatAdded"' in (r.value or b""),
        done=lambda found: len(found) >= 2,
    )
    added_ids = {parse_event(r.value or b"").event_id for r in seat_facts}
    assert len(added_ids) == 2  # the team's first seat, and this one
    assert added.json()["event_id"] in added_ids


def test_duplicates_are_caught_across_replicas_and_restarts(
    stack: Stack, services: dict[str, str], tmp_path: Path
) -> None:
    with httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest:
        report = usage(team(ingest, "replica"), "once")
    first = httpx.post(f"{services['ingest']}/v1/usage", json=report, headers=AUTH)
    assert first.status_code == 202
    for _restart in range(2):
        with run_services(stack, tmp_path, SECRETS, free_port_run(1), names=["ingest"]) as other:
            wait_until_ready(other)
            answer = httpx.post(f"{other[0].url}/v1/usage", json=report, headers=AUTH)
            assert (answer.status_code, answer.json()["event_id"]) == (
                200,
                first.json()["event_id"],
            )
