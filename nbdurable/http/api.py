"""What the HTTP endpoints do, with no web framework: check a request's parts (body, signature,
``?log=`` path), make one call to the engine, return plain JSON data.

The same functions serve ``nbdurable serve`` and the Jupyter server extension
(:mod:`nbdurable.http.handlers` puts them behind tornado). Nothing from the request is trusted:
the body is size-checked and parsed as JSON here, a ``?log=`` path must name an existing
nbdurable log under the server's root directory (symlinks resolved), and a signature is an
HMAC-SHA256 of the raw body compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nbdurable.engine import context
from nbdurable.errors import (
    BodyTooLargeError,
    ConfigError,
    EventIdConflictError,
    ForbiddenError,
    LogBusyError,
    LogError,
    LogVersionError,
    NbdurableError,
    NoLogError,
    NotALogError,
    NotAuthenticatedError,
    RequestError,
    UnknownRunError,
    UsageError,
)

#: The largest event body accepted by default (``--max-body``): 1 MiB.
MAX_BODY = 1 << 20
#: The headers a webhook signature may come in: GitHub's, then nbdurable's own (same scheme).
SIGNATURE_HEADERS = ("X-Hub-Signature-256", "X-Nbdurable-Signature")


@dataclass(frozen=True)
class ServerSettings:
    """What one server answers with: ``root`` bounds ``?log=`` paths; ``log`` is the default
    log (None: ``NBDURABLE_LOG`` or ``.nbdurable/log.duckdb`` under ``root``); ``secret`` checks
    signed webhooks (None: a signed request is refused, there is nothing to check it with)."""

    root: Path
    log: Path | None = None
    max_body: int = MAX_BODY
    secret: bytes | None = None


# -- the requests ---------------------------------------------------------------------------------

def push(settings: ServerSettings, run: str, key: str, body: bytes, *,
         idempotency_key: str | None = None, log: str | None = None) -> dict[str, Any]:
    """``POST …/runs/{run}/events/{key}``: the body (JSON, empty for null) as an event."""
    from nbdurable.engine.events import push_event

    payload = parse_body(body, settings.max_body)
    event_id = push_event(key, payload, run=run, log=log_path(settings, log), id=idempotency_key)
    return {"id": event_id, "run": run, "key": key}


def runs(settings: ServerSettings, log: str | None = None) -> dict[str, Any]:
    """``GET …/runs``: one entry per run of the log, most recent activity first."""
    from nbdurable.engine.history import runs as run_table

    return {"runs": _records(run_table(log=log_path(settings, log)))}


def run(settings: ServerSettings, run_id: str, log: str | None = None) -> dict[str, Any]:
    """``GET …/runs/{run}``: status, counts, steps, waits (what they wait for), children."""
    from nbdurable.engine.runview import snapshot

    return snapshot(run_id, log=log_path(settings, log)).to_dict()


def events(settings: ServerSettings, run_id: str, log: str | None = None) -> dict[str, Any]:
    """``GET …/runs/{run}/events``: pending and consumed events, oldest first."""
    from nbdurable.engine.events import list_events

    rows = _records(list_events(run_id, log=log_path(settings, log)))
    for row in rows:
        row["payload"] = json.loads(row["payload"])
    return {"run": run_id, "events": rows}


# -- checking what comes in -----------------------------------------------------------------------

def parse_body(body: bytes, limit: int = MAX_BODY) -> Any:
    """The event payload in a request body: JSON; an empty body is null."""
    if len(body) > limit:
        raise BodyTooLargeError(f"the body is {len(body):,} bytes, over this server's limit of "
                                f"{limit:,}; send a smaller payload (or raise --max-body)")
    if not body.strip():
        return None
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the body is not valid JSON ({str(exc)[:120]}); send JSON, or "
                         "nothing for null") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def log_path(settings: ServerSettings, given: str | None) -> Path:
    """The log a request names (``?log=``, relative to the server's root) or the default one;
    it must exist and be a DuckDB file. Nothing outside the root is touched, not even read."""
    if given is None:
        return context.existing_log(settings.log, where="the server's --log")
    if not given or "\x00" in given or Path(given).is_absolute():
        raise ForbiddenError(f"?log={given[:80]!r} must be a path relative to the server's "
                             "root directory")
    root = settings.root.resolve()
    path = (root / given).resolve()
    if not path.is_relative_to(root):
        raise ForbiddenError(f"?log={given[:80]!r} is outside the server's root directory; "
                             "give a log under it")
    try:
        return context.existing_log(path, where="?log=")
    except NoLogError:
        raise NoLogError(f"there is no log at ?log={given[:80]!r} under the server's root "
                         "directory") from None


def check_signature(settings: ServerSettings, body: bytes,
                    headers: Mapping[str, str]) -> bool:
    """Whether the request is signed: False when it carries no signature header, True when its
    signature matches; a signature that does not match (or cannot be checked) raises."""
    header = next((h for h in SIGNATURE_HEADERS if headers.get(h) is not None), None)
    if header is None:
        return False
    if settings.secret is None:
        raise NotAuthenticatedError(f"the request is signed ({header}) but this server has no "
                                    "webhook secret to check it: start it with "
                                    "--webhook-secret-file")
    scheme, _, given = headers[header].strip().partition("=")
    expected = hmac.new(settings.secret, body, hashlib.sha256).hexdigest()
    if scheme != "sha256" or not hmac.compare_digest(expected.encode(), given.lower().encode()):
        raise NotAuthenticatedError(f"the body's signature in {header} does not match: it must "
                                    "be sha256=HEX, the HMAC-SHA256 of the raw body with the "
                                    "webhook secret")
    return True


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """A webhook secret from a file (its text, surrounding whitespace removed)."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the webhook secret file {path}: "
                          f"{exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"the webhook secret file {path} is empty; put the secret in it")
    return secret


# -- answers --------------------------------------------------------------------------------------

def status_of(error: NbdurableError) -> int:
    """The HTTP status a refused request is answered with (the first kind that matches)."""
    if isinstance(error, RequestError):
        return error.status
    return next((status for kind, status in _STATUSES if isinstance(error, kind)), 400)


_STATUSES: tuple[tuple[type[NbdurableError], int], ...] = (
    (EventIdConflictError, 409),
    (UnknownRunError, 404),
    (NoLogError, 404),
    (NotALogError, 400),  # ?log= names a file that is not an nbdurable log
    (LogVersionError, 400),
    (LogBusyError, 503),
    (LogError, 500),  # the server cannot use its log: not the caller's fault
)


def plain(value: Any) -> Any:
    """JSON data: datetimes (and pandas timestamps) as ISO text, NaN/infinity as null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: Any) -> list[dict[str, Any]]:
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [plain(row) for row in rows]
