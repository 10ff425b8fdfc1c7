"""`make run`: the whole system on one machine, on the stack starter's broker and database.

Checks its ports, starts the stack, then the three services as child processes on ports
8001/8002/8003 (or from `--base-port`), waits until each of *our* children answers `/readyz`,
writes `.run/env` for the `metering` commands, prints where everything is and a demo to paste,
and supervises: a service that dies is restarted alone, with back-off, while the broker and
the database keep running. Ctrl-C or SIGTERM stops it all. State and logs live under `.run/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from metering.processes import die_with_parent, port_is_free, stop_process
from metering.stack import Stack, StackError, start_stack

SERVICES = ("ingest", "ledger", "quota")
"""The back-end services (event log, ledger, quota): each with readiness checks and metrics."""
CONSOLE = "console"
DEV_SERVICES = (*SERVICES, CONSOLE)
"""What `make run` starts: the back-end services, then the console for people (port 8004),
which reads them over HTTP (`INGEST_URL`, `LEDGER_URL`, `QUOTA_URL`)."""
BASE_PORT = 8001
READY_TIMEOUT = 60.0
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 30.0
"""A service up this long is healthy again: its next crash restarts it after the first delay."""

ENV_FILE = "env"
"""Under the state directory: the running dev stack's settings, for `metering` and the demo."""
PID_FILE = "dev.pid"
"""Under the state directory while a dev stack uses it: a second one must not reset it."""


@dataclass(frozen=True)
class RunningService:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    environ: Mapping[str, str]


#: Secrets the services need; `make run` makes each once and keeps it under `.run/` (the
#: console's session secret too: its sign-ins outlive a restart by the supervisor).
SECRETS = ("METERING_ADMIN_TOKEN", "API_KEY_HASH_SECRET", "CONSOLE_SESSION_SECRET")


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


def spawn(name: str, port: int, environ: Mapping[str, str], log_path: Path) -> RunningService:
    """Start `python -m <name>` on `port`, its output appended to `log_path`."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", name],
            env={**environ, "HTTP_PORT": str(port)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            process_group=0,  # Ctrl-C reaches us only; we stop them in order
        )
    return RunningService(name, f"http://127.0.0.1:{port}", process, log_path, port, environ)


@contextlib.contextmanager
def run_services(
    stack: Stack,
    state_dir: Path,
    secret_env: Mapping[str, str],
    base_port: int = BASE_PORT,
    names: Sequence[str] = SERVICES,
) -> Iterator[list[RunningService]]:
    """Start each service as `python -m <service>` on consecutive ports from `base_port`, and
    stop them all (SIGTERM first) on exit, including any the supervisor put in the list."""
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    urls = {
        f"{name.upper()}_URL": f"http://127.0.0.1:{port}"
        for port, name in enumerate(names, base_port)
    }
    env = {**os.environ, **stack.environ(), **secret_env, **urls}
    running: list[RunningService] = []
    try:
        for port, name in enumerate(names, start=base_port):
            running.append(spawn(name, port, env, logs / f"{name}.log"))
        yield running
    finally:
        stop_all(running, grace=30)


def stop_all(services: Sequence[RunningService], grace: float) -> None:
    """SIGTERM every service at once, then wait for each (SIGKILL after `grace`)."""
    for service in services:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        stop_process(service.process, grace=grace)


def listens_on(pid: int, port: int) -> bool:
    """True when process `pid` itself holds the listening socket of `port`."""
    with contextlib.suppress(psutil.Error):
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in psutil.Process(pid).net_connections(kind="inet")
        )
    return False


def answers_ready(client: httpx.Client, service: RunningService) -> bool:
    """Our child is alive, holds its port, and says ready (not some other process there)."""
    if service.process.poll() is not None:
        return False
    with contextlib.suppress(httpx.HTTPError):
        if client.get(f"{service.url}/readyz").status_code != 200:
            return False
        return listens_on(service.process.pid, service.port)
    return False


def wait_until_ready(services: list[RunningService], timeout: float = READY_TIMEOUT) -> None:
    """Poll every `/readyz` until all of our children say 200; raise naming the laggards."""
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
                if answers_ready(client, service):
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{s.name} (log: {s.log_path})" for s in pending)
                raise RuntimeError(f"not ready after {timeout:.0f} s: {names}")
            time.sleep(0.2)


def taken_ports(base_port: int, names: Sequence[str] = SERVICES) -> list[str]:
    """The ports of the run that something else holds, each with its service and holder."""
    taken = []
    for port, name in enumerate(names, start=base_port):
        if not port_is_free(port):
            taken.append(f"{port} ({name}{_holder(port)})")
    return taken


def _holder(port: int) -> str:
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return f"; held by pid {conn.pid}, {psutil.Process(conn.pid).name()}"
    return ""


def free_base_port(after: int, count: int = len(SERVICES)) -> int:
    """The first base port from `after + 10` on, in steps of 10, whose `count` ports are free."""
    for base in range(after + 10, 65_536 - count, 10):
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free ports above {after}")


def fresh_start_note(state_dir: Path, environ: Mapping[str, str]) -> str:
    """Make the database match a new, empty broker, and say what was kept.

    The embedded broker (like a Kafka container) keeps its topics in memory only: each start
    begins with empty topics. A database kept from an earlier run would hold consumer offsets
    past their end, and the services would skip every new event while saying ready. So unless
    the broker is external (KAFKA_BOOTSTRAP_SERVERS), the embedded database starts empty too.
    """
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        database = "external" if environ.get("DATABASE_URL") else "kept under the state directory"
        return f"kept state: the broker is external (its topics persist), the database {database}"
    if environ.get("DATABASE_URL"):
        raise StackError(
            "DATABASE_URL is set but KAFKA_BOOTSTRAP_SERVERS is not: the new broker starts with "
            "empty topics, and the offsets stored in that database would skip every new event. "
            "Set both, or neither (the dev stack then starts both fresh)."
        )
    data = state_dir.resolve() / "stack" / "postgres"
    if data.exists():
        shutil.rmtree(data)
        return (
            "clean state: the embedded broker keeps its topics in memory, so the database was "
            f"started empty too (the previous run's data in {data} was removed)"
        )
    return "clean state: a new broker and a new database"


def write_env_file(state_dir: Path, stack: Stack, services: Sequence[RunningService]) -> Path:
    """`.run/env`: what a shell (`. .run/env`) and every `metering` command need to reach
    this stack. Removed when the stack stops, so nothing points at a stack that is gone."""
    values = {
        **stack.environ(),
        **{f"{s.name.upper()}_URL": s.url for s in services},
        "METERING_ADMIN_TOKEN": services[0].environ["METERING_ADMIN_TOKEN"],
    }
    path = state_dir / ENV_FILE
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"# the running dev stack (metering dev, pid {os.getpid()}, since {stamp})"]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def other_run(pid_path: Path) -> int | None:
    """The pid of another live `metering dev` on this state directory, if any."""
    with contextlib.suppress(ValueError, OSError):
        pid = int(pid_path.read_text())
        if pid != os.getpid() and psutil.pid_exists(pid):
            return pid
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """The `NAME=value` lines of an env file written by `write_env_file`."""
    found = {}
    for line in path.read_text().splitlines():
        name, sep, raw = line.partition("=")
        if sep and not line.startswith("#"):
            found[name.strip()] = shlex.split(raw)[0] if raw else ""
    return found


def demo_script(env_path: Path) -> str:
    """The demo to paste into bash: every id captured, every wait explicit, no placeholders.

    `tests/integration/test_quickstart.py` runs it verbatim and checks what its comments
    promise; README.md's Quickstart shows it for the default `.run/`.
    """
    return DEMO.replace("ENV_PATH", shlex.quote(str(env_path)))


DEMO = """\
. ENV_PATH   # the stack's URLs and admin token
AUTH="Authorization: Bearer $METERING_ADMIN_TOKEN"
JSON='Content-Type: application/json'
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
now() { python3 -c 'import datetime; print(datetime.datetime.now(datetime.UTC).isoformat())'; }
RUN=$RANDOM$RANDOM   # fresh ids on every run, so the demo can run again
SUB=sub-$RUN SEAT=seat-ana-$RUN

# a subscription from now on, a standard seat (25000 credits a month), the seat's API key
curl -s "$INGEST_URL/v1/subscriptions" -H "$AUTH" -H "$JSON" -d '{"account_id": "acme-'$RUN'",
  "subscription_id": "'$SUB'", "started_at": "'$(now)'"}'; echo
curl -s "$INGEST_URL/v1/subscriptions/$SUB/seats" -H "$AUTH" -H "$JSON" \\
  -d '{"seat_id": "'$SEAT'", "tier": "standard", "member": "ana"}'; echo
KEY=$(curl -s -X POST "$INGEST_URL/v1/subscriptions/$SUB/seats/$SEAT/keys" -H "$AUTH")
KEY_ID=$(echo "$KEY" | field key_id); API_KEY=$(echo "$KEY" | field api_key)
echo "key $KEY_ID: $API_KEY"

# quota follows the event log: wait until it lets the new key through (well under a second)
until curl -s "$QUOTA_URL/v1/authorize" -H "Authorization: Bearer $API_KEY" -H "$JSON" \\
  -d '{"model": "qwen3.6-plus"}' | grep -q '"allowed":true'; do sleep 0.2; done

# the gateway reports one model call: 3.18 credits (design's seed example)
curl -s "$INGEST_URL/v1/usage" -H "$AUTH" -H "$JSON" -d '{"request_id": "req-1",
  "account_id": "acme-'$RUN'", "subscription_id": "'$SUB'", "seat_id": "'$SEAT'",
  "key_id": "'$KEY_ID'", "model": "qwen3.6-plus", "occurred_at": "'$(now)'",
  "input_tokens": 8349, "cached_tokens": 40794, "output_tokens": 573}'; echo

# the seat's balance once quota has charged the call, then the ledger's usage details
until [ "$(curl -s "$QUOTA_URL/v1/seats/$SEAT" -H "$AUTH" | field remaining)" != 25000 ]
do sleep 0.2; done
echo "seat $SEAT: $(curl -s "$QUOTA_URL/v1/seats/$SEAT" -H "$AUTH" | field remaining) left"
until curl -s "$LEDGER_URL/v1/subscriptions/$SUB/usage" -H "$AUTH" | grep -q req-1
do sleep 0.2; done
curl -s "$LEDGER_URL/v1/subscriptions/$SUB/usage?format=csv" -H "$AUTH"
"""
"""What the demo promises: `echo "seat …: 24996.82 left"` (25000 - 3.18) and a CSV row."""

DEMO_START = "Try it: paste this into bash (or run `bash {path}`):"
DEMO_END = "Ctrl-C stops everything."


def banner(services: Sequence[RunningService], token: str, env_path: Path, demo: Path) -> str:
    """What `make run` prints once everything is ready: where things are and the demo."""
    lines = ["", "Token Plan metering is running.", ""]
    lines += [
        f"  {s.name:<7} {s.url}   (sign in with a team token or a member key, log: {s.log_path})"
        if s.name == CONSOLE
        else f"  {s.name:<7} {s.url}   (docs: {s.url}/docs, log: {s.log_path})"
        for s in services
    ]
    lines += ["", f"  admin token: {token}"]
    lines += [f"  settings:    {env_path} (read by every `metering` command)", ""]
    lines += [DEMO_START.format(path=demo), "", demo_script(env_path), DEMO_END]
    return "\n".join(lines)


@dataclass
class Restarts:
    """One service's restart back-off: 1 s, 2 s, 4 s ... up to 30 s, reset once it stays up."""

    count: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    due_at: float | None = None
    announced_ready: bool = True

    def next_delay(self, now: float) -> float:
        if now - self.started_at >= STABLE_AFTER:
            self.count = 0
        return float(min(RESTART_MAX_DELAY, RESTART_FIRST_DELAY * 2**self.count))


def say(message: str) -> None:
    """A supervisor line on stderr, with the time (the services log to their own files)."""
    print(f"{datetime.now().strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def broker_answers(bootstrap_servers: str) -> bool:
    """The broker still accepts connections (a cheap liveness check, not a Kafka request)."""
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
        return True
    return False


BROKER_CHECK_SECONDS = 5.0


class BrokerGone(RuntimeError):
    """The embedded broker died under the stack (already said on stderr)."""


def supervise(services: list[RunningService], broker: str | None = None, poll: float = 0.5) -> None:
    """Restart any service that exits, alone, with back-off; runs until interrupted.

    The broker is not restarted: the embedded one keeps its topics in memory, and a new one
    would come back empty under live clients. If it stops answering, this raises, and the
    whole stack stops with a message saying so.
    """
    restarts = {s.name: Restarts() for s in services}
    broker_checked, broker_misses = time.monotonic(), 0
    with httpx.Client(timeout=2.0) as client:
        while True:
            now = time.monotonic()
            if broker and now - broker_checked >= BROKER_CHECK_SECONDS:
                broker_checked = now
                broker_misses = 0 if broker_answers(broker) else broker_misses + 1
                if broker_misses >= 2:
                    say(
                        f"the embedded broker at {broker} stopped answering; its topics lived "
                        "in its memory, so this stack cannot go on: stopping everything. Run "
                        "`make run` again (it starts from a clean state)."
                    )
                    stop_all(services, grace=5)  # nothing left to flush without a broker
                    raise BrokerGone(broker)
            for index, service in enumerate(services):
                state = restarts[service.name]
                status = service.process.poll()
                if state.due_at is None and status is not None:
                    delay = state.next_delay(now)
                    state.due_at = now + delay
                    say(
                        f"{service.name} exited with status {status} (log: {service.log_path}); "
                        f"restarting it in {delay:.0f} s, the broker and database keep running"
                    )
                elif state.due_at is not None and now >= state.due_at:
                    services[index] = spawn(
                        service.name, service.port, service.environ, service.log_path
                    )
                    state.count += 1
                    state.started_at, state.due_at, state.announced_ready = now, None, False
                    say(f"{service.name} restarted (pid {services[index].process.pid})")
                elif not state.announced_ready and answers_ready(client, service):
                    state.announced_ready = True
                    say(f"{service.name} is ready again at {service.url}")
            time.sleep(poll)


def run(state_dir: Path, base_port: int = BASE_PORT) -> int:
    """Run and supervise until interrupted; returns the exit status (2: cannot start)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_path, env_path = state_dir / PID_FILE, state_dir / ENV_FILE
    running = other_run(pid_path)
    if running:
        print(
            f"make run: another dev stack (pid {running}) runs on {state_dir}; stop it, or "
            "give this one its own state: `make run STATE_DIR=.run2 PORT=...`",
            file=sys.stderr,
        )
        return 2
    taken = taken_ports(base_port, DEV_SERVICES)
    if taken:
        alternative = free_base_port(base_port, len(DEV_SERVICES))
        print(
            f"make run: {'ports' if len(taken) > 1 else 'port'} {', '.join(taken)} "
            f"{'are' if len(taken) > 1 else 'is'} taken. Free it, or use other ports: "
            f"`make run PORT={alternative}` (metering dev --base-port {alternative})",
            file=sys.stderr,
        )
        return 2
    pid_path.write_text(str(os.getpid()))
    env_path.unlink(missing_ok=True)
    try:
        return _run(state_dir, base_port, env_path)
    finally:
        pid_path.unlink(missing_ok=True)


def _run(state_dir: Path, base_port: int, env_path: Path) -> int:
    kept = kept_secrets(state_dir, os.environ)
    started = time.monotonic()
    try:
        note = fresh_start_note(state_dir, os.environ)
        print(note, flush=True)
        print("starting the broker and the database...", flush=True)
        with (
            start_stack(state_dir / "stack") as stack,
            run_services(stack, state_dir, kept, base_port, DEV_SERVICES) as services,
        ):
            print(f"  kafka    {stack.kafka_bootstrap_servers} ({stack.kafka_origin})")
            print(f"  postgres {stack.database_url} ({stack.database_origin})", flush=True)
            try:
                wait_until_ready(services)
                write_env_file(state_dir, stack, services)
                demo = state_dir / "demo.sh"
                demo.write_text(demo_script(env_path))
                print(banner(services, kept["METERING_ADMIN_TOKEN"], env_path, demo))
                print(f"(ready in {time.monotonic() - started:.1f} s)", flush=True)
                supervise(
                    services,
                    stack.kafka_bootstrap_servers if stack.kafka_origin == "embedded" else None,
                )
            finally:
                env_path.unlink(missing_ok=True)
    except KeyboardInterrupt:
        print("\nstopped.")
        return 0
    except BrokerGone:
        return 1
    except (RuntimeError, StackError) as error:
        print(f"make run failed: {error}", file=sys.stderr)
        return 1
    return 0
