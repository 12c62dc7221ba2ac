"""What the log says about one run's steps, kept in memory while it stays true.

Reading the log costs a millisecond or more per query, too much for every cell. The index loads
all attempts of a run in one query and is then updated in memory by this process's own writes.
It reloads only when :attr:`LogDB.epoch` says another process may have written meanwhile.
Callers must hold the log's lease around :meth:`refresh` and what they do with the answer.
"""

from __future__ import annotations

from . import records


class RunIndex:
    def __init__(self, log, run: str):
        self.log, self.run = log, run
        self._epoch: int | None = None
        self._last: dict[str, records.Attempt] = {}
        self._completed: dict[str, records.Attempt] = {}

    def refresh(self, con) -> None:
        """Reload from the log if another process may have changed it (hold the lease)."""
        if self._epoch == self.log.epoch:
            return
        self._last.clear()
        self._completed.clear()
        for attempt in records.run_attempts(con, self.run):
            self.note(attempt)
        self._epoch = self.log.epoch

    def note(self, attempt: records.Attempt) -> None:
        """Take an attempt into account (loaded, or just written by this process)."""
        last = self._last.get(attempt.step)
        if last is None or attempt.attempt >= last.attempt:
            self._last[attempt.step] = attempt
        done = self._completed.get(attempt.step)
        if attempt.status == "completed" and (done is None or attempt.attempt >= done.attempt):
            self._completed[attempt.step] = attempt

    def last(self, step: str) -> records.Attempt | None:
        return self._last.get(step)

    def checkpoint(self, step: str) -> records.Attempt | None:
        """The most recent completed attempt of ``step``."""
        return self._completed.get(step)

    def next_number(self, step: str) -> int:
        last = self._last.get(step)
        return 1 if last is None else last.attempt + 1
