"""``reset``: void a run's checkpoints so that its steps run again.

Nothing is deleted (the log is append-only): a ``step_reset`` event per step says that its
attempts so far no longer count. The next time the step is reached it executes as with
``--force`` (its ``@step`` calls and waits start anew); later attempts count as usual.
``once`` keys stay recorded, so side effects guarded by ``once`` do not happen again, unless
``include_once`` forgets those of the reset steps too.
"""

from __future__ import annotations

from nbdurable import settings
from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.errors import RunBusyError, UsageError
from nbdurable.store import claims, queries, records, schema
from nbdurable.store.runs import require_run


def reset(run: str, *, from_step: str | None = None, include_once: bool = False,
          log: LogArg = None) -> list[str]:
    """Reset ``run``'s steps (all, or ``from_step`` and every step first run after it);
    return the names of the steps reset. ``include_once`` also forgets their ``once`` keys."""
    db = resolve_log(log)
    run = settings.check_run_id(run)
    who = claims.holder(db.path, run)
    if who:
        raise RunBusyError(f"run {run!r} is executing now ({who.describe()}); reset it once "
                           "that invocation has ended", run=run, holder=who.process)
    with db.transaction() as con:
        require_run(con, db, run)
        events = queries.with_journals(con, db, run)  # with attempts still in journals
        order = queries.step_order(con, events, run)
        steps = [step for step, _ in order]
        if from_step is not None and from_step not in steps:
            raise UsageError(f"step {from_step!r} is not in run {run!r} (its steps: "
                             f"{', '.join(steps) or 'none'}); give one of them to --from")
        chosen = order[steps.index(from_step):] if from_step is not None else order
        rows = [records.step_reset(run, step, last) for step, last in chosen]
        if include_once:
            rows += [list(records.once_event(schema.Kind.ONCE_RESET, run, key)[1])
                     for key in queries.once_keys(con, run, {step for step, _ in chosen})]
        if rows:
            con.execute(*records.combine_rows(rows))
    return [step for step, _ in chosen]

