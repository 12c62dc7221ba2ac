"""Virtual environments with another ipykernel, for tests that must run against it.

nbdurable supports ipykernel 6.29 and every 7.x, whose internals differ (see
``nbdurable/ipython/pump.py``). The test venv has the newest ipykernel; :func:`python_for`
builds (once per test session, in a temporary directory) a venv with
``ipykernel==VERSION``, ``ipywidgets>=8`` and this repository installed from a copy of its
source, and returns that venv's python, to pass to ``kernels.Kernel(python=...)``.

Builds run in a background thread, started as soon as pytest knows a selected test needs them
(see ``conftest.py``), so they overlap the tests that run on the current interpreter. A failed
build raises :class:`BuildFailed` with pip's output: the fixtures turn that into a test failure,
never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The oldest supported ipykernel: every test parametrized over kernels runs on it too.
OLD_IPYKERNEL = "6.29.5"

BUILD_TIMEOUT = 900.0

_SKIP = {".git", ".venv", "venv", ".venv-ci", "build", "dist", "__pycache__", ".pytest_cache",
         ".ruff_cache", ".mypy_cache", ".nbdurable", "node_modules", ".ipynb_checkpoints"}


def extra_versions() -> list[str]:
    """More ipykernel versions to test, from ``NBDURABLE_TEST_IPYKERNELS`` (comma-separated,
    e.g. ``7.0.1,7.3.0``)."""
    raw = os.environ.get("NBDURABLE_TEST_IPYKERNELS", "")
    return [v.strip() for v in raw.split(",") if v.strip() and v.strip() != OLD_IPYKERNEL]


def versions() -> list[str]:
    """The ipykernel versions tested besides the current interpreter's."""
    return [OLD_IPYKERNEL, *extra_versions()]


class BuildFailed(Exception):
    """The venv could not be built; the message holds the command's output."""


class _Build:
    def __init__(self, version: str):
        self.version = version
        self.root = Path(tempfile.mkdtemp(prefix=f"nbd-ipykernel-{version}-"))
        self.python: str | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._process: subprocess.Popen | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=f"venv-{version}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _command(self, *argv: str) -> str:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
        if self._cancelled:
            raise BuildFailed("cancelled")
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, text=True)
        try:
            output, _ = self._process.communicate(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            output, _ = self._process.communicate()
            raise BuildFailed(f"$ {' '.join(argv)}\ntimed out after {BUILD_TIMEOUT:.0f}s\n{output}") from None
        if self._process.returncode != 0:
            raise BuildFailed(f"$ {' '.join(argv)}\nexit {self._process.returncode}\n{output}")
        return output

    def _run(self) -> None:
        try:
            src = self.root / "src"
            shutil.copytree(REPO, src, ignore=_ignore)
            venv = self.root / "venv"
            self._command(sys.executable, "-m", "venv", str(venv))
            python = str(venv / "bin" / "python")
            self._command(python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                          f"ipykernel=={self.version}", "ipywidgets>=8", str(src))
            found = self._command(python, "-c", "import ipykernel, ipywidgets, "
                                  "nbdurable.ipython.pump; print(ipykernel.__version__)").strip()
            if found != self.version:
                raise BuildFailed(f"asked for ipykernel {self.version}, the venv has {found}")
            self.python = python
        except BuildFailed as exc:
            self.error = str(exc)
        except Exception as exc:  # copytree, venv creation...
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def wait(self, timeout: float = BUILD_TIMEOUT + 60) -> str:
        if not self.done.wait(timeout):
            raise BuildFailed(f"building the ipykernel {self.version} venv took over {timeout:.0f}s")
        if self.python is None:
            raise BuildFailed(f"could not build a venv with ipykernel {self.version} "
                              f"(in {self.root}):\n{self.error}")
        return self.python

    def cancel(self) -> None:
        self._cancelled = True
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        self._thread.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP or n.endswith(".egg-info")}


_builds: dict[str, _Build] = {}
_lock = threading.Lock()


def start(version: str) -> None:
    """Start building the venv for ``version`` in the background (no-op if already started)."""
    with _lock:
        if version not in _builds:
            build = _Build(version)
            _builds[version] = build
            build.start()


def python_for(version: str) -> str:
    """The python of a venv with ``ipykernel==version``; builds it first if needed.

    Raises :class:`BuildFailed` (with pip's output) if it cannot be built.
    """
    start(version)
    return _builds[version].wait()


def cleanup() -> None:
    """Stop unfinished builds and delete every venv built in this session."""
    with _lock:
        builds = list(_builds.values())
        _builds.clear()
    for build in builds:
        build.cancel()
