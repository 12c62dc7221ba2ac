"""DBOS Transact's side of the peer benchmark, in a plain script (DBOS's synchronous API refuses
to run inside a live event loop, which a Jupyter kernel is), on its SQLite system database.

Run by ``bench/peers/run.py`` with the peers' interpreter: ``python dbos_side.py WORKDIR`` prints
one JSON object. Each phase that needs a restart is a process of its own (``phase ...``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pct, plain_loop  # noqa: E402

N_STEPS = 200
N_EVENTS = 20


def _dbos(work: Path):
    from dbos import DBOS

    DBOS(config={"name": "peers-bench", "system_database_url": f"sqlite:///{work / 'dbos.sqlite'}",
                 "log_level": "ERROR"})
    return DBOS


def _register(DBOS):  # noqa: N803 (DBOS is its class-level API)
    import numpy as np

    @DBOS.step()
    def trivial(i):
        return i

    @DBOS.step()
    def big(mb):
        return np.ones(mb * 2**20 // 8)

    # The phase (crash or replay) comes from the process, not from the workflow's inputs,
    # which DBOS records and gives the recovered workflow again.
    def done(t: float, tag: str) -> None:
        phase = os.environ["PEERS_PHASE"]
        Path(os.environ["PEERS_WORK"], f"{tag}.{phase}.time").write_text(
            str(time.perf_counter() - t))
        if phase == "crash":
            os._exit(0)  # killed after the steps were recorded, before the workflow ended

    @DBOS.workflow()
    def steps(n, tag):
        t = time.perf_counter()
        for i in range(n):
            trivial(i)
        done(t, tag)
        return n

    @DBOS.workflow()
    def arrays(mb, tag):
        trivial(-1)  # as nbdurable's side: the first step of the process is not timed
        t = time.perf_counter()
        value = big(mb)
        done(t, tag)
        return int(value.size)

    @DBOS.workflow()
    def listen(n, ready_file):
        resumed = []
        for i in range(n):
            Path(ready_file).write_text(str(i))
            assert DBOS.recv("tick", timeout_seconds=120) == i
            resumed.append(time.time())
        return resumed

    return {"steps": steps, "arrays": arrays, "listen": listen}


def phase(work: Path, name: str, *args: str) -> None:
    """One process: run workflow ``name`` (``crash`` ends the process after its steps; in
    ``replay``, DBOS's launch recovers the pending workflow from its recorded steps)."""
    from dbos import SetWorkflowID

    DBOS = _dbos(work)  # noqa: N806
    flows = _register(DBOS)
    DBOS.launch()
    mode, wid, size = args[0], args[1], int(args[2])
    os.environ.update(PEERS_PHASE=mode, PEERS_WORK=str(work))
    if mode == "replay":  # DBOS.launch() recovers the pending workflow: wait for it
        DBOS.retrieve_workflow(wid).get_result()
    else:
        with SetWorkflowID(wid):
            if name == "listen":
                print(json.dumps(flows["listen"](size, str(work / "ready"))), flush=True)
            else:
                flows[name](size, wid)
    DBOS.destroy()


def _run_phase(work: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run([sys.executable, __file__, str(work), "phase", *args],
                         capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout


def _crash_then_replay(work: Path, name: str, size: int, tag: str) -> tuple[float, float]:
    """(recording, replaying) seconds of the workflow's steps: one process records them and
    dies, the next one recovers the workflow."""
    _run_phase(work, name, "crash", tag, str(size))
    _run_phase(work, name, "replay", tag, str(size))
    return (float((work / f"{tag}.crash.time").read_text()),
            float((work / f"{tag}.replay.time").read_text()))



def wake(work: Path, n: int) -> list[float]:
    """``DBOS.send`` from another process -> ``DBOS.recv`` returns in the waiting workflow."""
    from dbos import DBOSClient

    ready = work / "ready"
    ready.write_text("-1")
    listener = subprocess.Popen([sys.executable, __file__, str(work), "phase", "listen", "run",
                                 "listen-1", str(n)], stdout=subprocess.PIPE, text=True)
    client = DBOSClient(system_database_url=f"sqlite:///{work / 'dbos.sqlite'}")
    starts = []
    for i in range(n):
        while ready.read_text().strip() != str(i):
            time.sleep(0.002)
        time.sleep(random.uniform(0.1, 0.2))
        starts.append(time.time())
        client.send("listen-1", i, "tick")
    out, _ = listener.communicate(timeout=600)
    client.destroy()
    resumed = json.loads(out)
    return [r - s for s, r in zip(starts, resumed, strict=True)]


def main(work: Path) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    record, replay = zip(*(_crash_then_replay(work, "steps", N_STEPS, f"steps-{i}")
                           for i in range(3)), strict=True)
    plain = statistics.median(plain_loop(N_STEPS) for _ in range(3))
    arrays = {}
    for mb in (8, 200):
        pairs = [_crash_then_replay(work, "arrays", mb, f"arrays-{mb}-{i}") for i in range(3)]
        arrays[mb] = (statistics.median(p[0] for p in pairs),
                      statistics.median(p[1] for p in pairs))
    latencies = wake(work, N_EVENTS)
    import dbos

    return {
        "version": dbos.__version__ if hasattr(dbos, "__version__") else _version("dbos"),
        "where": "a plain script, SQLite system database",
        "step_ms": (statistics.median(record) - plain) / N_STEPS * 1000,
        "replay_step_ms": statistics.median(replay) / N_STEPS * 1000,
        "wake_p50_ms": pct(latencies, 50) * 1000, "wake_p99_ms": pct(latencies, 99) * 1000,
        "array_8mb_store_s": arrays[8][0], "array_8mb_restore_s": arrays[8][1],
        "array_200mb_store_s": arrays[200][0], "array_200mb_restore_s": arrays[200][1],
    }


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)



if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "phase":
        phase(Path(sys.argv[1]), *sys.argv[3:])
    else:
        print(json.dumps(main(Path(sys.argv[1]))))
