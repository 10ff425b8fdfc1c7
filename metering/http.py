"""What every service's HTTP API has: `/healthz`, `/readyz`, `/metrics`, problem+json errors."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metering.db import DATABASE_UNAVAILABLE
from metering.edges import BodyLimit, BodyLimits
from metering.metrics import HTTP_REQUEST_COUNT, HTTP_REQUEST_SECONDS, configure_per_subscription
from metering.problems import PROBLEM_TYPE_PREFIX, problem_type
from metering.problems import entry as problem_entry
from metering.settings import Settings
from schemas.api import Problem

ReadinessCheck = Callable[[], Awaitable[bool]]
PROBLEM_JSON = "application/problem+json"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
NO_OPENTELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""Metrics are Prometheus's (`/metrics`): FastAPI need not look for OpenTelemetry providers
on every request."""


class Readiness:
    """Named checks that must all pass before the service takes traffic."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._checks: dict[str, ReadinessCheck] = {}
        self._timeout = timeout

    def add(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    async def report(self) -> dict[str, bool]:
        """Each check's result; a check that raises or times out counts as not ready."""
        names = list(self._checks)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._checks[n](), self._timeout) for n in names),
            return_exceptions=True,
        )
        return {n: r is True for n, r in zip(names, results, strict=True)}


def problem(
    status: int, title: str, detail: str, *, code: str | None = None, **extra: Any
) -> JSONResponse:
    """An RFC 9457 problem+json answer with a stable machine-readable ``code``.

    Without an explicit ``code`` it is the title in snake case ("Invalid request" ->
    ``invalid_request``): callers that branch on a problem should match ``code``, never text.
    Its ``type`` is ``/problems/<code>``, the page documenting the code (metering.problems).
    """
    code = code or problem_code(title)
    body = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def problem_code(title: str) -> str:
    """The default ``code`` of a problem: its title in snake case."""
    return "_".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


async def _validation_problem(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError | ValidationError)
    return validation_problem(error)


def validation_problem(error: RequestValidationError | ValidationError) -> JSONResponse:
    """422 for a body that fails its model, or a value that fails a model built from it."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in error.errors()
    ]
    fields = ", ".join(e["field"] or "body" for e in errors)
    return problem(422, "Invalid request", f"invalid fields: {fields}", errors=errors)


class Unauthorized(HTTPException):
    """Missing or wrong bearer token; the answer never says which."""

    def __init__(self) -> None:
        super().__init__(401, "a valid bearer token is required")


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="METERING_ADMIN_TOKEN, METERING_READ_TOKEN or METERING_GATEWAY_TOKEN, as the "
    "route allows",
)
DocumentedBearer = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
"""Puts the bearer scheme on every guarded operation of the OpenAPI document."""


def bearer_guard(tokens: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with one of `tokens`.

    Tokens are compared in constant time; an empty list lets nobody through.
    """
    accepted = [t.encode() for t in tokens if t]

    async def guard(request: Request, _documented: DocumentedBearer = None) -> None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        candidate = presented.strip().encode()
        matches = [hmac.compare_digest(candidate, token) for token in accepted]
        if scheme.lower() != "bearer" or not any(matches):
            raise Unauthorized

    return guard


def http_problem(error: StarletteHTTPException) -> JSONResponse:
    """The problem+json form of an HTTP error raised by the framework or a middleware
    (400 unparseable body, 404 unknown route, 405 method, 408, 413), with its headers."""
    status = error.status_code
    title = _TITLES.get(status) or HTTPStatus(status).phrase
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(status).description
    response = problem(status, title, detail)
    for name, value in (error.headers or {}).items():
        response.headers[name] = value
    return response


_TITLES = {413: "Body too large", 408: "Body timeout"}


async def _http_problem(_request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    return http_problem(error)


DATABASE_RETRY_AFTER = "2"


async def _database_unavailable(_request: Request, _error: Exception) -> Response:
    """A database that does not answer within its timeouts: 503, try again shortly."""
    response = problem(
        503,
        "Database unavailable",
        "the database did not answer in time; nothing was changed by this request "
        "unless it was confirmed. Retry it (it is idempotent)",
    )
    response.headers["Retry-After"] = DATABASE_RETRY_AFTER
    return response


async def _unauthorized_problem(_request: Request, error: Exception) -> Response:
    response = problem(401, "Unauthorized", str(getattr(error, "detail", error)))
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


class RequestMetrics:
    """Counts and times every HTTP request by route template (pure ASGI: no extra task or
    body copy on authorize's hot path). A handler that raises counts as 500."""

    def __init__(self, app: ASGIApp, component: str) -> None:
        self.app = app
        self.component = component

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            record_request(self.component, scope["method"], template, status, started)


def record_request(component: str, method: str, route: str, status: int, started: float) -> None:
    """Count and time one answered request (`started`: its `time.perf_counter()`)."""
    HTTP_REQUEST_COUNT(component, method, route, status).inc()
    HTTP_REQUEST_SECONDS(component, method, route).observe(time.perf_counter() - started)


def operation_id(route: APIRoute) -> str:
    """A stable operation id: the handler's name in camel case (`post_usage` -> `postUsage`)."""
    first, *rest = route.name.split("_")
    return first + "".join(part.capitalize() for part in rest)


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
_EDGE_PROBLEMS = {
    "400": "The path, query or body cannot be read (e.g. a NUL character)",
    "408": "The body did not arrive in time (HTTP_BODY_TIMEOUT_SECONDS)",
    "413": "The body is larger than the route takes (MAX_BODY_BYTES)",
    "422": "Invalid request: `errors` names each bad field",
    "503": "The database or the broker did not answer in time (see Retry-After)",
}
_READINESS = {
    "type": "object",
    "required": ["ready", "checks"],
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}


def _conforming_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, made to say what the service really answers: every error
    is problem+json (`Problem`), every operation documents the edge's answers (400, 408, 413,
    422, 503) and a problem for any other status, guarded operations their 401, nested
    schema definitions live in `components`, and `/readyz` documents its 503."""
    if app.openapi_schema:
        return app.openapi_schema
    document = FastAPI.openapi(app)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _hoist_definitions(document, schemas)
    problem_schema = _problem_schema()
    _hoist_definitions(problem_schema, schemas)
    schemas["Problem"] = problem_schema
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, answer in responses.items():
                if status.startswith(("4", "5")) and _is_problem(answer):
                    answer["content"] = _PROBLEM_CONTENT
            for status, description in _EDGE_PROBLEMS.items():
                responses.setdefault(status, {"description": description})
                if _is_problem(responses[status]):
                    responses[status]["content"] = _PROBLEM_CONTENT
            if "201" in responses and "200" not in responses:  # the same command again
                responses["200"] = {
                    **responses["201"],
                    "description": "The same request again: already done, nothing new",
                }
            if "{" in path:
                responses.setdefault("404", {"description": "No such object"})
                if _is_problem(responses["404"]):
                    responses["404"]["content"] = _PROBLEM_CONTENT
            if operation.get("security"):
                responses.setdefault("401", {"description": "Missing or wrong bearer token"})
                if _is_problem(responses["401"]):
                    responses["401"]["content"] = _PROBLEM_CONTENT
            responses.setdefault("default", {"description": "A problem", "content": {}})
            responses["default"]["content"] = _PROBLEM_CONTENT
            if path == "/readyz":
                ready = {"application/json": {"schema": _READINESS}}
                responses["200"]["content"] = ready
                responses["503"] = {
                    "description": "Not ready: each check's result",
                    "content": ready,
                }
    app.openapi_schema = document
    return document


def _is_problem(answer: dict[str, Any]) -> bool:
    """An error answer documented as a problem, or with no (or FastAPI's own) schema."""
    content = answer.get("content")
    if not content:
        return True
    if PROBLEM_JSON in content:
        return True
    ref: str = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.endswith(("/HTTPValidationError", "/Problem"))


def _hoist_definitions(node: Any, schemas: dict[str, Any]) -> None:
    """Move every nested `$defs` into `components/schemas` (bodies documented from a model's
    own JSON Schema refer to their parts there)."""
    if isinstance(node, dict):
        for name, definition in node.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
            _hoist_definitions(definition, schemas)
        for value in node.values():
            _hoist_definitions(value, schemas)
    elif isinstance(node, list):
        for value in node:
            _hoist_definitions(value, schemas)


def _problem_schema() -> dict[str, Any]:
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["additionalProperties"] = True  # a problem may carry more members (RFC 9457)
    return schema


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read `/metrics` on the API's port: with `METRICS_TOKEN`, whoever presents it;
    with `METRICS_PORT`, nobody (it is served there); otherwise loopback callers only."""

    token: str | None = None
    elsewhere: bool = False

    @classmethod
    def of(cls, settings: Settings) -> MetricsAccess:
        tokens = settings.tokens("metrics_token")
        return cls(tokens[0] if tokens else None, settings.metrics_port is not None)

    def refusal(self, request: Request) -> Response | None:
        if self.elsewhere:
            return problem(
                404, "Not Found", "metrics are served on the internal port", code="not_found"
            )
        if self.token is not None:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), self.token.encode()
            ):
                return None
            response = problem(401, "Unauthorized", "metrics need the METRICS_TOKEN bearer token")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        peer = request.client.host if request.client else ""
        if _loopback(peer):
            return None
        return problem(
            403,
            "Metrics private",
            "set METRICS_TOKEN or METRICS_PORT to scrape metrics from another host",
        )


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def create_app(
    service: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    readiness: Readiness,
    version: str = "0.1.0",
    hot_paths: Sequence[Middleware] = (),
    body_limits: BodyLimits | None = None,
    settings: Settings | None = None,
    front: Callable[[ASGIApp, BodyLimits], ASGIApp] | None = None,
) -> FastAPI:
    """A FastAPI app with the endpoints every service shares.

    `hot_paths` are pure ASGI middleware that answer their own few requests before FastAPI's
    routing (counted and timed like every other request, inside `RequestMetrics`), behind
    `BodyLimit` (default: `settings.body_limits()`). `front`, given the rest of the app and
    the body limits, makes the outermost layer: for a path that must skip even those
    layers, and does their work itself. `settings` also say who may read `/metrics` and
    whether per-subscription series are kept.
    """
    metrics_access = MetricsAccess.of(settings) if settings else MetricsAccess()
    if settings is not None:
        body_limits = body_limits or settings.body_limits()
        configure_per_subscription(
            enabled=settings.metrics_per_subscription,
            cap=settings.metrics_subscription_series_max,
        )
    app = FastAPI(
        title=f"metering {service}",
        version=version,
        lifespan=lifespan,
        telemetry=NO_OPENTELEMETRY,
        generate_unique_id_function=operation_id,
    )
    app.openapi = lambda: _conforming_openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(ValidationError, _validation_problem)
    app.add_exception_handler(Unauthorized, _unauthorized_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    for hot_path in reversed(hot_paths):  # each one added wraps those added before it
        app.add_middleware(hot_path.cls, *hot_path.args, **hot_path.kwargs)
    limits = body_limits or BodyLimits(DEFAULT_MAX_BODY_BYTES)
    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(RequestMetrics, component=service)
    if front is not None:
        build_stack = app.build_middleware_stack  # Starlette builds it on the first request
        app.build_middleware_stack = lambda: front(build_stack(), limits)  # type: ignore[method-assign]

    @app.get(
        PROBLEM_TYPE_PREFIX + "{code}",
        tags=["operations"],
        summary="What a problem code means (the page a problem's `type` names)",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
    )
    async def problem_page(code: str) -> Response:
        page = problem_entry(code)
        if page is None:
            return problem(404, "Not Found", f"no problem has the code {code!r}")
        return Response(page, media_type="text/markdown; charset=utf-8")

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["operations"], summary="Broker, database and consumers are ready")
    async def readyz() -> JSONResponse:
        checks = await readiness.report()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (private: METRICS_TOKEN, METRICS_PORT or loopback only)",
    )
    async def metrics(request: Request) -> Response:
        return metrics_page(metrics_access, request)

    return app


def metrics_page(access: MetricsAccess, request: Request) -> Response:
    """`/metrics` as every service (and the console) serves it: refused unless `access`
    allows the request, else the Prometheus exposition."""
    refused = access.refusal(request)
    if refused is not None:
        return refused
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
