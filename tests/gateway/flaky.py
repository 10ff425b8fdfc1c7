"""A TCP forwarder between the gateway and ingest that can fail the way networks do."""

from __future__ import annotations

import asyncio
import contextlib


class FlakyForwarder:
    """Forwards loopback connections to `upstream` while `mode` is `up`; `down`: every
    connection is closed at once (ingest unreachable); `swallow`: the request reaches ingest
    but its answer is dropped and the connection closed (recorded, yet the gateway cannot
    know)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "up"
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "down":
            writer.close()
            return
        swallow = self.mode == "swallow"
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, drop: bool) -> None:
            try:
                while data := await src.read(65536):
                    if drop:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        to_upstream = asyncio.create_task(pipe(reader, up_writer, False))
        from_upstream = asyncio.create_task(pipe(up_reader, writer, swallow))
        await asyncio.wait({to_upstream, from_upstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (to_upstream, from_upstream):
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()
