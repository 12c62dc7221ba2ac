"""fork: a new run from another run's checkpoints, on real kernels and a real log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kernels import Kernel, count

import nbdurable
from nbdurable.errors import UnknownRunError, UsageError

LOAD = "%load_ext nbdurable"


def cli(*args, log):
    cmd = [sys.executable, "-m", "nbdurable.cli", *args, "--log", str(log)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def cells(tmp):
    """c1 and c2 count their executions; c3 waits for `go` and sends once per run."""
    def effect(name):
        return f"open({str(tmp / name)!r}, 'a').write('x\\n')"
    return [
        f"%%durable c1\n{effect('c1')}\na = 1",
        f"%%durable c2\n{effect('c2')}\nb = a + 1",
        f"%%durable c3\nimport nbdurable\ngo = nbdurable.wait_for_event('go', timeout=60)\n"
        f"nbdurable.once('send', lambda: {effect('sent')})\nprint(b + go)",
    ]


def run_all(k, tmp, run, push=None):
    """Execute the three cells as ``run``; ``push``: the payload of `go`, pushed before c3."""
    k.execute(LOAD + f"\n%durable_run {run}")
    *first, last = cells(tmp)
    replies = [k.execute(c) for c in first]
    if push is not None:
        nbdurable.push_event("go", push, run=run, log=tmp / "log.duckdb")
    return [*replies, k.execute(last)]


def test_a_fork_replays_the_steps_before_from_and_executes_the_rest_anew(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        assert run_all(k, tmp_path, "r1", push=10)[-1].stream() == "12\n"
    done = cli("fork", "r1", "r2", "--from", "c2", log=log)
    assert done.returncode == 0 and "1 step(s) replay (c1)" in done.stdout, done.stderr
    with Kernel(tmp_path) as k:  # the fork: c1 replays, c2 and c3 execute; c3 waits afresh
        outs = run_all(k, tmp_path, "r2", push=100)
        assert outs[-1].stream() == "102\n", (outs[-1].ename, outs[-1].evalue)
    assert (count(tmp_path / "c1"), count(tmp_path / "c2"), count(tmp_path / "sent")) == (1, 2, 2)
    with Kernel(tmp_path) as k:  # the original is untouched: everything replays, its payload
        outs = run_all(k, tmp_path, "r1")
        assert outs[-1].stream() == "12\n"
    assert (count(tmp_path / "c1"), count(tmp_path / "c2"), count(tmp_path / "sent")) == (1, 2, 2)
    runs = nbdurable.runs(log=log).set_index("run")
    assert runs.loc["r2", ["forked_from", "forked_from_step"]].tolist() == ["r1", "c2"]
    assert runs["forked_from"].isna().tolist() == [run != "r2" for run in runs.index]


def test_a_fork_without_from_replays_everything_with_the_originals_waits(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        run_all(k, tmp_path, "r1", push=5)
    assert nbdurable.fork("r1", "copy", log=log) == ["c1", "c2", "c3"]
    with Kernel(tmp_path) as k:  # no push for `copy`: its wait replays r1's consumed event
        assert run_all(k, tmp_path, "copy")[-1].stream() == "7\n"
    assert (count(tmp_path / "c1"), count(tmp_path / "c2"), count(tmp_path / "sent")) == (1, 1, 1)
    events = nbdurable.list_events("copy", log=log)
    assert events[["key", "status"]].values.tolist() == [["go", "consumed"]]


def test_a_refused_fork_writes_nothing(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\n%durable_run r1")
        k.execute("%%durable c1\na = 1")
        k.execute(LOAD + "\n%durable_run taken")
        k.execute("%%durable c1\na = 1")
    before = nbdurable.sql("SELECT count(*) AS n FROM events", log=log)["n"][0]
    with pytest.raises(UsageError, match="already in the log"):
        nbdurable.fork("r1", "taken", log=log)
    with pytest.raises(UsageError, match="step 'nope' is not in run 'r1'"):
        nbdurable.fork("r1", "new", "nope", log=log)
    with pytest.raises(UnknownRunError):
        nbdurable.fork("ghost", "new", log=log)
    with pytest.raises(UsageError, match="a new run id"):
        nbdurable.fork("r1", "r1", log=log)
    bad = cli("fork", "r1", "taken", log=log)
    assert bad.returncode == 2 and bad.stderr.startswith("nbdurable: error: run 'taken' is "
                                                         "already in the log")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert nbdurable.sql("SELECT count(*) AS n FROM events", log=log)["n"][0] == before
    shown = json.loads(cli("runs", "--json", log=log).stdout)
    assert {r["run"] for r in shown} == {"r1", "taken"}
