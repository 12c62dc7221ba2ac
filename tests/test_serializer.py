"""Encoding values: out-of-band buffers, notebook functions with live globals, refusals."""

import io
import pickle
import threading

import numpy as np
import pandas as pd
import pytest

from nbdurable.engine import serializer


def roundtrip(value, ns=None, via_file=False):
    packed = serializer.pack(value, main_globals=ns)
    data = packed.to_bytes()
    assert len(data) == packed.size
    with serializer.loading_into(ns):
        if via_file:
            return serializer.unpack_file(io.BytesIO(data))
        return serializer.unpack_bytes(data)


def test_plain_values_roundtrip_and_digest_is_stable():
    value = {"a": [1, 2.5, "x"], "b": (None, True), "c": b"bytes"}
    assert roundtrip(value) == value
    assert serializer.pack(value).digest == serializer.pack(dict(value)).digest
    assert serializer.pack(value).digest != serializer.pack({**value, "a": [1]}).digest


@pytest.mark.parametrize("value", [0, -7, 2**80, 3.25, float("inf"), "", "é" * 70_000,
                                   b"\x00" * 70_000, True, None])
def test_plain_scalars_encode_exactly_as_the_general_pickler_does(value, monkeypatch):
    """Their fast path must not change a byte: recorded fingerprints of map items, @step
    arguments and results stay valid across versions."""
    fast = serializer.pack(value)
    monkeypatch.setattr(serializer, "_PLAIN_SCALARS", frozenset())
    general = serializer.pack(value)
    assert (fast.digest, fast.size, fast.to_bytes()) == \
        (general.digest, general.size, general.to_bytes())
    assert roundtrip(value) == value


@pytest.mark.parametrize("via_file", [False, True])
def test_large_arrays_go_out_of_band_and_come_back_writable(via_file):
    arr = np.arange(1_000_000, dtype=np.float64)
    packed = serializer.pack(arr)
    assert len(packed.chunks) == 3  # header, stream, one raw buffer
    assert packed.chunks[2].nbytes == arr.nbytes
    back = roundtrip(arr, via_file=via_file)
    assert np.array_equal(back, arr) and back.flags.writeable
    back[0] = 5  # in-place changes after a restore must work


def test_dataframes_roundtrip():
    df = pd.DataFrame({"a": np.arange(100_000), "b": ["x"] * 100_000})
    pd.testing.assert_frame_equal(roundtrip(df, via_file=True), df)


def test_notebook_functions_use_the_live_namespace():
    ns = {"__name__": "__main__"}
    exec("rate = 2\ndef f(x):\n    return x * rate\n"
         "def outer():\n    y = 5\n    def inner():\n        return y + rate\n    return inner\n"
         "inner = outer()\nclass K:\n    def m(self):\n        return rate + 1\n", ns)
    target = {"__name__": "__main__", "rate": 100}
    packed = serializer.pack([ns["f"], ns["inner"], ns["K"]()], main_globals=ns)
    with serializer.loading_into(target):
        f, inner, k = serializer.unpack_bytes(packed.to_bytes())
    assert f.__globals__ is target
    assert (f(1), inner(), k.m()) == (100, 105, 101)
    target["rate"] = 1
    assert f(3) == 3
    assert "rate" in target and target["rate"] == 1  # restoring did not clobber the namespace


def test_function_digest_does_not_depend_on_values_of_globals():
    ns = {"__name__": "__main__"}
    exec("big = list(range(10))\ndef f():\n    return big\n", ns)
    d1 = serializer.pack(ns["f"], main_globals=ns).digest
    ns["big"] = [0]
    assert serializer.pack(ns["f"], main_globals=ns).digest == d1


@pytest.mark.parametrize("value, words", [
    (threading.Lock(), "lock"),
    ((i for i in range(3)), "generator"),
])
def test_unstorable_values_say_why(value, words):
    with pytest.raises(serializer.Unstorable) as info:
        serializer.pack(value)
    assert words in info.value.reason


def test_open_files_are_refused(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("hi")
    with open(path) as fh, pytest.raises(serializer.Unstorable, match="open file"):
        serializer.pack(fh)


def test_bad_magic_and_truncation_are_errors():
    with pytest.raises(ValueError, match="magic"):
        serializer.unpack_bytes(b"XXXX" + b"\0" * 12)
    data = serializer.pack(np.arange(100_000)).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        serializer.unpack_file(io.BytesIO(data[:-10]))


def test_pickle_of_unpicklable_object_in_reduce_is_unstorable():
    class Bad:
        def __reduce__(self):
            raise RuntimeError("nope")

    with pytest.raises(serializer.Unstorable, match="nope"):
        serializer.pack(Bad())
    assert pickle.loads(pickle.dumps(1)) == 1


DEFINITIONS = '''
import enum, os
from dataclasses import dataclass, field
def f(x):
    return os.path.join(x, "y")
class Base:
    def hello(self):
        return "base"
class K(Base):
    LIMIT = 3
    def hello(self):
        return super().hello() + "!"
@dataclass
class Item:
    name: str
    tags: list = field(default_factory=list)
class Color(enum.Enum):
    RED = 1
values = {"f": f, "K": K, "k": K(), "items": [Item("a", [1]), Item("b")], "Color": Color,
          "cfg": {"a": [1, 2]}}
'''


def test_notebook_definitions_fingerprint_the_same_in_every_process():
    import os
    import subprocess
    import sys

    script = ("import sys, json\nfrom nbdurable.engine.fingerprint import fingerprint\n"
              "ns = sys.modules['__main__'].__dict__\n"
              f"exec({DEFINITIONS!r}, ns)\n"
              "print(json.dumps({k: fingerprint(v, ns)[0] for k, v in ns['values'].items()}))")
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"t:' not in out.stdout  # every value could be encoded
        outs.add(out.stdout)
    assert len(outs) == 1


def test_restored_instances_belong_to_the_live_class_of_the_same_definition():
    first = {"__name__": "__main__"}
    exec(DEFINITIONS, first)
    packed = serializer.pack(first["values"]["items"], main_globals=first)
    second = {"__name__": "__main__"}
    exec(DEFINITIONS, second)  # the same cell, run again: a new class object
    serializer.track_classes(second)
    with serializer.loading_into(second):
        items = serializer.unpack_bytes(packed.to_bytes())
    assert isinstance(items[0], second["Item"]) and items[0].tags == [1]


def test_pickling_instances_does_not_change_the_class_fingerprint():
    from nbdurable.engine.fingerprint import fingerprint

    ns = {"__name__": "__main__"}
    exec(DEFINITIONS, ns)
    before = fingerprint(ns["Item"], ns)[0]
    serializer.pack(ns["values"]["items"], main_globals=ns)  # caches __slotnames__ on Item
    assert fingerprint(ns["Item"], ns)[0] == before


def test_a_value_pickled_by_0_1_names_its_old_module_and_still_loads(monkeypatch):
    import importlib
    import sys

    from nbdurable.engine import waits

    # Pickle a WaitResult as nbdurable 0.1 did, under its old module `nbdurable.waits`.
    monkeypatch.setitem(sys.modules, "nbdurable.waits", waits)
    for cls in (waits.WaitResult, waits.Event):
        monkeypatch.setattr(cls, "__module__", "nbdurable.waits")
    data = serializer.pack(waits.WaitResult(1, waits.Event("go"), {"by": "ann"})).to_bytes()
    assert b"nbdurable.waits" in data and b"nbdurable.engine.waits" not in data
    monkeypatch.undo()
    assert "nbdurable.waits" not in sys.modules
    back = serializer.unpack_bytes(data)
    assert type(back) is waits.WaitResult and back.payload == {"by": "ann"}
    for new in serializer.MOVED_MODULES.values():  # every old name leads somewhere real
        importlib.import_module(new)
