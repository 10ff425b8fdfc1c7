"""The LiteLLM plugin's pure parts: the usage report, the allow cache and the retries."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from metering_litellm.cache import AllowCache
from metering_litellm.report import rfc3339, usage_report
from metering_litellm.settings import GatewaySettings
from metering_litellm.usage import UsageSender

AUTH = {"account_id": "acme", "subscription_id": "sub", "seat_id": "seat", "key_id": "key"}


def payload(**fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "litellm_call_id": "call-1",
        "call_type": "acompletion",
        "startTime": 1795962506.632921,
        "model": "openai/qwen3.6-plus",
        "model_group": "qwen3.6-plus",
        "prompt_tokens": 49_143,
        "completion_tokens": 573,
        "metadata": {"user_api_key_auth_metadata": AUTH},
        **fields,
    }


def response(**usage: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"content": "hi"}}], "usage": usage}


SEED = response(
    prompt_tokens=49_143,
    completion_tokens=573,
    prompt_tokens_details={"cached_tokens": 40_794},
    completion_tokens_details={"reasoning_tokens": 0},
)


def test_the_seed_example_becomes_its_usage_report() -> None:
    assert usage_report(payload(), SEED) == {
        "request_id": "call-1",
        **AUTH,
        "model": "qwen3.6-plus",
        "occurred_at": "2026-11-29T14:28:26.632921+00:00",
        "input_tokens": 8_349,
        "cached_tokens": 40_794,
        "output_tokens": 573,
        "thinking": False,
        "tool_calls": {},
        "images": 0,
    }


def test_reasoning_means_thinking_and_tool_calls_count_by_name() -> None:
    calls = [
        {"id": "a", "type": "function", "function": {"name": "web_search", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "web_search", "arguments": "{}"}},
        {"id": "c", "type": "function", "function": {"name": "code", "arguments": "{}"}},
    ]
    answer = {
        "choices": [{"message": {"tool_calls": calls}}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    }
    report = usage_report(payload(), answer)
    assert report is not None
    assert (report["input_tokens"], report["cached_tokens"], report["output_tokens"]) == (10, 0, 5)
    assert report["thinking"] is True
    assert report["tool_calls"] == {"web_search": 2, "code": 1}


def test_images_of_an_image_call_are_counted() -> None:
    report = usage_report(
        payload(call_type="aimage_generation", model_group="qwen-image-2.0"),
        {"data": [{"url": "a"}, {"url": "b"}], "usage": None},
    )
    assert report is not None
    assert report["images"] == 2


def test_the_usage_object_is_used_when_the_response_has_none() -> None:
    logged = payload()
    logged["metadata"]["usage_object"] = SEED["usage"]
    report = usage_report(logged, None)
    assert report is not None
    assert (report["input_tokens"], report["cached_tokens"]) == (8_349, 40_794)


def test_a_call_quota_did_not_authorize_is_not_reported() -> None:
    assert usage_report(payload(metadata={}), SEED) is None


def test_occurred_at_is_rfc3339_with_zone_and_microseconds() -> None:
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500000+00:00"


def test_an_allow_is_reused_until_its_staleness_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("metering_litellm.cache.time.monotonic", lambda: clock[0])
    cache = AllowCache(seconds=1.0, max_entries=10)
    key = AllowCache.key("sk-tp-1", "qwen3.6-plus", "openai")
    cache.put(key, 500, AUTH)
    assert cache.get(key, 500) == AUTH
    assert cache.get(key, None) == AUTH
    assert cache.get(key, 501) is None  # a longer input than quota allowed: ask again
    assert cache.get(AllowCache.key("sk-tp-1", "glm-5", "openai"), 1) is None
    clock[0] = 101.0
    assert cache.get(key, 500) is None


def test_no_cache_when_the_bound_is_zero() -> None:
    cache = AllowCache(seconds=0, max_entries=10)
    key = AllowCache.key("sk-tp-1", "m", None)
    cache.put(key, None, AUTH)
    assert cache.get(key, None) is None


def test_the_cache_stays_bounded() -> None:
    cache = AllowCache(seconds=60, max_entries=3)
    for i in range(10):
        cache.put(AllowCache.key(f"k{i}", "m", None), None, AUTH)
    assert len(cache._entries) <= 3


def sender(handler: Any, attempts: int = 4) -> tuple[UsageSender, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        result: httpx.Response = handler(len(seen))
        return result

    config = GatewaySettings(
        quota_url="http://quota",
        ingest_url="http://ingest",
        gateway_token="t",
        usage_attempts=attempts,
        usage_backoff_seconds=0.001,
    )
    client = httpx.AsyncClient(base_url="http://ingest", transport=httpx.MockTransport(record))
    return UsageSender(config, client), seen


REPORT = {"request_id": "call-1", "model": "m"}


async def test_a_503_or_a_network_failure_is_retried_with_the_same_body() -> None:
    def answers(n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(503, json={"code": "broker_unavailable"})
        if n == 2:
            raise httpx.ConnectError("ingest down")
        return httpx.Response(200, json={"event_id": "e", "duplicate": True})

    send, seen = sender(answers)
    assert await send.send(REPORT) is True
    assert seen == [REPORT, REPORT, REPORT]
    assert (send.sent, send.lost) == (1, 0)


async def test_a_refused_report_is_logged_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    send, seen = sender(lambda n: httpx.Response(422, json={"code": "unknown_key"}))
    assert await send.send(REPORT) is False
    assert len(seen) == 1
    assert send.refused == 1
    assert "unknown_key" in caplog.text


async def test_retries_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    send, seen = sender(lambda n: httpx.Response(503), attempts=3)
    assert await send.send(REPORT) is False
    assert len(seen) == 3
    assert send.lost == 1
    assert "LOST" in caplog.text
