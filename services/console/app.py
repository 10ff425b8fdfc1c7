"""The console's pages: sign-in, team overview, usage details (with CSV), a member's page.

Every figure comes from the other services' HTTP APIs, called with the signed-in credential
(kept encrypted in an HttpOnly, SameSite=Strict session cookie: console/session.py), so a
person sees exactly what that credential's scope allows: a team token reads its own account's
subscriptions, a member key its own seat. An API's `404` is shown as "not found", its `401`
sends the person back to sign in. Every form carries a CSRF token; a POST without the right one
is refused with `403`.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import httpx
import prometheus_client
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from console import formatting
from console.metrics import SIGNIN, UPSTREAM_CALL, UPSTREAM_TIME, outcome
from console.session import Sessions
from console.settings import ConsoleSettings, load_console_settings
from metering.edges import BodyLimit
from metering.http import NO_OPENTELEMETRY, MetricsAccess, RequestMetrics, metrics_page
from metering.logs import configure_logging
from metering.service import _exit_after_graceful_stop, server_options

COOKIE = "metering_console"
"""The session: the signed-in credential, a team token (`tt-…`) or a member's API key
(`sk-tp-…`), sealed by `Sessions` (never the credential itself)."""
CSRF_COOKIE = "metering_console_csrf"
"""The random value the forms' CSRF token is made from (`Sessions.csrf_token`)."""
CSRF_FIELD = "csrf_token"
LOG = logging.getLogger("console")
MEMBER_PREFIX = "sk-tp-"
PAGE_SIZE = 50
FILTERS = ("from", "to", "seat_id", "model")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters.update(
    credits=formatting.credits,
    count=formatting.count,
    percent=formatting.percent,
    when=formatting.when,
    reason=formatting.reason,
)


class SignedOut(Exception):
    """The credential is missing or an API refused it (401): sign in again."""


class NotFound(Exception):
    """An API answered 404: unknown, or another team's (the APIs do not say which)."""


class Unavailable(Exception):
    """An API did not answer, or answered something the console cannot show."""


@dataclass(frozen=True)
class Upstream:
    """The ledger and quota, reached with one person's credential."""

    client: httpx.AsyncClient
    settings: ConsoleSettings
    credential: str

    async def get(self, service: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        base = self.settings.ledger_url if service == "ledger" else self.settings.quota_url
        request = self.client.build_request(
            "GET",
            base.rstrip("/") + path,
            params=dict(params or {}),
            headers={"Authorization": f"Bearer {self.credential}"},
        )
        answer = await call(self.client, service, request)
        if answer.status_code == 401:
            raise SignedOut
        if answer.status_code == 404:
            raise NotFound
        if answer.status_code == 422:
            raise BadFilter(_problem_text(answer))
        if answer.status_code != 200:
            raise Unavailable(f"{service} answered {answer.status_code}")
        return answer.json()


async def call(
    client: httpx.AsyncClient, service: str, request: httpx.Request, stream: bool = False
) -> httpx.Response:
    """Send `request` to `service`, counted and timed by outcome (until the answer's headers);
    no answer raises `Unavailable`."""
    started = time.perf_counter()
    status: int | None = None
    try:
        answer = await client.send(request, stream=stream)
        status = answer.status_code
        return answer
    except httpx.HTTPError as error:
        raise Unavailable(f"{service} did not answer: {type(error).__name__}") from None
    finally:
        UPSTREAM_TIME(service).observe(time.perf_counter() - started)
        UPSTREAM_CALL(service, outcome(status)).inc()


class BadFilter(Exception):
    """The ledger refused the filter (422): shown next to the form."""


def _problem_text(answer: httpx.Response) -> str:
    with contextlib.suppress(ValueError):
        body = answer.json()
        errors = body.get("errors") or []
        if errors:
            return "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
        return str(body.get("detail") or body.get("title"))
    return answer.text[:200]


def filters_of(request: Request) -> dict[str, str]:
    """The usage filters of the query string that are set (`from`, `to`, `seat_id`, `model`)."""
    return {k: v.strip() for k in FILTERS if (v := request.query_params.get(k, "")).strip()}


async def usage_view(
    upstream: Upstream, path: str, request: Request, filters: dict[str, str]
) -> dict[str, Any]:
    """One page of usage rows (newest first), the cursors around it and the filter's totals
    (the ledger's sums over every row of the filter, `<path>/totals`)."""
    cursor = request.query_params.get("cursor", "")
    params = {**filters, "limit": str(PAGE_SIZE)}
    if cursor:
        params["cursor"] = cursor
    page = await upstream.get("ledger", path, params)
    totals = await upstream.get("ledger", f"{path}/totals", filters)
    return {
        "rows": page["rows"],
        "next_cursor": page["next_cursor"],
        "cursor": cursor,
        "totals": {
            "requests": totals["requests"],
            "credits": Decimal(totals["credits"]),
            "shortfall": Decimal(totals["shortfall"]),
            "tokens": totals["input_tokens"] + totals["cached_tokens"] + totals["output_tokens"],
        },
        "filters": filters,
        "query": urlencode(filters),
        "next_query": urlencode({**filters, "cursor": page["next_cursor"] or ""}),
    }


def sessions_of(settings: ConsoleSettings) -> Sessions:
    """The sessions of `CONSOLE_SESSION_SECRET`, or of a random secret of this process."""
    configured = settings.tokens("console_session_secret")
    if configured:
        secret = configured[0].encode()
    else:
        LOG.warning(
            "CONSOLE_SESSION_SECRET is not set: sessions use a random secret of this process, "
            "so they end when it stops and other replicas cannot read them"
        )
        secret = secrets.token_bytes(32)
    return Sessions(secret, settings.console_session_hours * 3600)


def build_app(
    settings: ConsoleSettings, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    sessions = sessions_of(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = settings.console_upstream_timeout_seconds
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            app.state.client = client
            yield

    app = FastAPI(
        title="metering console",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=NO_OPENTELEMETRY,
    )
    app.add_middleware(BodyLimit, limits=settings.body_limits())
    app.add_middleware(RequestMetrics, component="console")
    metrics_access = MetricsAccess.of(settings)

    def credential_of(request: Request) -> str:
        """The signed-in credential of the request's session cookie (`""`: none valid)."""
        return sessions.open(request.cookies.get(COOKIE))

    def upstream(request: Request) -> Upstream:
        credential = credential_of(request)
        if not credential:
            raise SignedOut
        return Upstream(request.app.state.client, settings, credential)

    def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
        """A cookie for this site's pages only: HttpOnly, SameSite=Strict, path `/`, and
        Secure behind HTTPS (`CONSOLE_SECURE_COOKIE`, or a request that came over HTTPS)."""
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="strict",
            path="/",
            secure=settings.console_secure_cookie or request.url.scheme == "https",
        )

    def csrf_nonce(request: Request) -> str | None:
        nonce = request.cookies.get(CSRF_COOKIE, "")
        return nonce if 0 < len(nonce) <= 100 else None

    def render(
        request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        """The page, with the CSRF token of its forms: made from the browser's CSRF cookie,
        or from a new one, then sent as that cookie."""
        now = datetime.now(UTC).replace(microsecond=0)
        credential = credential_of(request)
        context.setdefault("refresh", None)
        nonce = csrf_nonce(request)
        fresh = None if nonce else sessions.new_nonce()
        answer = TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "now": now,
                "countdown": lambda t: formatting.countdown(t, now),
                "signed_in": bool(credential),
                "member": credential.startswith(MEMBER_PREFIX),
                "csrf_field": CSRF_FIELD,
                "csrf_token": sessions.csrf_token(nonce or fresh or ""),
                **context,
            },
            status_code=status_code,
        )
        if fresh:
            set_cookie(request, answer, CSRF_COOKIE, fresh)
        return answer

    async def form_of(request: Request) -> dict[str, str]:
        """The posted form's fields."""
        return {k: v[0].strip() for k, v in parse_qs((await request.body()).decode()).items()}

    def csrf_valid(request: Request, form: dict[str, str]) -> bool:
        """Whether the form's CSRF token is the one made for the browser's CSRF cookie (not
        a form of another site, nor one without a token)."""
        return sessions.csrf_valid(csrf_nonce(request), form.get(CSRF_FIELD))

    def forbidden(request: Request) -> HTMLResponse:
        return render(
            request,
            "signin.html",
            status_code=403,
            message="This form has expired or was not sent from this console: try again.",
        )

    @app.exception_handler(SignedOut)
    async def _signed_out(request: Request, _error: Exception) -> Response:
        answer = render(
            request,
            "signin.html",
            status_code=401,
            message="Please sign in: the credential is missing, revoked or expired.",
        )
        answer.delete_cookie(COOKIE, path="/")
        return answer

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, _error: Exception) -> Response:
        return render(request, "not_found.html", status_code=404)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, error: Exception) -> Response:
        return render(request, "unavailable.html", status_code=502, detail=str(error))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "console"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics, private as every service's (METRICS_TOKEN, METRICS_PORT or
        loopback only)."""
        return metrics_page(metrics_access, request)

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        if credential_of(request).startswith(MEMBER_PREFIX):
            return RedirectResponse("/me", status_code=303)
        return render(request, "signin.html", message=None)

    @app.post("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> Response:
        form = await form_of(request)
        credential = form.get("credential", "")
        subscription_id = form.get("subscription_id", "")
        kind = "member" if credential.startswith(MEMBER_PREFIX) else "team"
        if not csrf_valid(request, form):
            SIGNIN(kind, "forbidden").inc()
            return forbidden(request)
        if not credential or (kind == "team" and not subscription_id):
            SIGNIN(kind, "incomplete").inc()
            message = (
                "A team token reads one subscription: give its id."
                if credential
                else "Give a team token or a member's API key."
            )
            return render(request, "signin.html", status_code=422, message=message)
        probe = Upstream(request.app.state.client, settings, credential)
        try:
            if kind == "member":
                await probe.get("quota", "/v1/me")
                target = "/me"
            else:
                path = f"/v1/subscriptions/{quote(subscription_id, safe='')}/overview"
                await probe.get("quota", path)
                target = f"/subscriptions/{quote(subscription_id, safe='')}"
        except SignedOut:
            SIGNIN(kind, "refused").inc()
            return render(
                request, "signin.html", status_code=401, message="That credential was refused."
            )
        except NotFound:
            SIGNIN(kind, "not_found").inc()
            return render(
                request, "signin.html", status_code=404, message="Subscription not found."
            )
        except BadFilter as error:  # an id the API cannot read (e.g. a control character)
            SIGNIN(kind, "incomplete").inc()
            return render(
                request, "signin.html", status_code=422, message=f"Not a valid id: {error}"
            )
        except Unavailable:
            SIGNIN(kind, "unavailable").inc()
            raise
        SIGNIN(kind, "success").inc()
        answer = RedirectResponse(target, status_code=303)
        set_cookie(request, answer, COOKIE, sessions.seal(credential))
        set_cookie(request, answer, CSRF_COOKIE, sessions.new_nonce())  # a new one per session
        return answer

    @app.post("/signout")
    async def signout(request: Request) -> Response:
        if not csrf_valid(request, await form_of(request)):
            return forbidden(request)
        answer = RedirectResponse("/", status_code=303)
        answer.delete_cookie(COOKIE, path="/")
        return answer

    @app.get("/subscriptions/{subscription_id}", response_class=HTMLResponse)
    async def overview(request: Request, subscription_id: str) -> Response:
        api = upstream(request)
        sub = quote(subscription_id, safe="")
        data = await api.get("quota", f"/v1/subscriptions/{sub}/overview")
        return render(request, "overview.html", o=data, sub=sub, refresh=2)

    @app.get("/subscriptions/{subscription_id}/usage", response_class=HTMLResponse)
    async def usage(request: Request, subscription_id: str) -> Response:
        api = upstream(request)
        sub = quote(subscription_id, safe="")
        data = await api.get("quota", f"/v1/subscriptions/{sub}/overview")
        filters = filters_of(request)
        try:
            view = await usage_view(api, f"/v1/subscriptions/{sub}/usage", request, filters)
        except BadFilter as error:
            view = {"error": str(error), "filters": filters, "rows": []}
        return render(
            request,
            "usage.html",
            o=data,
            sub=sub,
            seats=[s["seat_id"] for s in data["seats"]],
            csv_url=f"/subscriptions/{sub}/usage.csv",
            base_url=f"/subscriptions/{sub}/usage",
            **view,
        )

    @app.get("/subscriptions/{subscription_id}/usage.csv")
    async def usage_csv(request: Request, subscription_id: str) -> Response:
        sub = quote(subscription_id, safe="")
        return await csv_proxy(request, f"/v1/subscriptions/{sub}/usage", f"usage-{sub}.csv")

    @app.get("/me", response_class=HTMLResponse)
    async def me(request: Request) -> Response:
        api = upstream(request)
        seat = await api.get("quota", "/v1/me")
        filters = filters_of(request)
        filters.pop("seat_id", None)
        try:
            view = await usage_view(api, "/v1/me/usage", request, filters)
        except BadFilter as error:
            view = {"error": str(error), "filters": filters, "rows": []}
        return render(
            request,
            "member.html",
            seat=seat,
            csv_url="/me/usage.csv",
            base_url="/me",
            refresh=None,
            **view,
        )

    @app.get("/me/usage.csv")
    async def me_csv(request: Request) -> Response:
        return await csv_proxy(request, "/v1/me/usage", "my-usage.csv")

    async def csv_proxy(request: Request, path: str, filename: str) -> Response:
        """The ledger's own CSV for the filter, streamed through as it comes."""
        api = upstream(request)
        params = {**filters_of(request), "format": "csv"}
        if path == "/v1/me/usage":
            params.pop("seat_id", None)
        client: httpx.AsyncClient = request.app.state.client
        upstream_request = client.build_request(
            "GET",
            settings.ledger_url.rstrip("/") + path,
            params=params,
            headers={"Authorization": f"Bearer {api.credential}"},
        )
        answer = await call(client, "ledger", upstream_request, stream=True)
        if answer.status_code != 200:
            await answer.aclose()
            if answer.status_code == 401:
                raise SignedOut
            if answer.status_code == 404:
                raise NotFound
            raise Unavailable(f"ledger answered {answer.status_code}")

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in answer.aiter_bytes():
                    yield chunk
            finally:
                await answer.aclose()

        return StreamingResponse(
            body(),
            media_type=answer.headers.get("content-type", "text/csv"),
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return app


def serve() -> None:
    """Run the console until SIGTERM/SIGINT."""
    settings = load_console_settings()
    configure_logging(settings.log_level, "console")
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_after_graceful_stop)
    if settings.metrics_port is not None:  # an internal port of its own (a thread)
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    uvicorn.run(build_app(settings), **server_options(settings))
