"""Fuzzing ingest's API from its own OpenAPI document: whatever comes in, never a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration


def test_no_input_makes_a_server_error(services: dict[str, str]) -> None:
    """Every operation, with bodies generated from its schema (valid and invalid ones)."""
    base_url = services["ingest"]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the OpenAPI document has invalid operations"
    assert {"/v1/usage", "/v1/usage/batch", "/v1/subscriptions"} <= {o.path for o in operations}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def never_5xx(case: Any) -> None:
            response = case.call(
                base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)

        never_5xx()
