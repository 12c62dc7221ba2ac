"""The crash-injection soak of bench/soak.py, with a few trials: SIGKILLs at random moments of
Run All (``@step`` calls, ``once``, an 8 MB array, a wait), then every invariant checked. The
closing notes report it with 100 trials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


def test_a_few_random_kills_break_no_promise(tmp_path):
    out = subprocess.run([sys.executable, str(SOAK), "-n", "6", "--seed", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "every invariant held" in out.stdout, out.stdout + out.stderr
    assert "killed" in out.stdout  # some kill landed in a running kernel
