"""The ledger store's contract (tests/ledger_store_contract.py) against its in-memory twin."""

from __future__ import annotations

import pytest

from ledger.store import MemoryLedgerStore
from tests.ledger_store_contract import LedgerStoreContract


class TestMemoryLedgerStore(LedgerStoreContract):
    @pytest.fixture
    async def store(self) -> MemoryLedgerStore:
        return MemoryLedgerStore()

    async def outbox(self, store: MemoryLedgerStore) -> list[tuple[str, str, bytes]]:
        return [(m.topic, m.key, m.value) for m in store.outbox]
