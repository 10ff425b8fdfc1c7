"""Child processes that never outlive us: start with a parent-death signal, stop with grace."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess


def die_with_parent() -> None:
    """In the child (as `preexec_fn`): Linux SIGTERMs it if we die without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_run(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free right now."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65535 and all(_bindable(base + i) for i in range(1, count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free loopback ports in 100 tries")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
