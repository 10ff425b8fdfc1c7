"""Fixtures of the unit tests."""

import time
from collections.abc import Iterator

import pytest

LOCAL_ZONES = ["UTC0", "JST-9", "EST5EDT,M3.2.0,M11.1.0"]
"""POSIX TZ strings (no zone database needed): UTC, Tokyo (+9) and New York (-5/-4, DST)."""


@pytest.fixture(params=LOCAL_ZONES, ids=["utc", "tokyo", "new_york"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the process's local time zone set to each of ``LOCAL_ZONES``: the
    core computes in UTC, so nothing it answers may depend on the machine's zone."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()
