"""Fingerprints of namespace values, and a tracker that avoids recomputing them.

A fingerprint is a short string that changes when a value changes:

- ``h:<xxh3-128>``: the digest of the value's encoding (see :mod:`nbdurable.engine.serializer`). A value
  restored or produced by a durable step keeps the digest that step recorded: its version.
- ``m:<name>``: a module (restored by re-import).
- ``t:<module.qualname>``: a value nbdurable cannot serialize (a client, a connection, a lock).
  Only its type is compared: changes inside it are not detected.

The tracker remembers, per name, the object and its fingerprint. A remembered fingerprint is
reused while the name still holds the same object and no plain cell touched the name since;
otherwise the value is hashed again, so in-place changes by plain cells are seen.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import xxhash

from nbdurable.engine import serializer


def module_fingerprint(module: types.ModuleType) -> str:
    return f"m:{module.__name__}"


def type_fingerprint(value: Any) -> str:
    cls = type(value)
    return f"t:{cls.__module__}.{cls.__qualname__}"


def fingerprint(value: Any, main_globals: dict[str, Any] | None = None
                ) -> tuple[str, serializer.Packed | None, str | None]:
    """(fingerprint, encoding or None, why it could not be encoded or None)."""
    if isinstance(value, types.ModuleType):
        return module_fingerprint(value), None, None
    try:
        packed = serializer.pack(value, main_globals=main_globals)
    except serializer.Unstorable as exc:
        return type_fingerprint(value), None, exc.reason
    return f"h:{packed.digest}", packed, None


def call_fingerprint(fn_fp: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                     main_globals: dict[str, Any] | None = None) -> str:
    """Of a call (``@step``, a child): changes when the function's code (``fn_fp``, its
    :func:`fingerprint`) or any argument changes."""
    parts = [fn_fp, *(fingerprint(a, main_globals)[0] for a in args)]
    parts += [f"{k}={fingerprint(v, main_globals)[0]}" for k, v in sorted(kwargs.items())]
    return xxhash.xxh3_128_hexdigest(json.dumps(parts).encode())


@dataclass
class _Known:
    obj: Any
    fingerprint: str
    clean: bool = True


class Tracker:
    """Fingerprints of the names of one namespace."""

    def __init__(self, namespace: MutableMapping[str, Any]):
        self.namespace = namespace
        self._known: dict[str, _Known] = {}

    def fingerprints(self, names: Iterable[str]) -> dict[str, str]:
        """Current fingerprints of those ``names`` that are bound."""
        return {n: self.current(n)[0] for n in sorted(names) if n in self.namespace}

    def current(self, name: str) -> tuple[str, serializer.Packed | None]:
        """Fingerprint of ``namespace[name]``, and its encoding if it had to be computed."""
        obj = self.namespace[name]
        known = self._known.get(name)
        if known is not None and known.obj is obj and known.clean:
            return known.fingerprint, None
        fp, packed, _ = fingerprint(obj, self._globals())
        if known is not None and known.obj is obj and known.fingerprint == fp:
            known.clean = True  # touched but unchanged: keep the version it had
        else:
            self._known[name] = _Known(obj, fp)
        return fp, packed

    def remember(self, name: str, obj: Any, fp: str) -> None:
        """A durable step produced or restored ``obj`` under ``name`` with version ``fp``."""
        self._known[name] = _Known(obj, fp)

    def forget(self, name: str) -> None:
        self._known.pop(name, None)

    def touched(self, names: Iterable[str] | None) -> None:
        """A plain cell ran and may have changed ``names`` (``None``: any name)."""
        candidates = list(self._known) if names is None else [n for n in names if n in self._known]
        for name in candidates:
            known = self._known[name]
            if self.namespace.get(name, _MISSING) is known.obj:
                known.clean = False
            else:
                del self._known[name]

    def _globals(self) -> dict[str, Any] | None:
        ns = self.namespace
        return ns if isinstance(ns, dict) else None


_MISSING = object()
