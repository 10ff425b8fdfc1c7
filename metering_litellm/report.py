"""What one model call costs in usage-report terms: built from LiteLLM's logging payload.

Pure functions (no I/O, no litellm import), so they are tested on their own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

AUTH_FIELDS = ("account_id", "subscription_id", "seat_id", "key_id")
"""What the authorize answer names, carried from the auth hook to the callback in
`UserAPIKeyAuth.metadata` (LiteLLM logs it as `metadata.user_api_key_auth_metadata`)."""


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _int(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def rfc3339(epoch_seconds: float) -> str:
    """`1795962506.632921` → `2026-11-29T14:28:26.632921+00:00`."""
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="microseconds")


def tool_call_names(response: Any) -> dict[str, int]:
    """Tool calls the model made, by function name (OpenAI-shaped choices)."""
    counts: Counter[str] = Counter()
    for choice in _get(response, "choices") or []:
        message = _get(choice, "message") or _get(choice, "delta")
        for call in _get(message, "tool_calls") or []:
            name = _get(_get(call, "function"), "name")
            if isinstance(name, str) and name:
                counts[name] += 1
    return dict(counts)


def image_count(response: Any, call_type: str) -> int:
    if "image" not in call_type:
        return 0
    return len(_get(response, "data") or [])


def usage_report(payload: Mapping[str, Any], response: Any) -> dict[str, Any] | None:
    """The body of ingest's `POST /v1/usage` for one call, from LiteLLM's
    `standard_logging_object` and the call's response; None when the call was not
    authorized by quota (no seat to charge: e.g. the proxy's own master key)."""
    metadata = payload.get("metadata") or {}
    auth = metadata.get("user_api_key_auth_metadata") or {}
    if not all(auth.get(name) for name in AUTH_FIELDS):
        return None
    usage = _get(response, "usage") or metadata.get("usage_object") or {}
    prompt = _int(_get(usage, "prompt_tokens", payload.get("prompt_tokens")))
    cached = _int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens"))
    output = _int(_get(usage, "completion_tokens", payload.get("completion_tokens")))
    reasoning = _int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens"))
    call_type = str(payload.get("call_type") or "")
    images = image_count(response, call_type)
    request_id = payload.get("litellm_call_id") or payload.get("id")
    model = payload.get("model_group") or payload.get("model")
    report: dict[str, Any] = {
        "request_id": str(request_id),
        **{name: str(auth[name]) for name in AUTH_FIELDS},
        "model": str(model),
        "occurred_at": rfc3339(float(payload["startTime"])),
        "input_tokens": max(prompt - cached, 0),
        "cached_tokens": min(cached, prompt),
        "output_tokens": output,
        "thinking": reasoning > 0,
        "tool_calls": tool_call_names(response),
        "images": images,
    }
    return report
