"""`make bench-gateway`: what the metering plugin costs a LiteLLM proxy on this machine.

Starts the broker, the database and the three services (as `make bench` does), the stub model
backend and one-worker LiteLLM proxies in three set-ups, the same calls to each:

- `bare`: the proxy alone (its master key, no plugin): the baseline;
- `auth only`: the custom-auth hook without the callback;
- `auth + a no-op callback`: what LiteLLM itself spends once any success callback is set;
- `plugin, no cache`: authorize asked on every call (`METERING_ALLOW_CACHE_SECONDS=0`), usage
  reported;
- `plugin, cache 1 s`: the default.

Latency: sequential calls (one at a time), p50/p99 from the client, and what the plugin adds
over `bare`. Throughput: calls/s one proxy worker sustains with metering on, at a concurrency
of 16, and a check that every call was charged (the seat's credits used).
Writes a JSON report and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil

from metering.dev import SERVICES, run_services, wait_until_ready
from metering.processes import free_port_run
from metering.stack import start_stack
from metering_litellm.harness import CONFIG, run_gateway

ADMIN_TOKEN = "bench-admin-token"
SECRETS = {
    "METERING_ADMIN_TOKEN": ADMIN_TOKEN,
    "API_KEY_HASH_SECRET": "bench-key-hash-secret",
    "TRUSTED_PROXIES": "127.0.0.1",
}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL = "qwen3.6-plus"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, how are you today?"}]}
BARE_CONFIG = """model_list:
  - model_name: "*"
    litellm_params:
      model: "openai/*"
      api_base: os.environ/MODEL_API_BASE
      api_key: os.environ/MODEL_API_KEY
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def team(ingest: str, quota: str) -> dict[str, str]:
    run = f"{time.time_ns()}"
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    async with httpx.AsyncClient(base_url=ingest, headers=ADMIN, timeout=30) as client:
        sub, seat = f"sub-bench-{run}", f"seat-bench-{run}"
        made = await client.post(
            "/v1/subscriptions",
            json={"account_id": f"bench-{run}", "subscription_id": sub, "started_at": now},
        )
        made.raise_for_status()
        seated = await client.post(
            f"/v1/subscriptions/{sub}/seats",
            json={"seat_id": seat, "tier": "premium", "member": "bench"},
        )
        seated.raise_for_status()
        key = (await client.post(f"/v1/subscriptions/{sub}/seats/{seat}/keys")).json()
    async with httpx.AsyncClient(base_url=quota, timeout=30) as client:
        for _ in range(200):
            answer = await client.post(
                "/v1/authorize",
                json={"model": MODEL},
                headers={"Authorization": f"Bearer {key['api_key']}"},
            )
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.1)
    return {"seat_id": seat, "api_key": key["api_key"]}


async def sequential(url: str, api_key: str, calls: int) -> list[float]:
    headers = {"Authorization": f"Bearer {api_key}"}
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        for i in range(calls + 20):
            started = time.perf_counter()
            answer = await client.post("/v1/chat/completions", json=BODY)
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            if i >= 20:  # warm-up
                times.append(elapsed * 1000)
    return times


async def sustained(url: str, api_key: str, seconds: float, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"}
    done = 0
    failed = 0
    stop = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, failed
        while time.monotonic() < stop:
            answer = await client.post("/v1/chat/completions", json=BODY)
            if answer.status_code == 200:
                done += 1
            else:
                failed += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        started = time.monotonic()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"calls": done, "failed": failed, "seconds": elapsed, "calls_per_second": done / elapsed}


def proxy_cpu(proxy: psutil.Process) -> float:
    """CPU seconds of the proxy and its children (a worker, if LiteLLM forked one)."""
    total = 0.0
    for process in [proxy, *proxy.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


async def used_credits(quota: str, seat_id: str) -> Decimal:
    async with httpx.AsyncClient(base_url=quota, headers=ADMIN, timeout=30) as client:
        return Decimal((await client.get(f"/v1/seats/{seat_id}")).json()["used"])


async def charged(quota: str, seat_id: str, expected: Decimal, wait: float = 60) -> Decimal:
    give_up = time.monotonic() + wait
    used = await used_credits(quota, seat_id)
    while used < expected and time.monotonic() < give_up:
        await asyncio.sleep(0.5)
        used = await used_credits(quota, seat_id)
    await asyncio.sleep(2)
    return await used_credits(quota, seat_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per set-up")
    parser.add_argument("--seconds", type=float, default=20, help="of the sustained run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/gateway.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "calls": args.calls,
        "concurrency": args.concurrency,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    state = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    bare_config = state / "bare.yaml"
    bare_config.write_text(BARE_CONFIG)
    with (
        start_stack(state / "stack") as stack,
        run_services(stack, state / "run", SECRETS, free_port_run(len(SERVICES))) as running,
    ):
        wait_until_ready(running)
        urls = {service.name: service.url for service in running}
        member = asyncio.run(team(urls["ingest"], urls["quota"]))
        auth_only = state / "auth-only.yaml"
        auth_only.write_text(
            "\n".join(line for line in CONFIG.read_text().splitlines() if "callbacks:" not in line)
        )
        noop = state / "noop-callback.yaml"
        noop.write_text(
            CONFIG.read_text().replace(
                "metering_litellm.callback.metering_callback", "metering_litellm.noop.noop_callback"
            )
        )
        setups: list[tuple[str, Path, float, bool]] = [
            ("bare", bare_config, 0.0, False),
            ("auth only, cache 1 s", auth_only, 1.0, False),
            ("auth + a no-op callback, cache 1 s", noop, 1.0, False),
            ("plugin, no cache", CONFIG, 0.0, True),
            ("plugin, cache 1 s", CONFIG, 1.0, True),
        ]
        latency: dict[str, Any] = {}
        sustained_runs: dict[str, Any] = {}
        metered_calls = 0
        for name, config, cache, metered in setups:
            with run_gateway(
                state / name.replace(" ", "-").replace(",", ""),
                quota_url=urls["quota"],
                ingest_url=urls["ingest"],
                gateway_token=ADMIN_TOKEN,
                allow_cache_seconds=cache,
                config=config,
            ) as gateway:
                key = gateway.master_key if name == "bare" else member["api_key"]
                times = asyncio.run(sequential(gateway.url, key, args.calls))
                latency[name] = summary(times)
                print(name, latency[name], flush=True)
                proxy = psutil.Process(gateway.pid)
                cpu_before = proxy_cpu(proxy)
                load = asyncio.run(sustained(gateway.url, key, args.seconds, args.concurrency))
                load["proxy_cpu_ms_per_call"] = round(
                    (proxy_cpu(proxy) - cpu_before) * 1000 / max(load["calls"], 1), 2
                )
                sustained_runs[name] = load
                print(name, "sustained", load, flush=True)
                if metered:
                    metered_calls += args.calls + 20 + load["calls"]
                    # let the callback's reports drain before the proxy stops
                    asyncio.run(
                        charged(urls["quota"], member["seat_id"], Decimal("3.18") * metered_calls)
                    )
        used = asyncio.run(
            charged(urls["quota"], member["seat_id"], Decimal("3.18") * metered_calls)
        )
        results["metered_calls"] = metered_calls
        results["charged_calls"] = format(used / Decimal("3.18"), "f")
        results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        results["sustained"] = sustained_runs
        for name, row in latency.items():
            if name != "bare":
                row["added_p50_ms"] = round(row["p50_ms"] - latency["bare"]["p50_ms"], 2)
                row["added_p99_ms"] = round(row["p99_ms"] - latency["bare"]["p99_ms"], 2)
        results["latency"] = latency
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| Set-up | p50 ms | p99 ms | added p50 ms | added p99 ms | calls/s, concurrency "
        f"{results['concurrency']} | proxy CPU ms per call |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["latency"].items():
        load = results["sustained"][name]
        lines.append(
            f"| {name} | {row['p50_ms']} | {row['p99_ms']} | {row.get('added_p50_ms', '-')} "
            f"| {row.get('added_p99_ms', '-')} | {load['calls_per_second']:.1f} "
            f"({load['failed']} failed) | {load['proxy_cpu_ms_per_call']} |"
        )
    lines.append("")
    lines.append(
        f"Metered calls {results['metered_calls']}, charged (seat credits used / 3.18): "
        f"{results['charged_calls']}; load average (1, 5, 15 min) before "
        f"{results['load_average_before']}, after {results['load_average_after']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
