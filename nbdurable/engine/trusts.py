"""``trust``: sign a log's stored values with this user's secret, after a person reviewed it.

A value whose signature does not check is never loaded (:mod:`nbdurable.store.signing`): a log
written with another secret (a colleague's, a CI run's), or by nbdurable 0.1 which signed
nothing, replays nothing. Like ``jupyter trust`` for notebooks, ``nbdurable trust LOG`` says "I
have looked at this log and accept what it holds": each stored value of the log (or of one run)
whose signature does not check gets a ``value_trusted`` event with the HMAC of its bytes under
this user's secret; loading then accepts either. The log stays append-only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nbdurable import settings
from nbdurable.engine import values
from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.errors import LogCorruptError
from nbdurable.store import queries, records, schema, signing
from nbdurable.store.runs import require_run

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.store.logdb import LogDB

_KINDS = (schema.Kind.ATTEMPT_FINISHED, schema.Kind.CALL_COMPLETED, schema.Kind.ONCE_FINISHED)


@dataclass
class TrustResult:
    """What :func:`trust` did: values newly signed, already valid, and unreadable (missing or
    damaged blob files, which nothing can vouch for)."""

    log: str
    runs: list[str]
    signed: int
    valid: int
    unreadable: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        return (f"trusted {self.signed} value(s) of {len(self.runs)} run(s) in {self.log}; "
                f"{self.valid} were signed already"
                + (f"; {self.unreadable} could not be read (their steps execute again)"
                   if self.unreadable else ""))


def trust(log: LogArg, *, run: str | None = None) -> TrustResult:
    """Sign every stored value of ``log`` (or of ``run``) with this user's secret."""
    db = resolve_log(log)
    refs = _stored_values(db, run)
    result = TrustResult(str(db.path), sorted({r for r, _ in refs.values()}), 0, 0, 0)
    trusted = [row for run_id, ref in refs.values() if (row := _sign(db, run_id, ref, result))]
    if trusted:
        with db.transaction() as con:
            for row in trusted:
                con.execute(*row)
    result.signed = len(trusted)
    return result


def _stored_values(db: LogDB,
                   run: str | None) -> dict[tuple[str, str | None], tuple[str, records.StoredRef]]:
    """(hash, mac) -> (run, ref) of every stored value of the log, or of ``run``."""
    with db.lease() as con:
        if run is not None:
            run = settings.check_run_id(run)
            require_run(con, db, run)
        rows = queries.value_rows(con, _KINDS, run)
    refs: dict[tuple[str, str | None], tuple[str, records.StoredRef]] = {}
    for run_id, body, data in rows:
        for ref in records.stored_refs(json.loads(body), data):
            refs.setdefault((ref.hash, ref.mac), (run_id, ref))
    return refs


def _sign(db: LogDB, run_id: str, ref: records.StoredRef,
          result: TrustResult) -> records.Statement | None:
    """The ``value_trusted`` row for ``ref`` if it needs one; counts what it finds."""
    try:
        mac = signing.sign([values.raw_bytes(db.blobs, ref)])
    except (LogCorruptError, OSError):
        result.unreadable += 1
        return None
    if mac == ref.mac or mac in db.trusted_macs(ref.hash):
        result.valid += 1
        return None
    return records.value_trusted(run_id, ref.hash, mac)
