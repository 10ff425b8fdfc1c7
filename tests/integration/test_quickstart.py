"""The first hour: `make run` (`metering dev`) as a newcomer meets it.

One dev stack for the module, in a temporary directory with its state in `.run/` as in a
clone: the demo it prints runs verbatim and shows what it promises, a killed service comes
back alone, the `metering` commands find the stack through `.run/env`, and README.md's bash
examples run against it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from metering import dev
from metering.processes import free_port_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
METERING = [sys.executable, "-m", "metering.cli"]


def newcomer_env(**extra: str) -> dict[str, str]:
    """The environment of someone who just cloned: no broker or database settings."""
    unset = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "METERING_ADMIN_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return {**env, **extra}


@dataclass
class DevRun:
    home: Path
    process: subprocess.Popen[str]
    output: Path
    base_port: int

    @property
    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, needle: str, within: float = 60) -> str:
        deadline = time.monotonic() + within
        while needle not in self.text:
            assert self.process.poll() is None, self.text
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text}"
            time.sleep(0.2)
        return self.text

    def children(self) -> dict[str, psutil.Process]:
        found = {}
        for child in psutil.Process(self.process.pid).children():
            command = child.cmdline()
            name = command[-1] if command[-2:-1] == ["-m"] else Path(command[0]).name
            found[name] = child
        return found


def start_dev(home: Path) -> DevRun:
    """`metering dev` in `home` as in a clone (`.venv` beside `.run`), on free ports."""
    if not (home / ".venv").exists():
        (home / ".venv").symlink_to(REPO / ".venv")
    base_port = free_port_run(len(dev.DEV_SERVICES))
    output = home / "make-run.out"
    with output.open("w") as out:
        process = subprocess.Popen(
            [*METERING, "dev", "--base-port", str(base_port)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=newcomer_env(),
        )
    return DevRun(home, process, output, base_port)


def stop_dev(run: DevRun) -> None:
    run.process.send_signal(signal.SIGINT)
    try:
        assert run.process.wait(60) == 0, run.text
    finally:
        if run.process.poll() is None:
            run.process.kill()


@pytest.fixture(scope="module")
def dev_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    run = start_dev(tmp_path_factory.mktemp("clone"))
    try:
        run.wait_for(dev.DEMO_END)
        yield run
    finally:
        stop_dev(run)
    assert not (run.home / ".run" / "env").exists(), "a stopped stack leaves no .run/env"


def bash(script: str, cwd: Path, timeout: float = 90) -> str:
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=newcomer_env(),
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def printed_demo(banner: str) -> str:
    """The script between the banner's "Try it" line and its last line, as printed."""
    start = banner.index("Try it: paste this into bash")
    body = banner[banner.index("\n", start) + 1 : banner.index(dev.DEMO_END, start)]
    return body.strip("\n") + "\n"


def assert_demo_kept_its_promises(output: str, accepted_facts: int = 3) -> None:
    """The subscription, seat and usage accepted, the key shown, the balance, the CSV row."""
    accepted = re.findall(r'^\{"event_id":"[0-9a-f-]+","duplicate":false\}$', output, re.M)
    assert len(accepted) == accepted_facts, output
    assert re.search(r"^key key-\w+: sk-tp-\S+$", output, re.M), output
    assert re.search(r"^seat seat-ana-\d+: 24996\.82 left$", output, re.M), output
    assert "deducted_at,request_id,seat_id" in output
    assert re.search(
        r"^[^,]+,req-1,seat-ana-\d+,key-\w+,qwen3\.6-plus,standard,.*,3\.18,", output, re.M
    )


def test_the_printed_demo_runs_as_pasted_and_shows_the_balance(dev_run: DevRun) -> None:
    script = printed_demo(dev_run.text)
    assert script == dev.demo_script(Path(".run") / "env")
    assert (dev_run.home / ".run" / "demo.sh").read_text() == script
    started = time.monotonic()
    output = bash(script, dev_run.home)
    assert time.monotonic() - started < 30, "the demo answers within seconds"
    assert_demo_kept_its_promises(output)
    assert_demo_kept_its_promises(bash(script, dev_run.home))  # and again, on fresh ids


def test_a_killed_service_is_restarted_alone(dev_run: DevRun) -> None:
    before = dev_run.children()
    broker = [p for name, p in before.items() if name.startswith("tansu")]
    quota = before["quota"]
    quota.kill()
    dev_run.wait_for("quota exited with status -9")
    dev_run.wait_for("quota is ready again")
    after = dev_run.children()
    assert after["quota"].pid != quota.pid
    for name in ("ingest", "ledger"):
        assert after[name].pid == before[name].pid, f"{name} kept running"
    assert broker, "the broker runs under metering dev"
    assert all(p.is_running() for p in broker), "the broker kept running"
    assert_demo_kept_its_promises(
        bash((dev_run.home / ".run" / "demo.sh").read_text(), dev_run.home)
    )


def test_metering_commands_find_the_stack_through_run_env(dev_run: DevRun) -> None:
    for command in (["topics", "list"], ["replay"], ["migrate"]):
        done = subprocess.run(
            [*METERING, *command],
            cwd=dev_run.home,
            capture_output=True,
            text=True,
            env=newcomer_env(),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[0] == (
            "metering: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, METERING_ADMIN_TOKEN "
            "from .run/env (the dev stack)"
        )
    assert (dev_run.home / ".run" / "replay-report.json").exists()
    assert not (dev_run.home / "replay-report.json").exists()


def test_a_second_stack_on_the_same_state_is_refused(dev_run: DevRun) -> None:
    done = subprocess.run(
        [*METERING, "dev", "--base-port", str(free_port_run(len(dev.DEV_SERVICES)))],
        cwd=dev_run.home,
        capture_output=True,
        text=True,
        env=newcomer_env(),
        timeout=60,
    )
    assert done.returncode == 2
    assert f"another dev stack (pid {dev_run.process.pid}) runs on .run" in done.stderr
    assert (dev_run.home / ".run" / "env").exists(), "the running stack's state is untouched"


def readme_bash_blocks() -> list[str]:
    """README.md's ```bash blocks, in order (```sh blocks are commands not run here)."""
    return re.findall(r"^```bash\n(.*?)^```$", (REPO / "README.md").read_text(), re.M | re.S)


def test_readme_quickstart_is_the_printed_demo() -> None:
    blocks = readme_bash_blocks()
    assert blocks
    assert blocks[0] == dev.demo_script(Path(".run") / "env")


#: Run before the README's blocks: stop at the first failing command or HTTP error.
STRICT = """\
set -euo pipefail
curl() { command curl --fail-with-body "$@"; }
"""


def test_every_readme_bash_example_runs(dev_run: DevRun) -> None:
    """Every ```bash block of README.md, in order, in one shell, against the dev stack."""
    blocks = readme_bash_blocks()
    assert len(blocks) >= 3
    output = bash(STRICT + "\n".join(blocks), dev_run.home)
    assert_demo_kept_its_promises(output, accepted_facts=4)  # and the ingest example's usage
    assert '"credits":"3.18"' in output  # the quote
    assert re.search(r'^\{"allowed":true,.*"remaining":\{"seat":"2499\d\.\d+"', output, re.M)
    assert "differences: 0, identical to the ledger" in output  # metering replay
    assert (dev_run.home / "usage.csv").read_text().startswith("deducted_at,request_id")


def test_taken_ports_are_named_with_a_free_alternative(tmp_path: Path) -> None:
    base_port = free_port_run(len(dev.DEV_SERVICES))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base_port + 1))
        squatter.listen()
        done = subprocess.run(
            [*METERING, "dev", "--base-port", str(base_port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=newcomer_env(),
            timeout=60,
        )
    assert done.returncode == 2
    assert f"port {base_port + 1} (ledger; held by pid {os.getpid()}" in done.stderr
    suggested = int(re.findall(r"make run PORT=(\d+)", done.stderr)[0])
    assert suggested > base_port + 2
    assert not (tmp_path / ".run" / "stack").exists(), "nothing was started"


def test_readiness_must_come_from_our_own_child(tmp_path: Path) -> None:
    """Another process answering 200 on the port is not our service being ready."""
    port = free_port_run(1)
    impostor = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ours = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "readyz").write_text("ok")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        service = dev.RunningService("ingest", url, ours, tmp_path / "x.log", port, {})
        with httpx.Client() as client:
            assert httpx.get(f"{url}/readyz").status_code == 200
            assert not dev.answers_ready(client, service)
        with pytest.raises(RuntimeError, match="not ready"):
            dev.wait_until_ready([service], timeout=1)
    finally:
        impostor.kill()
        ours.kill()
        impostor.wait()
        ours.wait()


def test_a_second_start_begins_clean_and_applies_new_events(tmp_path: Path) -> None:
    """The embedded broker forgets its topics; the database must not remember offsets."""
    first = start_dev(tmp_path)
    try:
        first.wait_for(dev.DEMO_END)
        assert "clean state: a new broker and a new database" in first.text
        bash((tmp_path / ".run" / "demo.sh").read_text(), tmp_path)
    finally:
        stop_dev(first)
    second = start_dev(tmp_path)
    try:
        text = second.wait_for(dev.DEMO_END)
        assert "clean state: the embedded broker keeps its topics in memory" in text
        assert_demo_kept_its_promises(bash((tmp_path / ".run" / "demo.sh").read_text(), tmp_path))
    finally:
        stop_dev(second)


def test_a_dead_broker_stops_the_stack_and_says_why(tmp_path: Path) -> None:
    """Its topics lived in memory: restarting services under a new, empty one would lie."""
    run = start_dev(tmp_path)
    try:
        run.wait_for(dev.DEMO_END)
        children = run.children()
        [broker] = [p for name, p in children.items() if name.startswith("tansu")]
        broker.kill()
        run.wait_for("the embedded broker at", within=15)
        assert "Run `make run` again (it starts from a clean state)" in run.text
        assert run.process.wait(30) == 1
        gone = psutil.wait_procs(list(children.values()), timeout=30)[1]
        assert gone == [], "every service stopped with it"
        assert not (tmp_path / ".run" / "env").exists()
    finally:
        if run.process.poll() is None:
            run.process.kill()
