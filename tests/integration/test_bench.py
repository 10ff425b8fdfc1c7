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
    "b1_single_posts",
    "c_freshness_p50",
    "c_freshness_p99",
    "c1_new_key_p50",
    "c1_new_key_p99",
    "d_authorize_throughput",
    "d_authorize_p50",
    "d_authorize_p99",
    "d_authorize_under_load_p99",
    "e_pure_fold",
    "f_replay",
    "g_quota_memory_per_account",
}
WITH_TARGETS = {
    "b_end_to_end",
    "b1_single_posts",
    "c_freshness_p99",
    "c1_new_key_p99",
    "d_authorize_throughput",
    "d_authorize_p99",
    "d_authorize_under_load_p99",
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
    assert "invalid" not in figures["b_end_to_end"]["details"]["report_statuses"]
    assert figures["b_end_to_end"]["details"]["reports_per_batch"] == 100
    assert figures["b1_single_posts"]["details"]["connections"] == 64
    assert figures["b1_single_posts"]["details"]["report_statuses"]["accepted"] > 0
    keys = figures["c1_new_key_p99"]["details"]
    assert keys["keys_usable"] == keys["keys_issued"] > 0
    assert keys["timeouts"] == 0
    assert set(keys["first_known_answers"]) == {"200"}
    assert figures["d_authorize_under_load_p99"]["details"]["statuses"]["200"] > 0
    memory = figures["g_quota_memory_per_account"]["details"]
    assert memory["active_accounts"] > 0
    assert memory["rss_after_b_bytes"] > memory["rss_before_provisioning_bytes"] > 0

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
