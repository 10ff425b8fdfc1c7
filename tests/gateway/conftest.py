"""A real LiteLLM proxy with the metering plugin in front of the session's services, and the
official OpenAI and Anthropic SDKs as its clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import anthropic
import openai
import pytest

from metering.stack import Stack
from metering_litellm.harness import Gateway, run_gateway
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import broker, ingest, ledger, quota, team  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def gateway(
    services: dict[str, str], stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with run_gateway(
        tmp_path_factory.mktemp("gateway"),
        quota_url=services["quota"],
        ingest_url=services["ingest"],
        gateway_token=ADMIN_TOKEN,
        allow_cache_seconds=1.0,
        seat_status_bootstrap_servers=stack.kafka_bootstrap_servers,
    ) as running:
        yield running


@pytest.fixture
async def openai_for(gateway: Gateway) -> AsyncIterator[Callable[[str], openai.AsyncOpenAI]]:
    made: list[openai.AsyncOpenAI] = []

    def client(api_key: str) -> openai.AsyncOpenAI:
        made.append(
            openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0)
        )
        return made[-1]

    yield client
    for c in made:
        await c.close()


@pytest.fixture
async def anthropic_for(
    gateway: Gateway,
) -> AsyncIterator[Callable[[str], anthropic.AsyncAnthropic]]:
    made: list[anthropic.AsyncAnthropic] = []

    def client(api_key: str) -> anthropic.AsyncAnthropic:
        made.append(anthropic.AsyncAnthropic(base_url=gateway.url, api_key=api_key, max_retries=0))
        return made[-1]

    yield client
    for c in made:
        await c.close()
