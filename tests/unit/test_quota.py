"""quota's pure parts: the authorize decision, the failed-key limiter, the timer's changes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from metering.apikeys import key_hash
from metering.core.fold import fold
from metering.core.state import AccountState
from quota.accounts import AccountIndex
from quota.authorize import INVALID_KEY, NO_KEY, WRONG_PLAN, authorize
from quota.ratelimit import FailedKeyLimiter
from quota.seat_status import Published, next_status_change, status_changes
from schemas.api import AuthorizeRequest
from schemas.envelope import FactEvent
from tests.unit.event_builders import DEFAULT_CARD, Facts, at

SECRET = "unit-test-secret"
T0 = at("2026-03-10 09:00")
MONTH_END = at("2026-04-10 09:00")


def hash_key(api_key: str) -> str:
    return key_hash(api_key, SECRET)


def issue(facts: Facts, when: datetime, seat: str, key_id: str, sub: str = "sub-1") -> FactEvent:
    return facts.event(
        "ApiKeyIssued",
        when,
        subscription_id=sub,
        seat_id=seat,
        key_id=key_id,
        key_hash=hash_key(f"sk-tp-{key_id}"),
    )


def team(facts: Facts, *events: FactEvent, expires_at: datetime | None = None) -> list[FactEvent]:
    """Two standard seats with a key each (`sk-tp-<account>-1`, `-2`), then `events`."""
    a = facts.account_id
    return [
        facts.activate(T0, expires_at=expires_at),
        facts.add_seat(T0, "seat-1" + a),
        facts.add_seat(T0, "seat-2" + a),
        issue(facts, T0, "seat-1" + a, f"{a}-1"),
        issue(facts, T0, "seat-2" + a, f"{a}-2"),
        *events,
    ]


def directory_of(*accounts: tuple[str, list[FactEvent]]) -> AccountIndex:
    directory = AccountIndex()
    for account_id, events in accounts:
        state, _ = fold(events, DEFAULT_CARD)
        directory.put(account_id, state)
    return directory


def _accounts() -> AccountIndex:
    """`busy`: seat 1 used up (no pack), a revoked key on seat 2; `packed`: a pack, seat 1
    used up; `mid`: seat 1 used up in its second month, on a pack that expires on April 20;
    `ending`: expires at T0 + 5 days; `cancelled`: cancelled at T0 + 1 hour."""
    busy, packed, mid = Facts("busy"), Facts("packed"), Facts("mid")
    ending, cancelled = Facts("ending"), Facts("cancelled")
    later = T0 + timedelta(hours=1)
    return directory_of(
        (
            "busy",
            team(
                busy,
                issue(busy, T0, "seat-2busy", "busy-3"),
                busy.revoke_key(later, "busy-3"),
                busy.usage(later, "seat-1busy", credits=25_000, key="busy-1"),
            ),
        ),
        (
            "packed",
            team(
                packed,
                packed.buy_pack(T0, "pack-1"),
                packed.usage(later, "seat-1packed", credits=25_100, key="packed-1"),
            ),
        ),
        (
            "mid",
            team(
                mid,
                mid.buy_pack(at("2026-03-20 09:00"), "pack-mid"),
                mid.usage(at("2026-04-12 09:00"), "seat-1mid", credits=25_010, key="mid-1"),
            ),
        ),
        ("ending", team(ending, expires_at=T0 + timedelta(days=5))),
        ("cancelled", team(cancelled, cancelled.cancel(later))),
    )


DIRECTORY = _accounts()
NOW = T0 + timedelta(days=1)

CASES: list[tuple[str, str | None, dict[str, Any], datetime, int, str, str]] = [
    # (case, presented key, request, now, status, code, message or part of it)
    ("no key", None, {}, NOW, 401, "missing_api_key", NO_KEY),
    ("Coding Plan key", "sk-cp-abc", {}, NOW, 401, "wrong_plan", WRONG_PLAN),
    ("pay-as-you-go key", "sk-abc", {}, NOW, 401, "wrong_plan", WRONG_PLAN),
    ("unknown key", "sk-tp-nobody", {}, NOW, 401, "invalid_api_key", INVALID_KEY),
    ("revoked key", "sk-tp-busy-3", {}, NOW, 401, "invalid_api_key", INVALID_KEY),
    (
        "key before its revocation",
        "sk-tp-busy-3",
        {},
        T0 + timedelta(minutes=5),
        200,
        "allowed",
        "",
    ),
    (
        "model not in the plan",
        "sk-tp-busy-2",
        {"model": "gpt-4o"},
        NOW,
        404,
        "model_not_supported",
        "model 'gpt-4o' not found or not supported",
    ),
    (
        "image model on the openai endpoint",
        "sk-tp-busy-2",
        {"model": "qwen-image-2.0", "endpoint": "openai"},
        NOW,
        400,
        "image_model_on_text_endpoint",
        "image models use separate APIs",
    ),
    (
        "image model on the anthropic endpoint",
        "sk-tp-busy-2",
        {"model": "wan2.7-image", "endpoint": "anthropic"},
        NOW,
        400,
        "image_model_on_text_endpoint",
        "image models use separate APIs",
    ),
    (
        "image model, endpoint not said",
        "sk-tp-busy-2",
        {"model": "wan2.7-image"},
        NOW,
        200,
        "allowed",
        "",
    ),
    (
        "input longer than the context",
        "sk-tp-busy-2",
        {"model": "glm-5", "input_tokens": 200_001},
        NOW,
        400,
        "input_length_out_of_range",
        "Range of input length should be [1, 200000]",
    ),
    (
        "empty input",
        "sk-tp-busy-2",
        {"input_tokens": 0},
        NOW,
        400,
        "input_length_out_of_range",
        "Range of input length should be [1, 1000000]",
    ),
    ("input at the context", "sk-tp-busy-2", {"input_tokens": 1_000_000}, NOW, 200, "allowed", ""),
    (
        "seat quota used up, no pack",
        "sk-tp-busy-1",
        {},
        NOW,
        403,
        "seat_suspended",
        "resets at 2026-04-10T09:00:00Z. To restore service sooner, upgrade the seat's tier "
        "or buy a shared quota pack.",
    ),
    ("its month rolled over", "sk-tp-busy-1", {}, MONTH_END, 200, "allowed", ""),
    ("seat quota used up, pack left", "sk-tp-packed-1", {}, NOW, 200, "allowed", ""),
    (
        "seat quota used up, pack left",
        "sk-tp-mid-1",
        {},
        at("2026-04-15 00:00"),
        200,
        "allowed",
        "",
    ),
    (
        "the pack expired (lazily)",
        "sk-tp-mid-1",
        {},
        at("2026-04-20 09:00"),
        403,
        "seat_suspended",
        "Quota exhausted",
    ),
    ("subscription in force", "sk-tp-ending-1", {}, NOW, 200, "allowed", ""),
    (
        "subscription expired",
        "sk-tp-ending-1",
        {},
        T0 + timedelta(days=5),
        403,
        "seat_suspended",
        "Subscription 'sub-1' has expired: its seats are suspended.",
    ),
    (
        "subscription cancelled",
        "sk-tp-cancelled-2",
        {},
        NOW,
        403,
        "seat_suspended",
        "Subscription 'sub-1' was cancelled: its seats are suspended.",
    ),
]


@pytest.mark.parametrize(
    ("presented", "request_fields", "now", "status", "code", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_authorize_answers_each_case(
    presented: str | None,
    request_fields: dict[str, Any],
    now: datetime,
    status: int,
    code: str,
    message: str,
) -> None:
    request = AuthorizeRequest.model_validate({"model": "qwen3.6-plus", **request_fields})
    decision = authorize(DIRECTORY, presented, hash_key, request, now, DEFAULT_CARD)
    assert (decision.status, decision.code) == (status, code)
    if status != 200:
        body = decision.body.model_dump(mode="json")
        assert body["allowed"] is False
        assert message in body["message"]


def test_allowed_names_the_key_and_the_remaining_credits() -> None:
    request = AuthorizeRequest(model="qwen3.6-plus")
    decision = authorize(DIRECTORY, "sk-tp-packed-2", hash_key, request, NOW, DEFAULT_CARD)
    assert decision.body.model_dump(mode="json") == {
        "allowed": True,
        "account_id": "packed",
        "subscription_id": "sub-1",
        "seat_id": "seat-2packed",
        "key_id": "packed-2",
        "remaining": {"seat": "25000", "shared": "624900", "total": "649900"},
    }


def test_suspended_answer_says_when_the_quota_resets_and_why() -> None:
    request = AuthorizeRequest(model="qwen3.6-plus")
    decision = authorize(DIRECTORY, "sk-tp-busy-1", hash_key, request, NOW, DEFAULT_CARD)
    body = decision.body.model_dump(mode="json")
    assert body["resets_at"] == "2026-04-10T09:00:00Z"
    assert body["reason"] == "quota_exhausted"


def test_directory_forgets_what_an_account_no_longer_holds() -> None:
    directory = directory_of(("busy", team(Facts("busy"))))
    assert directory.key(hash_key("sk-tp-busy-1")) is not None
    directory.put("busy", AccountState())
    assert directory.key(hash_key("sk-tp-busy-1")) is None
    assert directory.account_of_seat("seat-1busy") is None
    assert directory.account_of_subscription("sub-1") is None


# -- the failed-key limiter ----------------------------------------------------------------


def test_limiter_allows_a_burst_then_asks_to_wait() -> None:
    limiter = FailedKeyLimiter(per_minute=20)
    assert [limiter.failed("10.0.0.1", 100.0) for _ in range(20)] == [None] * 20
    assert limiter.failed("10.0.0.1", 100.0) == pytest.approx(3.0)
    assert limiter.failed("10.0.0.2", 100.0) is None  # another client is not affected
    assert limiter.failed("10.0.0.1", 103.0) is None  # one failure refilled after 3 s
    assert limiter.failed("10.0.0.1", 103.0) is not None


def test_limiter_forgets_refilled_clients_when_full() -> None:
    limiter = FailedKeyLimiter(per_minute=1, max_clients=2)
    assert limiter.failed("a", 0.0) is None
    assert limiter.failed("b", 0.0) is None
    assert limiter.failed("c", 100.0) is None  # a and b refilled: forgotten to make room
    assert limiter.failed("a", 100.0) is None


# -- what time alone changes ---------------------------------------------------------------


def _published_at(state: AccountState, t: datetime) -> dict[str, Published]:
    return {c.seat_id: Published(c.status, c.reason) for c in status_changes(state, {}, t)}


def _changes(state: AccountState, t0: datetime, t1: datetime) -> list[tuple[str, str, str]]:
    return [
        (c.seat_id, c.status, c.reason) for c in status_changes(state, _published_at(state, t0), t1)
    ]


def test_timer_resumes_a_suspended_seat_when_its_month_rolls_over() -> None:
    state = DIRECTORY.accounts["busy"]
    assert _changes(state, NOW, MONTH_END - timedelta(seconds=1)) == []
    assert _changes(state, NOW, MONTH_END) == [("seat-1busy", "active", "month_rolled_over")]
    assert next_status_change(state, NOW) == MONTH_END


def test_timer_suspends_seats_that_relied_on_an_expiring_pack() -> None:
    state = DIRECTORY.accounts["mid"]
    expiry = at("2026-04-20 09:00")
    assert next_status_change(state, at("2026-04-15 00:00")) == expiry
    assert _changes(state, at("2026-04-15 00:00"), expiry - timedelta(seconds=1)) == []
    assert _changes(state, at("2026-04-15 00:00"), expiry) == [
        ("seat-1mid", "suspended", "quota_exhausted")
    ]


def test_timer_suspends_every_seat_when_the_subscription_expires() -> None:
    state = DIRECTORY.accounts["ending"]
    end = T0 + timedelta(days=5)
    assert next_status_change(state, NOW) == end
    assert _changes(state, NOW, end) == [
        ("seat-1ending", "suspended", "subscription_expired"),
        ("seat-2ending", "suspended", "subscription_expired"),
    ]


def test_timer_reports_a_seat_it_never_published() -> None:
    state = DIRECTORY.accounts["busy"]
    assert [
        (c.seat_id, c.status, c.reason, c.resets_at) for c in status_changes(state, {}, NOW)
    ] == [
        ("seat-1busy", "suspended", "quota_exhausted", MONTH_END),
        ("seat-2busy", "active", "seat_added", None),
    ]
