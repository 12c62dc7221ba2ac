"""The Jupyter server extension: nbdurable's HTTP API inside JupyterLab, Notebook 7 and
JupyterHub single-user servers, under the server's ``base_url`` and behind its authentication.

Enabled on install (``etc/jupyter/jupyter_server_config.d/nbdurable.json``); ``jupyter server
extension list`` shows it. Requests authenticate as any Jupyter API request does (the token in
``Authorization: token …`` / ``Bearer …`` or ``?token=``; a browser's cookie with XSRF), and
are authorized on the resource ``nbdurable``; a ``POST`` of an event may instead carry a body
signed with the webhook secret. Settings (``jupyter_server_config.py``)::

    c.NbdurableServer.log = "path/to/log.duckdb"      # default: NBDURABLE_LOG, else
                                                      # .nbdurable/log.duckdb under root_dir
    c.NbdurableServer.webhook_secret_file = "/etc/nbdurable/webhook-secret"
    c.NbdurableServer.max_body = 1048576
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from traitlets import Integer, Unicode
from traitlets.config import Configurable

from nbdurable.errors import ForbiddenError, NbdurableError
from nbdurable.http import api
from nbdurable.http.handlers import SETTINGS_KEY, Endpoint, routes


class NbdurableServer(Configurable):
    """Settings of nbdurable's endpoints in a Jupyter server."""

    log = Unicode("", config=True, help="The default log (default: NBDURABLE_LOG, else "
                  ".nbdurable/log.duckdb under the server's root_dir); ?log=PATH picks "
                  "another under root_dir.")
    webhook_secret_file = Unicode("", config=True, help="A file holding the secret that "
                                  "signs webhook bodies (X-Hub-Signature-256: sha256=HEX).")
    max_body = Integer(api.MAX_BODY, config=True, help="The largest event body accepted.")


class _JupyterGuarded(Endpoint, APIHandler):
    """Jupyter's credentials: its identity provider, then its authorizer."""

    auth_resource = "nbdurable"

    def check_xsrf_cookie(self) -> None:
        if self.request.method == "POST" and any(
                self.request.headers.get(h) for h in api.SIGNATURE_HEADERS):
            return  # a signed webhook: the signature is checked before anything is done
        super().check_xsrf_cookie()

    async def authorize(self) -> None:
        user = self.current_user
        if not user:
            raise ForbiddenError("not authenticated: send the Jupyter server's token "
                                 "(Authorization: token …) or sign the body")
        action = "write" if self.request.method == "POST" else "read"
        if not await ensure_async(self.authorizer.is_authorized(self, user, action,
                                                                 self.auth_resource)):
            raise ForbiddenError(f"user {user.username!r} may not {action} nbdurable")


def _handlers(base_url: str) -> list[tuple[str, Any]]:
    """The routes, each method marked as authenticating itself (Jupyter's identity, or a
    webhook signature), which servers with ``allow_unauthenticated_access=False`` require."""
    found = routes(base_url, _JupyterGuarded)
    for _, cls in found:
        for name in ("get", "post"):
            if name in cls.__mro__[1].__dict__:
                setattr(cls, name, allow_unauthenticated(getattr(cls, name)))
    return found


def settings_for(serverapp: Any) -> api.ServerSettings:
    config = NbdurableServer(parent=serverapp)
    root = Path(serverapp.root_dir).resolve()
    log = config.log or os.environ.get("NBDURABLE_LOG") or ".nbdurable/log.duckdb"
    return api.ServerSettings(
        root=root, log=(root / Path(log).expanduser()).resolve(), max_body=config.max_body,
        secret=api.read_secret(config.webhook_secret_file) if config.webhook_secret_file
        else None)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Add the endpoints under the server's base_url; a bad setting is one logged line."""
    try:
        settings = settings_for(serverapp)
    except NbdurableError as exc:
        serverapp.log.error("nbdurable: the HTTP endpoints are off: %s", exc)
        return
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = settings
    web_app.add_handlers(".*$", _handlers(web_app.settings["base_url"]))
    serverapp.log.info("nbdurable: events over HTTP at %snbdurable/api/ (log %s)",
                       web_app.settings["base_url"], settings.log)
