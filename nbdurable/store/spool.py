"""The push spool: events pushed without taking the log's lease.

Pushing into DuckDB means taking the lease (the one process that may open the file): about
10 ms of ATTACH, INSERT, COMMIT and DETACH, during which a waiting kernel cannot read its
mailbox. With many busy pushers the waiting kernel starved. So a push to a run the log is known
to hold is one small file in ``<log>.spool/``:

1. written completely and synced under a temporary name (``.tmp-<pid>-…``), then renamed, so
   a reader never sees half of one; the folder is synced too, so the push survives a power cut;
2. then announced by bumping the log's write generation (after the rename, so a waiter that
   missed the file sees the generation move and looks again).

The next process that takes the lease, for any reason, moves the spooled events into the log in
the order they were pushed (:func:`drain`, called by the store before any transaction) and
deletes their files. The insert skips an id already in the log, so a crash between the commit
and the deletion never doubles an event. A file that does not decode or is not a push is set
aside in the journal's quarantine folder with a warning, never copied into the log.

Which runs a push may spool to: ``<log>.spool/runs/<hash>`` is written once a push under the
lease has found the run in the log (runs are never deleted); it names the log file's inode, so
a log deleted and created anew at the same path knows no run. The first push to a run, a push
with an explicit ``id`` (whose reuse with another payload must be refused at once) and a push to
an unknown run take the lease as before.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from nbdurable.store import files, journal, schema
from nbdurable.store.journal import Row
from nbdurable.store.sidecars import Sidecars

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection as Connection

SUFFIX = ".push"
# one statement for a whole drain; an id already there (a crash between a drain's commit and
# its deletions) is skipped: the same push has the same timestamp, so only rows that recent
# are looked at (DuckDB skips older row groups by their min/max timestamps)
_INSERT = """
INSERT INTO events
SELECT run, NULL, NULL, ?, ts, body, NULL FROM (
    SELECT unnest(?::VARCHAR[]) AS run, unnest(?::TIMESTAMP[]) AS ts,
           unnest(?::VARCHAR[]) AS body, unnest(?::VARCHAR[]) AS id, unnest(?::BIGINT[]) AS pos
) AS pushed
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.kind = ? AND e.ts >= ? AND e.ts = pushed.ts
                  AND e.body ->> 'id' = pushed.id)
ORDER BY pos
"""
_last_stamp = 0


def folder(log_path: Path) -> Path:
    return Sidecars.of(log_path).spool


def _marker(log_path: Path, run: str) -> Path:
    return folder(log_path) / "runs" / xxhash.xxh3_128_hexdigest(run.encode())


def known(log_path: Path, run: str) -> bool:
    """Whether a push to ``run`` may be spooled: a push under the lease found the run in this
    log file (the marker names the file's inode: a log deleted and created anew knows no run)."""
    try:
        marked = _marker(log_path, run).read_bytes()
        return marked == _identity(log_path, run)
    except OSError:
        return False


def mark_known(log_path: Path, run: str) -> None:
    """Remember that the log holds ``run`` (best effort: without it, pushes take the lease)."""
    with suppress(OSError):
        if not known(log_path, run):
            marker = _marker(log_path, run)
            files.private_dir(marker.parent)
            files.write_private(marker, _identity(log_path, run))


def _identity(log_path: Path, run: str) -> bytes:
    return f"{os.stat(log_path).st_ino} {run}".encode()


def write(log_path: Path, row: Row) -> Path:
    """Spool one ``event_pushed`` row; return its file. Raises ``OSError`` (disk full…)."""
    where = files.private_dir(folder(log_path))
    name = f"{_stamp():020d}-{uuid.uuid4().hex}"
    tmp = where / f".tmp-{os.getpid()}-{name}"
    try:
        files.write_private(tmp, journal.encode(row))
        target = where / f"{name}{SUFFIX}"
        os.rename(tmp, target)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    files.sync(where)
    return target


def _stamp() -> int:
    """Nanoseconds since the epoch, increasing within this process (orders a pusher's events)."""
    global _last_stamp
    _last_stamp = max(time.time_ns(), _last_stamp + 1)
    return _last_stamp


def pending(log_path: Path) -> list[Path]:
    """The spooled pushes, oldest first (cheap when there are none: one ``scandir``)."""
    try:
        with os.scandir(folder(log_path)) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder(log_path) / name for name in names]


def drain(con: Connection, log_path: Path, paths: list[Path]) -> list[Path]:
    """Inside a transaction: insert the pushes of ``paths`` in their order, in one statement,
    skipping ids already in the log. Returns the files to delete once the transaction
    committed; damaged ones are set aside at once."""
    done: list[Path] = []
    rows: list[Row] = []
    runs_known: dict[str, bool] = {}
    for path in paths:
        try:
            rows.append(_read(log_path, path, runs_known))
        except journal.Damaged as exc:
            journal.quarantine(path, [(_raw(path), str(exc))],
                               loss="that push is lost: push the event again")
            with suppress(OSError):
                path.unlink()
            continue
        except OSError:  # drained by another process meanwhile, or not a file we can read
            continue
        done.append(path)
    if rows:
        runs, _, _, _, stamps, bodies, _ = zip(*rows, strict=True)
        ids = [json.loads(body)["id"] for body in bodies]
        con.execute(_INSERT, [schema.Kind.EVENT_PUSHED, list(runs), list(stamps), list(bodies), ids,
                              list(range(len(rows))), schema.Kind.EVENT_PUSHED, min(stamps)])
    return done


def _read(log_path: Path, path: Path, runs_known: dict[str, bool]) -> Row:
    line = path.read_bytes()
    if not line.endswith(b"\n") or line.count(b"\n") != 1:
        raise journal.Damaged("it is not one whole line")
    row = journal.decode(line[:-1])
    run, step, attempt, kind, _, body, data = row
    fields = json.loads(body)
    if (kind != schema.Kind.EVENT_PUSHED or step is not None or attempt is not None or data
            is not None or not isinstance(fields, dict) or not isinstance(fields.get("id"), str)
            or not isinstance(fields.get("key"), str)):
        raise journal.Damaged("it is not an event push")
    if run not in runs_known:  # one look per run and drain
        runs_known[run] = known(log_path, run)
    if not runs_known[run]:
        raise journal.Damaged(f"it names run {run!r}, which no push found in the log")
    return row


def _raw(path: Path) -> bytes:
    try:
        return path.read_bytes().rstrip(b"\n")
    except OSError:
        return b""


def remove(paths: list[Path]) -> None:
    """Delete drained pushes (after their transaction committed)."""
    for path in paths:
        with suppress(OSError):
            path.unlink()
