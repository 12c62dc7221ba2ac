"""Which namespace names a cell reads, binds and deletes, from its syntax tree.

This is a static over-approximation used with a namespace diff at run time:

- ``loads``: names the cell may read from the notebook namespace: loads at module level, and
  loads inside functions, lambdas, classes and comprehensions that are not local to them.
- ``binds``: names bound at module level (assignments, imports, ``def``, ``class``, ``for``,
  ``with ... as``, walrus, ``except ... as``, ``match`` captures, and ``global`` names stored
  inside functions).
- ``deletes``: names removed with a module-level ``del``.

Functions defined in the notebook also read globals when they are *called*; :func:`expand`
follows their code objects so that a cell calling ``helper()`` depends on what ``helper`` reads.
"""

from __future__ import annotations

import ast
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CellNames:
    loads: frozenset[str]
    binds: frozenset[str]
    deletes: frozenset[str]
    #: loads that may see a value from before the cell: not preceded by a definite binding
    reads: frozenset[str] = frozenset()


@dataclass
class _Scope:
    kind: str  # "module", "function", "class", "comprehension"
    local: set[str] = field(default_factory=set)
    declared_global: set[str] = field(default_factory=set)
    loads: set[str] = field(default_factory=set)
    #: free names of functions nested in a class: they skip the class body's names
    passthrough: set[str] = field(default_factory=set)


def analyse(tree: ast.AST | Iterable[ast.stmt]) -> CellNames:
    """Names read, bound and deleted at module level by ``tree`` (a module or its statements)."""
    body = tree.body if isinstance(tree, ast.Module) else list(tree)  # type: ignore[arg-type]
    visitor = _Visitor()
    reads: set[str] = set()
    bound: set[str] = set()  # definitely bound by an earlier top-level statement
    for stmt in body:
        loads_before = visitor.global_loads | visitor.module.loads
        visitor.visit(stmt)
        new_loads = (visitor.global_loads | visitor.module.loads) - loads_before
        reads |= new_loads - bound
        bound |= _definite_binds(stmt)
    module = visitor.module
    return CellNames(frozenset(visitor.global_loads | module.loads),
                     frozenset(module.local), frozenset(visitor.deletes - module.local),
                     frozenset(reads))


def _definite_binds(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement always binds when it completes."""
    if isinstance(stmt, ast.Assign):
        return {n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        return {n.id for n in ast.walk(stmt.target) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in stmt.names if a.name != "*"}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    return set()


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.module = _Scope("module")
        self.stack: list[_Scope] = [self.module]
        self.global_loads: set[str] = set()
        self.deletes: set[str] = set()

    @property
    def scope(self) -> _Scope:
        return self.stack[-1]

    # -- bindings ---------------------------------------------------------------------------
    def _bind(self, name: str, scope: _Scope | None = None) -> None:
        scope = scope or self.scope
        if name in scope.declared_global or scope.kind == "module":
            self.module.local.add(name)
            if scope.kind != "module":
                scope.local.discard(name)
        else:
            scope.local.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.scope.loads.add(node.id)
        elif isinstance(node.ctx, ast.Del) and self._is_module_level(node.id):
            self.deletes.add(node.id)
            self.module.local.discard(node.id)
        else:
            self._bind(node.id)

    def _is_module_level(self, name: str) -> bool:
        return self.scope.kind == "module" or name in self.scope.declared_global

    def visit_Global(self, node: ast.Global) -> None:
        self.scope.declared_global.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.scope.local.update(node.names)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self._bind(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs | ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name)
        self.generic_visit(node)

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self._bind(node.rest)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # A walrus in a comprehension binds in the enclosing non-comprehension scope.
        target = next(s for s in reversed(self.stack) if s.kind != "comprehension")
        self._bind(node.target.id, target)

    # -- new scopes -------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *_defaults(node.args), node.returns]:
            if expr is not None:
                self.visit(expr)
        self._bind(node.name)
        self._in_scope("function", node, params=_params(node.args), body=node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _defaults(node.args):
            self.visit(expr)
        self._in_scope("function", node, params=_params(node.args), body=[node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._bind(node.name)
        self._in_scope("class", node, params=(), body=node.body)

    def _comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        generators = node.generators  # type: ignore[attr-defined]
        self.visit(generators[0].iter)  # evaluated in the enclosing scope
        rest: list[ast.AST] = [generators[0].target, *generators[0].ifs]
        for gen in generators[1:]:
            rest += [gen.target, gen.iter, *gen.ifs]
        self._in_scope("comprehension", node, params=(), body=rest + elements)

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp
    visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def _in_scope(self, kind: str, node: ast.AST, *, params: Iterable[str],
                  body: Sequence[ast.AST]) -> None:
        scope = _Scope(kind, local=set(params))
        self.stack.append(scope)
        for child in body:
            self.visit(child)
        self.stack.pop()
        self._resolve(scope)

    def _resolve(self, scope: _Scope) -> None:
        """Loads that ``scope`` does not bind itself are loads of the enclosing scope."""
        self.global_loads |= scope.loads & scope.declared_global
        free = (scope.loads - scope.local - scope.declared_global) | scope.passthrough
        enclosing = self.scope
        if enclosing.kind == "module":
            self.global_loads |= free
        elif enclosing.kind == "class":
            enclosing.passthrough |= free
        else:
            enclosing.loads |= free


def _params(args: ast.arguments) -> list[str]:
    names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return names


def _defaults(args: ast.arguments) -> list[ast.AST]:
    return [d for d in [*args.defaults, *args.kw_defaults] if d is not None]


# -- following functions defined in the notebook ------------------------------------------------

def expand(names: Iterable[str], namespace: Mapping[str, object]) -> set[str]:
    """``names`` plus the globals read by notebook functions and classes among them, transitively."""
    result: set[str] = set()
    todo = [n for n in names if n in namespace]
    while todo:
        name = todo.pop()
        if name in result:
            continue
        result.add(name)
        for code in _code_objects(namespace[name], namespace):
            todo.extend(n for n in _code_names(code) if n in namespace and n not in result)
    return result


def _code_objects(value: object, namespace: Mapping[str, object]) -> list[types.CodeType]:
    """Code objects of a function or class whose globals are ``namespace``."""
    if isinstance(value, types.FunctionType):
        return [value.__code__] if value.__globals__ is namespace else []
    if isinstance(value, type):
        codes = []
        for attr in vars(value).values():
            func = getattr(attr, "__func__", attr)
            func = getattr(func, "fget", func)
            if isinstance(func, types.FunctionType) and func.__globals__ is namespace:
                codes.append(func.__code__)
        return codes
    return []


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names
