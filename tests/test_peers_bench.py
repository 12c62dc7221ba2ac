"""bench/peers: a peer that cannot run says why in its column, and the rest still runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent.parent / "bench" / "peers"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(PEERS))
    for name in ("run", "notebook_side", "common"):
        sys.modules.pop(name, None)
    import notebook_side
    import run

    monkeypatch.setattr(notebook_side, "ROUNDS", 1)
    monkeypatch.setattr(notebook_side, "N_CELLS", 7)
    monkeypatch.setattr(notebook_side, "N_RESTORE", 4)
    return run, notebook_side


def test_a_peer_that_fails_says_why_and_the_others_are_measured(peers, tmp_path):
    run, notebook_side = peers
    broken = tmp_path / "no-such-python"  # Kishu's kernel cannot start
    figures = notebook_side.measure(tmp_path / "work", str(broken), progress=lambda _: None)
    assert figures["kishu"]["error"].startswith("failed: "), figures["kishu"]
    ours, plain = figures["nbdurable"], figures["plain"]
    assert ours["cell_small_ms"] > 0 and ours["bytes_per_live_byte"] > 0, ours
    assert plain["restore_20_s"] > 0 and plain["bytes_per_live_byte"] == 0, plain

    results = {"nbdurable": ours, "plain": plain, "floor": {},
               "dbos": {"error": "failed to install: no matching distribution"},
               "kishu": figures["kishu"]}
    rows = run.table(results)
    text = run.render(rows, results)
    cell_row = next(r for r in rows if r["workload"].startswith("notebook, overhead"))
    assert cell_row["kishu"] is None and cell_row["ratio"] is None  # no peer figure: no ratio
    assert "- dbos: failed to install: no matching distribution" in text
    assert "- kishu: failed: " in text
