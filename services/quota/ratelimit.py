"""Slowing down clients that present many bad API keys, without touching valid traffic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailedKeyLimiter:
    """A token bucket per client address, spent only by failed keys.

    Each address may fail `per_minute` times in a burst, refilled at `per_minute` per minute.
    Only failures are counted, so a valid key is never refused; once the bucket is empty a
    failure is answered 429 instead of 401. Time is passed in (monotonic seconds).
    """

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def failed(self, client: str, now: float) -> float | None:
        """Count one failure of `client`: None if within its allowance, else the seconds
        until it may fail again (the Retry-After)."""
        bucket = self._buckets.get(client)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[client] = _Bucket(self._capacity, now)
        else:
            refill = (now - bucket.updated) * self._rate
            bucket.tokens = min(self._capacity, bucket.tokens + refill)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self._rate

    def _make_room(self, now: float) -> None:
        """Forget buckets that have refilled (they mean the same as none); if every one is
        still in use, forget them all rather than grow without bound."""
        if len(self._buckets) < self._max_clients:
            return
        full_after = self._capacity / self._rate
        self._buckets = {c: b for c, b in self._buckets.items() if now - b.updated < full_after}
        if len(self._buckets) >= self._max_clients:
            self._buckets.clear()
