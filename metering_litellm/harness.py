"""A LiteLLM proxy with the metering plugin and the stub model backend, as child processes on
loopback: what the end-to-end tests and `make bench-gateway` put in front of the services."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from metering.processes import die_with_parent, free_port, stop_process

CONFIG = Path(__file__).with_name("proxy_config.yaml")


@dataclass(frozen=True)
class Gateway:
    url: str
    """The proxy's base URL (OpenAI SDK: `url + "/v1"`; Anthropic SDK: `url`)."""
    backend_url: str
    log: Path
    master_key: str
    """The proxy's own admin key (LiteLLM's `master_key`)."""
    pid: int
    """The proxy's process (its one worker serves in it)."""


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds}s: {log.read_text()[-3000:]}")


@contextmanager
def run_gateway(
    state_dir: Path,
    quota_url: str,
    ingest_url: str,
    gateway_token: str,
    allow_cache_seconds: float = 1.0,
    seat_status_bootstrap_servers: str | None = None,
    extra_env: dict[str, str] | None = None,
    config: Path = CONFIG,
) -> Iterator[Gateway]:
    """The stub backend and a one-worker LiteLLM proxy configured with `proxy_config.yaml`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    backend_port, proxy_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    master_key = f"sk-{secrets.token_hex(24)}"
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of LiteLLM's price list
        "LITELLM_MASTER_KEY": master_key,
        "MODEL_API_BASE": f"{backend_url}/v1",
        "MODEL_API_KEY": "stub",
        "METERING_QUOTA_URL": quota_url,
        "METERING_INGEST_URL": ingest_url,
        "METERING_GATEWAY_TOKEN": gateway_token,
        "METERING_ALLOW_CACHE_SECONDS": str(allow_cache_seconds),
        **(extra_env or {}),
    }
    if seat_status_bootstrap_servers:
        env["METERING_SEAT_STATUS_BOOTSTRAP_SERVERS"] = seat_status_bootstrap_servers
    bin_dir = Path(sys.executable).parent
    backend_log = state_dir / "stub-backend.log"
    proxy_log = state_dir / "litellm-proxy.log"
    with backend_log.open("wb") as b_out, proxy_log.open("wb") as p_out:
        backend = subprocess.Popen(
            [sys.executable, "-m", "metering_litellm.stub", "--port", str(backend_port)],
            stdout=b_out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )
        proxy = subprocess.Popen(
            [
                str(bin_dir / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(proxy_port),
                "--num_workers",
                "1",
            ],
            stdout=p_out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=state_dir,
            preexec_fn=die_with_parent,
        )
    try:
        _wait(f"{backend_url}/v1/models", backend, backend_log, 30)
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        _wait(f"{proxy_url}/health/liveliness", proxy, proxy_log, 120)
        yield Gateway(proxy_url, backend_url, proxy_log, master_key, proxy.pid)
    finally:
        stop_process(proxy)
        stop_process(backend)
