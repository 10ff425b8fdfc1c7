"""(d) `authorize` over HTTP against quota's single uvicorn worker: requests/s and latency.

Three steps, every request a valid member key asking for a text model (the gateway's common
case), spread over the seats of the fleet:

1. *under load* (run by `run`, while (c)'s background usage load runs): requests on a fixed
   schedule at 1,000/s, as in step 3: what a gateway waits while quota applies usage;
2. *saturation*: a fixed number of keep-alive connections, each sending its next request as
   soon as the last is answered: the most requests/s the worker answers;
3. *paced*: requests leave on a fixed schedule at 5,000/s (or 80% of the saturated rate when
   that is lower), spread over several connections; each latency is measured from the
   moment the request was due, so a stalled server cannot hide its queue (no coordinated
   omission).

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams (`rawhttp`): httpx
costs about ten times more CPU per request, and on a 2-core machine the client would measure
itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, replace

import orjson

from metering.bench.load import Seat
from metering.bench.monitor import Latencies, Rate, Timeline, percentile, ticking
from metering.bench.rawhttp import RawConnection, post_request

SATURATION_CONNECTIONS = 16
PACED_CONNECTIONS = 32
TARGET_RATE = 5000.0
UNDER_LOAD_RATE = 1000.0
"""Step 1's schedule: a gateway's authorize traffic while usage flows in."""


def authorize_requests(quota: str, seats: list[Seat], models: list[str], count: int) -> list[bytes]:
    """`count` authorize requests over every seat's key, with models and input lengths."""
    rng = random.Random(9)
    out = []
    for n in range(count):
        seat = seats[n % len(seats)]
        body: dict[str, object] = {
            "model": rng.choice(models),
            "endpoint": rng.choice(("openai", "anthropic")),
        }
        if rng.random() < 0.7:
            body["input_tokens"] = rng.randint(100, 30_000)
        headers = {"Authorization": f"Bearer {seat.api_key}"}
        out.append(post_request(quota, "/v1/authorize", orjson.dumps(body), headers))
    return out


@dataclass(frozen=True)
class Step:
    seconds: float
    requests: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    connections: int
    offered_rate: float | None = None
    sent_p50_ms: float | None = None
    sent_p99_ms: float | None = None
    """Paced step: latency from the moment the request was written (without the client's
    own delay in sending it on time)."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class AuthorizeResult:
    saturation: Step
    paced: Step


async def authorize_bench(
    quota: str,
    requests: list[bytes],
    timeline: Timeline,
    saturation_seconds: float,
    paced_seconds: float,
) -> AuthorizeResult:
    with timeline.phase("d saturation"):
        saturation = await _closed_loop(quota, requests, timeline, saturation_seconds)
    rate = min(TARGET_RATE, 0.8 * saturation.rate)
    with timeline.phase("d paced"):
        paced = await _paced(quota, requests, timeline, paced_seconds, rate)
    return AuthorizeResult(saturation, paced)


async def authorize_paced(
    quota: str, requests: list[bytes], timeline: Timeline, seconds: float, rate: float
) -> Step:
    """Requests on a fixed schedule offering `rate` req/s for `seconds` (step 1)."""
    return await _paced(quota, requests, timeline, seconds, rate)


async def _closed_loop(
    quota: str, requests: list[bytes], timeline: Timeline, seconds: float
) -> Step:
    rate = Rate(timeline, "authorize (req/s)")
    latencies = Latencies(timeline, "authorize")
    statuses: Counter[int] = Counter()

    async def worker(offset: int, until: float) -> None:
        connection = RawConnection(quota)
        await connection.open()
        n = offset
        try:
            while time.perf_counter() < until:
                raw = requests[n % len(requests)]
                n += SATURATION_CONNECTIONS
                started = time.perf_counter()
                status, _ = await connection.request(raw)
                latencies.add(time.perf_counter() - started)
                statuses[status] += 1
                rate.add(1)
        finally:
            await connection.close()

    async with ticking(timeline, rate, latencies):
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(worker(i, until) for i in range(SATURATION_CONNECTIONS)))
        elapsed = time.perf_counter() - started
    return _step(elapsed, rate.total, statuses, latencies.samples, SATURATION_CONNECTIONS)


async def _paced(
    quota: str, requests: list[bytes], timeline: Timeline, seconds: float, offered: float
) -> Step:
    """Each connection sends on its own schedule; together they offer `offered` req/s."""
    rate = Rate(timeline, "authorize (req/s)")
    latencies = Latencies(timeline, "authorize")
    from_send: list[float] = []
    statuses: Counter[int] = Counter()
    connections = PACED_CONNECTIONS
    interval = connections / offered

    async def worker(index: int, started: float, until: float) -> None:
        connection = RawConnection(quota)
        await connection.open()
        n = 0
        try:
            while True:
                due = started + (n + index / connections) * interval
                if due >= until:
                    return
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                raw = requests[(n * connections + index) % len(requests)]
                sent = time.perf_counter()
                status, _ = await connection.request(raw)
                answered = time.perf_counter()
                latencies.add(answered - due)
                from_send.append(answered - sent)
                statuses[status] += 1
                rate.add(1)
                n += 1
        finally:
            await connection.close()

    async with ticking(timeline, rate, latencies):
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(worker(i, started, until) for i in range(connections)))
        elapsed = time.perf_counter() - started
    step = _step(elapsed, rate.total, statuses, latencies.samples, connections, offered)
    return replace(
        step,
        sent_p50_ms=1000 * percentile(from_send, 50),
        sent_p99_ms=1000 * percentile(from_send, 99),
    )


def _step(
    seconds: float,
    requests: int,
    statuses: Counter[int],
    samples: list[float],
    connections: int,
    offered: float | None = None,
) -> Step:
    return Step(
        seconds=seconds,
        requests=requests,
        statuses={str(k): v for k, v in sorted(statuses.items())},
        p50_ms=1000 * percentile(samples, 50),
        p99_ms=1000 * percentile(samples, 99),
        max_ms=1000 * max(samples, default=0.0),
        connections=connections,
        offered_rate=offered,
    )
