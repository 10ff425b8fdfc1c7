"""No request waits on FastAPI's thread pool: a plain `def` endpoint or dependency is run
there, a hand-off to another thread on every request (ingest's `intake_of` cost 2-3 % of
its CPU under load, more for single reports; issue 17). Every endpoint and dependency of
the three services is a coroutine (or an async generator)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

import ingest.app
import ledger.app
import quota.app
from metering.settings import load_settings


def _route_dependants(app: FastAPI) -> Iterator[tuple[str, Any]]:
    """(path, dependant) of every API route, through included routers."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        context: Any
        for context in contexts() if contexts is not None else [route]:
            dependant = getattr(context, "dependant", None)
            if dependant is not None:
                yield context.path, dependant


def _run_in_thread_pool(dependant: Any) -> Iterator[str]:
    for sub in dependant.dependencies:
        yield from _run_in_thread_pool(sub)
    call = dependant.call
    if call is not None and not _awaited(call):
        yield getattr(call, "__qualname__", repr(call))


def _awaited(call: Any) -> bool:
    """Whether FastAPI awaits `call` on the loop (as it decides: a coroutine or async
    generator function, or an instance whose `__call__` is one; a class is instantiated in
    the thread pool)."""
    if inspect.isclass(call):
        return False
    function = call if inspect.isroutine(call) else getattr(call, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


@pytest.mark.parametrize("service", [ingest.app, ledger.app, quota.app], ids=lambda m: m.__name__)
def test_every_endpoint_and_dependency_is_async(service: Any) -> None:
    settings = load_settings(api_key_hash_secret="s" * 32, metering_admin_token="t" * 32)
    app = service.build_app(settings)
    routes = list(_route_dependants(app))
    assert len(routes) > 5, "the walk must reach the routes of included routers"
    sync = [(path, name) for path, dependant in routes for name in _run_in_thread_pool(dependant)]
    assert sync == []
