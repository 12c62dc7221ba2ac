"""Children (``nbdurable.map`` / ``spawn`` / ``as_completed``) in real kernels, on the real local
process pool, killed with SIGKILL in the middle of a fan-out; side effects counted per child."""

from __future__ import annotations

import json
import logging
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
    while not path.exists() or len(path.read_text().splitlines()) < n:
        assert time.monotonic() < deadline, f"{path} did not reach {n} lines in {timeout}s"
        time.sleep(0.005)


def recorded_items(tmp_path: Path, prefix: str) -> set[str]:
    """The items whose child (``prefix[i]`` or ``prefix#i``) has a completed result in the log
    or in the dead kernel's journal, read from this (another) process."""
    frame = nbdurable.children("test-run", log=tmp_path / "log.duckdb")
    keys = frame[frame.status == "completed"].key
    return {re.split(r"[\[#\]]", k)[-2] if k.endswith("]") else k.split("#")[1]
            for k in keys if k.startswith(prefix)}


def assert_only_unrecorded_ran_again(tmp_path: Path, recorded: set[str], items: set[str]) -> None:
    """Every child ran; those recorded before the kill exactly once; the others at most twice
    (the in-flight ones: started, not yet durable)."""
    after = runs_per_item(tmp_path)
    assert set(after) == items, "every child ran"
    assert all(after[x] == 1 for x in recorded), after
    assert all(after[x] <= 2 for x in items - recorded), after


def kill_during(tmp_path: Path, cell: str, lines: int, *setup: str) -> None:
    """In a kernel: define ``work`` (and run ``setup``), send ``cell``, SIGKILL the kernel once
    ``ran.txt`` has ``lines`` lines."""
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        for source in setup:
            assert k.execute(source).status == "ok"
        k.send(cell)
        wait_for_lines(tmp_path / "ran.txt", lines)
        k.sigkill()


def test_kill_mid_map_reruns_only_unfinished_children(tmp_path):
    fan = "%%durable fan\nres = nbdurable.map(work, range(60))\nprint(sum(res))"
    kill_during(tmp_path, fan, 25)
    before = runs_per_item(tmp_path)
    assert 25 <= sum(before.values()) < 60, "killed in the middle"
    recorded = recorded_items(tmp_path, "map#0")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.status == "ok", (r.ename, r.evalue)
        assert r.stream().strip().endswith(str(sum(2 * x for x in range(60))))
        bars = [c for c in r.of_type("display_data")
                if "application/vnd.jupyter.widget-view+json" in c["data"]]
        assert bars, "a live progress bar"
        final = re.search(r"map#0: 60/60 done \((\d+) reused\) in [\d.]+ s", r.stream())
        assert final and int(final[1]) == len(recorded), (r.stream(), recorded)
        text = k.execute("print(nbdurable.log())").stream()
        assert re.search(rf"map#0: 60 children, 60 completed \({final[1]} reused\), 0 failed; "
                         r"\d+ attempts", text), text
    # at most the children in flight at the kill ran twice: those running on the pool's
    # workers and those that had finished but whose result was not yet durable
    assert_only_unrecorded_ran_again(tmp_path, recorded, {str(x) for x in range(60)})
    after = runs_per_item(tmp_path)
    with Kernel(tmp_path) as k:  # a completed parent cell replays: nothing is submitted
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.status == "ok" and "replayed" in json.dumps(r.notices())
        assert final[0] in r.stream(), "the replay shows the final counts"
    assert runs_per_item(tmp_path) == after


def test_kill_with_spawn_and_as_completed(tmp_path):
    fan = ("%%durable fan\nkids = [nbdurable.spawn(work, i) for i in range(30)]\n"
           "done = [c.key for c in nbdurable.as_completed(kids)]\n"
           "total = sum(c.result() for c in kids)\nprint(len(done), total)")
    kill_during(tmp_path, fan, 12)
    recorded = recorded_items(tmp_path, "spawn")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        r = k.execute(fan)
        assert r.stream() == f"30 {sum(2 * i for i in range(30))}\n", (r.ename, r.evalue)
        reused = k.execute("print(sorted(c.key.split('#')[1] for c in kids if c.reused))")
        assert set(eval(reused.stream())) == recorded
    assert_only_unrecorded_ran_again(tmp_path, recorded, {str(i) for i in range(30)})


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
        assert r.stream().endswith("\n[0, 1, 2, 3]\n"), (r.ename, r.evalue)
        table = k.execute("c = nbdurable.children().set_index('key')\n"
                          "print(c.attempts.to_dict(), c.status.unique().tolist())").stream()
        assert table == ("{'map#0[0]': 1, 'map#0[1]': 1, 'map#0[2]': 3, 'map#0[3]': 1} "
                         "['completed']\n")


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


@pytest.mark.parametrize("processes", [False, True])
def test_kill_mid_map_on_a_dask_cluster(tmp_path, processes):
    client = DASK_CLIENT.replace("processes=True", f"processes={processes}")
    fan = "%%durable fan\nres = nbdurable.map(work, range(40), executor=client)\nprint(sum(res))"
    kill_during(tmp_path, fan, 15, client)
    recorded = recorded_items(tmp_path, "map#0")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(work_cell(tmp_path))
        k.execute(client)
        r = k.execute(fan)
        assert r.stream().strip().endswith(str(sum(2 * x for x in range(40)))), (r.ename, r.evalue)
        k.execute("client.close(); cluster.close()")
    # in flight on Dask: the 2 running, the ones the workers had fetched ahead, and results
    # finished but not yet back in the kernel: only those ran again
    assert_only_unrecorded_ran_again(tmp_path, recorded, {str(x) for x in range(40)})


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
        assert r.stream().endswith(f"\n[0.0, 1250000.0, 2500000.0] {10_000_000}\n"), r.ename
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


def exit_on_three(x):
    if x == 3:
        os._exit(1)  # the Dask worker running this child dies
    return fail_on_two(x)


def test_on_dask_a_dead_worker_and_a_raising_child_are_child_errors(no_log):
    """Results come back in batched gathers; a task that never finished (its worker died:
    ``KilledWorker``) and a child that raised are each a failed child, not a hang."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        with pytest.raises(ChildError) as info:
            nbdurable.map(exit_on_three, range(6), executor=client)
        failed = re.match(r"(\d) of 6 children failed", str(info.value))
        assert failed and int(failed[1]) >= 2, info.value  # 2 and 3, maybe 3's neighbours
        two, three = (nbdurable.spawn(exit_on_three, x, executor=client) for x in (2, 3))
        errors = {}
        for child in nbdurable.as_completed([two, three], timeout=120):
            with pytest.raises(ChildError) as info:
                child.result()
            errors[child.key] = type(info.value.error).__name__
        assert errors == {two.key: "KeyError", three.key: "KilledWorker"}, errors
        assert nbdurable.map(triple, [1, 2], executor=client) == [3, 6]  # the client goes on


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


# -- child notebooks ----------------------------------------------------------------------------

def child_notebook(path: Path, effects: Path, *cells: str) -> Path:
    """A child notebook: a parameters cell (``n``), the extension, then ``cells``; each cell
    may append to ``effects`` through ``effect(text)``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("n = 0")
    params.metadata["tags"] = ["parameters"]
    setup = ("%load_ext nbdurable\nimport os, nbdurable\n"
             f"def effect(text):\n    with open({str(effects)!r}, 'a') as f:\n"
             "        f.write(text + '\\n')")
    nb.cells = [params, nbformat.v4.new_code_cell(setup),
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def test_spawn_notebook_children_one_crashing_once(tmp_path):
    effects, marker = tmp_path / "effects", tmp_path / "crashed-once"
    child = child_notebook(
        tmp_path / "child.ipynb", effects,
        f"%%durable work\neffect(f'work {{n}}')\nif n == 2 and not os.path.exists({str(marker)!r}):"
        f"\n    open({str(marker)!r}, 'w').close()\n    os.kill(os.getpid(), 9)\n"
        "square = nbdurable.map(lambda v: v * v, [n])[0]  # a child with children of its own\n"
        "nbdurable.set_result({'n': n, 'square': square})")
    fan = (f"%%durable fan\nkids = [nbdurable.spawn_notebook({str(child)!r}, {{'n': i}}) "
           "for i in range(3)]\nresults = [k.result() for k in kids]\n"
           "print(results)\nprint([k.run_id for k in kids])\nprint([k.output_path for k in kids])")
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\nimport nbdurable")
        r = k.execute(fan)
        assert r.status == "ok", (r.ename, r.evalue)
        results, run_ids, outputs = r.stream().splitlines()[-3:]
        assert eval(results) == [{"n": i, "square": i * i} for i in range(3)]
        assert eval(run_ids) == [f"test-run:notebook#{i}" for i in range(3)]
        table = k.execute("r = nbdurable.runs().set_index('run')\n"
                          "print(r.loc[[f'test-run:notebook#{i}' for i in range(3)], "
                          "'status'].tolist())").stream()
        assert table == "['completed', 'completed', 'completed']\n"
        # --force runs the child again: its run resumes, so its completed cell replays
        again = k.execute("%%durable fan --force\nprint(nbdurable.spawn_notebook("
                          f"{str(child)!r}, {{'n': 1}}, key='notebook#1').result())")
        assert again.stream().endswith("{'n': 1, 'square': 1}\n"), (again.ename, again.evalue)
    assert sorted(effects.read_text().splitlines()) == ["work 0", "work 1", "work 2", "work 2"]
    import nbformat

    for i, out in enumerate(eval(outputs)):
        nb = nbformat.read(out, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors and nb.metadata.papermill.parameters == {"n": i}
        assert nb.metadata.nbdurable.status == "completed"
        assert nb.metadata.nbdurable.restarts == (1 if i == 2 else 0)  # the crash is told
        if i == 2:
            assert "kernel died" in json.dumps(nb.cells[-1].get("outputs", []))


def test_a_killed_parent_resumes_its_child_notebooks_which_wait_for_events(tmp_path):
    effects = tmp_path / "effects"
    child = child_notebook(
        tmp_path / "waiter.ipynb", effects,
        "%%durable prepare\neffect(f'prepare {n}')",
        "%%durable approve\neffect(f'waiting {n} {os.getpid()}')\n"
        "answer = nbdurable.wait_for_event('go')\n"
        "effect(f'approved {n}')\nnbdurable.set_result(answer)")
    fan = (f"%%durable fan\nkids = [nbdurable.spawn_notebook({str(child)!r}, {{'n': i}}) "
           "for i in range(2)]\nprint([k.result() for k in kids])")
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\nimport nbdurable")
        k.send(fan)
        wait_for_lines(effects, 4)  # both children prepared (checkpointed), both waiting
        k.sigkill()
    # their kernels die with the parent (their guard sees its claim go): only then the events
    wait_gone([int(line.split()[2]) for line in effects.read_text().splitlines()
               if line.startswith("waiting")])
    for i in range(2):
        nbdurable.push_event("go", f"yes {i}", run=f"test-run:notebook#{i}",
                             log=tmp_path / "log.duckdb")
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\nimport nbdurable")
        r = k.execute(fan)
        assert r.stream().endswith("['yes 0', 'yes 1']\n"), (r.ename, r.evalue)
    lines = [" ".join(line.split()[:2]) for line in effects.read_text().splitlines()]
    assert Counter(lines) == Counter({
        "prepare 0": 1, "prepare 1": 1,  # completed before the kill: replayed, not repeated
        "waiting 0": 2, "waiting 1": 2, "approved 0": 1, "approved 1": 1})


def test_a_batch_run_shows_progress_as_text(tmp_path):
    nb = child_notebook(tmp_path / "fan.ipynb", tmp_path / "effects",
                        "%%durable fan\nres = nbdurable.map(abs, range(-6, 0))\nprint(res)")
    result = nbdurable.run(nb, run_id="batch-fan", log=tmp_path / "log.duckdb")
    assert result.status == "completed", result.message()
    import nbformat

    outputs = nbformat.read(result.output, as_version=4).cells[-1].outputs
    text = "".join(o.get("text", "") for o in outputs)
    assert re.search(r"map#0: 6/6 done \(0 reused\) in [\d.]+ s\n\[6, 5, 4, 3, 2, 1\]", text), text
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in outputs)


# -- a child's own @step calls and once ----------------------------------------------------------

NESTED = """import os, nbdurable
EFFECTS, MARK = {effects!r}, {mark!r}
def effect(text):
    with open(EFFECTS, 'a') as f:
        f.write(text + '\\n')
@nbdurable.step
def fetch(x):
    effect(f'fetch {{x}}')
    return x * 10
def work(x):
    effect(f'work {{x}}')
    value = fetch(x)
    if x == 1 and not os.path.exists(MARK):
        open(MARK, 'w').close()
        raise RuntimeError('post-processing failed')
    return value + 1
"""


DASK_CLIENT = ("import logging\nfrom distributed import Client, LocalCluster\n"
               "cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,"
               " dashboard_address=None, silence_logs=logging.ERROR)\nclient = Client(cluster)")


@pytest.mark.parametrize("executor", ["processes", "threads", "dask"])
def test_a_childs_own_steps_are_recorded_and_reused_by_its_next_attempt(tmp_path, executor):
    effects = tmp_path / "effects"
    setup = NESTED.format(effects=str(effects), mark=str(tmp_path / "mark"))
    if executor == "dask":  # the recorded calls travel with the task, as plain values
        setup += "\n" + DASK_CLIENT
    on = "client" if executor == "dask" else repr(executor)
    fan = f"%%durable fan\nres = nbdurable.map(work, range(3), executor={on})\nprint(res)"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(setup)
        assert k.execute(fan).ename == "ChildError"  # x == 1 failed after its fetch
    with Kernel(tmp_path) as k:  # a new kernel: the fetch comes back from the log
        k.execute(LOAD)
        k.execute(setup)
        r = k.execute(fan)
        assert r.stream().endswith("[1, 11, 21]\n"), (r.ename, r.evalue)
        r = k.execute("%%durable again\nprint(nbdurable.map(work, [5, 1], retries=1, "
                      f"executor={on}, key='again'))")
        assert r.stream().endswith("[51, 11]\n"), (r.ename, r.evalue)
    assert Counter(effects.read_text().splitlines()) == Counter({
        "work 0": 1, "work 1": 3, "work 2": 1, "fetch 0": 1, "fetch 1": 2, "fetch 2": 1,
        "work 5": 1, "fetch 5": 1})


def test_once_in_a_child_on_a_process_pool_is_refused(tmp_path):
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\nimport nbdurable\ndef pay(x):\n"
                  "    return nbdurable.once(f'pay {x}', abs, x)")
        r = k.execute("%%durable fan\nnbdurable.map(pay, [-1])")
        assert r.ename == "ChildError" and "workers never open the log" in r.evalue
        r = k.execute("%%durable fan\nprint(nbdurable.map(pay, [-1, -2], executor='threads'))")
        assert r.stream().endswith("[1, 2]\n"), (r.ename, r.evalue)  # threads: in the kernel
        r = k.execute("print(nbdurable.once('pay -1', abs, -7))")
        assert r.stream() == "1\n"  # recorded by the child: once per run


def test_a_result_that_cannot_be_stored_is_returned_and_its_child_runs_again(tmp_path):
    cell = work_cell(tmp_path, 0, "import threading\n    return threading.Lock()")
    fan = ("%%durable fan\nlocks = nbdurable.map(work, [1, 2], executor='threads')\n"
           "n = len(locks)\ndel locks")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute(cell)
        r = k.execute(fan)
        assert r.status == "ok" and "child map#0[0] returned a value nbdurable cannot store" \
            in r.stream("stderr"), r.stream("stderr")
        k.execute("y = 1")
        r = k.execute(fan.replace("n = len", "m = y\nn = len"))  # edited: executes again
        assert r.status == "ok"
    assert runs_per_item(tmp_path) == Counter({"1": 2, "2": 2}), "not reused: not recorded"


def test_maps_outside_a_durable_cell_leave_no_thread_behind(no_log):
    import threading

    nbdurable.map(triple, [1], executor="threads")  # the thread pool's threads start once
    before = threading.active_count()
    for i in range(20):
        assert nbdurable.map(triple, [i, i], executor="threads") == [3 * i, 3 * i]
        assert nbdurable.spawn(triple, i, executor="threads").result(timeout=60) == 3 * i
    deadline = time.monotonic() + 10
    while threading.active_count() > before + 2:  # the pool may grow to its cores
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.01)
