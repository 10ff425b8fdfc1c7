"""The LiteLLM proxy plugin end to end: the OpenAI and Anthropic SDKs call a real LiteLLM
proxy (stub model backend) in front of ingest, ledger and quota.

A call is authorized by quota and charged through ingest; a refusal reaches the SDK with
quota's status and exact message (design.md §5)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anthropic
import httpx
import openai
import pytest

from metering_litellm.harness import Gateway
from tests.e2e.conftest import (
    ADMIN,
    DEADLINE_SECONDS,
    MODEL,
    Json,
    Team,
    add_months,
    authorize,
    authorized,
    eventually,
    new_team,
    now,
    rfc3339,
    usage_rows,
)

pytestmark = pytest.mark.integration

OpenAIFor = Callable[[str], openai.AsyncOpenAI]
AnthropicFor = Callable[[str], anthropic.AsyncAnthropic]
HELLO: Any = [{"role": "user", "content": "Hello"}]
"""The messages of a call (typed loosely: both SDKs take them)."""


def usage(**counts: Any) -> Any:
    """A user message telling the stub backend which usage to answer with."""
    return [{"role": "user", "content": "#usage " + json.dumps(counts)}]


async def seat_remaining(quota_admin: httpx.AsyncClient, seat_id: str, wanted: str) -> str:
    answer = await eventually(
        lambda: quota_admin.get(f"/v1/seats/{seat_id}"),
        lambda a: a.status_code == 200 and a.json()["remaining"] == wanted,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["remaining"])


@pytest.fixture
async def quota_admin(services: dict[str, str]) -> Any:
    async with httpx.AsyncClient(base_url=services["quota"], headers=ADMIN, timeout=30) as c:
        yield c


async def ready_team(ingest: httpx.AsyncClient, quota: httpx.AsyncClient) -> Team:
    """A new team whose key quota already lets through."""
    team = await new_team(ingest)
    await authorized(quota, team.seat.api_key, 200)
    return team


async def test_a_members_openai_call_is_charged_the_seed_example(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    quota_admin: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    openai_for: OpenAIFor,
) -> None:
    team = await ready_team(ingest, quota)
    client = openai_for(team.seat.api_key)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 8_349 + 40_794
    call_id = raw.headers["x-litellm-call-id"]

    assert await seat_remaining(quota_admin, team.seat.seat_id, "24996.82") == "24996.82"
    [row] = await usage_rows(ledger, team, 1)
    assert row["request_id"] == call_id
    assert (row["credits"], row["model"], row["key_id"]) == ("3.18", MODEL, team.seat.key_id)
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (
        8_349,
        40_794,
        573,
    )


async def test_anthropic_calls_and_streams_are_each_charged_once(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    quota_admin: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    openai_for: OpenAIFor,
    anthropic_for: AnthropicFor,
) -> None:
    team = await ready_team(ingest, quota)
    claude = anthropic_for(team.seat.api_key)
    message = await claude.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (8_349, 40_794)

    stream = await openai_for(team.seat.api_key).chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) > 3
    async with claude.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as events:
        async for _ in events:
            pass

    # three calls of 3.18: one usage row each, whatever the number of chunks
    assert await seat_remaining(quota_admin, team.seat.seat_id, "24990.46") == "24990.46"
    rows = await usage_rows(ledger, team, 3)
    assert {row["credits"] for row in rows} == {"3.18"}
    await asyncio.sleep(1.5)
    assert len(await usage_rows(ledger, team, 3)) == 3


async def test_thinking_and_tool_calls_are_reported(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    ledger: httpx.AsyncClient,
    openai_for: OpenAIFor,
) -> None:
    team = await ready_team(ingest, quota)
    counts = {
        "prompt_tokens": 1_000,
        "cached_tokens": 200,
        "completion_tokens": 300,
        "reasoning_tokens": 100,
        "tool_calls": ["web_search", "web_search"],
    }
    await openai_for(team.seat.api_key).chat.completions.create(
        model=MODEL,
        messages=usage(**counts),
    )
    [row] = await usage_rows(ledger, team, 1)
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (800, 200, 300)
    assert row["thinking"] is True
    assert row["tool_calls"] == {"web_search": 2}


def body_of(error: openai.APIStatusError | anthropic.APIStatusError) -> Json:
    body = error.body
    assert isinstance(body, dict), body
    return body


async def quota_message(quota: httpx.AsyncClient, api_key: str | None, **question: Any) -> Json:
    answer = await authorize(quota, api_key, **question)
    body: Json = answer.json()
    body["status"] = answer.status_code
    return body


async def test_refusals_reach_the_sdks_with_quotas_status_and_message(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    openai_for: OpenAIFor,
    anthropic_for: AnthropicFor,
    gateway: Gateway,
) -> None:
    team = await ready_team(ingest, quota)
    key = team.seat.api_key
    gpt = openai_for(key)

    with pytest.raises(openai.NotFoundError) as unknown:
        await gpt.chat.completions.create(model="no-such-model", messages=HELLO)
    expected = await quota_message(quota, key, model="no-such-model", endpoint="openai")
    assert unknown.value.status_code == 404
    assert body_of(unknown.value)["message"] == expected["message"]
    assert expected["message"] == "model 'no-such-model' not found or not supported"

    with pytest.raises(openai.BadRequestError) as image:
        await gpt.chat.completions.create(model="qwen-image-2.0", messages=HELLO)
    expected = await quota_message(quota, key, model="qwen-image-2.0", endpoint="openai")
    assert body_of(image.value)["message"] == expected["message"]
    assert expected["message"].startswith("model 'qwen-image-2.0' is an image model")

    too_long: Any = [{"role": "user", "content": "hello " * 130_000}]
    with pytest.raises(anthropic.BadRequestError) as long_input:
        await anthropic_for(key).messages.create(
            model="deepseek-v3.2",
            max_tokens=10,
            messages=too_long,
        )
    assert long_input.value.status_code == 400
    assert (
        body_of(long_input.value)["error"]["message"]
        == "Range of input length should be [1, 128000]"
    )

    with pytest.raises(anthropic.AuthenticationError) as other_plan:
        await anthropic_for("sk-ant-another-plan").messages.create(
            model=MODEL,
            max_tokens=10,
            messages=HELLO,
        )
    assert body_of(other_plan.value)["error"]["message"] == "invalid access token or token expired"

    async with httpx.AsyncClient(base_url=gateway.url) as raw:
        no_key = await raw.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["message"] == "InvalidApiKey: No API-key provided."

    revoked = await ingest.delete(f"/v1/keys/{team.seat.key_id}")
    assert revoked.status_code == 200, revoked.text
    await authorized(quota, key, 401)
    await asyncio.sleep(1.1)  # the gateway's allow cache (1 s) forgets the key
    with pytest.raises(openai.AuthenticationError) as invalid:
        await gpt.chat.completions.create(model=MODEL, messages=HELLO)
    assert invalid.value.status_code == 401
    assert body_of(invalid.value)["message"] == "InvalidApiKey: Invalid API-key provided."


async def test_an_exhausted_seat_is_refused_until_a_pack_is_bought(
    ingest: httpx.AsyncClient,
    quota: httpx.AsyncClient,
    openai_for: OpenAIFor,
) -> None:
    team = await ready_team(ingest, quota)
    gpt = openai_for(team.seat.api_key)
    resets_at = rfc3339(add_months(team.started_at, 1))
    big = usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)  # 1,400 credits a call

    refused: openai.PermissionDeniedError | None = None
    give_up = time.monotonic() + 3 * DEADLINE_SECONDS
    calls = 0
    while refused is None and time.monotonic() < give_up:
        try:
            await gpt.chat.completions.create(model=MODEL, messages=big)
            calls += 1
        except openai.PermissionDeniedError as error:
            refused = error
        if calls >= 17:
            await asyncio.sleep(0.2)  # let quota see the last report
    assert refused is not None, f"still allowed after {calls} calls"
    assert calls >= 18  # 17 calls of 1,400 < 25,000 credits
    body = refused.body
    assert isinstance(body, dict)
    assert body["type"] == "seat_suspended"
    assert body["message"].startswith(f"Quota exhausted: seat '{team.seat.seat_id}'")
    assert f"resets at {resets_at}" in body["message"]
    assert body["provider_specific_fields"]["resets_at"] == resets_at

    await team.buy_pack(f"pack-{team.account_id}", now() - timedelta(seconds=1))
    give_up = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            await gpt.chat.completions.create(model=MODEL, messages=HELLO)
            break
        except openai.PermissionDeniedError:
            assert time.monotonic() < give_up, "still refused after the pack purchase"
            await asyncio.sleep(0.2)
