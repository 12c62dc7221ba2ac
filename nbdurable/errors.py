"""The one error tree of nbdurable.

Every error nbdurable raises derives from :class:`NbdurableError`. Its message is one line that
names the problem and what to do about it. In a notebook such errors are shown as that one line,
without a traceback (IPython calls ``_render_traceback_``), because they are expected conditions,
not bugs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nbdurable.processes import ProcessId


class NbdurableError(Exception):
    """Base class of every error raised by nbdurable."""

    def _render_traceback_(self) -> list[str]:
        # IPython uses this instead of a traceback: expected errors get one readable line.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class UsageError(NbdurableError, ValueError):
    """A call, a magic or a command was used with bad arguments."""


class EventIdConflictError(UsageError):
    """An event id was pushed before with another key or payload (an id names one event)."""


class StepCollisionError(UsageError):
    """Two cells are the same step: a copied ``%%durable`` cell kept its original's NAME. The
    copy is refused (nothing executed, nothing recorded) until it is renamed, or marked
    ``--replace`` when it is the same step moved."""


class NoLogError(UsageError):
    """A command that reads a log was given a path where there is none (a typo, not a new log)."""


class RequestError(NbdurableError):
    """An HTTP request that ``nbdurable serve`` or the Jupyter server extension refuses;
    ``status`` is the HTTP status it is answered with."""

    status = 400


class NotAuthenticatedError(RequestError):
    """No credentials, or a webhook body whose signature does not match."""

    status = 401


class ForbiddenError(RequestError):
    """Credentials that are wrong, or a ``?log=`` path outside the server's root directory."""

    status = 403


class BodyTooLargeError(RequestError):
    """A request body over the server's size limit."""

    status = 413


class ConfigError(NbdurableError):
    """The configuration (``NBDURABLE_LOG``, ``NBDURABLE_RUN``, ``configure``) is invalid."""


class LogError(NbdurableError):
    """The log file cannot be used."""


class NotALogError(LogError):
    """The file at the log path exists but is not an nbdurable log. It is never modified."""


class LogVersionError(LogError):
    """The log was written by a newer nbdurable (or DuckDB) than this one. It is never modified."""


class LogBusyError(LogError):
    """Another process held the log for longer than the lock timeout."""


class LogCorruptError(LogError):
    """The log refers to data that is missing or damaged (for example a deleted blob file)."""


class CheckpointError(LogError):
    """A checkpoint could not be made durable (a full disk, a read-only folder). Nothing was
    recorded for it: the step executes again next time."""

    def __init__(self, problem: str):
        super().__init__(f"not checkpointed, it will execute again: {problem}")


class SignatureError(LogCorruptError):
    """A stored value does not match its HMAC (changed, damaged, or signed with another
    secret). It is never loaded: the step that produced it executes again."""


class StepError(NbdurableError):
    """A durable step cannot go on as asked."""


class OnceInDoubtError(StepError):
    """A ``once`` call started but its process died before it recorded an outcome (or its
    recorded result cannot be trusted).

    nbdurable cannot know whether the side effect happened, so it refuses to run it again until
    the user says what happened (``nbdurable.once_resolve`` or ``nbdurable.once_reset``).
    ``key``: the ``once`` key in doubt.
    """

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class UnknownRunError(NbdurableError, LookupError):
    """The run named is not in the log. ``run``: it; ``known``: (up to 10 of) the runs there."""

    def __init__(self, message: str, *, run: str | None = None, known: list[str] | None = None):
        super().__init__(message)
        self.run = run
        self.known = known or []


class RunBusyError(NbdurableError):
    """Another process is executing the run (``nbdurable run``, the papermill engine).
    ``run``: it; ``holder``: the process executing it, when known (pid, host, start time,
    program)."""

    def __init__(self, message: str, *, run: str | None = None,
                 holder: ProcessId | None = None):
        super().__init__(message)
        self.run = run
        self.holder = holder


class WaitTimeout(StepError, TimeoutError):
    """A wait's timeout (a recorded deadline) passed before its event arrived."""


class WaitMismatchError(StepError):
    """The code reached another wait than the one the log recorded at that point.
    ``step``, ``wait`` (its key, ``wait#1``...), ``recorded`` and ``reached``: the two waits'
    conditions as the log stores them (``{"mode": "any", "conditions": [...]}``)."""

    def __init__(self, message: str, *, step: str | None = None, wait: str | None = None,
                 recorded: dict[str, Any] | None = None,
                 reached: dict[str, Any] | None = None):
        super().__init__(message)
        self.step, self.wait = step, wait
        self.recorded, self.reached = recorded, reached


class ChildError(StepError):
    """A child of ``nbdurable.map`` / ``spawn`` failed (after its retries). ``key``: the child's
    key (``map#0[17]``, ``spawn#2`` or the one given); ``error``: its exception (None when it
    could not be brought back from the worker); ``child_traceback``: the traceback text as the
    worker printed it; ``attempts``: how many times it ran. The other children's results stay
    recorded: fixing the cause and running the cell again runs only the failed ones."""

    def __init__(self, message: str, *, key: str, error: BaseException | None = None,
                 child_traceback: str = "", attempts: int = 1):
        super().__init__(message)
        self.key, self.error = key, error
        self.child_traceback, self.attempts = child_traceback, attempts

    def _render_traceback_(self) -> list[str]:
        # the child's own traceback is what the user needs; the parent's frames are noise
        lines = self.child_traceback.rstrip("\n").splitlines() if self.child_traceback else []
        return [*lines, *super()._render_traceback_()]


class RunSuspended(BaseException):  # noqa: N818 (a signal, like SystemExit, not an error)
    """Not an error: a batch run's wait was still unmet after ``--suspend-after`` seconds, so
    the kernel stops and a later ``nbdurable resume`` (or ``nbdurable worker``) goes on. The
    wait's deadlines are recorded already. It derives from ``BaseException``, like
    ``SystemExit``, so that ``except Exception`` in a notebook does not swallow it; only batch
    kernels raise it (an interactive kernel is never suspended)."""

    def __init__(self, message: str, *, run: str, step: str | None, keys: list[str],
                 deadline: str | None):
        super().__init__(message)
        self.run, self.step, self.keys, self.deadline = run, step, keys, deadline

    def _render_traceback_(self) -> list[str]:
        return [f"RunSuspended: {self}"]


class UnstorableValueWarning(UserWarning):
    """A variable produced by a durable cell could not be stored in the log."""


class IntegrityWarning(UserWarning):
    """Something stored could not be trusted (damaged, changed, unsigned) and was not used; the
    work it recorded runs again."""


class JournalDamageWarning(UserWarning):
    """Lines of a journal were damaged; they were set aside, the rest was used."""


class LogHeldWarning(UserWarning):
    """Checkpoints are safe in this process's journal but cannot reach the log yet."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
