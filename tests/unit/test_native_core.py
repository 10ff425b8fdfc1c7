"""The compiled core (metering/native_core.py): used only when current, and folding as the
source does, result for result and state for state."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

import metering.core
from metering import native_core
from metering.bench.load import Reports, UsageMix, event_log, make_fleet
from metering.core.fold import fold
from metering.settings import load_settings
from schemas.envelope import parse_event

ROOT = Path(__file__).resolve().parents[2]


def test_the_tests_run_the_compiled_core_unless_told_not_to() -> None:
    """`make install` builds it, so `make test` (and the bench) run the compiled core; only
    the pure pass (METERING_PURE_CORE=1) runs the source."""
    if os.environ.get(native_core.PURE_ENV):
        assert not metering.core.NATIVE
        assert metering.core.fold.__file__.endswith("fold.py")
        return
    assert metering.core.NATIVE, metering.core.PURE_REASON
    assert metering.core.fold.__file__.startswith(str(native_core.BUILD_DIR))


def test_a_build_is_used_only_for_the_sources_it_was_built_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(native_core.PURE_ENV, raising=False)
    core, build = tmp_path / "core", tmp_path / "build"
    build.mkdir()
    shutil.copytree(native_core.CORE_DIR, core)
    assert native_core.unusable(build, core) == "not built (make install builds it)"

    platform = native_core.platform_tag()
    manifest = {"platform": platform, "sources": native_core.sources(core)}
    (build / native_core.MANIFEST).write_text(json.dumps(manifest))
    library = native_core.group_library(build)
    assert native_core.unusable(build, core) == (
        f"not built: no {library.name} (make install builds it)"
    )
    library.write_bytes(b"")
    assert native_core.unusable(build, core) is None

    (core / "fold.py").write_text((core / "fold.py").read_text() + "\n# an edited rule\n")
    assert native_core.unusable(build, core) == (
        "stale: fold changed since the build (make install rebuilds it)"
    )

    (build / native_core.MANIFEST).write_text(json.dumps({**manifest, "platform": "cp310"}))
    assert native_core.unusable(build, native_core.CORE_DIR) == (
        f"built for cp310, this is {platform}"
    )

    monkeypatch.setenv(native_core.PURE_ENV, "1")
    assert native_core.unusable(build, core) == f"{native_core.PURE_ENV} is set"


def test_a_machine_without_a_compiler_installs_and_runs_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make install` goes on when the compile fails: no manifest, so the source runs."""
    import mypyc.build
    import setuptools

    def no_compiler(**_: object) -> None:
        raise SystemExit("error: command 'gcc' failed: No such file or directory")

    monkeypatch.delenv(native_core.PURE_ENV, raising=False)
    monkeypatch.setattr(mypyc.build, "mypycify", lambda *_a, **_k: [])
    monkeypatch.setattr(setuptools, "setup", no_compiler)
    cwd = Path.cwd()
    assert native_core.main(tmp_path / "native-core") == 0
    assert Path.cwd() == cwd
    assert "metering.core was not compiled (error: command 'gcc' failed" in capsys.readouterr().err
    assert not (tmp_path / "native-core" / native_core.MANIFEST).exists()
    assert native_core.unusable(tmp_path / "native-core") == "not built (make install builds it)"


_PURE_FOLD = """
import sys, orjson
from metering.core import NATIVE
from metering.core.fold import fold
from metering.settings import load_settings
from schemas.envelope import parse_event
assert not NATIVE
card = load_settings().rate_card()
log = orjson.loads(open(sys.argv[1], "rb").read())
out = {}
for account, raws in log.items():
    state, results = fold([parse_event(raw) for raw in raws], card)
    out[account] = [state.to_dict(), [r.model_dump(mode="json") for r in results]]
sys.stdout.buffer.write(orjson.dumps(out))
"""


@pytest.mark.skipif(not metering.core.NATIVE, reason="no compiled core to compare")
def test_the_compiled_core_folds_as_the_source_does(tmp_path: Path) -> None:
    """A bench-like log (200 accounts, Zipf-skewed, packs for the busiest, suspensions and
    month rollovers over 70 days), folded compiled here and from the source in a second
    process: every result and every final state are the same."""
    card = load_settings().rate_card()
    rng = random.Random(17)
    fleet = make_fleet("nat", 200, (1, 4), rng, 20_000)
    started = datetime(2026, 1, 20, tzinfo=UTC)
    reports = Reports(fleet, UsageMix(card, started, rng), "nat", rng)
    log = event_log(fleet, reports, 20_000, started, timedelta(days=70))
    path = tmp_path / "log.json"
    path.write_bytes(orjson.dumps({a: [raw.decode() for raw in raws] for a, raws in log.items()}))

    env = {**os.environ, native_core.PURE_ENV: "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'services'}"}
    pure = subprocess.run(
        [sys.executable, "-c", _PURE_FOLD, str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=240,
    )
    expected = orjson.loads(pure.stdout)

    kinds: set[str] = set()
    for account, raws in log.items():
        state, results = fold([parse_event(raw) for raw in raws], card)
        compiled = orjson.loads(
            orjson.dumps([state.to_dict(), [r.model_dump(mode="json") for r in results]])
        )
        assert compiled == expected[account], account
        kinds |= {r.event_type for r in results}
    assert {"CreditsDeducted", "SeatStatusChanged", "PackExpired"} <= kinds


_SPAWNED_IMPORT = """
import concurrent.futures, multiprocessing
import metering.core
from metering.core.money import to_decimal_string
if __name__ == "__main__":
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, spawn) as pool:
        print(pool.submit(to_decimal_string, 3_180_000).result(), metering.core.NATIVE)
"""


def test_a_spawned_process_finds_the_package_as_its_parent_did(tmp_path: Path) -> None:
    """A spawned process (the replay's) starts with its parent's `sys.path`: the build must
    not be on it, where its `metering/` directory would stand for the package (found by the
    editable install, not on `sys.path`, in a directory other than the clone's)."""
    script = tmp_path / "spawns.py"
    script.write_text(_SPAWNED_IMPORT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["3.18", str(metering.core.NATIVE)]
