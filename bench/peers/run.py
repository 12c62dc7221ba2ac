"""Side by side with the peers, on the same work and machine: ``python bench/peers/run.py``.

Installs the peers (pinned) into their own venv, ``bench/peers/.venv-peers`` — never into the
project's — and measures, in this one run:

- nbdurable: in a real kernel (``%%durable`` cells, ``@nbdurable.step``), and the trivial step
  also in a plain script through the engine;
- DBOS Transact: in a plain script on its SQLite system database (its synchronous API refuses to
  run inside a live event loop, which a Jupyter kernel is);
- Kishu: in real kernels of the peers' venv, on generated 60-cell notebooks (small cells, and a
  mix of arrays, lists, dicts and in-place edits), next to nbdurable's ``%%durable`` cells and
  plain cells on the same notebooks (``notebook_side.py``);
- plain re-execution, the floor every user already has: the same calls, cells, Run All;
- the floor: ``pickle.dump`` + fsync, ``pickle.load``, xxh3-128 of the same arrays.

Prints a table (workload, nbdurable, DBOS, Kishu, plain, floor, nbdurable / best peer) and
writes it as JSON to ``bench/results/peers.json``. A peer that fails to install or to run says
why in its column; the rest still runs. A dash: the tool has no such thing (DBOS has no
notebook cells, Kishu no steps or events).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PEERS = {"dbos": ["dbos==3.4.0", "numpy"], "kishu": ["kishu==0.3.4"]}
VENV = HERE / ".venv-peers"
RESULTS = HERE.parent / "results" / "peers.json"

#: (key, workload, unit); None in a figure: the tool has no such thing.
ROWS = [
    ("step_ms", "trivial step, overhead per step over a plain call", "ms"),
    ("step_script_ms", "... the same in a plain script (nbdurable: through its engine)", "ms"),
    ("replay_step_ms", "replay of a recorded step after a restart, per step", "ms"),
    ("wake_p50_ms", "event wake, push in another process -> wait returns, p50", "ms"),
    ("wake_p99_ms", "event wake, p99", "ms"),
    ("array_8mb_store_s", "step returning an 8 MB array: checkpoint", "s"),
    ("array_8mb_restore_s", "... restore after a restart", "s"),
    ("array_200mb_store_s", "step returning a 200 MB array: checkpoint", "s"),
    ("array_200mb_restore_s", "... restore after a restart", "s"),
    ("import_s", "import time", "s"),
    ("cell_small_ms", "notebook, overhead per cell: 60 small cells", "ms"),
    ("cell_mixed_ms", "... 60 mixed cells (1 MB arrays, lists, dicts, in-place edits)", "ms"),
    ("cell_first10_ms", "... mixed, cells 1-10", "ms"),
    ("cell_last10_ms", "... mixed, cells 51-60 (growth)", "ms"),
    ("restore_20_s", "20-cell notebook: state back after a restart", "s"),
    ("bytes_per_live_byte", "bytes stored per byte of live state (60 mixed cells)", "x"),
]


def peers_python() -> tuple[str | None, dict[str, str]]:
    """The peers' interpreter, and why each peer that could not be installed is missing."""
    failed: dict[str, str] = {}
    if not (VENV / "bin" / "python").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True,
                              text=True)
        if made.returncode:
            return None, {p: f"no venv: {made.stderr.strip()[-200:]}" for p in PEERS}
    python = str(VENV / "bin" / "python")
    for peer, pins in PEERS.items():
        out = subprocess.run([python, "-m", "pip", "install", "-q", *pins],
                             capture_output=True, text=True)
        if out.returncode:
            failed[peer] = "failed to install: " + (out.stderr.strip().splitlines() or ["?"])[-1]
    return python, failed


def import_seconds(python: str, code: str) -> float:
    def wall(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([python, "-c", code], check=True)
        return time.perf_counter() - t

    pairs = [(wall("pass"), wall(code)) for _ in range(7)]  # interleaved
    return statistics.median(b - a for a, b in pairs)


def run_dbos(python: str, work: Path) -> dict[str, object]:
    out = subprocess.run([python, str(HERE / "dbos_side.py"), str(work)], capture_output=True,
                         text=True, timeout=1800)
    if out.returncode:
        return {"error": "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1]}
    figures: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    figures["import_s"] = import_seconds(python, "import dbos")
    figures["step_script_ms"] = figures["step_ms"]  # DBOS runs in a plain script anyway
    return figures


def measure(work: Path) -> dict[str, dict[str, object]]:
    import floor
    import nbdurable_side
    import notebook_side

    python, failed = peers_python()
    results: dict[str, dict[str, object]] = {}
    results["nbdurable"] = nbdurable_side.measure(work / "nbdurable")
    # what a durable step needs: the package, its engine and DuckDB (`import nbdurable` alone
    # is lazy; a fresh run writes its journal first, a restarted kernel opens the log)
    results["nbdurable"]["import_s"] = import_seconds(
        sys.executable, "import nbdurable, duckdb; nbdurable.step; nbdurable.wait_for_event")
    results["dbos"] = ({"error": failed["dbos"]} if "dbos" in failed or python is None
                       else run_dbos(python, work / "dbos"))
    kishu = None if "kishu" in failed or python is None else python
    notebooks = notebook_side.measure(work / "notebooks", kishu)
    results["nbdurable"].update(notebooks["nbdurable"])
    results["kishu"] = ({"error": failed.get("kishu", "no peers' venv")} if kishu is None
                        else kishu_figures(kishu, notebooks["kishu"]))
    results["plain"] = {**plain_figures(), **notebooks["plain"]}
    results["floor"] = floor.measure(work / "floor")
    return results


def kishu_figures(python: str, notebooks: dict[str, object]) -> dict[str, object]:
    if "error" in notebooks:
        return notebooks
    return {**notebooks, "version": PEERS["kishu"][0].split("==")[1],
            "import_s": import_seconds(python, "from kishu import init_kishu"),
            "where": "real kernels of the peers' venv: init_kishu, a commit per cell, "
                     "checkout of the last commit to restore (Kishu's test mode: no front end)"}


def plain_figures() -> dict[str, object]:
    """Re-executing instead of restoring: the trivial call again, the arrays computed again
    (``np.ones``), nothing stored. Every side effect repeats."""
    import numpy as np
    from common import plain_loop

    def compute(mb: int) -> float:
        t = time.perf_counter()
        np.ones(mb * 2**20 // 8)
        return time.perf_counter() - t

    n = 200
    return {"step_ms": 0.0, "replay_step_ms": statistics.median(
                plain_loop(n) for _ in range(5)) / n * 1000,
            "array_8mb_restore_s": statistics.median(compute(8) for _ in range(5)),
            "array_200mb_restore_s": statistics.median(compute(200) for _ in range(3)),
            "import_s": 0.0,
            "where": "plain code run again (cells: Run All): nothing stored, every side "
                     "effect repeated"}


def table(results: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    rows = []
    for key, workload, unit in ROWS:
        row: dict[str, object] = {"workload": workload, "unit": unit}
        for tool in ("nbdurable", "dbos", "kishu", "plain", "floor"):
            row[tool] = results[tool].get(key) if "error" not in results[tool] else None
        peers = [v for v in (row["dbos"], row["kishu"]) if isinstance(v, (int, float))]
        ours = row["nbdurable"]
        row["ratio"] = (ours / min(peers) if isinstance(ours, (int, float)) and peers
                        and min(peers) > 0 else None)
        rows.append(row)
    return rows


def render(rows: list[dict[str, object]], results: dict[str, dict[str, object]]) -> str:
    def cell(value: object, unit: str) -> str:
        if not isinstance(value, (int, float)):
            return "—"
        if unit == "x":
            return f"{value:.2f}x"
        return f"{value:.2f} {unit}" if unit == "ms" else f"{value:.3f} {unit}"

    lines = ["| workload | nbdurable | DBOS | Kishu | plain | floor | nbdurable / best peer |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        unit = str(row["unit"])
        ratio = f"{row['ratio']:.2f}x" if isinstance(row["ratio"], float) else "—"
        lines.append(f"| {row['workload']} | " + " | ".join(
            cell(row[t], unit) for t in ("nbdurable", "dbos", "kishu", "plain", "floor"))
            + f" | {ratio} |")
    for tool in ("nbdurable", "dbos", "kishu", "plain"):
        about = results[tool].get("error") or results[tool].get("where")
        version = results[tool].get("version", "")
        lines.append(f"- {tool}{' ' + str(version) if version else ''}: {about}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbdurable-peers-", ignore_cleanup_errors=True) as tmp:
        results = measure(Path(tmp))
    rows = table(results)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}\n")
    print(render(rows, results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"measured_at": datetime.now(UTC).isoformat(),
                                   "machine": machine, "rows": rows, "results": results},
                                  indent=2, default=str))
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
