"""binder/ is what a visitor of mybinder gets: build it as repo2docker does (a fresh venv, the
requirements, then postBuild in a copy of the repository) and run every notebook headless in it.
A broken binder/ fails here, not in front of a visitor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info", "__pycache__",
                              ".nbdurable", ".pytest_cache", ".mypy_cache", ".ruff_cache")


@pytest.mark.binder
def test_binder_builds_and_runs_every_notebook(tmp_path):
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    shutil.copytree(ROOT, repo, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("NBDURABLE_", "PYTEST_", "JPY_", "VIRTUAL_ENV"))},
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    steps = [[str(venv / "bin" / "pip"), "install", "-q", "-r", "binder/requirements.txt"],
             ["bash", "binder/postBuild"]]
    for step in steps:
        done = subprocess.run(step, cwd=repo, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{' '.join(step)}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    driver = subprocess.run([str(venv / "bin" / "python"), str(ROOT / "tests" / "binder_driver.py"),
                             str(repo / "notebooks"), str(tmp_path / "work")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert driver.returncode == 0, driver.stdout + driver.stderr[-3000:]
    ran = sorted(line.split(":")[0] for line in driver.stdout.splitlines() if ": ok in" in line)
    assert ran == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")), driver.stdout
