"""Shared fixtures. Only fixtures and collection hooks here: test modules keep importing their
helpers directly (``from kernels import ...``)."""

from __future__ import annotations

import oldkernel
import pytest

#: Fixtures and parameters that need an older-ipykernel venv.
_OLD_FIXTURE = "old_ipykernel_python"


@pytest.fixture
def run_log(tmp_path, monkeypatch):
    """A log holding run ``r1``, set as this process's ``NBDURABLE_LOG`` / ``NBDURABLE_RUN``."""
    import nbdurable
    from nbdurable import settings

    monkeypatch.setenv("NBDURABLE_LOG", str(tmp_path / "log.duckdb"))
    monkeypatch.setenv("NBDURABLE_RUN", "r1")
    settings.reset()
    nbdurable.once("create-the-run", lambda: None)
    return tmp_path / "log.duckdb"


@pytest.fixture(scope="session")
def old_ipykernel_python() -> str:
    """Python of a venv with ipykernel 6.29.5 (the oldest supported), ipywidgets 8 and this
    repository, built once per session (~1 min, PyPI needed). Fails, never skips, if pip fails."""
    return _python_for(oldkernel.OLD_IPYKERNEL)


@pytest.fixture(params=["current", *oldkernel.versions()],
                ids=lambda v: f"ipykernel-{v}")
def ipykernel_python(request) -> str | None:
    """Run a test once per supported ipykernel: ``None`` is this interpreter (its own ipykernel,
    7.x), otherwise the python of a venv with that ipykernel (6.29.5, plus any listed in
    ``NBDURABLE_TEST_IPYKERNELS``). Pass it as ``kernels.Kernel(..., python=...)``."""
    return None if request.param == "current" else _python_for(request.param)


def _python_for(version: str) -> str:
    try:
        return oldkernel.python_for(version)
    except oldkernel.BuildFailed as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)  # outside `except`: pip's output only, once


def _old_versions_of(item: pytest.Item) -> set[str]:
    found = set()
    if _OLD_FIXTURE in getattr(item, "fixturenames", ()):
        found.add(oldkernel.OLD_IPYKERNEL)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        param = callspec.params.get("ipykernel_python")
        if param is not None and param != "current":
            found.add(param)
    return found


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start building the venvs the selected tests need, in the background, and run those tests
    last, so the build overlaps everything else."""
    needed: set[str] = set()
    for item in items:
        needed |= _old_versions_of(item)
    if not needed or config.getoption("collectonly", False):
        return
    for version in sorted(needed):
        oldkernel.start(version)
    items.sort(key=lambda item: bool(_old_versions_of(item)))  # stable


def pytest_sessionfinish(session, exitstatus) -> None:
    oldkernel.cleanup()
