"""Every Grafana panel and every Prometheus rule has data, on a real Prometheus scraping the
real services after a short load through their public APIs.

Prometheus (the binary deploy/prometheus/ensure-prometheus.sh installs) scrapes the session's
three services and a console reading them every second and evaluates
deploy/prometheus/metering-rules.yml. The load makes every event the panels show happen: plan
commands new and repeated, usage accepted, repeated, conflicting and refused, a fact the ledger
rejects, a seat exhausted into suspension with shortfall, a pack, authorize allowed and denied,
a dead letter from the Kafka entry, and 503s from an extra ingest replica whose own broker is
paused (the session's broker is never paused); on the console, sign-ins accepted, refused and
without their CSRF token, a team's and a member's pages and a CSV, and pages of a second
console whose ledger does not answer.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from metering.dev import RunningService, run_services, wait_until_ready
from metering.processes import die_with_parent, free_port, free_port_run, stop_process
from metering.stack import Stack, start_stack
from metering.topics import EVENTS, USAGE_REPORTS
from tests.conftest import ADMIN_TOKEN, METRICS_TOKEN, SECRETS
from tests.deploy.test_rules import (
    DASHBOARDS,
    RULES,
    load_dashboard,
    load_rules,
    panel_queries,
    selectors,
    tool,
    variable_queries,
)
from tests.integration.test_ingest import team, usage
from tests.integration.test_ingest_resilience import embedded_broker_process
from tests.integration.test_quota import (
    BIG_USAGE,
    Team,
    authorize,
    make_team,
    status_is,
    until,
)
from tests.unit.event_builders import Facts

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WINDOW = "5m"
"""What `$__rate_interval` and `$__range` become: longer than the test, so all of it counts."""
GRAFANA_VARIABLES = {
    "$__rate_interval": WINDOW,
    "$__range": WINDOW,
    "$__interval": "1s",
    "$subscription": ".*",
}
DEADLINE = 40.0


def grafana_expr(expr: str) -> str:
    """The query Grafana would send, with its variables as a dashboard showing everything."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


@contextmanager
def running_prometheus(binary: str, tmp_path: Path, targets: dict[str, list[str]]) -> Iterator[str]:
    """Prometheus scraping `targets` (job → host:port) every second with our rules; its URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": job,
                        "static_configs": [{"targets": hosts}],
                        # /metrics is private: Prometheus presents the services' METRICS_TOKEN
                        "authorization": {"type": "Bearer", "credentials": METRICS_TOKEN},
                    }
                    for job, hosts in targets.items()
                ],
            }
        )
    )
    url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={urlsplit(url).netloc}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    try:
        give_up = time.monotonic() + 30
        while not _answers(f"{url}/-/ready"):
            assert process.poll() is None, f"prometheus exited; see {log_path}"
            assert time.monotonic() < give_up, f"prometheus not ready in 30 s; see {log_path}"
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _host(url: str) -> str:
    return urlsplit(url).netloc


# -- the load --------------------------------------------------------------------------------


def drive_load(services: dict[str, str], stack: Stack) -> Team:
    """Make happen every event a panel or a rule counts, through the public APIs; the team
    it made."""
    with (
        httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest,
        httpx.Client(base_url=services["quota"], timeout=30) as quota,
        httpx.Client(base_url=services["ledger"], headers=AUTH, timeout=30) as ledger,
    ):
        team = make_team(ingest)
        again = {"account_id": team.account, "subscription_id": team.subscription}
        repeated = ingest.post(
            "/v1/subscriptions", json={**again, "started_at": team.started_at.isoformat()}
        )
        assert repeated.json()["duplicate"], repeated.text
        team.buy_pack(datetime.now(UTC) - timedelta(hours=1))

        key_id = team.keys[team.seat(2)][0]
        fine = usage(team.account, f"ok-{uuid.uuid4().hex}", seat_id=team.seat(2), key_id=key_id)
        reports = [
            fine,
            fine,  # duplicate
            {**fine, "output_tokens": 1},  # conflict
            {**fine, "request_id": f"bad-{uuid.uuid4().hex}", "model": "gpt-9"},  # invalid
            {**fine, "request_id": f"bad-{uuid.uuid4().hex}", "input_tokens": -5},  # invalid
        ]
        statuses = [
            r["status"]
            for r in ingest.post("/v1/usage/batch", json={"reports": reports}).json()["results"]
        ]
        assert statuses == ["accepted", "duplicate", "conflict", "invalid", "invalid"]

        team.use(1, 465, **BIG_USAGE)  # 651,000: the seat's month, the pack, and shortfall
        assert until(lambda: authorize(quota, team.key(1)), status_is(403)).status_code == 403
        assert authorize(quota, team.key(2)).status_code == 200
        unknown_key = {"Authorization": "Bearer sk-tp-not-a-key", "X-Forwarded-For": "192.0.2.1"}
        denied = quota.post("/v1/authorize", json={"model": "qwen3.6-plus"}, headers=unknown_key)
        assert denied.status_code == 401, denied.text  # from an address of its own: no 429
        deducted = until(  # the ledger applied this round before the next one begins
            lambda: ledger.get(f"/v1/subscriptions/{team.subscription}/usage?limit=1000"),
            lambda a: a.status_code == 200 and len(a.json()["rows"]) == 466,
        )
        assert len(deducted.json()["rows"]) == 466, deducted.text

    asyncio.run(_produce_around_ingest(stack, team.account))
    return team


async def _produce_around_ingest(stack: Stack, account: str) -> None:
    """An unparseable report to ingest's Kafka entry (a dead letter), and a usage of a
    subscription no fact made straight to the events topic: ingest refuses every fact that
    cannot take effect, so only a producer going around it makes the ledger's guard reject one.
    """
    foreign = Facts(f"{account}-foreign")
    rejected = foreign.usage(datetime.now(UTC), sub="sub-nobody-made")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(USAGE_REPORTS, b"{not json", key=account.encode())
        await producer.send_and_wait(
            EVENTS, rejected.model_dump_json().encode(), key=foreign.account_id.encode()
        )
    finally:
        await producer.stop()


CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def sign_in(person: httpx.Client, credential: str, subscription_id: str = "") -> httpx.Response:
    """A person fills in the console's sign-in form (with the token the page carries)."""
    found = CSRF.search(person.get("/").text)
    assert found, "no CSRF token on the sign-in page"
    form = {"credential": credential, "subscription_id": subscription_id, "csrf_token": found[1]}
    return person.post("/signin", data=form)


def drive_console(services: dict[str, str], console: str, ledgerless: str, team: Team) -> None:
    """People using the console: sign-ins accepted, refused and without their CSRF token, a
    team's pages and CSV, a member's page; and a console whose ledger does not answer."""
    with httpx.Client(base_url=services["ingest"], headers=AUTH, timeout=30) as ingest:
        issued = ingest.post(f"/v1/accounts/{team.account}/tokens", json={})
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
    sub = team.subscription
    with httpx.Client(base_url=console, timeout=30) as person:
        assert sign_in(person, "tt-not-a-token", sub).status_code == 401
        forged = person.post("/signin", data={"credential": token, "subscription_id": sub})
        assert forged.status_code == 403, forged.text
        assert sign_in(person, token, sub).status_code == 303
        for page in (f"/subscriptions/{sub}", f"/subscriptions/{sub}/usage?seat_id={team.seat(1)}"):
            assert person.get(page).status_code == 200, page
        assert person.get(f"/subscriptions/{sub}/usage.csv").status_code == 200
        assert sign_in(person, team.key(2)).status_code == 303
        assert person.get("/me").status_code == 200
    with httpx.Client(base_url=ledgerless, timeout=30) as person:
        assert sign_in(person, token, sub).status_code == 303  # quota answers
        assert person.get(f"/subscriptions/{sub}/usage").status_code == 502


def refuse_with_503(replica: str, stack: Stack) -> None:
    """A usage report (of a real team's key) to an ingest replica whose broker is paused: 503
    after 5 s."""
    with httpx.Client(base_url=replica, headers=AUTH, timeout=30) as ingest:
        account = team(ingest, "outage")
    broker = embedded_broker_process(stack)
    broker.send_signal(signal.SIGSTOP)
    try:
        report = usage(account, "during")
        refused = httpx.post(f"{replica}/v1/usage", json=report, headers=AUTH, timeout=30)
        assert refused.status_code == 503, refused.text
    finally:
        broker.send_signal(signal.SIGCONT)


# -- the checks ------------------------------------------------------------------------------


def _query(prometheus: str, expr: str) -> list[float]:
    """The values an instant query returns now (empty: no data)."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, f"{expr}: {answer.text}"
    data: dict[str, Any] = answer.json()["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(series["value"][1]) for series in data["result"]]


def _checks() -> list[tuple[str, str, bool]]:
    """(what, query, whether a value must be a number) for every panel, rule and selector."""
    checks = []
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel, target in panel_queries(dashboard):
            where = (
                f"{dashboard['title']} ({path.name}), panel {panel['title']!r} ({target['refId']})"
            )
            checks.append((where, grafana_expr(target["expr"]), True))
        for variable, query in variable_queries(dashboard):
            checks.append((f"{dashboard['title']} ({path.name}), variable {variable}", query, True))
    for rule in load_rules():
        if "record" in rule:
            checks.append((f"recording rule {rule['record']}", rule["expr"], True))
        else:
            where = f"alert {rule['alert']}, selector"
            checks.extend((where, selector, False) for selector in selectors(rule["expr"]))
    return checks


def _missing(prometheus: str, checks: list[tuple[str, str, bool]]) -> list[str]:
    failures = []
    for where, expr, numeric in checks:
        values = _query(prometheus, expr)
        if not values:
            failures.append(f"{where}: no data for {expr}")
        elif numeric and all(math.isnan(v) for v in values):
            failures.append(f"{where}: only NaN for {expr}")
    return failures


def _rule_problems(prometheus: str) -> list[str]:
    """Rules Prometheus has not evaluated yet or could not evaluate."""
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [
        f"rule {rule['name']}: {rule['health']} {rule.get('lastError', '')}".strip()
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]


def _targets_down(prometheus: str) -> list[str]:
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
    return [
        f"target {t['scrapeUrl']}: {t['health']} {t['lastError']}"
        for t in targets["activeTargets"]
        if t["health"] != "up"
    ]


def wait_for_scrapes(prometheus: str, targets: int, after: float) -> None:
    """Until every target was scraped successfully after `after` (a Unix time)."""
    give_up = time.monotonic() + 30
    while _query(prometheus, f"count(timestamp(up) > {after} and up == 1)") != [targets]:
        assert time.monotonic() < give_up, f"{prometheus}: targets not scraped after {after}"
        time.sleep(0.2)


@contextmanager
def consoles(services: dict[str, str], stack: Stack, tmp_path: Path) -> Iterator[list[str]]:
    """Two consoles reading the session's services (`python -m console`, as `make run` starts
    it): one whole, one whose LEDGER_URL is a port nobody listens on; their URLs."""
    urls = {f"{name.upper()}_URL": url for name, url in services.items()}
    nobody = f"http://127.0.0.1:{free_port()}"
    port = free_port_run(2)
    with (
        run_services(stack, tmp_path / "whole", {**SECRETS, **urls}, port, ["console"]) as whole,
        run_services(
            stack, tmp_path / "ledgerless", {**SECRETS, **urls, "LEDGER_URL": nobody}, port + 1,
            ["console"],
        ) as ledgerless,
    ):  # fmt: skip
        running: list[RunningService] = [*whole, *ledgerless]
        wait_until_ready(running)
        yield [service.url for service in running]


def test_every_panel_and_rule_has_data_after_a_short_load(
    services: dict[str, str], stack: Stack, tmp_path: Path
) -> None:
    binary = tool("prometheus")
    with (
        start_stack(tmp_path / "outage", environ={}, docker_available=lambda: False) as outage,
        run_services(outage, tmp_path, SECRETS, free_port_run(1), names=["ingest"]) as replica,
        consoles(services, stack, tmp_path) as (console, ledgerless),
    ):
        targets = {name: [_host(url)] for name, url in services.items()}
        targets["ingest"].append(_host(replica[0].url))
        targets["console"] = [_host(console), _host(ledgerless)]
        with running_prometheus(binary, tmp_path, targets) as prometheus:
            # Prometheus counts no increase for a series it first sees above zero: each round
            # of load starts after a scrape, so the second one shows in every rate.
            for _ in range(2):
                wait_for_scrapes(prometheus, sum(map(len, targets.values())), time.time())
                team = drive_load(services, stack)
                drive_console(services, console, ledgerless, team)
            wait_until_ready(replica)
            refuse_with_503(replica[0].url, outage)

            checks = _checks()
            give_up = time.monotonic() + DEADLINE
            while True:
                problems = (
                    _targets_down(prometheus)
                    + _rule_problems(prometheus)
                    + _missing(prometheus, checks)
                )
                if not problems or time.monotonic() > give_up:
                    break
                time.sleep(1)
    assert not problems, "\n".join(problems)
