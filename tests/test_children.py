"""Children (``nbdurable.map`` / ``spawn`` / ``as_completed``) in real kernels, on the real local
process pool, killed with SIGKILL in the middle of a fan-out; side effects counted per child."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from kernels import Kernel

import nbdurable
from nbdurable import settings
from nbdurable.errors import ChildError, UsageError

LOAD = "%load_ext nbdurable"
WORKERS = os.cpu_count() or 2


def work_cell(tmp_path: Path, seconds: float = 0.05, body: str = "return x * 2") -> str:
    """A plain cell defining ``work`` (a function of the notebook, shipped by value to the
    pool): it appends its item to ``ran.txt`` first (the side effect), then works."""
    return (f"import time, nbdurable\nRAN = {str(tmp_path / 'ran.txt')!r}\n"
            f"def work(x):\n    with open(RAN, 'a') as f:\n        f.write(f'{{x}}\\n')\n"
            f"    time.sleep({seconds})\n    {body}\n")


def runs_per_item(tmp_path: Path) -> Counter[str]:
    path = tmp_path / "ran.txt"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def wait_for_lines(path: Path, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().split()) < n:
        assert time.monotonic() < deadline, f"{path} did not reach {n} lines in {timeout}s"
        time.sleep(0.005)


def test_kill_mid_map_reruns_only_unfinished_children(tmp_path):
    fan = "%%durable fan\nres = nbdurable.map(work, range(60))\nprint(sum(res))"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        k.send(fan)
        wait_for_lines(tmp_path / "ran.txt", 25)
        k.sigkill()
    before = runs_per_item(tmp_path)
    assert 25 <= sum(before.values()) < 60, "killed in the middle"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.status == "ok", (r.ename, r.evalue)
        assert r.stream().strip().endswith(str(sum(2 * x for x in range(60))))
    after = runs_per_item(tmp_path)
    assert set(after) == {str(x) for x in range(60)}, "every child ran"
    twice = [x for x, n in after.items() if n > 1]
    assert all(n <= 2 for n in after.values())
    # at most the children in flight at the kill ran twice: those running on the pool's
    # workers and those that had finished but whose result was not yet recorded
    assert len(twice) <= 2 * WORKERS, twice
    with Kernel(tmp_path) as k:  # a completed parent cell replays: nothing is submitted
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.status == "ok" and "replayed" in json.dumps(r.notices())
    assert runs_per_item(tmp_path) == after


def test_kill_with_spawn_and_as_completed(tmp_path):
    fan = ("%%durable fan\nkids = [nbdurable.spawn(work, i) for i in range(30)]\n"
           "done = [c.key for c in nbdurable.as_completed(kids)]\n"
           "total = sum(c.result() for c in kids)\nprint(len(done), total)")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        k.send(fan)
        wait_for_lines(tmp_path / "ran.txt", 12)
        k.sigkill()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.stream() == f"30 {sum(2 * i for i in range(30))}\n", (r.ename, r.evalue)
        kids = k.execute("print(sorted(c.key for c in kids if c.reused)[:3], "
                         "sum(c.reused for c in kids))").stream()
        reused = int(kids.split("]")[-1])
        assert reused >= 12 - 2 * WORKERS
    after = runs_per_item(tmp_path)
    assert set(after) == {str(i) for i in range(30)}
    assert sum(n - 1 for n in after.values()) <= 2 * WORKERS


def test_a_failed_child_raises_and_rerunning_runs_only_the_failed_ones(tmp_path):
    body = ("if x % 7 == 3 and not os.path.exists(FIXED):\n"
            "        raise ValueError(f'bad item {x}')\n    return x")
    cell = work_cell(tmp_path, 0, body).replace("import time,", "import os, time,")
    cell += f"FIXED = {str(tmp_path / 'fixed')!r}\n"
    fan = "%%durable fan\nres = nbdurable.map(work, range(20))"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
        r = k.execute(fan)
        assert r.ename == "ChildError"
        assert "3 of 20 children failed" in r.evalue and "map#0[3]" in r.evalue
        assert "ValueError: bad item 3" in r.evalue
        child_frames = [line for line in r.traceback if ", in work" in line]
        assert child_frames and not any("worker.py" in line for line in r.traceback), r.traceback
        fields = k.execute("try:\n    nbdurable.map(work, [3], key='again')\n"
                           "except nbdurable.ChildError as e:\n"
                           "    print(e.key, type(e.error).__name__, e.attempts)").stream()
        assert fields == "again[0] ValueError 1\n"
        (tmp_path / "fixed").touch()
        r = k.execute(fan)
        assert r.status == "ok", (r.ename, r.evalue)
        table = k.execute("c = nbdurable.children()\nc = c[c.step == 'fan']\n"
                          "print(c.status.value_counts().to_dict(), c.attempts.max())").stream()
        assert table == "{'completed': 20} 2\n"
    ran = runs_per_item(tmp_path)
    assert ran == Counter({str(x): 2 if x % 7 == 3 else 1 for x in range(20)}) + \
        Counter({"3": 1})  # and the one of the `again` map outside the step


def test_retries_rerun_a_failing_child_and_log_every_attempt(tmp_path):
    body = ("if x == 2 and len(open(RAN).read().split()) < 6:\n"
            "        raise ConnectionError('flaky')\n    return x")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path, 0, body))
        r = k.execute("%%durable fan\nres = nbdurable.map(work, range(4), retries=2)\n"
                      "print(res)")
        assert r.stream() == "[0, 1, 2, 3]\n", (r.ename, r.evalue)
        rows = k.execute("import json\nprint(json.dumps(nbdurable.sql(\"SELECT body->>'key', "
                         "body->>'status', body->>'tries' FROM events WHERE kind = "
                         "'child_finished' ORDER BY ts\").values.tolist()))")
        failures = [row for row in json.loads(rows.stream()) if row[1] == "failed"]
        assert failures and all(row[0] == "map#0[2]" for row in failures)
        assert [row[2] for row in failures] == [str(i + 1) for i in range(len(failures))]


def test_an_edited_function_or_item_reruns_exactly_its_children(tmp_path):
    fan = "%%durable fan\nres = nbdurable.map(work, items)"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path, 0))
        k.execute("items = [1, 2, 3, 4]")
        assert k.execute(fan).status == "ok"
        k.execute("items = [1, 2, 30, 4]")  # one item changed: the cell re-executes
        assert k.execute(fan + "\nprint(res)").stream().endswith("[2, 4, 60, 8]\n")
        assert runs_per_item(tmp_path) == Counter({"1": 1, "2": 1, "3": 1, "30": 1, "4": 1})
        k.execute(work_cell(tmp_path, 0, "return x * 3"))  # the function's code changed
        assert k.execute(fan + "\nprint(res)").stream().endswith("[3, 6, 90, 12]\n")
        assert runs_per_item(tmp_path) == Counter({"1": 2, "2": 2, "3": 1, "30": 2, "4": 2})


def test_large_array_results_are_restored_without_running_again(tmp_path):
    cell = work_cell(tmp_path, 0, "import numpy as np\n    return np.full(1_250_000, x, "
                     "dtype='float64')")  # 10 MB each
    fan = (f"%%durable fan\nimport os\nres = nbdurable.map(work, range(3))\n"
           f"if not os.path.exists({str(tmp_path / 'go')!r}):\n    os.kill(os.getpid(), 9)\n"
           "print([float(a.sum()) for a in res], res[0].nbytes)")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
        k.execute_until_death(fan)  # the map finished, then the kernel died in the cell
    assert sum(runs_per_item(tmp_path).values()) == 3
    assert len(list((tmp_path / "log.duckdb.blobs").rglob("*"))) >= 3, "in blob files"
    (tmp_path / "go").touch()
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
        r = k.execute(fan)
        assert r.stream() == f"[0.0, 1250000.0, 2500000.0] {10_000_000}\n", (r.ename, r.evalue)
    assert sum(runs_per_item(tmp_path).values()) == 3, "restored, not run again"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def hang_cell(pids: Path, n: int) -> str:
    """A durable cell whose ``n`` children write their worker's pid to ``pids``, then hang."""
    return (f"%%durable fan\nimport os, time, nbdurable\ndef hang(x):\n"
            f"    with open({str(pids)!r}, 'a') as f:\n        f.write(f'{{os.getpid()}}\\n')\n"
            f"    time.sleep(120)\nnbdurable.map(hang, range({n}))")


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"workers still alive {timeout} s later"
        time.sleep(0.05)


def test_pool_workers_exit_when_the_kernel_is_killed(tmp_path):
    pids = tmp_path / "pids"
    cell = hang_cell(pids, WORKERS)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.send(cell)
        wait_for_lines(pids, WORKERS)
        workers = [int(p) for p in pids.read_text().split()]
        assert all(_alive(p) for p in workers)
        k.sigkill()
        wait_gone(workers)  # no orphan runs side effects after the kill


def test_interrupt_stops_children_and_leaves_the_kernel_usable(tmp_path):
    pids = tmp_path / "pids"
    cell = hang_cell(pids, 2 * WORKERS + 6)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        msg_id = k.send(cell)
        wait_for_lines(pids, WORKERS)
        k.km.interrupt_kernel()
        reply = k.kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        wait_gone([int(p) for p in pids.read_text().split()])
        table = k.execute("c = nbdurable.children()\nprint(c.status.tolist())").stream()
        statuses = eval(table)
        # the running ones, and those the pool had already queued for its workers (it takes
        # up to workers + 1 ahead); the others were cancelled, so not recorded
        assert set(statuses) == {"interrupted"} and WORKERS <= len(statuses) <= 2 * WORKERS + 1
        assert k.execute("print(nbdurable.map(abs, [-1, -2]))").stream() == "[1, 2]\n"
        assert k.execute("%%durable again\nprint(nbdurable.map(abs, [-3]))").stream() \
            .endswith("[3]\n")
    assert len(pids.read_text().split()) == WORKERS, "children not started never ran"


# -- outside a durable cell: the same calls, no log ---------------------------------------------

@pytest.fixture
def no_log(tmp_path, monkeypatch):
    monkeypatch.setenv("NBDURABLE_LOG", str(tmp_path / "log.duckdb"))
    settings.reset()
    yield tmp_path / "log.duckdb"
    settings.reset()


def triple(x):
    return 3 * x


def fail_on_two(x):
    if x == 2:
        raise KeyError(x)
    return x


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_outside_a_durable_cell_children_run_without_a_log(no_log, executor):
    assert nbdurable.map(triple, [1, 2, 3], executor=executor) == [3, 6, 9]
    child = nbdurable.spawn(triple, 5, executor=executor, key="five")
    assert child.key == "five" and child.result(timeout=60) == 15 and child.done()
    with pytest.raises(ChildError) as info:
        nbdurable.map(fail_on_two, [1, 2, 3], executor=executor)
    assert re.fullmatch(r"map#\d+\[1\]", info.value.key), info.value.key
    assert isinstance(info.value.error, KeyError) and "KeyError" in info.value.child_traceback
    assert not no_log.exists(), "no log is created outside a durable cell"


def test_any_executor_and_configure(no_log):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert nbdurable.map(triple, range(4), executor=pool) == [0, 3, 6, 9]
        nbdurable.configure(executor=pool)
        kids = [nbdurable.spawn(triple, i) for i in range(3)]
        assert sorted(c.result() for c in nbdurable.as_completed(kids, timeout=60)) == [0, 3, 6]


def test_bad_arguments_are_usage_errors(no_log):
    with pytest.raises(UsageError, match="needs a function"):
        nbdurable.map(3, [1])
    with pytest.raises(UsageError, match="retries"):
        nbdurable.spawn(triple, 1, retries=-1)
    with pytest.raises(UsageError, match="max_workers"):
        nbdurable.map(triple, [1], max_workers=0)
    with pytest.raises(UsageError, match="executor must be"):
        nbdurable.map(triple, [1], executor="gpu")
    with pytest.raises(UsageError, match="two children have the key"):
        nbdurable.map(triple, [1, 1], key=lambda item: item)
