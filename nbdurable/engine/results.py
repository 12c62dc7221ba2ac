"""What a child run returns to its parent: ``nbdurable.set_result`` and its reading back.

A child notebook (``spawn_notebook``) runs as its own run in the parent's log; the latest
``run_result`` event of that run is what the parent's handle ``.result()`` returns.
"""

from __future__ import annotations

from typing import Any

from nbdurable.engine import context, serializer, values
from nbdurable.engine.context import LogArg
from nbdurable.errors import UsageError
from nbdurable.store import children as store, records


def set_result(value: Any, *, run: str | None = None, log: LogArg = None) -> None:
    """In a child notebook (``spawn_notebook``): record ``value`` as what its parent's handle
    ``.result()`` returns. The latest call wins; a value that cannot be stored is a
    :class:`UsageError`."""
    db, run = context.locate(run, log)
    try:
        packed = serializer.pack(value, main_globals=context.main_namespace())
    except serializer.Unstorable as exc:
        raise UsageError(f"set_result() got a value nbdurable cannot store ({exc.reason}); "
                         "return something picklable (numbers, text, lists, dicts, arrays, "
                         "DataFrames)") from None
    ref = values.store_packed(db.blobs, packed)
    db.execute(*records.combine_rows([store.run_result(run, ref)]), announce=False)


def run_result(run: str, *, log: LogArg = None) -> Any:
    """What run ``run`` set with :func:`set_result` (None if it set nothing)."""
    db = context.resolve_log(log)
    found, ref = store.result_of(db, run)
    if not found or ref is None:
        return None
    return values.load_value(db, ref, context.main_namespace())
