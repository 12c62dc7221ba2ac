"""``gc``: remove what nothing needs any more beside a log.

- blob files that no event refers to, in the log or in any journal, and older than an hour (a
  blob is written just before the journal line that refers to it: a young one may be in use);
- temporary files left by processes that died while writing (``.tmp-<pid>-…``);
- quarantined journal lines and spooled pushes older than 30 days.

The log itself is never touched (it is append-only). ``dry_run`` lists without removing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.processes import ProcessId
from nbdurable.store import journal, queries, records, schema, spool
from nbdurable.store.blobs import TMP_PREFIX
from nbdurable.store.sidecars import Sidecars

BLOB_MIN_AGE = 3600.0
QUARANTINE_MAX_AGE = 30 * 86400.0
_TMP_PID = re.compile(r"\.tmp-(\d+)")


@dataclass
class GcResult:
    """What :func:`gc` removed (or would remove, with ``dry_run``)."""

    log: str
    dry_run: bool
    blobs: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    quarantine: list[str] = field(default_factory=list)
    freed: int = 0  # bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {len(self.blobs)} unreferenced blob(s), {len(self.temporary)} temporary "
                f"file(s) of dead processes and {len(self.quarantine)} old quarantine file(s): "
                f"{self.freed / 1e6:.1f} MB")


def gc(*, log: LogArg = None, dry_run: bool = False) -> GcResult:
    """Remove unreferenced blobs, dead processes' temporary files and old quarantine files."""
    db = resolve_log(log)
    with db.lease() as con:  # journals are read after the log: a reference can only be newer
        rows = queries.value_rows(con, (schema.Kind.ATTEMPT_FINISHED, schema.Kind.CALL_COMPLETED,
                                        schema.Kind.ONCE_FINISHED))
    used = {ref.hash for row in rows for ref in _refs(row.body, row.data)}
    used |= {ref.hash for row in _journal_rows(db.path) for ref in _refs(row[5], row[6])}
    result = GcResult(str(db.path), dry_run)
    now = time.time()
    for path in _files(Sidecars.of(db.path).blobs):
        if path.name.startswith(TMP_PREFIX):
            continue
        if path.name not in used and now - path.stat().st_mtime > BLOB_MIN_AGE:
            _remove(path, result.blobs, result)
    for path in _temporary(db.path):
        _remove(path, result.temporary, result)
    for path in _quarantined(db.path):
        if now - path.stat().st_mtime > QUARANTINE_MAX_AGE:
            _remove(path, result.quarantine, result)
    return result


def _refs(body: str, data: bytes | None) -> list[Any]:
    try:
        return records.stored_refs(json.loads(body), data)
    except (ValueError, TypeError, AttributeError):
        return []


def _journal_rows(log_path: Path) -> list[Any]:
    directory = Sidecars.of(log_path).journal
    return [row for path in directory.glob("*.jsonl") for row in journal.read(path).rows] \
        if directory.is_dir() else []


def _files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file()) if root.is_dir() else iter(())


def _quarantined(log_path: Path) -> Iterator[Path]:
    for folder in (Sidecars.of(log_path).journal, spool.folder(log_path)):
        yield from _files(folder / "quarantine")


def _temporary(log_path: Path) -> Iterator[Path]:
    """Files named ``….tmp-<pid>…`` beside the log whose process is gone."""
    places = [*_files(Sidecars.of(log_path).blobs), *_files(Sidecars.of(log_path).index),
              *spool.folder(log_path).glob(".tmp-*"),
              *log_path.parent.glob(f"{log_path.name}.tmp-*")]
    for path in places:
        found = _TMP_PID.search(path.name)
        if found and not ProcessId(int(found.group(1))).alive():
            yield path


def _remove(path: Path, listed: list[str], result: GcResult) -> None:
    try:
        size = path.stat().st_size
        if not result.dry_run:
            path.unlink()
    except OSError:
        return
    listed.append(str(path))
    result.freed += size
