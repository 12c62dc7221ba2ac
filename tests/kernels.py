"""Real IPython kernels for tests: started with jupyter_client, driven over ZMQ, killed with SIGKILL.

Nothing here fakes a kernel: each :class:`Kernel` is a separate ``ipykernel`` process running the
installed nbdurable, with its own environment (log file, run id) and working directory.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from traitlets.config import Config

STARTUP_TIMEOUT = 60
CELL_TIMEOUT = 120


@dataclass
class Reply:
    """What one execute request produced: IOPub outputs in order, and the shell reply."""

    status: str
    execution_count: int | None
    outputs: list[dict] = field(default_factory=list)
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] = field(default_factory=list)

    def stream(self, name: str = "stdout") -> str:
        return "".join(m["content"]["text"] for m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    def of_type(self, msg_type: str) -> list[dict]:
        return [m["content"] for m in self.outputs if m["msg_type"] == msg_type]

    @property
    def result(self) -> dict | None:
        results = self.of_type("execute_result")
        return results[-1] if results else None

    def notices(self) -> list[dict]:
        return [c["metadata"]["nbdurable"] for c in self.of_type("display_data")
                if "nbdurable" in (c.get("metadata") or {})]


def ipc_prefix() -> str:
    """Unix sockets (no TCP ports) at an absolute path: kernels run in other directories."""
    return os.path.join(tempfile.mkdtemp(prefix="nbd-"), "k")


def kernel_env(workdir: Path, **extra: str) -> dict[str, str]:
    # PYTEST_CURRENT_TEST would make ipykernel skip forwarding fd 1/2 (subprocess output).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("NBDURABLE_RUN", None)
    env.pop("NBDURABLE_LOG", None)
    env.pop("JPY_SESSION_NAME", None)
    env.update({"NBDURABLE_LOG": str(workdir / "log.duckdb"), "NBDURABLE_RUN": "test-run",
                "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    env.update(extra)
    return env


class Kernel:
    """One running ipykernel process."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None,
                 kernel_name: str = "python3", python: str | None = None):
        """``python``: run the kernel with that interpreter (another venv, e.g. an older
        ipykernel) instead of this one."""
        self.workdir = workdir
        extra = {"kernel_spec_manager": _spec_manager(python)} if python else {}
        if python:
            kernel_name = "nbdurable-test"
        self.km = KernelManager(kernel_name=kernel_name, transport="ipc", ip=ipc_prefix(),
                                **extra)
        self.km.start_kernel(cwd=str(workdir), env=env or kernel_env(workdir))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        self.pid = int(self.execute("import os; print(os.getpid())").stream().strip())

    def send(self, code: str, cell_id: str | None = None) -> str:
        """Queue ``code`` as a cell; returns the request's msg_id. An error in it does not
        abort the requests queued behind it (``stop_on_error``): a request sent right after
        an error reply would otherwise be aborted unexecuted, depending on timing.
        ``cell_id``: sent as JupyterLab sends it, ``metadata.cellId`` of the request."""
        if cell_id is None:
            return self.kc.execute(code, store_history=True, stop_on_error=False)
        content = {"code": code, "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": False}
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def execute(self, code: str, timeout: float = CELL_TIMEOUT,
                cell_id: str | None = None) -> Reply:
        """Run ``code`` as a cell and wait until the kernel is idle again."""
        msg_id = self.send(code, cell_id)
        outputs = self._collect(msg_id, timeout)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        content = reply["content"]
        return Reply(content["status"], content.get("execution_count"), outputs,
                     content.get("ename"), content.get("evalue"), content.get("traceback", []))

    def reply_to(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> dict:
        """The shell reply to ``msg_id``, reading IOPub meanwhile (a front end always does; a
        kernel drops IOPub messages that nobody reads beyond its high-water mark)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.kc.get_shell_msg(timeout=0.1)
            except queue.Empty:
                self._drain_iopub()
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                self._drain_iopub()
                return reply
        raise TimeoutError(f"no reply to {msg_id} within {timeout}s")

    def _drain_iopub(self) -> None:
        try:
            while True:
                self.kc.get_iopub_msg(timeout=0)
        except queue.Empty:
            return

    def execute_until_death(self, code: str, timeout: float = CELL_TIMEOUT) -> None:
        """Run ``code``, which is expected to kill the kernel; wait until the process is gone."""
        self.send(code)
        self.wait_dead(timeout)

    def wait_dead(self, timeout: float = CELL_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.km.is_alive():
                return
            time.sleep(0.02)
        raise AssertionError(f"kernel {self.pid} still alive after {timeout}s")

    def _collect(self, msg_id: str, timeout: float) -> list[dict]:
        outputs = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no idle status for {msg_id} in {timeout}s")
            try:
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                return outputs
            if kind in ("stream", "display_data", "execute_result", "error", "clear_output",
                        "update_display_data"):
                outputs.append({"msg_type": kind, "content": msg["content"]})

    def sigkill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.wait_dead()

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=not self.km.is_alive())

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _spec_manager(python: str):
    """A kernelspec running ``python -m ipykernel_launcher``, in a directory of its own."""
    from jupyter_client.kernelspec import KernelSpecManager

    root = Path(tempfile.mkdtemp(prefix="nbd-spec-"))
    spec = root / "kernels" / "nbdurable-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"test kernel ({python})", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(root / "kernels")])


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def run_notebook(nb: nbformat.NotebookNode, workdir: Path, env: dict[str, str] | None = None,
                 allow_errors: bool = False) -> nbformat.NotebookNode:
    """Run All in a fresh kernel with nbclient; returns the executed notebook."""
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = ipc_prefix()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", config=config,
                            allow_errors=allow_errors,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env or kernel_env(workdir))
    return nb


def wait_for_file(path: Path, timeout: float = 60.0) -> None:
    """Wait until a cell signals progress by creating ``path``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)


def approval_cell(counter: Path) -> str:
    """A durable cell ``approval`` that counts its executions in ``counter`` (a side effect),
    then waits for the event ``approve`` and prints its payload."""
    return textwrap.dedent(f"""
        %%durable approval
        open({str(counter)!r}, 'a').write('x\\n')
        import nbdurable
        answer = nbdurable.wait_for_event("approve")
        print("got", answer)
    """).strip()


def count(path: Path) -> int:
    """Lines in a side-effect counter file (one line appended per execution)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


PYTHON = sys.executable
