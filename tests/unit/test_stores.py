"""The stores' contracts (tests/*_store_contract.py) against their in-memory twins."""

from __future__ import annotations

import pytest

from ledger.store import MemoryLedgerStore
from quota.store import MemoryQuotaStore
from tests.ledger_store_contract import LedgerStoreContract
from tests.quota_store_contract import QuotaStoreContract


class TestMemoryLedgerStore(LedgerStoreContract):
    @pytest.fixture
    async def store(self) -> MemoryLedgerStore:
        return MemoryLedgerStore()

    async def outbox(self, store: MemoryLedgerStore) -> list[tuple[str, str, bytes]]:
        return [(m.topic, m.key, m.value) for m in store.outbox]


class TestMemoryQuotaStore(QuotaStoreContract):
    @pytest.fixture
    async def store(self) -> MemoryQuotaStore:
        return MemoryQuotaStore()

    async def outbox(self, store: MemoryQuotaStore) -> list[tuple[str, str, bytes]]:
        return [(m.topic, m.key, m.value) for m in store.outbox]
