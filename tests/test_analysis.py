"""Which names a cell reads, binds and deletes (pure logic)."""

import ast

import pytest

from nbdurable.engine.analysis import analyse, expand


def names(src):
    return analyse(ast.parse(src))


def test_module_level_reads_binds_and_deletes():
    n = names("a = b + 1\ndel c\nimport numpy as np, os.path\nfrom x import y as z\n"
              "for t in items: pass\nwith open(fn) as fh: pass\n")
    assert n.binds == {"a", "np", "os", "z", "t", "fh"}
    assert n.deletes == {"c"}
    assert {"b", "items", "fn", "open"} <= n.reads


def test_function_locals_are_not_reads_but_free_names_are():
    n = names("def f(p, q=dflt):\n    loc = p\n    return loc + q + glob\n")
    assert n.binds == {"f"}
    assert n.reads == {"dflt", "glob"}


def test_global_statement_binds_at_module_level():
    n = names("def f():\n    global g\n    g = h\nf()\n")
    assert "g" in n.binds and "h" in n.reads


def test_comprehension_targets_are_local_and_walrus_binds_outside():
    n = names("out = [i * k for i in rng if (w := i)]\n")
    assert n.reads == {"k", "rng"}
    assert n.binds == {"out", "w"}


def test_class_body_names_do_not_leak_into_methods():
    n = names("class C(Base):\n    attr = 1\n    def m(self):\n        return attr + self.x\n")
    assert n.reads == {"Base", "attr"}  # the method's `attr` is a global, not the class's
    assert n.binds == {"C"}


def test_names_bound_before_they_are_read_are_not_reads():
    n = names("y = x + 1\nprint(y)\nimport math\nz = math.sqrt(y)\nx = x + 1\n")
    assert n.reads == {"x", "print"}
    assert {"y", "math", "z", "x"} <= n.binds


def test_conditional_binding_keeps_the_read():
    n = names("if flag:\n    v = 1\nprint(v)\n")
    assert "v" in n.reads


def test_in_place_mutation_is_a_read():
    assert names("lst.append(4)\ndf['c'] = 1\n").reads == {"lst", "df"}


def test_except_match_and_lambda():
    n = names("try:\n    pass\nexcept E as err:\n    pass\n"
              "match cmd:\n    case [a, *rest]:\n        pass\n    case {'k': b, **kw}:\n        pass\n"
              "lam = lambda u: u + v\n")
    assert {"err", "a", "rest", "b", "kw", "lam"} <= n.binds
    assert {"E", "cmd", "v"} <= n.reads and "u" not in n.reads


def test_top_level_await_parses():
    assert names("await thing()\nr = 1\n").reads == {"thing"}


def test_expand_follows_notebook_functions_transitively():
    ns = {}
    exec("rate = 2\nbase = 1\ndef other():\n    return base\n"
         "def helper():\n    return rate + other()\nclass K:\n    def m(self):\n        return helper()\n",
         ns)
    assert expand(["K"], ns) == {"K", "helper", "other", "rate", "base"}
    assert expand(["missing"], ns) == set()


@pytest.mark.parametrize("src", ["x = 1", "", "pass"])
def test_trivial_cells(src):
    n = names(src)
    assert n.reads == frozenset()
