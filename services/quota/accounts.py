"""What quota answers from: every account's fold state, indexed by key hash, seat and
subscription. Pure and in memory: the authorize path is dictionary lookups, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from metering.core.state import AccountState, ApiKey


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """Whose a key is: the account, its state and the key (revocation included)."""

    account_id: str
    state: AccountState
    key: ApiKey


@dataclass(slots=True)
class _Entries:
    """What one account put in the indexes, to take it out again."""

    key_hashes: list[str] = field(default_factory=list)
    seat_ids: list[str] = field(default_factory=list)
    subscription_ids: list[str] = field(default_factory=list)


class AccountIndex:
    """Account states by id, plus key hash → its holder, seat → account and
    subscription → account. The fold mutates the states in place, so balances are always
    current; call `put` after a fact may have added keys, seats or subscriptions."""

    def __init__(self) -> None:
        self.accounts: dict[str, AccountState] = {}
        self._keys: dict[str, KeyHolder] = {}
        self._seats: dict[str, AccountState] = {}
        self._subscriptions: dict[str, AccountState] = {}
        self._entries: dict[str, _Entries] = {}
        self._account_ids: dict[int, str] = {}
        """id() of each held state -> its account id (the states are held, so ids are stable)."""

    def put(self, account_id: str, state: AccountState) -> None:
        """Hold `state` as the account's and (re)index what it contains."""
        self.drop(account_id)
        self.accounts[account_id] = state
        self._account_ids[id(state)] = account_id
        entries = self._entries[account_id] = _Entries()
        for key in state.keys.values():
            self._keys[key.key_hash] = KeyHolder(account_id, state, key)
            entries.key_hashes.append(key.key_hash)
        for subscription_id, sub in state.subscriptions.items():
            self._subscriptions[subscription_id] = state
            entries.subscription_ids.append(subscription_id)
            for seat_id in sub.seats:
                self._seats[seat_id] = state
                entries.seat_ids.append(seat_id)

    def drop(self, account_id: str) -> None:
        state = self.accounts.pop(account_id, None)
        if state is not None:
            self._account_ids.pop(id(state), None)
        entries = self._entries.pop(account_id, None)
        if entries is None:
            return
        for key_hash in entries.key_hashes:
            self._keys.pop(key_hash, None)
        for seat_id in entries.seat_ids:
            self._seats.pop(seat_id, None)
        for subscription_id in entries.subscription_ids:
            self._subscriptions.pop(subscription_id, None)

    def key(self, key_hash: str) -> KeyHolder | None:
        return self._keys.get(key_hash)

    def account_of_seat(self, seat_id: str) -> AccountState | None:
        return self._seats.get(seat_id)

    def account_of_subscription(self, subscription_id: str) -> AccountState | None:
        return self._subscriptions.get(subscription_id)

    def account_id_of(self, state: AccountState) -> str | None:
        """The id of the account whose state this is (None: not held)."""
        return self._account_ids.get(id(state))
