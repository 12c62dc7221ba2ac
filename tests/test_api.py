"""The public names of ``nbdurable``: each resolves to what the docs say, even after every
submodule was imported (a submodule named like a function would shadow it)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import nbdurable


def test_public_names_survive_importing_every_submodule():
    for info in pkgutil.walk_packages(nbdurable.__path__, "nbdurable."):
        importlib.import_module(info.name)
    for name in nbdurable.__all__:
        value = getattr(nbdurable, name)
        if name == "errors":
            assert inspect.ismodule(value)
        elif name != "__version__":
            assert not inspect.ismodule(value), f"nbdurable.{name} is a module"
            assert callable(value), f"nbdurable.{name} is not callable"
