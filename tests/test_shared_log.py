"""One log file, many processes: two kernels at once, scripts reading it, bad files untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import duckdb
from kernels import Kernel, count, kernel_env

LOAD = "%load_ext nbdurable"


def test_two_kernels_interleave_durable_cells_on_one_log(tmp_path):
    n = 12
    counters = {run: tmp_path / f"count-{run}" for run in ("left", "right")}
    kernels = {run: Kernel(tmp_path, kernel_env(tmp_path, NBDURABLE_RUN=run))
               for run in counters}
    try:
        for k in kernels.values():
            k.execute(LOAD)
        # Queue every cell on both kernels first, so that they really run at the same time.
        sent = {run: [k.send(
            f"%%durable step{i}\nopen({str(counters[run])!r}, 'a').write('x\\n')\n"
            f"v{i} = {i} * 2\nprint('{run}', v{i})") for i in range(n)]
            for run, k in kernels.items()}
        for run, k in kernels.items():
            for _ in sent[run]:
                reply = k.kc.get_shell_msg(timeout=120)
                assert reply["content"]["status"] == "ok", reply["content"]
        script = textwrap.dedent(f"""
            import nbdurable
            h = nbdurable.history(all_runs=True, log={str(tmp_path / 'log.duckdb')!r})
            print(h.groupby('run')['status'].apply(lambda s: (s == 'completed').sum()).to_dict())
        """)
        # A third process reads the log while both kernels hold it open and idle.
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str({"left": n, "right": n})
        for k in kernels.values():
            assert k.execute(f"print(v{n - 1})").stream() == f"{(n - 1) * 2}\n"
    finally:
        for k in kernels.values():
            k.shutdown()
    assert count(counters["left"]) == count(counters["right"]) == n


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_garbage_log_file_is_refused_and_untouched(tmp_path):
    log = tmp_path / "log.duckdb"
    log.write_bytes(b"this is my thesis, not a database\n" * 100)
    before = _digest(log)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute("%%durable s\nx = 1")
    assert r.status == "error" and r.ename == "NotALogError"
    assert str(log) in r.evalue and len(r.traceback) == 1
    assert _digest(log) == before
    assert not (tmp_path / "log.duckdb.wal").exists()


def test_newer_schema_log_is_refused_and_untouched(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        assert k.execute("%%durable s\nx = 1").status == "ok"
    con = duckdb.connect(str(log))
    con.execute("UPDATE nbdurable_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    before = _digest(log)
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        r = k.execute("%%durable s\nx = 1")
    assert r.status == "error" and r.ename == "LogVersionError"
    assert "999" in r.evalue and "upgrade" in r.evalue.lower()
    assert _digest(log) == before
