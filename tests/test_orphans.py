"""A killed driver's kernel never races the resumed run (the claim covers the kernel).

Real drivers (`nbdurable run`, `papermill --engine nbdurable`) on real kernels, started
directly or through a wrapper script that outlives the driver (as `conda run` or a shell
kernelspec does); the driver is SIGKILLed while its kernel executes a durable cell that ignores
SIGTERM and writes a heartbeat. The kernel must stop on its own, the run must never read
`crashed` while it lives, and the resumed run must execute the cell only after the orphan's
last heartbeat. A kernel that cannot stop itself (C code holding the GIL) is ended by the
resume, which says so."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kernels import wait_for_file
from test_batch import TIMEOUT, clean_env, effect, effects, write_notebook

import nbdurable as nbdurable_lib

SLOW = ("%%durable slow\nimport ctypes, os, pathlib, signal, time\n" + effect("slow")
        + "open('starts', 'a').write(f'{time.time()}\\n')\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if not pathlib.Path('resumed').exists():\n"
        "    pathlib.Path('kernel.pid').write_text(str(os.getpid()))\n"
        "    if pathlib.Path('hold-gil').exists():  # C code holding the GIL: no other thread\n"
        "        ctypes.PyDLL(None).system(b'touch in-c; exec sleep 600')  # of ours runs\n"
        "    while True:\n"
        "        open('beats', 'a').write(f'{time.time()}\\n')\n"
        "        time.sleep(0.01)\n")


def wrapper_kernel(work: Path) -> dict[str, str]:
    """A kernelspec whose process is a shell that starts Python and outlives the driver."""
    spec = work / "jupyter" / "kernels" / "wrapped"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["/bin/sh", "-c", f"{sys.executable} -m ipykernel_launcher -f \"$0\"; exit $?",
                 "{connection_file}"],
        "display_name": "wrapped", "language": "python"}))
    return {"JUPYTER_PATH": str(work / "jupyter")}


def driver_command(kind: str, kernel: str) -> list[str]:
    if kind == "nbdurable run":
        return [sys.executable, "-m", "nbdurable.cli", "run", "slow.ipynb", "out.ipynb",
                "--run-id", "k", "--kernel", kernel]
    return [sys.executable, "-m", "papermill", "--engine", "nbdurable", "slow.ipynb",
            "out.ipynb", "-k", kernel]


def executing(pid: int) -> bool:
    """Whether process ``pid`` still runs code: not gone, not a zombie, not exiting (the
    kernel releases a process's locks while it exits, before it becomes a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    pf_exiting = 0x4
    return fields[0] not in "ZX" and not int(fields[6]) & pf_exiting


def status(work: Path) -> str:
    runs = nbdurable_lib.runs(log=work / ".nbdurable" / "log.duckdb")
    return runs.set_index("run").loc["k", "status"]


@pytest.fixture(autouse=True)
def no_orphan_outlives_its_test(tmp_path):
    """If a test fails, the kernel it left running is ended with it (its process group)."""
    yield
    pid_file = tmp_path / "kernel.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)


def kill_driver_while_the_cell_runs(work: Path, kind: str, kernel: str, env: dict) -> int:
    write_notebook(work / "slow.ipynb", ["%load_ext nbdurable", "%%durable one\n"
                                         + effect("one"), SLOW])
    driver = subprocess.Popen(driver_command(kind, kernel), cwd=work, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for_file(work / ("in-c" if (work / "hold-gil").exists() else "beats"),
                  timeout=TIMEOUT)
    driver.kill()  # SIGKILL: the driver only; its kernel runs in a session of its own
    driver.wait(timeout=TIMEOUT)
    return int((work / "kernel.pid").read_text())


def resume(work: Path, kind: str, kernel: str, env: dict) -> subprocess.CompletedProcess:
    (work / "resumed").touch()
    command = driver_command(kind, kernel)
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.mark.parametrize("kernel", ["python3", "wrapped"])
@pytest.mark.parametrize("kind", ["nbdurable run", "papermill --engine nbdurable"])
def test_the_kernel_of_a_killed_driver_stops_before_the_run_can_resume(tmp_path, kind, kernel):
    work = tmp_path
    env = clean_env(NBDURABLE_RUN="k", **(wrapper_kernel(work) if kernel == "wrapped" else {}))
    pid = kill_driver_while_the_cell_runs(work, kind, kernel, env)
    deadline = time.monotonic() + TIMEOUT
    while (now := status(work)) != "crashed":  # polled in-process: every few milliseconds
        assert now == "running" and time.monotonic() < deadline, now
    assert not executing(pid), "the run reads resumable while its kernel executes it"
    out = resume(work, kind, kernel, env)
    assert out.returncode == 0, out.stderr
    assert effects(work) == Counter(one=1, slow=2)
    beats = [float(t) for t in (work / "beats").read_text().split()]
    starts = [float(t) for t in (work / "starts").read_text().split()]
    assert len(starts) == 2 and max(beats) < starts[1]


@pytest.mark.parametrize("kind", ["nbdurable run", "papermill --engine nbdurable"])
def test_a_resume_ends_an_orphan_that_cannot_stop_itself(tmp_path, kind):
    work = tmp_path
    (work / "hold-gil").touch()
    env = clean_env(NBDURABLE_RUN="k")
    pid = kill_driver_while_the_cell_runs(work, kind, "python3", env)
    out = resume(work, kind, "python3", env)
    assert out.returncode == 0, out.stderr
    assert f"ended process {pid} on" in out.stderr and "still executing it" in out.stderr
    assert not executing(pid)
    assert effects(work) == Counter(one=1, slow=2)
