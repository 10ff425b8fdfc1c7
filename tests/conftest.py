"""Fixtures shared by every test layer.

The integration stack is session-scoped: one real broker and one real database for the whole
run (external, container or embedded, in the stack starter's order), stopped at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from metering.dev import SERVICES, run_services, wait_until_ready
from metering.processes import free_port_run
from metering.stack import Stack, start_stack

settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    print_blob=False,
    phases=[Phase.explicit, Phase.generate],
)
"""`make mutation` (--hypothesis-profile=mutation): the same examples on every run, so that
whether a mutant survives depends on the mutant alone; a failure is not shrunk (a mutant is
killed by the first failing example, and shrinking it would cost seconds per mutant)."""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


ADMIN_TOKEN = "test-admin-token"
METRICS_TOKEN = "test-metrics-token"
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}
"""What Prometheus presents to scrape the session's services."""
SECRETS = {
    "METERING_ADMIN_TOKEN": ADMIN_TOKEN,
    "API_KEY_HASH_SECRET": "test-key-hash-secret",
    # The tests stand in for the gateway (on loopback, or behind a 10.x proxy they name in
    # X-Forwarded-For): quota believes the client addresses they forward.
    "TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8",
    "METRICS_TOKEN": METRICS_TOKEN,
    # The business dashboard's per-subscription panels (tests/integration/test_dashboards.py)
    "METRICS_PER_SUBSCRIPTION": "true",
    "METRICS_SUBSCRIPTION_SERIES_MAX": "10000",
}


@pytest.fixture(scope="session")
def services(stack: Stack, state_dir: Path) -> Iterator[dict[str, str]]:
    """The three services, running as real processes against the session stack: name → URL."""
    with run_services(stack, state_dir, SECRETS, free_port_run(len(SERVICES))) as running:
        wait_until_ready(running)
        yield {service.name: service.url for service in running}
