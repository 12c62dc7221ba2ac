"""The widget side of a front end, for tests: real comm messages over a real kernel's channels."""

from __future__ import annotations

import queue
import time

from kernels import Kernel


class FrontEnd:
    """The widget side of a front end: sees widget models opened on IOPub, sends comm messages."""

    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.models: dict[str, dict] = {}  # comm_id -> state
        self.outputs: list[dict] = []

    def pump_iopub(self, timeout: float = 0.1) -> None:
        try:
            while True:
                msg = self.k.kc.get_iopub_msg(timeout=timeout)
                if msg["msg_type"] == "comm_open":
                    c = msg["content"]
                    self.models[c["comm_id"]] = dict(c["data"].get("state", {}))
                elif msg["msg_type"] == "comm_msg":
                    c = msg["content"]
                    if c["data"].get("method") == "update" and c["comm_id"] in self.models:
                        self.models[c["comm_id"]].update(c["data"].get("state", {}))
                elif msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                    self.outputs.append(msg)
                timeout = 0.01
        except queue.Empty:
            return

    def find(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump_iopub()
            for comm_id, state in self.models.items():
                if predicate(state):
                    return comm_id
        raise AssertionError(f"no widget model matched; models: {list(self.models.values())}")

    def button(self, key: str) -> str:
        return self.find(lambda s: s.get("_model_name") == "ButtonModel"
                         and key in s.get("description", ""))

    def field_next_to(self, button: str) -> str:
        """The payload field in the same row (HBox) as ``button``."""
        ref = f"IPY_MODEL_{button}"
        row = self.find(lambda s: s.get("_model_name") == "HBoxModel"
                        and ref in s.get("children", []))
        other = [c for c in self.models[row]["children"] if c != ref]
        return other[0].removeprefix("IPY_MODEL_")

    def send(self, comm_id: str, data: dict) -> str:
        msg = self.k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.k.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def click(self, comm_id: str) -> str:
        return self.send(comm_id, {"method": "custom", "content": {"event": "click"}})

    def type_into(self, comm_id: str, text: str) -> None:
        self.send(comm_id, {"method": "update", "state": {"value": text}, "buffer_paths": []})

    def reply_to(self, msg_id: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.k.kc.get_shell_msg(timeout=0.2)
            except queue.Empty:
                self.pump_iopub(0.01)
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply
        raise AssertionError(f"no reply to {msg_id} within {timeout}s")

    def run(self, code: str) -> dict:
        """Execute a cell and wait for its reply, keeping the widget models it opens."""
        reply = self.reply_to(self.k.send(code))
        assert reply["content"]["status"] == "ok", reply["content"]
        self.pump_iopub()
        return reply

    def text_of(self, msg_id: str) -> str:
        return "".join(m["content"].get("text", "") for m in self.outputs
                       if m["parent_header"].get("msg_id") == msg_id
                       and m["msg_type"] == "stream")

    def wait_for(self, comm_id: str, predicate, timeout: float = 60.0) -> dict:
        """Until the state of ``comm_id`` satisfies ``predicate`` (updates pushed by the
        kernel, read as they come)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump_iopub()
            if predicate(self.models[comm_id]):
                return self.models[comm_id]
        raise AssertionError(f"widget {comm_id} never matched; its state: {self.models[comm_id]}")

    def html_with(self, text: str, timeout: float = 60.0) -> str:
        return self.find(lambda s: s.get("_model_name") == "HTMLModel"
                         and text in s.get("value", ""), timeout)

    def select(self, comm_id: str, index: int) -> None:
        """Choose option ``index`` of a Dropdown, as the browser does."""
        self.send(comm_id, {"method": "update", "state": {"index": index}, "buffer_paths": []})
