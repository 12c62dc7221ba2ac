"""Fingerprints and the tracker that reuses them."""

import threading
import types

from nbdurable.engine.fingerprint import Tracker, fingerprint


def test_kinds_of_fingerprint():
    assert fingerprint(types)[0] == "m:types"
    assert fingerprint([1, 2])[0].startswith("h:")
    fp, packed, why = fingerprint(threading.Lock())
    assert fp == "t:_thread.lock" and packed is None and "lock" in why


def test_values_that_change_get_new_fingerprints():
    assert fingerprint([1, 2])[0] == fingerprint([1, 2])[0]
    assert fingerprint([1, 2])[0] != fingerprint([1, 2, 3])[0]


def test_tracker_reuses_versions_until_a_plain_cell_touches_the_name():
    ns = {"lst": [1, 2]}
    t = Tracker(ns)
    t.remember("lst", ns["lst"], "h:version-from-a-step")
    assert t.fingerprints(["lst"]) == {"lst": "h:version-from-a-step"}
    t.touched(["other"])
    assert t.fingerprints(["lst"]) == {"lst": "h:version-from-a-step"}
    ns["lst"].append(3)
    t.touched(["lst"])
    fp = t.fingerprints(["lst"])["lst"]
    assert fp.startswith("h:") and fp != "h:version-from-a-step"


def test_touched_but_unchanged_keeps_the_version():
    ns = {"cfg": {"a": 1}}
    t = Tracker(ns)
    real = fingerprint(ns["cfg"])[0]
    t.remember("cfg", ns["cfg"], real)
    t.touched(None)
    assert t.fingerprints(["cfg"]) == {"cfg": real}


def test_rebinding_is_noticed_and_missing_names_are_skipped():
    ns = {"x": 1}
    t = Tracker(ns)
    t.remember("x", ns["x"], "h:v1")
    ns["x"] = 2
    t.touched(["x"])
    assert t.fingerprints(["x", "nope"]) == {"x": fingerprint(2)[0]}
