"""The spec is the truth: each service's API fuzzed from its own OpenAPI document.

Whatever comes in (bodies, paths and queries generated from the schemas, valid and invalid),
never a 5xx, and every answer conforms to the document: its status is documented, with the
documented content type, body schema and headers. Bounded: a fixed number of examples per
operation, derandomized, well under three minutes for the three services.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = {"ingest": 30, "ledger": 30, "quota": 30}
"""Per operation and generation mode (valid requests, and invalid ones)."""
MUST_HAVE = {
    "ingest": {"/v1/usage", "/v1/usage/batch", "/v1/subscriptions"},
    "ledger": {"/v1/quote", "/v1/subscriptions/{subscription_id}/usage"},
    "quota": {"/v1/authorize", "/v1/seats/{seat_id}"},
}


@pytest.mark.parametrize("service", list(EXAMPLES))
def test_answers_conform_to_the_openapi_document(services: dict[str, str], service: str) -> None:
    """Every operation, with requests generated from its schema (valid and invalid ones)."""
    base_url = services[service]
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the OpenAPI document has invalid operations"
    assert MUST_HAVE[service] <= {o.path for o in operations}
    started = time.monotonic()
    calls = 0
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES[service],
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                checks=CHECKS,
            )

        if mode is GenerationMode.NEGATIVE:
            with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no input)
                conforms()
        else:
            conforms()
    print(
        f"{service}: {len(operations)} operations, {calls} calls, conforming, "
        f"{time.monotonic() - started:.1f} s"
    )


def test_the_documents_say_how_to_authenticate_and_name_operations(
    services: dict[str, str],
) -> None:
    import httpx

    for service, url in services.items():
        document = httpx.get(f"{url}/openapi.json").json()
        schemes = document["components"]["securitySchemes"]
        assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerToken"].items()
        ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
        assert len(ids) == len(set(ids)), service
        assert all("_" not in i for i in ids), ids  # postUsage, not post_usage_v1_usage_post
    ingest = httpx.get(f"{services['ingest']}/openapi.json").json()
    assert ingest["paths"]["/v1/usage"]["post"]["operationId"] == "postUsage"
    assert ingest["paths"]["/v1/usage"]["post"]["security"] == [{"bearerToken": []}]
