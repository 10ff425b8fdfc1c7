"""Child processes that never outlive us: start with a parent-death signal, stop with grace."""

from __future__ import annotations

import contextlib
import ctypes
import random
import signal
import socket
import subprocess
from pathlib import Path


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
    """The first of `count` consecutive loopback ports that are free right now.

    They are taken below the kernel's ephemeral range: outgoing connections (to the broker,
    to the database) get their local ports from that range, and one of them could take a
    port of the run between now and when its service listens on it.
    """
    below = _ephemeral_ports_start()
    for _ in range(100):
        base = random.randrange(_FIRST_PORT, below - count)
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free loopback ports in 100 tries")


_FIRST_PORT = 10_000
"""Above the ports well-known services use."""


def _ephemeral_ports_start() -> int:
    """The first port of Linux's ephemeral range (32768 by default, and elsewhere)."""
    with contextlib.suppress(OSError, ValueError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(_FIRST_PORT + 1_000, int(text.split()[0]))
    return 32_768


def port_is_free(port: int) -> bool:
    """True when nothing listens on (or holds) this loopback port right now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
