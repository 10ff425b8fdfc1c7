"""A local OpenAI-compatible model backend for tests and benchmarks (no network, no model).

`POST /v1/chat/completions` answers every model with a short text and realistic usage:
by default design.md §3's seed example (49,143 prompt tokens of which 40,794 cached, 573
completion tokens). A user message starting with `#usage ` followed by JSON sets the usage of
that answer: `{"prompt_tokens": N, "cached_tokens": N, "completion_tokens": N,
"reasoning_tokens": N, "tool_calls": ["web_search", ...]}`. Streams (`"stream": true`) end with
a chunk carrying the usage, as OpenAI does with `stream_options.include_usage`.

Run: `python -m metering_litellm.stub --port 8010`.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

SEED_USAGE: dict[str, Any] = {
    "prompt_tokens": 8_349 + 40_794,
    "cached_tokens": 40_794,
    "completion_tokens": 573,
}

app = FastAPI(title="metering stub model backend")


def _directive(body: dict[str, Any]) -> dict[str, Any]:
    for message in reversed(body.get("messages") or []):
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str) and content.startswith("#usage "):
            wanted: dict[str, Any] = json.loads(content[len("#usage ") :])
            return wanted
    return SEED_USAGE


def _usage(wanted: dict[str, Any]) -> dict[str, Any]:
    prompt = int(wanted.get("prompt_tokens", 0))
    completion = int(wanted.get("completion_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(wanted.get("cached_tokens", 0))},
        "completion_tokens_details": {"reasoning_tokens": int(wanted.get("reasoning_tokens", 0))},
    }


def _tool_calls(wanted: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": "{}"},
        }
        for i, name in enumerate(wanted.get("tool_calls") or [])
    ]


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": []}


@app.post("/v1/chat/completions", response_model=None)
async def chat(request: Request) -> JSONResponse | StreamingResponse:
    body = await request.json()
    wanted = _directive(body)
    model = str(body.get("model", "stub"))
    call_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    text = "Hello from the stub backend."
    tool_calls = _tool_calls(wanted)
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return JSONResponse(
            {
                "id": call_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if tool_calls else "stop",
                    }
                ],
                "usage": _usage(wanted),
            }
        )

    async def chunks() -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None, usage: Any = None) -> bytes:
            data: dict[str, Any] = {
                "id": call_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                if usage is None
                else [],
            }
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""}, None)
        for word in text.split(" "):
            yield chunk({"content": word + " "}, None)
        yield chunk({}, "stop")
        yield chunk({}, None, usage=_usage(wanted))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
