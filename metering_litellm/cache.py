"""Allow decisions of quota, reused for a bounded time (the staleness bound)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass


@dataclass
class _Allowed:
    expires: float
    input_tokens: int
    metadata: dict[str, str]


class AllowCache:
    """Allow decisions by (key hash, model, endpoint), each reused until it expires."""

    def __init__(self, seconds: float, max_entries: int) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str, str], _Allowed] = {}

    @staticmethod
    def key(api_key: str, model: str | None, endpoint: str | None) -> tuple[str, str, str]:
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        return (digest, model or "", endpoint or "")

    def get(self, key: tuple[str, str, str], input_tokens: int | None) -> dict[str, str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._entries.pop(key, None)
            return None
        if input_tokens is not None and input_tokens > entry.input_tokens:
            return None
        return entry.metadata

    def put(
        self, key: tuple[str, str, str], input_tokens: int | None, meta: dict[str, str]
    ) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: e for k, e in self._entries.items() if e.expires > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = _Allowed(now + self.seconds, input_tokens or 0, meta)

    def drop(self, key: tuple[str, str, str]) -> None:
        self._entries.pop(key, None)
