"""The ``%%durable``, ``%durable_run`` and ``%durable_log`` magics."""

from __future__ import annotations

import ast

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from nbdurable import settings


@magics_class
class DurableMagics(Magics):
    # The options, declared the IPython way (they make `%%durable?`); the line itself is read by
    # nbdurable.engine.header.parse_line, which batch runs share, with the same messages.
    @magic_arguments(name="%durable")
    @argument("name", metavar="NAME", nargs="?", help="the step's name, unique in the "
              "notebook; without it, the step is named after the cell's id (cell-ID)")
    @argument("--force", action="store_true",
              help="execute the body even when a valid checkpoint exists")
    @argument("--replace", action="store_true",
              help="this cell takes the step NAME over from the cell that recorded it")
    @cell_magic
    def durable(self, line: str, cell: str):
        """Make this cell a durable step: %%durable [NAME] [--force] [--replace]

        The cell's outputs and the variables it produces are checkpointed in the log. When the
        cell runs again with the same source and unchanged inputs (for example after a kernel
        restart), its body does not execute: the variables are restored and the outputs are
        shown again. --force executes the body even when a valid checkpoint exists.

        Each attempt records the cell's id (JupyterLab and Notebook 7 send it). A copied cell
        that kept its original's NAME is refused while the original still is that step; when
        the cell was moved or re-created, --replace (or simply the original's absence) lets it
        take the step over. Without a NAME the step is named after the cell's id.

        %%durable must be the first line of the cell; other cell magics such as %%time may
        come just before or just after it.
        """
        # Normally the input transformer handles %%durable before IPython sees a cell magic.
        # This path serves explicit run_cell_magic("durable", ...) calls.
        shell = self.shell
        assert shell is not None, "a registered magic has a shell"
        code = shell.transform_cell(f"%%durable {line}\n{cell}")
        tree = shell.transform_ast(shell.compile.ast_parse(code))
        *stmts, last = tree.body
        ns = shell.user_ns
        compile_ = shell.compile  # IPython's CachingCompiler: it takes an AST (its stub says str)
        exec(compile_(ast.Module(stmts, []), "<durable>", "exec"), ns)  # type: ignore[arg-type]
        if isinstance(last, ast.Expr):
            return eval(compile_(ast.Expression(last.value), "<durable>", "eval"),  # type: ignore[arg-type]
                        ns)
        exec(compile_(ast.Module([last], []), "<durable>", "exec"), ns)  # type: ignore[arg-type]
        return None

    @line_magic
    def durable_run(self, line: str):
        """Show the run id and log of this notebook, or change the run id: %durable_run [RUN]"""
        run = line.strip()
        if run:
            settings.configure(run=run)
        current = settings.run_id(self.shell.user_ns if self.shell is not None else None)
        print(f"run {current!r} in log {settings.log_path()}")

    @line_magic
    def durable_log(self, line: str):
        """A live view of a run (default: this notebook's), its steps, waits and events, with
        actions: %durable_log [RUN]"""
        from nbdurable.ipython.viewer import view

        return view(line.strip() or None)
