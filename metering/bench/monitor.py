"""What the bench watches while it runs: a per-second timeline of rates and latencies, and
how the machine's CPU was shared between the load generator, the services, the broker and
the database (sampled from /proc by psutil in a background thread)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

GROUPS = ("bench", "ingest", "ledger", "quota", "broker", "postgres", "other")
"""CPU users: the bench process itself (load generator, or the workload of (a), (e), (f)),
each service, the broker and the database (when embedded), and everything else."""


@dataclass
class Phase:
    name: str
    start: float
    end: float | None = None


@dataclass
class Timeline:
    """Samples of named series against seconds since the bench started."""

    t0: float = field(default_factory=time.monotonic)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    phases: list[Phase] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, name: str, value: float, at: float | None = None) -> None:
        self.series[name].append((self.now() if at is None else at, value))

    @property
    def current(self) -> str:
        if self.phases and self.phases[-1].end is None:
            return self.phases[-1].name
        return "idle"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        phase = Phase(name, self.now())
        self.phases.append(phase)
        try:
            yield phase
        finally:
            phase.end = self.now()


class Ticking(Protocol):
    def tick(self, at: float) -> None: ...


class Rate:
    """A cumulative count, and its rate on the timeline: averaged over the last few seconds,
    since what is counted often moves in lumps (batches, polled counters)."""

    def __init__(self, timeline: Timeline, series: str, window: float = 3.0) -> None:
        self.timeline = timeline
        self.series = series
        self.window = window
        self.total = 0
        self._history: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> None:
        self.total += count

    def tick(self, at: float) -> None:
        history = self._history
        while len(history) > 1 and at - history[1][0] >= self.window:
            history.popleft()
        if history and at > history[0][0]:
            then, count = history[0]
            self.timeline.add(self.series, (self.total - count) / (at - then), at)
        history.append((at, self.total))


class Latencies:
    """Latency samples (seconds): all of them, and p50/p99 per second on the timeline (ms)."""

    def __init__(self, timeline: Timeline, series: str) -> None:
        self.timeline = timeline
        self.series = series
        self.samples: list[float] = []
        self._window: list[float] = []

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self._window.append(seconds)

    def tick(self, at: float) -> None:
        if self._window:
            self.timeline.add(f"{self.series} p50", 1000 * percentile(self._window, 50), at)
            self.timeline.add(f"{self.series} p99", 1000 * percentile(self._window, 99), at)
            self._window = []


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `samples`."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, round(p / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


@contextlib.asynccontextmanager
async def periodically(action: Callable[[], Awaitable[None]], every: float) -> AsyncIterator[None]:
    """Await `action` every `every` seconds in the background while the block runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            await action()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def ticking(timeline: Timeline, *meters: Ticking, every: float = 1.0) -> AsyncIterator[None]:
    """Tick `meters` every second while the block runs (and once at its start and end)."""

    async def tick() -> None:
        at = timeline.now()
        for meter in meters:
            meter.tick(at)

    await tick()
    async with periodically(tick, every):
        yield
    await tick()


# -- CPU shares ----------------------------------------------------------------------------


@dataclass
class CpuSample:
    at: float
    phase: str
    cores: dict[str, float]
    """Cores busy per group (1.0 = one core all the time) over the last interval."""


class CpuMonitor:
    """Samples every process's CPU time each second and sums it per group."""

    def __init__(self, timeline: Timeline, postgres_dir: Path | None, every: float = 1.0) -> None:
        self.timeline = timeline
        self.postgres_dir = str(postgres_dir) if postgres_dir else None
        self.every = every
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)
        self._self_pid = psutil.Process().pid

    def __enter__(self) -> CpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_times = self._process_times()
        last_busy = _busy_seconds()
        last_at = self.timeline.now()
        while not self._stop.wait(self.every):
            times = self._process_times()
            busy = _busy_seconds()
            at = self.timeline.now()
            span = at - last_at
            if span <= 0:
                continue
            cores: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
            for pid, (group, seconds) in times.items():
                before = last_times.get(pid)
                delta = seconds - before[1] if before else seconds
                cores[group] += max(0.0, delta) / span
            ours = sum(cores.values())
            cores["other"] = max(0.0, (busy - last_busy) / span - ours)
            self.samples.append(CpuSample(at, self.timeline.current, cores))
            last_times, last_busy, last_at = times, busy, at

    def _process_times(self) -> dict[int, tuple[str, float]]:
        """pid → (group, CPU seconds so far) of every process that belongs to a group."""
        procs: dict[int, tuple[int, list[str], float]] = {}
        for process in psutil.process_iter(["ppid", "cmdline", "cpu_times"]):
            info = process.info
            times = info.get("cpu_times")
            if times is None:
                continue
            procs[process.pid] = (
                info["ppid"] or 0,
                info["cmdline"] or [],
                times.user + times.system,
            )
        groups: dict[int, str | None] = {}

        def group_of(pid: int, depth: int = 0) -> str | None:
            """Our processes only: the bench, its descendants, and the embedded database."""
            if pid in groups:
                return groups[pid]
            entry = procs.get(pid)
            found: str | None = None
            if pid == self._self_pid:
                found = "bench"
            elif entry is not None and depth < 50:
                ppid, cmdline, _ = entry
                if self.postgres_dir and any(self.postgres_dir in part for part in cmdline):
                    found = "postgres"
                elif ppid:
                    found = group_of(ppid, depth + 1)
                    if found == "bench":
                        found = _child_group(cmdline) or "bench"
            groups[pid] = found
            return found

        out = {}
        for pid, (_, _, seconds) in procs.items():
            group = group_of(pid)
            if group is not None:
                out[pid] = (group, seconds)
        return out

    def by_phase(self) -> dict[str, dict[str, float]]:
        """Mean cores busy per group during each phase."""
        grouped: dict[str, list[CpuSample]] = defaultdict(list)
        for sample in self.samples:
            grouped[sample.phase].append(sample)
        return {
            phase: {g: round(statistics.fmean(s.cores[g] for s in samples), 2) for g in GROUPS}
            for phase, samples in grouped.items()
            if phase != "idle"
        }


def _child_group(cmdline: list[str]) -> str | None:
    """The group of a child of the bench: a service, the broker, or none of them."""
    if len(cmdline) >= 3 and cmdline[1] == "-m" and cmdline[2] in ("ingest", "ledger", "quota"):
        return cmdline[2]
    if "--listener-url" in cmdline:
        return "broker"
    return None


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(
        t.user
        + t.system
        + getattr(t, "nice", 0.0)
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
    )


def resident_bytes(pid: int) -> int:
    """Resident memory (VmRSS of /proc/<pid>/status) of process `pid` and its descendants."""
    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    total = 0
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024  # kB
                    break
    return total
