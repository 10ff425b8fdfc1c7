"""`make run`: the whole system on one machine, on the stack starter's broker and database.

Starts the stack, then the three services as child processes on ports 8001/8002/8003, waits
until each answers `/readyz`, prints where everything is and what to try, and stops it all on
Ctrl-C, SIGTERM or when a service dies. State and logs live under `.run/`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from metering.processes import die_with_parent, stop_process
from metering.stack import Stack, start_stack

SERVICES = ("ingest", "ledger", "quota")
BASE_PORT = 8001
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunningService:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


#: Secrets the services need; `make run` makes each once and keeps it under `.run/`.
SECRETS = ("METERING_ADMIN_TOKEN", "API_KEY_HASH_SECRET")


def kept_secrets(state_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Each secret from the environment, or made once and kept in `.run/<name>`."""
    found = {}
    for name in SECRETS:
        if environ.get(name):
            found[name] = environ[name]
            continue
        path = state_dir / name.lower()
        if not path.exists():
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        found[name] = path.read_text().strip()
    return found


@contextlib.contextmanager
def run_services(
    stack: Stack,
    state_dir: Path,
    secret_env: Mapping[str, str],
    base_port: int = BASE_PORT,
    names: Sequence[str] = SERVICES,
) -> Iterator[list[RunningService]]:
    """Start each service as `python -m <service>` on consecutive ports from `base_port`, and
    stop them all (SIGTERM first) on exit."""
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **stack.environ(), **secret_env}
    running: list[RunningService] = []
    try:
        for port, name in enumerate(names, start=base_port):
            log_path = logs / f"{name}.log"
            with log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", name],
                    env={**env, "HTTP_PORT": str(port)},
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    process_group=0,  # Ctrl-C reaches us only; we stop them in order
                )
            running.append(RunningService(name, f"http://127.0.0.1:{port}", process, log_path))
        yield running
    finally:
        for service in running:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in running:
            stop_process(service.process, grace=30)


def wait_until_ready(services: list[RunningService], timeout: float = READY_TIMEOUT) -> None:
    """Poll every `/readyz` until all say 200; raise naming the laggards and their logs."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for service in list(pending):
                if service.process.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited with status {service.process.returncode}; "
                        f"see {service.log_path}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{service.url}/readyz").status_code == 200:
                        pending.remove(service)
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{s.name} (log: {s.log_path})" for s in pending)
                raise RuntimeError(f"not ready after {timeout:.0f} s: {names}")
            time.sleep(0.2)


TRY_IT = """

Try it: a subscription, a seat and its key, the seed example's usage (3.18 credits), the balance.

  AUTH="Authorization: Bearer {token}"
  curl -s {ingest}/v1/subscriptions -H "$AUTH" -H 'Content-Type: application/json' \\
    -d '{{"account_id": "acme", "subscription_id": "sub-1", "started_at": "2026-11-01T00:00:00Z"}}'
  curl -s {ingest}/v1/subscriptions/sub-1/seats -H "$AUTH" -H 'Content-Type: application/json' \\
    -d '{{"seat_id": "seat-ana", "tier": "standard", "member": "ana"}}'
  curl -s -X POST {ingest}/v1/subscriptions/sub-1/seats/seat-ana/keys -H "$AUTH"
  curl -s {ingest}/v1/usage -H "$AUTH" -H 'Content-Type: application/json' \\
    -d '{{"request_id": "req-1", "account_id": "acme", "subscription_id": "sub-1",
         "seat_id": "seat-ana", "key_id": "KEY_ID_FROM_ABOVE", "model": "qwen3.6-plus",
         "occurred_at": "'$(date -u +%FT%TZ)'",
         "input_tokens": 8349, "cached_tokens": 40794, "output_tokens": 573}}'
  curl -s {quota}/v1/seats/seat-ana -H "$AUTH"                 # the balance: 24996.82 left
  curl -s {quota}/v1/authorize -H "Authorization: Bearer API_KEY_FROM_ABOVE" \\
    -H 'Content-Type: application/json' -d '{{"model": "qwen3.6-plus", "endpoint": "openai"}}'
  curl -s {ledger}/v1/subscriptions/sub-1/usage -H "$AUTH"     # usage details; ?format=csv

Ctrl-C stops everything.
"""


def try_it(services: list[RunningService], token: str) -> str:
    """The banner printed once everything is ready: where things are and what to try."""
    urls = {s.name: s.url for s in services}
    lines = ["", "Token Plan metering is running.", ""]
    lines += [f"  {s.name:<7} {s.url}   (docs: {s.url}/docs, log: {s.log_path})" for s in services]
    lines += ["", f"  admin token: {token}"]
    return "\n".join(lines) + TRY_IT.format(token=token, **urls)


def run(state_dir: Path, base_port: int = BASE_PORT) -> int:
    """Run until interrupted or until a service dies; returns the exit status."""
    state_dir.mkdir(parents=True, exist_ok=True)
    kept = kept_secrets(state_dir, os.environ)
    print("starting the broker and the database...", flush=True)
    try:
        with (
            start_stack(state_dir / "stack") as stack,
            run_services(stack, state_dir, kept, base_port) as services,
        ):
            print(f"  kafka    {stack.kafka_bootstrap_servers} ({stack.kafka_origin})")
            print(f"  postgres {stack.database_url} ({stack.database_origin})", flush=True)
            wait_until_ready(services)
            print(try_it(services, kept["METERING_ADMIN_TOKEN"]), flush=True)
            while all(s.process.poll() is None for s in services):
                time.sleep(0.5)
            dead = [s for s in services if s.process.poll() is not None]
            for service in dead:
                print(
                    f"{service.name} stopped unexpectedly; see {service.log_path}", file=sys.stderr
                )
            return 1
    except KeyboardInterrupt:
        print("\nstopped.")
        return 0
    except RuntimeError as error:
        print(f"make run failed: {error}", file=sys.stderr)
        return 1
