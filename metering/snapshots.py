"""How the projections (ledger, quota) store an account's fold state in PostgreSQL.

The stored JSON leaves out the request ids already deducted: they only grow, and rewriting
them with every batch came to cost more than the rest of the state. Each projection keeps
them apart (the ledger in its `CreditsDeducted` entries, quota in `quota_request_ids`) and
hands them back when it loads the state.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson

from metering.core.state import AccountState


def snapshot_json(state: AccountState) -> str:
    """The state as a projection stores it: everything but its request ids (the times
    written by orjson, as `AccountState.to_dict` would write them, several times faster)."""
    return orjson.dumps(state.to_dict(with_request_ids=False, times_as_text=False)).decode()


def load_snapshot(text: str, request_ids: Iterable[tuple[str, datetime]] = ()) -> AccountState:
    """The state stored as `text` (by `snapshot_json`), with the request ids kept apart and
    the instant until which each is remembered."""
    return AccountState.from_dict(orjson.loads(text), request_ids)


RememberedIds = dict[str, list[tuple[str, datetime]]]


def request_ids_by_account(rows: Iterable[Any]) -> RememberedIds:
    """Rows of (account id, request id, remembered until), grouped by account."""
    request_ids: RememberedIds = {}
    for account_id, request_id, until in rows:
        request_ids.setdefault(account_id, []).append((request_id, until))
    return request_ids
