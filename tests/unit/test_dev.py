"""The dev stack's small rules: restart back-off, `.run/env`, what a fresh start resets, and
the `metering` command's one-line errors when nothing answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metering import dev
from metering.processes import free_port
from metering.stack import StackError


def test_restart_back_off_doubles_up_to_its_cap_and_resets_once_stable() -> None:
    restarts = dev.Restarts(started_at=0.0)
    delays = []
    for _ in range(7):
        delays.append(restarts.next_delay(now=1.0))
        restarts.count += 1
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    restarts.started_at = 100.0
    assert restarts.next_delay(now=100.0 + dev.STABLE_AFTER) == dev.RESTART_FIRST_DELAY


def test_env_file_reads_back_what_a_shell_would_see(tmp_path: Path) -> None:
    path = tmp_path / "env"
    url = "postgresql://postgres:@/postgres?host=/tmp/a dir/.run/stack/postgres"
    path.write_text(f"# comment\nDATABASE_URL='{url}'\nKAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9\n")
    assert dev.read_env_file(path) == {
        "DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    }
    shell = subprocess.run(
        ["bash", "-c", f'. {path} && printf %s "$DATABASE_URL"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout == url


def test_a_fresh_embedded_start_empties_the_database(tmp_path: Path) -> None:
    data = tmp_path / "stack" / "postgres"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("16")
    note = dev.fresh_start_note(tmp_path, {})
    assert note.startswith("clean state: the embedded broker keeps its topics in memory")
    assert not data.exists()
    assert dev.fresh_start_note(tmp_path, {}) == "clean state: a new broker and a new database"


def test_an_external_broker_keeps_everything(tmp_path: Path) -> None:
    data = tmp_path / "stack" / "postgres"
    data.mkdir(parents=True)
    note = dev.fresh_start_note(tmp_path, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert note.endswith("the database kept under the state directory")
    assert data.exists()
    both = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "DATABASE_URL": "postgresql://x@h/db"}
    assert dev.fresh_start_note(tmp_path, both).endswith("the database external")


def test_a_kept_database_with_a_new_broker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="KAFKA_BOOTSTRAP_SERVERS is not"):
        dev.fresh_start_note(tmp_path, {"DATABASE_URL": "postgresql://x@h/db"})


def metering(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`metering <args>` in a directory without `.run/env`, nothing answering."""
    nothing = f"127.0.0.1:{free_port()}"
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "METERING_ENV_FILE")}
    return subprocess.run(
        [sys.executable, "-m", "metering.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **base,
            "KAFKA_BOOTSTRAP_SERVERS": nothing,
            "DATABASE_URL": f"postgresql://postgres@{nothing}/postgres",
            **env,
        },
    )


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["topics", "list"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["topics", "create"], "KAFKA_BOOTSTRAP_SERVERS"),
        (["migrate"], "DATABASE_URL"),
        (["replay"], "DATABASE_URL"),
        (["statement", "--subscription", "s", "--month", "2026-11"], "DATABASE_URL"),
    ],
)
def test_unreachable_settings_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], setting: str
) -> None:
    done = metering(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {setting}: cannot "), done.stderr
    assert "make run" in done.stderr
    assert not list(tmp_path.iterdir()), "nothing is left in the working directory"


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = metering(tmp_path, "topics", "list", KAFKA_BOOTSTRAP_SERVERS="no-port")
    assert done.returncode == 2
    assert done.stderr.startswith("error: bad settings in the environment: KAFKA_BOOTSTRAP_SERVERS")
    assert done.stderr.count("\n") == 1


def test_version(tmp_path: Path) -> None:
    done = metering(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith("metering 0.")
