"""LiteLLM's custom-auth hook: every call's key, model, endpoint and input length go to quota's
`POST /v1/authorize`; a refusal reaches the client with quota's status and exact message.

An allow is reused for `METERING_ALLOW_CACHE_SECONDS` (the staleness bound) for the same key,
model and endpoint and an input no longer than the one quota allowed; with
`METERING_SEAT_STATUS_BOOTSTRAP_SERVERS` a seat suspended on `metering.seat-status.v1` stops
the reuse at once. Refusals are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from fastapi import Request
from litellm.proxy._types import ProxyException, UserAPIKeyAuth
from litellm.proxy.common_utils.http_parsing_utils import _read_request_body

from metering_litellm.cache import AllowCache
from metering_litellm.report import AUTH_FIELDS
from metering_litellm.settings import GatewaySettings, settings

log = logging.getLogger("metering_litellm")


def endpoint_kind(path: str) -> str | None:
    """The text endpoint a call came through: `anthropic` (Messages API), `openai` (chat
    completions, completions, responses), or None (images, embeddings, …)."""
    if path.rstrip("/").endswith("/messages"):
        return "anthropic"
    if path.rstrip("/").endswith(("/chat/completions", "/completions", "/responses")):
        return "openai"
    return None


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        found = []
        for name in ("content", "text", "input"):
            if name in value:
                found.extend(_texts(value[name]))
        return found
    return []


def input_text(body: dict[str, Any]) -> str:
    """The text a request sends the model: messages, system prompt, prompt or input."""
    parts: list[str] = []
    for name in ("system", "messages", "prompt", "input"):
        parts.extend(_texts(body.get(name)))
    return "\n".join(parts)


def count_input_tokens(body: dict[str, Any]) -> int | None:
    """An estimate of the input tokens (tiktoken's cl100k_base, which LiteLLM ships): None
    when the request has no text."""
    text = input_text(body)
    if not text:
        return None
    import litellm

    return int(litellm.token_counter(text=text))


class Authorizer:
    """quota's answers for the proxy: one HTTP client and one allow cache per event loop."""

    def __init__(self, config: GatewaySettings) -> None:
        self.config = config
        self.cache = AllowCache(config.allow_cache_seconds, config.allow_cache_entries)
        self._client: httpx.AsyncClient | None = None
        self._seat_statuses: Any = None
        self._seat_statuses_started = False
        self._starting: asyncio.Task[None] | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.quota_url.rstrip("/"),
                timeout=self.config.timeout_seconds,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            )
        return self._client

    async def _start_seat_statuses(self) -> None:
        if not self.config.seat_status_bootstrap_servers:
            return
        from metering.seat_status_client import SeatStatusCache

        statuses = SeatStatusCache(
            self.config.seat_status_bootstrap_servers, topic=self.config.seat_status_topic
        )
        try:
            await statuses.start()
        except Exception:
            log.exception("seat-status topic unavailable: allows are reused by time alone")
            with contextlib.suppress(Exception):
                await statuses.stop()
            return
        self._seat_statuses = statuses

    def _suspended(self, seat_id: str) -> bool:
        if self._seat_statuses is None:
            return False
        change = self._seat_statuses.status(seat_id)
        return change is not None and change.status == "suspended"

    async def authorize(self, request: Request, api_key: str) -> UserAPIKeyAuth:
        if not self._seat_statuses_started:
            # in the background: until it follows the topic, allows expire by time alone
            self._seat_statuses_started = True
            self._starting = asyncio.create_task(self._start_seat_statuses())
        body = await _read_request_body(request)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        endpoint = endpoint_kind(request.url.path)
        input_tokens = None
        if self.config.count_input_tokens and endpoint is not None and model is not None:
            input_tokens = count_input_tokens(body)
        key = AllowCache.key(api_key, model, endpoint)
        if api_key:
            meta = self.cache.get(key, input_tokens)
            if meta is not None and not self._suspended(meta["seat_id"]):
                return allowed(api_key, meta)
        question: dict[str, Any] = {}
        if model is not None:
            question["model"] = model
        if endpoint is not None:
            question["endpoint"] = endpoint
        if input_tokens:
            question["input_tokens"] = input_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if request.client is not None:
            headers["X-Forwarded-For"] = request.client.host
        try:
            answer = await self.client().post("/v1/authorize", json=question, headers=headers)
            decision = answer.json()
        except (httpx.HTTPError, ValueError) as error:
            log.error("quota unreachable: %s", error)
            raise ProxyException(
                message="The metering service cannot authorize requests right now; retry later.",
                type="quota_unavailable",
                param=None,
                code=503,
            ) from error
        if answer.status_code == 200 and decision.get("allowed") is True:
            meta = {name: str(decision[name]) for name in AUTH_FIELDS}
            self.cache.put(key, input_tokens, meta)
            return allowed(api_key, meta)
        self.cache.drop(key)
        raise refusal(answer.status_code, decision, answer.headers.get("Retry-After"))


def allowed(api_key: str, meta: dict[str, str]) -> UserAPIKeyAuth:
    return UserAPIKeyAuth(
        api_key=api_key,
        user_id=meta["seat_id"],
        team_id=meta["subscription_id"],
        key_alias=meta["key_id"],
        metadata=dict(meta),
    )


def refusal(status: int, decision: dict[str, Any], retry_after: str | None) -> ProxyException:
    """quota's refusal as LiteLLM answers it: the status and message as quota wrote them, the
    `code` as the error's `type`, and `reason`/`resets_at` in `provider_specific_fields`."""
    code = str(decision.get("code") or "refused")
    extra = {name: decision[name] for name in ("code", "reason", "resets_at") if name in decision}
    return ProxyException(
        message=str(decision.get("message") or decision.get("detail") or code),
        type=code,
        param=None,
        code=status if status >= 400 else 403,
        headers={"Retry-After": retry_after} if retry_after else None,
        provider_specific_fields=extra or None,
    )


_authorizers: dict[int, Authorizer] = {}


def authorizer() -> Authorizer:
    loop = id(asyncio.get_running_loop())
    found = _authorizers.get(loop)
    if found is None:
        found = _authorizers[loop] = Authorizer(settings())
    return found


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """`general_settings.custom_auth: metering_litellm.auth.user_api_key_auth`.

    Every failure is a `ProxyException`: LiteLLM turns any other exception into a 500."""
    try:
        return await authorizer().authorize(request, api_key or "")
    except ProxyException:
        raise
    except Exception as error:
        log.exception("authorization failed")
        raise ProxyException(
            message="The gateway could not authorize this request; retry later.",
            type="gateway_error",
            param=None,
            code=503,
        ) from error
