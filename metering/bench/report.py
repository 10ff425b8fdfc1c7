"""The bench's output: `results.json`, `summary.md` (a table for the README) and
`throughput_latency.png` (rates and latencies over the run, phases shaded)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from metering.bench.monitor import GROUPS, Timeline

RESULTS = "results.json"
SUMMARY = "summary.md"
PLOT = "throughput_latency.png"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Figure:
    """One measured figure, with its target (when the issue sets one)."""

    id: str
    label: str
    name: str
    value: float
    unit: str
    target: str | None = None
    met: bool | None = None
    ratio_to_ceiling: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "core": core_build(),
    }


def core_build() -> str:
    """Which build of metering.core runs here (the services run the same checkout)."""
    import metering.core

    return (
        "compiled with mypyc" if metering.core.NATIVE else f"source ({metering.core.PURE_REASON})"
    )


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_all(
    out: Path,
    figures: list[Figure],
    context: dict[str, Any],
    cpu: dict[str, dict[str, float]],
    timeline: Timeline,
) -> dict[str, Any]:
    """Write the three files into `out`; returns the results document."""
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        **context,
        "figures": {f.id: {k: v for k, v in asdict(f).items() if k != "id"} for f in figures},
        "cpu_cores_busy_by_phase": cpu,
        "phases": [
            {"name": p.name, "start_s": round(p.start, 2), "end_s": round(p.end or p.start, 2)}
            for p in timeline.phases
        ],
        "timeline": {
            name: [[round(t, 2), round(v, 3)] for t, v in points]
            for name, points in sorted(timeline.series.items())
        },
    }
    (out / RESULTS).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    (out / SUMMARY).write_text(summary(results))
    plot(timeline, out / PLOT)
    return results


def _number(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:,.0f} {unit}"


def summary(results: dict[str, Any]) -> str:
    m = results["machine"]
    git = results["git"]
    commit = (git["commit"] or "unknown")[:10] + (" (with local changes)" if git["dirty"] else "")
    lines = [
        "## Benchmarks (`make bench`)",
        "",
        f"{results['timestamp']}, commit {commit}: {m['cpu_count']} x {m['cpu_model']}, "
        f"Python {m['python']}, core {m.get('core', 'source')}; "
        f"broker {results['stack']['broker']}, "
        f"database {results['stack']['database']}; {results['mode']} run, "
        f"{results['wall_seconds']:.0f} s in all. Everything (load generator, three services, "
        "broker, database) shares this machine.",
        "",
        "| | Figure | Value | Target | Met | vs (a) |",
        "|---|---|---|---|---|---|",
    ]
    for figure in results["figures"].values():
        ratio = figure["ratio_to_ceiling"]
        met = {True: "yes", False: "**no**", None: "-"}[figure["met"]]
        lines.append(
            f"| {figure['label']} | {figure['name']} | {_number(figure['value'], figure['unit'])} "
            f"| {figure['target'] or '-'} | {met} | "
            f"{'-' if ratio is None else f'{ratio:.0%}'} |"
        )
    lines += ["", *results.get("notes", [])]
    cpu = results["cpu_cores_busy_by_phase"]
    if cpu:
        lines += [
            "",
            f"How the CPU was shared: mean cores busy during each phase (of "
            f"{m['cpu_count']}); *bench* is the load generator, or the workload itself in "
            "(a), (e) and (f).",
            "",
            "| Phase | " + " | ".join(GROUPS) + " | total |",
            "|---|" + "---|" * (len(GROUPS) + 1),
        ]
        for phase, groups in cpu.items():
            cells = " | ".join(f"{groups[g]:.2f}" for g in GROUPS)
            lines.append(f"| {phase} | {cells} | {sum(groups.values()):.2f} |")
    return "\n".join(lines) + "\n"


THROUGHPUT_SERIES = (
    "broker produced (msg/s)",
    "broker consumed (msg/s)",
    "pure fold (events/s)",
    "ingest accepted (events/s)",
    "ledger applied (events/s)",
    "quota applied (events/s)",
    "authorize (req/s)",
    "replay (events/s)",
)
LATENCY_SERIES = ("freshness", "new key usable", "authorize", "ingest batch", "ingest single POST")


def plot(timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(16, 9), sharex=True)
    for name in THROUGHPUT_SERIES:
        points = [(t, v) for t, v in timeline.series.get(name, []) if v > 0]
        if points:
            style = "o" if name == "pure fold (events/s)" else "-"
            top.plot(*zip(*points, strict=True), style, label=name, linewidth=1.2, markersize=3)
    top.set_yscale("log")
    top.set_ylabel("events/s, requests/s")
    top.set_title("Throughput and latency over the bench run")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for name in LATENCY_SERIES:
        for quantile, style in (("p50", "-"), ("p99", "--")):
            points = [(t, v) for t, v in timeline.series.get(f"{name} {quantile}", []) if v > 0]
            if points:
                bottom.plot(
                    *zip(*points, strict=True), style, label=f"{name} {quantile}", linewidth=1.1
                )
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms), per second")
    bottom.set_xlabel("seconds since the bench started")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for axes in (top, bottom):
        axes.grid(True, which="major", alpha=0.3)
        for n, phase in enumerate(timeline.phases):
            end = phase.end if phase.end is not None else phase.start
            axes.axvspan(phase.start, end, color="grey" if n % 2 else "tan", alpha=0.12)
    span = max((p.end or p.start for p in timeline.phases), default=1.0)
    for phase in timeline.phases:
        if (phase.end or phase.start) - phase.start < 0.02 * span:
            continue  # too short to label (the drains): shaded only
        top.annotate(
            phase.name,
            xy=(phase.start, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            va="top",
            ha="left",
            alpha=0.7,
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
