"""``fork``: try another path from a step of a finished (or stuck) run, and keep the original.

The fork is a new run id in the same log. The steps first run before ``from_step`` keep their
checkpoints (their rows are copied; no stored value is), so they replay in the fork;
``from_step`` and every step after it execute anew, their waits and ``once`` keys start fresh.
Nothing of the original run changes.
"""

from __future__ import annotations

from nbdurable import settings
from nbdurable.engine.context import LogArg, resolve_log
from nbdurable.errors import UsageError
from nbdurable.store import forks, queries, runs


def fork(run: str, new_run: str, from_step: str | None = None, *,
         log: LogArg = None) -> list[str]:
    """Start run ``new_run`` from ``run``'s checkpoints up to ``from_step`` (excluded; all of
    them when None); return the steps whose checkpoints the fork reuses. Execute the notebook
    as ``new_run`` (``%durable_run NEW_RUN``, ``nbdurable run --run-id NEW_RUN``) to go on."""
    db = resolve_log(log)
    run, new_run = settings.check_run_id(run), settings.check_run_id(new_run)
    if new_run == run:
        raise UsageError(f"a fork needs a new run id, not {run!r} itself")
    with db.transaction() as con:
        runs.require_run(con, db, run)
        if runs.run_exists(con, db, new_run):
            raise UsageError(f"run {new_run!r} is already in the log {db.path}; fork into a new "
                             "run id (`nbdurable runs` lists those taken)")
        events = queries.with_journals(con, db, run)
        steps = [step for step, _ in queries.step_order(con, events, run)]
        if from_step is not None and from_step not in steps:
            raise UsageError(f"step {from_step!r} is not in run {run!r} (its steps: "
                             f"{', '.join(steps) or 'none'}); give one of them to --from")
        kept = steps[:steps.index(from_step)] if from_step is not None else steps
        forks.create(con, events, run, new_run, from_step, kept)
    return kept
