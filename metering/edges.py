"""What a request meets before any work is done for it: body limits and the client's address.

`BodyLimit` is pure ASGI middleware in front of every service's routes (FastAPI's and the
hot paths'): a declared `Content-Length` over the route's limit is refused with 413 before a
byte of the body is read, and a body without one (chunked) is counted while it is read and
refused as soon as it passes the limit, so a 300 MB upload costs at most the limit in memory.
A body whose next piece does not arrive within the body timeout is refused with 408, and a
NUL in the path or the query (which PostgreSQL cannot hold) with 400.

`client_address` says who the caller is for rate limits: the peer address, unless the peer is
a trusted reverse proxy (`TRUSTED_PROXIES`) or a fixed number of them stands in front
(`TRUSTED_PROXY_HOPS`); then the address those proxies appended to `X-Forwarded-For`, read
from the right, like nginx's `real_ip_recursive` and Envoy's `xff_num_trusted_hops`. Any
hop a caller wrote itself is ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fastapi.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_CLOSE = {"Connection": "close"}
"""The rest of a refused body is never read: the connection ends with the answer."""


class BodyTooLarge(HTTPException):
    """The request body is larger than its route takes (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", _CLOSE)
        self.limit = limit


class BodyTimeout(HTTPException):
    """The client stopped sending its body (408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", _CLOSE)


@dataclass(frozen=True)
class BodyLimits:
    """The largest body per route (method and exact path), and the default for the rest."""

    default: int
    per_route: Mapping[tuple[str, str], int] = field(default_factory=dict)
    idle_timeout: float = 15.0

    def limit(self, method: str, path: str) -> int:
        return self.per_route.get((method, path), self.default)


class BodyLimit:
    """Refuses request bodies over their route's limit before (or while) they are read."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.limit(scope["method"], scope["path"])
        early = refused_before_reading(scope, limit)
        if early is not None:
            await refuse(early, scope, send)
            return
        received = 0
        timeout = self.limits.idle_timeout
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await _in_time(receive, timeout)
            if message["type"] == "http.request":
                received = _counted(received, message, limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except (BodyTooLarge, BodyTimeout) as refused:  # raised through a pure ASGI hot path
            if started:
                raise
            await refuse(refused, scope, send)


async def _in_time(receive: Receive, seconds: float) -> Message:
    """The next message, or `BodyTimeout` when it takes longer than `seconds` (a deadline on
    this task, not a task per message as `wait_for` makes)."""
    try:
        async with asyncio.timeout(seconds):
            return await receive()
    except TimeoutError:
        raise BodyTimeout(seconds) from None


def _counted(received: int, message: Message, limit: int) -> int:
    """Bytes of body received with this `http.request` message, or `BodyTooLarge`."""
    received += len(message.get("body", b""))
    if received > limit:
        raise BodyTooLarge(limit)
    return received


def refused_before_reading(scope: Scope, limit: int) -> HTTPException | None:
    """What `BodyLimit` refuses a request for before reading its body (a NUL in the target,
    a declared length over `limit`), or None."""
    if _has_nul(scope):
        return BadTarget()
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return BodyTooLarge(limit)
    return None


async def read_body(receive: Receive, limit: int, idle_seconds: float) -> bytes:
    """A request's whole body, read as `BodyLimit` lets an app read it: `BodyTooLarge` past
    `limit` bytes, `BodyTimeout` when a piece takes longer than `idle_seconds`, Starlette's
    `ClientDisconnect` when the client goes away first. For a hot path that stands in front
    of `BodyLimit` (and has checked `refused_before_reading`)."""
    received = 0
    pieces = []
    while True:
        message = await _in_time(receive, idle_seconds)
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        received = _counted(received, message, limit)
        pieces.append(message.get("body", b""))
        if not message.get("more_body", False):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class BadTarget(HTTPException):
    """A NUL in the path or the query: nothing can be named by it (400)."""

    def __init__(self) -> None:
        super().__init__(400, "the path or the query contains a NUL character")


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"\x00" in query or b"%00" in query


def first_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the header `name` (lower case), as Starlette's `Headers.get`."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    declared = first_header(scope, b"content-length")
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:
        return None


async def refuse(error: HTTPException, scope: Scope, send: Send) -> None:
    """Answer `error` as its problem, without reading what is left of the body."""
    from metering.http import http_problem  # metering.http builds on this module

    response = http_problem(error)
    await response(scope, no_body, send)


async def no_body() -> Message:
    """A `receive` for answering without reading the rest of the body."""
    return {"type": "http.disconnect"}


@dataclass(frozen=True)
class TrustedProxies:
    """Which forwarded addresses to believe (`TRUSTED_PROXY_HOPS`, `TRUSTED_PROXIES`)."""

    hops: int = 0
    networks: Sequence[Network] = ()

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, or the last hop appended by a trusted proxy."""
        address = peer or "unknown"
        if not forwarded_for or (not self.hops and not self.networks):
            return address
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        if self.hops:
            # Each of `hops` proxies appended the address it saw; the first of them (from the
            # right) saw the client. Fewer hops than proxies: a proxy was bypassed.
            return hops[-self.hops] if len(hops) >= self.hops else address
        # Walk from the peer leftwards while the address is a trusted proxy.
        for hop in [address, *reversed(hops)]:
            if not self._trusted(hop):
                return hop
            address = hop
        return address

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def of_scope(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else None
        forwarded = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                text = value.decode("latin-1")
                forwarded = text if forwarded is None else f"{forwarded}, {text}"
        return self.client_address(peer, forwarded)
