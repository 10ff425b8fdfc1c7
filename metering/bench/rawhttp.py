"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the bench's hot loops.

httpx costs the load generator about ten times more CPU per request, and more yet with many
connections in its pool (~1 ms per request with 4, ~5 ms with 64): on a 2-core machine the
client would measure itself. JSON bodies in, status and body bytes out; answers must carry
a Content-Length (ours all do).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit


def post_request(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of a `POST path` with a JSON body to the server at `url`."""
    host = urlsplit(url).netloc
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._writer = self._reader = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send `raw` and read the answer: (status, body). A connection the server closed
        while idle (uvicorn keeps idle connections 5 s) is opened again, once."""
        for attempt in range(2):
            if self._writer is None or self._reader is None:
                await self.open()
            assert self._writer is not None
            assert self._reader is not None
            try:
                self._writer.write(raw)
                head = await self._reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
                length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
                return status, await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


class ConnectionPool:
    """Keep-alive connections to one server, each carrying one request at a time; opened as
    needed, so there are as many as requests were ever in flight at once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[RawConnection] = []
        self._all: list[RawConnection] = []

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = RawConnection(self.url)
            self._all.append(connection)
        try:
            return await connection.request(raw)
        except BaseException:
            await connection.close()  # opened again by its next request
            raise
        finally:
            self._idle.append(connection)

    async def close(self) -> None:
        for connection in self._all:
            await connection.close()
