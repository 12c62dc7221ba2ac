"""``nbdurable serve``: the HTTP API on a host without Jupyter (a batch host running
``nbdurable run``), on tornado, guarded by a bearer token.

The token comes from ``NBDURABLE_TOKEN``, else is generated and printed once. Requests carry it
as ``Authorization: Bearer TOKEN`` (or ``token TOKEN``, or ``?token=TOKEN``), compared in
constant time. The server listens on 127.0.0.1 unless told otherwise, and says so.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from nbdurable.engine import context
from nbdurable.errors import ForbiddenError, NotAuthenticatedError, UsageError
from nbdurable.http import api
from nbdurable.http.handlers import SETTINGS_KEY, Endpoint, routes

__all__ = ("make_app", "serve")

DEFAULT_PORT = 8765
TOKEN_KEY = "nbdurable_token"


class _TokenGuarded(Endpoint):
    """``nbdurable serve``'s credentials: its bearer token."""

    async def authorize(self) -> None:
        given = _token_of(self.request.headers.get("Authorization"),
                          self.get_query_argument("token", None))
        if given is None:
            raise NotAuthenticatedError("no credentials: send the header 'Authorization: Bearer "
                                        "TOKEN' (the token nbdurable serve printed, or "
                                        "NBDURABLE_TOKEN)")
        if not hmac.compare_digest(given.encode(), self.settings[TOKEN_KEY].encode()):
            raise ForbiddenError("the token is wrong: use the one nbdurable serve printed, or "
                                 "NBDURABLE_TOKEN")


class _NotFound(Endpoint):
    async def prepare(self) -> None:
        self.set_status(404)
        self.answer({"error": f"no such endpoint: {self.request.path}; the API is under "
                              "/nbdurable/api/runs"})


def _token_of(header: str | None, query: str | None) -> str | None:
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
    return query or None


def make_app(server: api.ServerSettings, token: str) -> Application:
    """The tornado application of ``nbdurable serve`` (tests run it in-process too)."""
    app = Application(routes("/", _TokenGuarded), default_handler_class=_NotFound)
    app.settings.update({SETTINGS_KEY: server, TOKEN_KEY: token})
    return app


def serve(log: str | os.PathLike[str] | None = None, *, host: str = "127.0.0.1",
          port: int = DEFAULT_PORT, webhook_secret_file: str | os.PathLike[str] | None = None,
          max_body: int = api.MAX_BODY, root: str | os.PathLike[str] | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the HTTP API until interrupted: ``log`` is the default log (``?log=`` picks
    another under ``root``, the working directory by default); ``webhook_secret_file`` enables
    signed webhooks. Prints where it listens and, when generated, the token (once)."""
    if max_body < 0:
        raise UsageError(f"--max-body must be 0 or more bytes, got {max_body}")
    settings = api.ServerSettings(
        root=Path(root or os.getcwd()).resolve(),
        log=context.existing_log(log) if log else None,  # a typo fails now, not per request
        max_body=max_body,
        secret=api.read_secret(webhook_secret_file) if webhook_secret_file else None)
    token = os.environ.get("NBDURABLE_TOKEN") or secrets.token_urlsafe(32)
    try:
        sockets = bind_sockets(port, host)
    except (OSError, socket.gaierror) as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; give "
                         "another --port or --host") from None
    url = f"http://{_url_host(host)}:{sockets[0].getsockname()[1]}/nbdurable/api/"
    _announce(url, host, None if os.environ.get("NBDURABLE_TOKEN") else token)
    if on_ready is not None:
        on_ready(url)
    asyncio.run(_run(make_app(settings, token), sockets, max_body))


async def _run(app: Application, sockets: list[socket.socket], max_body: int) -> None:
    server = HTTPServer(app, max_body_size=max(max_body * 2, 16 << 20))
    server.add_sockets(sockets)
    await asyncio.Event().wait()  # until Ctrl-C / SIGTERM


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _announce(url: str, host: str, token: str | None) -> None:
    where = ("loopback only: --host 0.0.0.0 to take requests from other machines"
             if host in ("127.0.0.1", "localhost", "::1") else
             f"on {host}: other machines can reach it; put it behind TLS")
    print(f"nbdurable serve: {url} ({where})", flush=True)
    if token is not None:
        print(f"nbdurable serve: token (shown once; set NBDURABLE_TOKEN to choose it): {token}",
              flush=True)
    else:
        print("nbdurable serve: token from NBDURABLE_TOKEN", flush=True)
    sys.stdout.flush()
