"""The quota store's contract (tests/quota_store_contract.py) against its in-memory twin."""

from __future__ import annotations

import pytest

from quota.store import MemoryQuotaStore
from tests.quota_store_contract import QuotaStoreContract


class TestMemoryQuotaStore(QuotaStoreContract):
    @pytest.fixture
    async def store(self) -> MemoryQuotaStore:
        return MemoryQuotaStore()

    async def outbox(self, store: MemoryQuotaStore) -> list[tuple[str, str, bytes]]:
        return [(m.topic, m.key, m.value) for m in store.outbox]
