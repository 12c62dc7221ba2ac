"""The replay engine: decide, replay or execute, and checkpoint a durable cell.

This module knows nothing about IPython. An adapter hands it a :class:`CellSpec` (the step's
name, its source, the names its syntax reads and binds) and the notebook namespace; the engine
decides whether the recorded checkpoint is valid, restores it, or records a new attempt and,
when the body has run, checkpoints what it produced.

A checkpoint is valid when the source is unchanged and every name the cell reads has the same
fingerprint as when it was recorded (see :mod:`nbdurable.engine.fingerprint`).
"""

from __future__ import annotations

import json
import time
import types
import warnings
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from nbdurable import faults, settings
from nbdurable.engine import analysis, children, context, serializer, values
from nbdurable.engine.cellids import CellIds
from nbdurable.engine.fingerprint import Tracker, fingerprint, module_fingerprint
from nbdurable.errors import CheckpointError, LogHeldWarning, UnstorableValueWarning, first_line
from nbdurable.store import records
from nbdurable.store.attempt_index import RunIndex
from nbdurable.store.journal import Journal
from nbdurable.store.logdb import LogDB, open_log
from nbdurable.store.schema import Status


@dataclass(frozen=True)
class CellSpec:
    """A durable cell as written: its step name, flags, body source and the names in it."""

    name: str
    source: str
    names: analysis.CellNames
    force: bool = False
    cell_id: str | None = None  # the front end's id of the cell, when it sends one
    replace: bool = False  # --replace: this cell takes the step over from its recorder

    @property
    def source_hash(self) -> str:
        return source_hash(self.source)


def source_hash(source: str) -> str:
    """Hash of a cell body; trailing whitespace and blank lines do not count as edits."""
    lines = [line.rstrip() for line in source.strip("\n").splitlines()]
    return xxhash.xxh3_128_hexdigest("\n".join(lines).rstrip("\n").encode())


@dataclass
class Decision:
    """What to do with a durable cell, and why."""

    spec: CellSpec
    log: LogDB
    run: str
    inputs: dict[str, str]
    checkpoint: records.Attempt | None
    reason: str | None  # why it executes; None for a first execution
    replay: bool
    force: bool = False  # --force, or the step was reset: reuse no recorded call or wait


@dataclass
class Replayed:
    """A restored checkpoint: the outputs to show again and where they came from."""

    checkpoint: records.Attempt
    outputs: list[dict[str, Any]]


@dataclass
class Execution:
    """A running attempt, from :meth:`Engine.begin` to :meth:`Engine.finish`."""

    decision: Decision
    attempt: records.Attempt
    rows: list[Any]  # event rows written at the start (journal), inserted with the outcome
    clock: float
    before: dict[str, Any]
    step_context: context.StepContext
    token: object = None


@dataclass
class Finished:
    status: str
    attempt: int
    duration_s: float | None
    produced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unstorable: dict[str, str] = field(default_factory=dict)


_MISSING = object()


class Engine:
    """Durable cells of one namespace (one kernel)."""

    def __init__(self, namespace: MutableMapping[str, Any], *,
                 ignore: Callable[[str], bool] = lambda name: name.startswith("__")):
        self.namespace = namespace
        self.ignore = ignore
        self.tracker = Tracker(namespace)
        self._runs_seen: set[tuple[str, str]] = set()
        self._indexes: dict[tuple[str, str], RunIndex] = {}
        self._journals: dict[Path, Journal] = {}
        self.cell_ids = CellIds()

    # -- deciding -------------------------------------------------------------------------------
    def where(self) -> tuple[LogDB, str]:
        """The log and run this namespace's cells belong to now."""
        return open_log(settings.log_path()), settings.run_id(self.namespace)

    def _index(self, log: LogDB, run: str) -> RunIndex:
        key = (str(log.path), run)
        index = self._indexes.get(key)
        if index is None or index.log is not log:
            index = self._indexes[key] = RunIndex(log, run)
        return index

    def _journal(self, log: LogDB) -> Journal:
        found = self._journals.get(log.path)
        if found is None:
            found = self._journals[log.path] = Journal(log)
        return found

    def decide(self, spec: CellSpec) -> Decision:
        log, run = self.where()
        inputs = self.tracker.fingerprints(self._input_names(spec))
        index = self._index(log, run)
        index.ensure()
        checkpoint, last = index.checkpoint(spec.name), index.last(spec.name)
        self.cell_ids.check(spec.name, spec.cell_id, last.cell_id if last else None,
                            replace=spec.replace,
                            notebook=lambda: settings.notebook_path(self.namespace))
        if index.reset_pending(spec.name):
            return Decision(spec, log, run, inputs, None, "reset by `nbdurable reset`",
                            replay=False, force=True)
        reason = _why_execute(spec, inputs, checkpoint, last)
        return Decision(spec, log, run, inputs, checkpoint, reason, replay=reason is None
                        and checkpoint is not None, force=spec.force)

    def _input_names(self, spec: CellSpec) -> set[str]:
        loads = [n for n in spec.names.reads if not self.ignore(n)]
        return {n for n in analysis.expand(loads, self.namespace) if not self.ignore(n)}

    # -- replaying ------------------------------------------------------------------------------
    def try_replay(self, decision: Decision) -> Replayed | None:
        """:meth:`replay`, or None when the checkpoint cannot be restored (damaged, unsigned,
        an import that fails): ``decision`` then says execute, and why. An unreadable
        checkpoint must never block the notebook."""
        try:
            return self.replay(decision)
        except Exception as exc:
            decision.replay = False
            text = f"{type(exc).__name__}: {first_line(exc)}"[:200]
            decision.reason = f"its checkpoint could not be restored: {text}"
            return None

    def replay(self, decision: Decision) -> Replayed:
        """Restore the checkpoint's variables into the namespace; return its outputs.

        Everything is loaded before anything is assigned: a checkpoint that cannot be restored
        raises and leaves the namespace as it was.
        """
        cp, log = decision.checkpoint, decision.log
        if cp is None:
            raise CheckpointError(f"step {decision.spec.name!r} has no checkpoint to replay")
        variables = cp.variables or []
        if isinstance(self.namespace, dict):
            serializer.track_classes(self.namespace)
        values = {v.name: self._load(log, v) for v in variables if v.kind != "deleted"}
        outputs = _decode_outputs(log, cp.outputs)
        for var in variables:
            if var.kind == "deleted":
                self.namespace.pop(var.name, None)
                self.tracker.forget(var.name)
            else:
                self.namespace[var.name] = values[var.name]
                self.tracker.remember(var.name, values[var.name], _recorded_fp(var))
        log.defer(*records.replayed(cp.run, cp.step, cp.attempt))
        return Replayed(cp, outputs)

    def _load(self, log: LogDB, var: records.Variable) -> Any:
        if var.kind == "module":
            import importlib

            return importlib.import_module(var.detail or "")
        if var.ref is None:
            raise CheckpointError(f"variable {var.name!r} has no stored value")
        ns = self.namespace if isinstance(self.namespace, dict) else None
        return values.load_value(log, var.ref, ns)

    # -- executing ------------------------------------------------------------------------------
    def begin(self, decision: Decision) -> Execution:
        """Record a running attempt (in the journal: no commit) and make it the active step."""
        spec, log, run = decision.spec, decision.log, decision.run
        index = self._index(log, run)
        index.ensure()
        attempt = records.Attempt(run, spec.name, index.next_number(spec.name), Status.RUNNING,
                                  spec.source_hash, decision.inputs, records.now(),
                                  forced=decision.force, cell_id=spec.cell_id)
        since = attempt.attempt if decision.force else index.since(spec.name)
        rows = [records.attempt_started(attempt, source=spec.source, forced=decision.force,
                                        reason=decision.reason)[1]]
        if (str(log.path), run) not in self._runs_seen:
            rows.insert(0, records.run_created(run, settings.notebook_path(self.namespace)))
            self._runs_seen.add((str(log.path), run))
        before = log.generation()
        journal = self._journal(log)
        notice = journal.notice()
        if notice:
            warnings.warn(notice, LogHeldWarning, stacklevel=2)
        journal.append(rows)  # survives a kill of this process
        log.announce_write()
        index.note(attempt)
        index.wrote(before, log.generation())
        ns = self.namespace if isinstance(self.namespace, dict) else None
        ctx = context.StepContext(log, run, spec.name, attempt.attempt, decision.force, ns,
                                  spec.source_hash, since=since, journal=journal)
        execution = Execution(decision, attempt, rows, time.perf_counter(),
                              dict(self.namespace), ctx)
        execution.token = context.enter(ctx)
        return execution

    def settle(self, execution: Execution) -> None:
        """The body reached its end: wait for the children it started (Kernel → Interrupt
        stops them and raises here, in the cell)."""
        children.settle(execution.step_context)

    def finish(self, execution: Execution, *, ok: bool, outputs: list[dict[str, Any]],
               error: dict[str, Any] | None = None) -> Finished:
        """Checkpoint a finished body (``ok``) or record its failure.

        The outcome is durable (journal written and synced, blobs synced) when this returns;
        it reaches the DuckDB log in the background, in one statement with the start. When it
        cannot be made durable (a full disk): :class:`CheckpointError`, and the attempt is
        recorded as failed with that reason if even that small row fits, else as started only:
        either way the step executes again.
        """
        context.leave(execution.step_context, execution.token)
        children.finished(execution.step_context, ok=ok)
        log = execution.decision.log
        journal = self._journal(log)
        try:
            result, finished, upto = self._record_outcome(execution, ok, outputs, error)
        except CheckpointError as exc:
            journal.submit([*execution.rows, *self._not_checkpointed(execution, exc)],
                           journal.append([]))
            raise
        faults.crashpoint("after-commit")
        journal.submit([*execution.rows, finished], upto)
        attempt = execution.attempt
        return Finished(attempt.status, attempt.attempt, attempt.duration_s, **result)

    def _not_checkpointed(self, execution: Execution, exc: CheckpointError) -> list[Any]:
        """A failed outcome without outputs or variables, if the journal can still take it."""
        attempt = execution.attempt
        attempt.status, attempt.variables, attempt.outputs = Status.FAILED, None, None
        attempt.finished_at = records.now()
        attempt.duration_s = time.perf_counter() - execution.clock
        row = records.attempt_finished(attempt, error={"ename": "CheckpointError",
                                                       "evalue": str(exc)})[1]
        try:
            self._journal(execution.decision.log).append([row], sync=True)
        except CheckpointError:
            return []
        self._index(execution.decision.log, attempt.run).note(attempt)
        return [row]

    def _record_outcome(self, execution: Execution, ok: bool, outputs: list[dict[str, Any]],
                        error: dict[str, Any] | None) -> tuple[dict[str, Any], list[Any], int]:
        log = execution.decision.log
        out_ref = values.store_bytes(log.blobs, json.dumps(outputs).encode())
        result: dict[str, Any] = {}
        attempt = execution.attempt
        if ok:
            result = self._checkpoint(execution, log)
            attempt.status, attempt.variables = Status.COMPLETED, result.pop("variables")
            attempt.unstorable = result["unstorable"]
        else:
            ename = (error or {}).get("ename")
            attempt.status = next((s for e, s in _STOPPED if e == ename), Status.FAILED)
        attempt.finished_at = records.now()
        attempt.duration_s = time.perf_counter() - execution.clock
        attempt.outputs = out_ref
        finished = records.attempt_finished(attempt, error=error)[1]
        faults.crashpoint("before-commit")
        before = log.generation()
        upto = self._journal(log).append([finished], sync=True)
        log.announce_write()
        index = self._index(log, attempt.run)
        index.note(attempt)
        index.wrote(before, log.generation())
        return result, finished, upto

    def _checkpoint(self, execution: Execution, log: LogDB) -> dict[str, Any]:
        """Store what the body produced; remember the versions of the stored values."""
        before, ns = execution.before, self.namespace
        produced = self._produced(execution)
        deleted = sorted(n for n in before if n not in ns and not self.ignore(n))
        variables = [records.Variable(n, "deleted") for n in deleted]
        unstorable: dict[str, str] = {}
        versions: dict[str, str] = {}
        for name, (value, fp, packed, why) in produced.items():
            if isinstance(value, types.ModuleType):
                variables.append(records.Variable(name, "module", detail=value.__name__))
                versions[name] = module_fingerprint(value)
            elif packed is None:
                variables.append(records.Variable(name, "unstorable", detail=why))
                unstorable[name] = why
                versions[name] = fp
            else:
                ref = values.store_packed(log.blobs, packed)
                variables.append(records.Variable(name, "value", ref=ref))
                versions[name] = fp
        for name in deleted:
            self.tracker.forget(name)
        for name, fp in versions.items():
            self.tracker.remember(name, ns[name], fp)
        for name, why in unstorable.items():
            warnings.warn(f"variable `{name}` of step {execution.decision.spec.name!r} cannot be "
                          f"stored ({why}); the step will execute again on replay",
                          UnstorableValueWarning, stacklevel=2)
        return {"variables": variables, "produced": sorted(produced), "deleted": deleted,
                "unstorable": unstorable}

    def _produced(self, execution: Execution) -> dict[str, tuple[Any, ...]]:
        """Names bound, re-bound or changed in place by the body, with their encodings."""
        before, ns = execution.before, self.namespace
        spec, inputs = execution.decision.spec, execution.decision.inputs
        ns_globals = ns if isinstance(ns, dict) else None
        names = {n for n, v in ns.items() if before.get(n, _MISSING) is not v}
        names |= {n for n in spec.names.binds if n in ns}
        result = {}
        for name in sorted(names | set(inputs)):
            if self.ignore(name) or name not in ns:
                continue
            fp, packed, why = fingerprint(ns[name], ns_globals)
            if name not in names and fp == inputs.get(name):
                continue  # an input the body did not change
            result[name] = (ns[name], fp, packed, why)
        return result

    def close(self) -> None:
        """Move what the journals hold into the log now (also done at interpreter exit)."""
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()

    # -- plain cells ----------------------------------------------------------------------------
    def plain_cell_ran(self, names: Iterable[str] | None) -> None:
        """A cell that is not durable ran; it may have changed ``names`` (``None``: anything)."""
        if names is not None:
            names = analysis.expand(names, self.namespace) | set(names)
        self.tracker.touched(names)


#: An attempt that ended with these exceptions did not fail: it was stopped.
_STOPPED = (("KeyboardInterrupt", Status.INTERRUPTED), ("RunSuspended", Status.SUSPENDED))

_PREVIOUS: dict[str, str] = {
    Status.SUSPENDED: "the run was suspended while this step waited",
    Status.FAILED: "the previous attempt failed",
    Status.INTERRUPTED: "the previous attempt was interrupted",
    Status.RUNNING: "the previous attempt did not finish (the kernel died)",
}


def _why_execute(spec: CellSpec, inputs: dict[str, str], checkpoint: records.Attempt | None,
                 last: records.Attempt | None) -> str | None:
    """None when the checkpoint can be replayed (or there is nothing yet), else the reason."""
    if checkpoint is None:
        if last is None:
            return None
        return _PREVIOUS.get(last.status, f"the previous attempt is {last.status}")
    if spec.force:
        return "--force"
    if checkpoint.source_hash != spec.source_hash:
        return "source edited"
    missing = sorted(n for n in checkpoint.inputs if n not in inputs)
    if missing:
        one = len(missing) == 1
        return _names(missing, "is not defined (run the cell that defines it)" if one else
                      "are not defined (run the cells that define them)")
    changed = sorted(n for n in set(inputs) | set(checkpoint.inputs)
                     if inputs.get(n) != checkpoint.inputs.get(n))
    if changed:
        return _names(changed, "changed")
    if checkpoint.unstorable:
        names = ", ".join(f"`{n}`" for n in sorted(checkpoint.unstorable))
        return f"{names} could not be stored"
    return None


def _names(names: list[str], what: str) -> str:
    """``input `a`, `b` changed``; past three, ``... and N more``."""
    shown = ", ".join(f"`{n}`" for n in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"input {shown}{more} {what}"


def _recorded_fp(var: records.Variable) -> str:
    if var.kind == "module":
        return f"m:{var.detail}"
    assert var.ref is not None, "replay loaded it, so it has a stored value"
    return f"h:{var.ref.hash}"


def _decode_outputs(log: LogDB, ref: records.StoredRef | None) -> list[dict[str, Any]]:
    if ref is None:
        return []
    outputs: list[dict[str, Any]] = json.loads(values.load_bytes(log, ref))
    return outputs
