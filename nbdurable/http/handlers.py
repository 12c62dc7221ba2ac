"""The nbdurable HTTP API as tornado handlers, for any server that brings its authentication.

Each endpoint parses the request, makes one call to :mod:`nbdurable.http.api` in a worker
thread (a push may wait for the log's lease; the server's event loop never does) and answers
JSON: the result, or ``{"error": "…"}`` with the status of the refusal. A server supplies a base
class whose ``authorize()`` checks its own credentials (``nbdurable serve``: a bearer token;
Jupyter: the server's identity provider and authorizer); a ``POST`` of an event whose body is
signed with the webhook secret needs no other credentials, and one signed wrongly is refused.

=======================================  ======================================================
``POST {base}nbdurable/api/runs/R/events/K``  push the body (JSON, empty: null) as event K of run
                                         R; ``Idempotency-Key`` header: the event's id → 201
``GET {base}nbdurable/api/runs``          the log's runs
``GET {base}nbdurable/api/runs/R``        run R: status, counts, steps, waits, children
``GET {base}nbdurable/api/runs/R/events`` run R's pending and consumed events
=======================================  ======================================================

Every endpoint takes ``?log=PATH`` (relative to the server's root directory).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from tornado.web import HTTPError, RequestHandler

from nbdurable.errors import NbdurableError
from nbdurable.http import api

__all__ = ("Endpoint", "routes")

SETTINGS_KEY = "nbdurable"  # where the ServerSettings live in the tornado application settings


class Endpoint(RequestHandler):
    """What every nbdurable endpoint does; a server's base class adds ``authorize``."""

    @property
    def server(self) -> api.ServerSettings:
        settings: api.ServerSettings = self.settings[SETTINGS_KEY]
        return settings

    async def authorize(self) -> None:
        """Raise a :class:`~nbdurable.errors.RequestError` unless the request's credentials
        allow it (the server's base class says how)."""
        raise NotImplementedError

    async def handle(self, call: Callable[..., Any], *args: Any, signable: bool = False,
                     status: int = 200, **kwargs: Any) -> None:
        """Authenticate, run ``call(server settings, *args, log=?log=, **kwargs)`` in a thread,
        answer its result as JSON with ``status``, or the refusal."""
        try:
            if not (signable and api.check_signature(self.server, self.request.body,
                                                     self.request.headers)):
                await self.authorize()
            task = functools.partial(call, self.server, *args,
                                     log=self.get_query_argument("log", None), **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(None, task)
        except NbdurableError as exc:
            self.refuse(exc)
            return
        self.set_status(status)
        self.answer(result)

    def refuse(self, error: NbdurableError) -> None:
        self.set_status(api.status_of(error))
        if self.get_status() == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="nbdurable"')
        self.answer({"error": str(error)})

    def answer(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data, allow_nan=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own refusals (a malformed request, an unexpected bug) as one JSON line."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        detail = getattr(error, "log_message", None) if isinstance(error, HTTPError) else None
        self.answer({"error": detail or self._reason or f"HTTP {status_code}"})


class _Runs(Endpoint):
    async def get(self) -> None:
        await self.handle(api.runs)


class _Run(Endpoint):
    async def get(self, run: str) -> None:
        await self.handle(api.run, run)


class _Events(Endpoint):
    async def get(self, run: str) -> None:
        await self.handle(api.events, run)


class _Push(Endpoint):
    async def post(self, run: str, key: str) -> None:
        await self.handle(api.push, run, key, self.request.body, signable=True, status=201,
                          idempotency_key=self.request.headers.get("Idempotency-Key"))


def routes(base_url: str, base: type[Endpoint]) -> list[tuple[str, type[Endpoint]]]:
    """The URL patterns of the API under ``base_url``, each endpoint on the server's ``base``."""
    prefix = "/" + "/".join(p for p in (base_url.strip("/"), "nbdurable/api") if p)
    endpoints = (("/runs", _Runs), ("/runs/([^/]+)", _Run), ("/runs/([^/]+)/events", _Events),
                 ("/runs/([^/]+)/events/([^/]+)", _Push))
    return [(prefix + pattern + "/?", type(f"{base.__name__}{cls.__name__}", (cls, base), {}))
            for pattern, cls in endpoints]
