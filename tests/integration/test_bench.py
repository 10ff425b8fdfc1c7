"""`metering bench --quick` on the session's broker and database (as external ones): every
figure of the issue is measured and the three files are written. No timing is asserted: the
figures depend on the machine; the full run is `make bench`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from metering.stack import Stack

pytestmark = pytest.mark.integration

FIGURES = {
    "a_broker_ceiling",
    "b_end_to_end",
    "b_ingest_burst",
    "c_freshness_p50",
    "c_freshness_p99",
    "d_authorize_throughput",
    "d_authorize_p50",
    "d_authorize_p99",
    "e_pure_fold",
    "f_replay",
}
WITH_TARGETS = {
    "b_end_to_end",
    "c_freshness_p99",
    "d_authorize_throughput",
    "d_authorize_p99",
    "e_pure_fold",
    "f_replay",
}


def test_quick_bench_measures_every_figure_and_writes_results_summary_and_plot(
    stack: Stack, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "metering.cli", "bench", "--quick", "--out", str(out)]
    command += ["--state-dir", str(tmp_path / "state")]
    done = subprocess.run(
        command,
        env={**os.environ, **stack.environ()},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-5000:]

    results = orjson.loads((out / "results.json").read_bytes())
    figures = results["figures"]
    assert set(figures) == FIGURES
    for name, figure in figures.items():
        assert figure["value"] > 0, (name, figure)
        assert figure["unit"], name
        assert isinstance(figure["met"], bool) == (name in WITH_TARGETS), (name, figure)
        assert (figure["target"] is not None) == (name in WITH_TARGETS), (name, figure)
    assert figures["a_broker_ceiling"]["ratio_to_ceiling"] == 1.0
    assert figures["b_end_to_end"]["ratio_to_ceiling"] > 0
    assert figures["f_replay"]["details"]["identical_to_ledger"] is True
    assert figures["c_freshness_p99"]["details"]["probe_timeouts"] == 0
    assert figures["c_freshness_p99"]["details"]["probe_errors"] == 0
    assert figures["b_end_to_end"]["details"]["report_statuses"]["duplicate"] > 0

    machine = results["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["cpu_model"]
    assert machine["python"]
    assert "external" in results["stack"]["broker"]
    assert "commit" in results["git"]
    assert results["timestamp"]
    assert results["cpu_cores_busy_by_phase"]

    summary = (out / "summary.md").read_text()
    assert "| | Figure | Value | Target | Met | vs (a) |" in summary
    assert (out / "throughput_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
