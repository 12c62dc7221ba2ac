"""How a ``%%durable`` cell becomes ordinary Python that IPython runs like any other cell.

The input transformer replaces the ``%%durable NAME [--force]`` line by a marker call on the
same line (so line numbers stay those of the cell) and transforms the rest of the cell as IPython
would, so ``%%time``, ``!cmd`` and line magics keep working inside. The AST transformer then turns
the marked module::

    %%durable load                     __nbdurable__.enter('TOKEN')   # decides
    df = fetch()                  ->   if __nbdurable__.executing:
    df.head()                              df = fetch()
                                       (__nbdurable__.done(df.head()) if __nbdurable__.executing
                                        else __nbdurable__.replayed_result())

The body runs in the cell's own frame, with no try/except around it: tracebacks, ``Out[n]``,
top-level ``await`` and nested cell magics behave as in a plain cell.
"""

from __future__ import annotations

import ast
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from nbdurable.engine.analysis import CellNames, analyse
from nbdurable.engine.header import LINE as _LINE, parse_line
from nbdurable.errors import UsageError

RUNTIME = "__nbdurable__"
MARKER = "__nbdurable_cell__"


@dataclass
class CellRequest:
    """What the input transformer read from a ``%%durable`` line, plus the body."""

    name: str | None  # None: unnamed, the cell id names the step
    force: bool
    body: str
    error: str | None = None
    names: CellNames | None = None
    replace: bool = False


class Requests:
    """Cells seen by the input transformer, by token (transforming twice gives the same token)."""

    def __init__(self, limit: int = 512):
        self._items: OrderedDict[str, CellRequest] = OrderedDict()
        self._limit = limit

    def add(self, request: CellRequest, key: str) -> str:
        token = xxhash.xxh3_64_hexdigest(key.encode())
        self._items[token] = request
        self._items.move_to_end(token)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
        return token

    def get(self, token: str) -> CellRequest | None:
        return self._items.get(token)


class InputTransformer:
    """A line transform for IPython's TransformerManager (``line_transforms``)."""

    def __init__(self, shell, requests: Requests):
        self.shell = shell
        self.requests = requests
        self._bodies: OrderedDict[str, list[str]] = OrderedDict()  # IPython transforms twice

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines:
            return lines
        match = _LINE.match(lines[0].rstrip())
        if match is None:
            return lines
        body = "".join(lines[1:])
        header = parse_line(match.group("args") or "")
        token = self.requests.add(CellRequest(header.name, header.force, body, header.error,
                                              replace=header.replace), "".join(lines))
        marker = f"{MARKER}({token!r})  # {lines[0].strip()}\n"
        return [marker, *self._transform_body(lines[1:])]

    def _transform_body(self, lines: list[str]) -> list[str]:
        """The body as IPython would transform it, keeping its leading blank lines."""
        blank = 0
        while blank < len(lines) and not lines[blank].strip():
            blank += 1
        rest = "".join(lines[blank:])
        found = self._bodies.get(rest)
        if found is None:
            transformed = self.shell.transform_cell(rest) if rest.strip() else ""
            found = self._bodies[rest] = transformed.splitlines(keepends=True)
            while len(self._bodies) > 64:
                self._bodies.popitem(last=False)
        return ["\n"] * blank + found


class AstTransformer(ast.NodeTransformer):
    """Wraps a marked module so that the runtime decides whether its body runs."""

    def __init__(self, requests: Requests):
        self.requests = requests

    def visit_Module(self, node: ast.Module) -> ast.Module:
        token = _marker_token(node)
        if token is None:
            return node
        request = self.requests.get(token)
        body = node.body[1:]
        if request is not None and request.names is None:
            request.names = analyse(body)
        node.body = _wrap(token, node.body[0], body)
        return node


def _marker_token(node: ast.Module) -> str | None:
    if not node.body:
        return None
    first = node.body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
            and isinstance(first.value.func, ast.Name) and first.value.func.id == MARKER
            and len(first.value.args) == 1 and isinstance(first.value.args[0], ast.Constant)):
        token = first.value.args[0].value
        return token if isinstance(token, str) else None
    return None


def _runtime_call(method: str, *args: ast.expr) -> ast.Call:
    func = ast.Attribute(ast.Name(RUNTIME, ast.Load()), method, ast.Load())
    return ast.Call(func, list(args), [])


def _executing() -> ast.expr:
    return ast.Attribute(ast.Name(RUNTIME, ast.Load()), "executing", ast.Load())


def _wrap(token: str, marker: ast.stmt, body: list[ast.stmt]) -> list[ast.stmt]:
    enter = ast.copy_location(ast.Expr(_runtime_call("enter", ast.Constant(token))), marker)
    last = body[-1] if body and isinstance(body[-1], ast.Expr) else None
    stmts = body[:-1] if last is not None else body
    out: list[ast.stmt] = [enter]
    if last is None:
        done = ast.copy_location(ast.Expr(_runtime_call("done")), body[-1] if body else marker)
        out.append(ast.copy_location(ast.If(_executing(), [*stmts, done], []), marker))
        return out
    if stmts:
        out.append(ast.copy_location(ast.If(_executing(), stmts, []), marker))
    value = ast.IfExp(_executing(), _runtime_call("done", last.value),
                      _runtime_call("replayed_result"))
    out.append(ast.copy_location(ast.Expr(ast.copy_location(value, last.value)), last))
    return out


def raise_for(request: CellRequest | None) -> CellRequest:
    """The request behind a marker, or a clear error."""
    if request is None:
        raise UsageError("this %%durable cell was transformed by another session; run it again")
    if request.error:
        raise UsageError(request.error)
    return request
