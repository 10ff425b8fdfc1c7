"""The console's Prometheus metrics (prefixed `metering_console_`), besides the HTTP metrics
every service has (`metering_http_*`, component `console`): its calls to the APIs it reads,
and sign-ins. Every label takes a few fixed values, and each series exists from the start at
0, so a rate of "none yet" is a 0, not an absent series."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from metering.metrics import child_of

UPSTREAMS = ("ledger", "quota")
"""The services whose APIs the console reads."""
OUTCOMES = ("ok", "refused", "failed", "unreachable")
"""`ok`: 2xx; `refused`: a 4xx (the credential, the filter or the id); `failed`: any other
answer (5xx); `unreachable`: no answer (connection refused, a timeout)."""
SIGNIN_RESULTS = ("success", "refused", "not_found", "incomplete", "forbidden", "unavailable")
"""`refused`: the APIs refused the credential (401); `not_found`: the team's subscription is
not its own or does not exist (404); `incomplete`: no credential, a team token without a
subscription id, or an id the API cannot read (422); `forbidden`: the form had no valid CSRF
token (403); `unavailable`: quota did not answer, or answered something else (502)."""
CREDENTIALS = ("team", "member")

UPSTREAM_CALLS = Counter(
    "metering_console_upstream_requests_total",
    "Calls of the console to the APIs it reads, by upstream service and outcome (ok, refused: "
    "4xx, failed: other answers, unreachable: no answer).",
    ["upstream", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "metering_console_upstream_request_duration_seconds",
    "Time from a call of the console to one of the APIs it reads to the answer's headers (or "
    "to giving up), by upstream service.",
    ["upstream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SIGNINS = Counter(
    "metering_console_signins_total",
    "Sign-ins by credential (team token or member key) and result (success, refused, "
    "not_found, incomplete, forbidden: no valid CSRF token, unavailable: quota did not answer).",
    ["credential", "result"],
)
UPSTREAM_CALL = child_of(UPSTREAM_CALLS)
UPSTREAM_TIME = child_of(UPSTREAM_SECONDS)
SIGNIN = child_of(SIGNINS)

for _upstream in UPSTREAMS:
    UPSTREAM_TIME(_upstream)
    for _outcome in OUTCOMES:
        UPSTREAM_CALL(_upstream, _outcome)
for _credential in CREDENTIALS:
    for _result in SIGNIN_RESULTS:
        SIGNIN(_credential, _result)


def outcome(status: int | None) -> str:
    """The outcome label of an answer's status (None: no answer)."""
    if status is None:
        return "unreachable"
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "refused"
    return "failed"
