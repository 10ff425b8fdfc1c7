"""Every problem `code` the HTTP APIs answer with, and what it means (docs/problems.md).

A problem's `type` is `/problems/<code>`, a URI relative to the service that answered: each
service serves the entry at that path (`GET /problems/{code}`, Markdown), so a client or a
person following `type` reads what the code means and what to do. `docs/problems.md` is
generated from this table (`python -m metering.problems > docs/problems.md`; a test fails
when it is out of date), and a test fails when the code answers with a code not listed here.
"""

from __future__ import annotations

import sys

PROBLEM_TYPE_PREFIX = "/problems/"

CATALOGUE: dict[str, tuple[str, str]] = {
    # code: (statuses, what it means and what to do)
    "bad_request": (
        "400",
        "The request could not be read as HTTP this API understands: a body that is not "
        "what the route parses, or a NUL character in the path or the query. Fix the request.",
    ),
    "unauthorized": (
        "401",
        "A valid bearer token is required (`Authorization: Bearer <token>`); the answer never "
        "says whether the token was missing or wrong.",
    ),
    "metrics_private": (
        "403",
        "`/metrics` was asked from another host while neither `METRICS_TOKEN` nor "
        "`METRICS_PORT` is set: only loopback callers may read it. Configure one of the two.",
    ),
    "not_found": ("404", "No such route, or no such object (named in `detail`)."),
    "model_not_found": ("404", "The model is not on the rate card in force at that time."),
    "unknown_subscription": ("404", "No subscription has this id."),
    "unknown_seat": ("404", "The subscription has no seat with this id."),
    "unknown_key": (
        "404, 422",
        "No API key has this id (404 on `DELETE /v1/keys/{id}`); on a usage report (422, "
        "field `key_id`): the account has no such key.",
    ),
    "unknown_account": ("404", "The account has no subscription (ingest's registry)."),
    "unknown_token": ("404", "No team token has this id (`DELETE /v1/tokens/{id}`)."),
    "expiry_in_past": ("422", "A team token's `expires_at` is not later than now."),
    "unknown_event": ("404", "The ledger, and ingest, know no fact with this event id."),
    "unknown_request": ("404", "The account has no usage report with this request id."),
    "method_not_allowed": ("405", "The route exists, but not for this method (see `Allow`)."),
    "body_timeout": (
        "408",
        "The client stopped sending the request body for longer than "
        "`HTTP_BODY_TIMEOUT_SECONDS`. Send the whole body promptly and retry.",
    ),
    "account_has_active_subscription": (
        "409",
        "Another subscription of the account is active at some time of the new one: an "
        "account holds at most one at a time. A renewal may start once the previous one has "
        "ended (expired or cancelled).",
    ),
    "subscription_id_taken": ("409", "Another account's subscription has this id."),
    "seat_id_taken": ("409", "A seat with this id already exists."),
    "subscription_ended": (
        "409",
        "The subscription has ended (expired or cancelled) by the time the command would take "
        "effect: nothing can be added to it, and no pack bought for it.",
    ),
    "subscription_not_started": (
        "409",
        "A pack dated before the subscription's start: a pack can be bought only for a "
        "subscription that has started.",
    ),
    "subscription_already_cancelled": (
        "409",
        "The subscription is already cancelled (possibly scheduled for later): a "
        "cancellation is final.",
    ),
    "seat_removed": ("409", "The seat was removed: it cannot change or get keys."),
    "key_already_issued": (
        "409",
        "This `Idempotency-Key` already issued a key: its secret was shown once and is not "
        "kept. Issue a new key with another `Idempotency-Key`.",
    ),
    "conflicting_command": (
        "409",
        "The same command id (or `Idempotency-Key`) was used before with a different body.",
    ),
    "conflicting_report": (
        "409",
        "A usage report with this `request_id` was accepted before with a different body.",
    ),
    "body_too_large": (
        "413",
        "The request body is larger than the route takes (`MAX_BODY_BYTES`, or "
        "`MAX_BATCH_BODY_BYTES` for `POST /v1/usage/batch`). It was refused before it was "
        "read; split it.",
    ),
    "invalid_request": (
        "422",
        "The body, a parameter or a value is not valid; `errors` names each bad field.",
    ),
    "inverted_range": (
        "422",
        "A usage filter's `from` is later than its `to` (`from` is inclusive, `to` "
        "exclusive): the range holds no time. Swap them.",
    ),
    "invalid_report": ("422", "One report of a batch is not valid (its `errors` say why)."),
    "malformed": (
        "422",
        "A field of a usage report has the wrong shape, type or bounds (counts 0 to 10⁹, "
        "times with a zone in the years 2000 to 2099, ids of printable characters).",
    ),
    "start_too_far_ahead": ("422", "`started_at` is more than 366 days ahead."),
    "cancellation_in_past": (
        "422",
        "`at` is before the server's clock (beyond the skew allowed): a cancellation cannot "
        "take back what was already charged. Cancel now or later.",
    ),
    "purchased_in_future": (
        "422",
        "`purchased_at` is ahead of the server's clock by more than "
        "`USAGE_MAX_FUTURE_SKEW_SECONDS`: a purchase is recorded when it happens.",
    ),
    "purchased_too_late": (
        "422",
        "`purchased_at` is older than `USAGE_MAX_LATENESS_SECONDS`.",
    ),
    "occurred_in_future": (
        "422",
        "The usage's `occurred_at` is further ahead of ingest's clock than "
        "`USAGE_MAX_FUTURE_SKEW_SECONDS`: check the gateway's clock.",
    ),
    "occurred_too_late": (
        "422",
        "The usage is older than `USAGE_MAX_LATENESS_SECONDS`: it can no longer be charged.",
    ),
    "key_not_for_seat": (
        "422",
        "The usage's key belongs to another seat or subscription than the report names.",
    ),
    "key_revoked": (
        "422",
        "The key was revoked at or before the call's time (a call that started before the "
        "revocation is still charged).",
    ),
    "key_not_yet_issued": (
        "422",
        "The call is dated before its key was issued by more than the clock skew allowed.",
    ),
    "subscription_not_active": (
        "422",
        "The subscription had not started or had ended at the call's time.",
    ),
    "seat_not_active": (
        "422",
        "The seat was not active (added later, or removed) at the call's time.",
    ),
    "unknown_model": ("422", "The model is not on the rate card in force at the call's time."),
    "unpriceable_usage": ("422", "The usage cannot be priced: an image count on a text model."),
    "tokens_beyond_context": (
        "422",
        "Input and cached tokens, or output tokens, exceed the model's context window.",
    ),
    "no_rate_card_in_force": ("422", "No rate card version is in force at the call's time."),
    "too_dear": ("422", "The usage would cost more than any request may (10⁹ credits)."),
    "cannot_price": (
        "422",
        "The usage cannot be priced: an image count on a text model, or no rate card in force.",
    ),
    "broker_unavailable": (
        "503",
        "The event log did not acknowledge in time: the fact may already be recorded. "
        "Retrying the same request (same `request_id`, or `Idempotency-Key` and body) after "
        "`Retry-After` seconds is safe: it is never counted twice.",
    ),
    "database_unavailable": (
        "503",
        "The database did not answer within `DATABASE_STATEMENT_TIMEOUT_SECONDS` / "
        "`DATABASE_ACQUIRE_TIMEOUT_SECONDS`. Retry after `Retry-After` seconds.",
    ),
}


def problem_type(code: str) -> str:
    """The `type` URI of a problem: the page that documents its code."""
    return PROBLEM_TYPE_PREFIX + code


def entry(code: str) -> str | None:
    """The Markdown page of one code, or None when it is not in the catalogue."""
    if code not in CATALOGUE:
        return None
    statuses, meaning = CATALOGUE[code]
    return f"# `{code}` ({statuses})\n\n{meaning}\n"


def document() -> str:
    """docs/problems.md."""
    lines = [
        "# Problem codes",
        "",
        "Every error the HTTP APIs answer is `application/problem+json` (RFC 9457) with a",
        "stable machine-readable `code`: branch on `code`, never on `title` or `detail`. Its",
        "`type` is `/problems/<code>`, relative to the service that answered, which serves that",
        "code's entry below as Markdown. Generated from `metering/problems.py`",
        "(`python -m metering.problems > docs/problems.md`).",
        "",
        "| `code` | Status | Meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{code}` | {status} | {meaning} |" for code, (status, meaning) in CATALOGUE.items()
    ]
    lines += [
        "",
        "quota's `POST /v1/authorize` answers the gateway in its own documented shape",
        '(`{"allowed": false, "code", "message"}`, README, "quota"), not as a problem.',
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(document())
