"""Which log and which run."""

import pytest

from nbdurable import settings
from nbdurable.errors import ConfigError


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for var in ("NBDURABLE_LOG", "NBDURABLE_RUN", "JPY_SESSION_NAME"):
        monkeypatch.delenv(var, raising=False)
    settings.reset()
    yield
    settings.reset()


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert settings.log_path() == tmp_path / ".nbdurable" / "log.duckdb"
    assert settings.run_id({}) == "default"


def test_order_of_precedence(tmp_path, monkeypatch):
    ns = {"run_id": "param", "__session__": str(tmp_path / "nb.ipynb")}
    assert settings.run_id(ns) == "param"
    assert settings.run_id({"__session__": "/x/y/nb.ipynb"}) == "nb.ipynb"
    assert settings.run_id({"__vsc_ipynb_file__": "/x/vs.ipynb"}) == "vs.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", "/a/b/lab.ipynb")
    assert settings.run_id({}) == "lab.ipynb"
    monkeypatch.setenv("NBDURABLE_RUN", "env-run")
    assert settings.run_id(ns) == "env-run"
    settings.configure(run="explicit", log=tmp_path / "l.duckdb")
    assert settings.run_id(ns) == "explicit"
    monkeypatch.setenv("NBDURABLE_LOG", str(tmp_path / "env.duckdb"))
    assert settings.log_path() == tmp_path / "l.duckdb"


def test_bad_values_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is a directory"):
        settings.configure(log=tmp_path)
    with pytest.raises(ConfigError, match="non-empty"):
        settings.configure(run="  ")
    monkeypatch.setenv("NBDURABLE_RUN", "a\x01b")
    with pytest.raises(ConfigError, match="NBDURABLE_RUN"):
        settings.run_id({})
    assert settings.run_id.__doc__


def test_a_log_argument_that_is_neither_a_path_nor_a_log_is_refused(tmp_path, monkeypatch):
    import nbdurable
    from nbdurable.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="log must be a path or an open log, got int"):
        nbdurable.history("r", log=42)
    assert list(tmp_path.iterdir()) == []  # nothing created
