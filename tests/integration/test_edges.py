"""Hardened edges, against real service processes: limits before work, timeouts everywhere.

A huge body is refused before it is read (the process's peak memory stays put), half-sent
requests are dropped, and a database that stops answering costs a request seconds (503 with
Retry-After), not as long as it stays stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from metering.stack import Stack, _embedded_postgres
from metering.topics import TopicSpec, ensure_topics
from tests.integration.isolated import TOKEN, IsolatedEnv

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
HUGE = 300 * MIB


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def send_huge(url: str, path: str, headers: dict[str, str], *, chunked: bool) -> bytes:
    """POST a 300 MB body over a raw socket, as fast as the server takes it; returns what the
    server answered (it may answer, and close, long before the body is sent)."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}")
    piece = b"[" + b"1," * (MIB // 2 - 1) + b"1"  # one MiB of JSON-looking bytes
    if chunked:
        piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        with contextlib.suppress(OSError):
            for _ in range(HUGE // MIB):
                sock.sendall(piece)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL of this test's own, so that pausing it stops nobody else's tests."""
    data_dir = tmp_path / "pg"
    with _embedded_postgres(data_dir) as url:
        yield url, data_dir


@pytest.fixture
def ingest_on_own_db(
    stack: Stack, own_postgres: tuple[str, Path], tmp_path: Path
) -> Iterator[tuple[int, str, Path]]:
    """ingest on the test's own database with short database timeouts: (pid, url, data dir)."""
    import asyncio

    database_url, data_dir = own_postgres
    name = f"edges{uuid.uuid4().hex[:10]}"
    env = IsolatedEnv(stack, name, database_url, tmp_path)
    asyncio.run(
        ensure_topics(
            stack.kafka_bootstrap_servers,
            [TopicSpec(env.events_topic, 6, {}), TopicSpec(env.dlq_topic, 1, {})],
        )
    )
    process, url = env.start(
        "ingest",
        DATABASE_STATEMENT_TIMEOUT_SECONDS="2",
        DATABASE_ACQUIRE_TIMEOUT_SECONDS="2",
        HTTP_HEADER_TIMEOUT_SECONDS="2",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, env.log_tail()
            assert time.monotonic() < deadline, env.log_tail()
            time.sleep(0.2)
        yield process.pid, url, data_dir
    finally:
        process.terminate()
        process.wait(30)


def test_a_300_mb_body_is_refused_before_it_is_read(
    ingest_on_own_db: tuple[int, str, Path],
) -> None:
    pid, url, _ = ingest_on_own_db
    before = peak_rss(pid)
    declared = send_huge(url, "/v1/usage", {}, chunked=False)
    streamed = send_huge(url, "/v1/subscriptions", {}, chunked=True)  # no Content-Length
    authorized = send_huge(url, "/v1/usage", {"Authorization": f"Bearer {TOKEN}"}, chunked=True)
    grown = peak_rss(pid) - before
    print(f"peak RSS before {before / MIB:.1f} MiB, grown by {grown / MIB:.1f} MiB")
    for answer in (declared, streamed, authorized):
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
        assert b"application/problem+json" in answer
        assert b'"code":"body_too_large"' in answer
    assert grown < 32 * MIB, f"peak RSS grew by {grown / MIB:.1f} MiB refusing 300 MB bodies"
    # the service still answers
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_half_sent_requests_are_dropped(ingest_on_own_db: tuple[int, str, Path]) -> None:
    _, url, _ = ingest_on_own_db
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for i in range(200):
        sock = socket.create_connection((host, int(port)), timeout=10)
        if i % 2:  # half the headers, never the rest; the others send nothing at all
            sock.sendall(b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(sock)
    started = time.monotonic()
    closed = 0
    for sock in socks:
        with contextlib.suppress(OSError):
            if sock.recv(1024) == b"":
                closed += 1
        sock.close()
    waited = time.monotonic() - started
    print(f"{closed} of {len(socks)} half-sent or idle connections closed after {waited:.1f} s")
    assert closed == len(socks)
    assert waited < 8, "HTTP_HEADER_TIMEOUT_SECONDS=2 should close them within seconds"


def test_a_paused_database_answers_503_within_seconds(
    ingest_on_own_db: tuple[int, str, Path],
) -> None:
    _, url, data_dir = ingest_on_own_db
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    family = [postmaster, *_children(postmaster)]
    report = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "account_id": "acme",
        "subscription_id": "sub-1",
        "seat_id": "seat-1",
        "key_id": "key-1",
        "model": "qwen3.6-plus",
        "occurred_at": datetime.now(UTC).isoformat(),
        "input_tokens": 10,
        "cached_tokens": 0,
        "output_tokens": 5,
    }
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for pid in family:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = httpx.post(
            f"{url}/v1/usage", content=orjson.dumps(report), headers=headers, timeout=60
        )
        waited = time.monotonic() - started
    finally:
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    print(f"database paused: {answer.status_code} after {waited:.1f} s")
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "database_unavailable"
    assert int(answer.headers["Retry-After"]) >= 1
    assert waited < 8, "statement and acquire timeouts of 2 s should answer within seconds"


def _children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.append(int(stat.parent.name))
    return found
