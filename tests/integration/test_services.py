"""The three services as real processes: health, readiness, metrics, graceful stop, `make run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from metering.dev import DEV_SERVICES, SERVICES, run_services, wait_until_ready
from metering.processes import free_port_run
from metering.stack import Stack
from tests.conftest import METRICS, SECRETS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", SERVICES)
def test_health_readiness_and_metrics(services: dict[str, str], name: str) -> None:
    url = services[name]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "service": name}
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "broker": True, "consumers": True}
    assert httpx.get(f"{url}/metrics").status_code == 401  # private: METRICS_TOKEN
    metrics = httpx.get(f"{url}/metrics", headers=METRICS)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "process_cpu_seconds_total" in metrics.text
    assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == f"metering {name}"


def test_sigterm_stops_services_gracefully(stack: Stack, tmp_path: Path) -> None:
    with run_services(stack, tmp_path, SECRETS, free_port_run(len(SERVICES))) as running:
        wait_until_ready(running)
        for service in running:
            service.process.send_signal(signal.SIGTERM)
        for service in running:
            assert service.process.wait(30) == 0, service.log_path.read_text()[-2000:]
            assert '"msg":"service stopped"' in service.log_path.read_text()


def test_make_run_reaches_ready_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """`metering dev` (what `make run` runs) on the embedded stack, then Ctrl-C."""
    base_port = free_port_run(len(DEV_SERVICES))
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    started = time.monotonic()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metering.cli",
            "dev",
            "--state-dir",
            str(tmp_path),
            "--base-port",
            str(base_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        banner = []
        assert run.stdout is not None
        for line in run.stdout:
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        assert time.monotonic() - started < 60, "make run must be ready within 60 s"
        text = "".join(banner)
        assert "admin token:" in text, text
        for port in range(base_port, base_port + len(DEV_SERVICES)):
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        descendants = psutil.Process(run.pid).children(recursive=True)
        database = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert len(descendants) >= 4, "the broker and three services run under `metering dev`"
        assert database, "PostgreSQL runs on the state directory"
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 0
    finally:
        if run.poll() is None:
            run.kill()
    leftovers = [
        p for p in descendants + database if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    assert leftovers == []
