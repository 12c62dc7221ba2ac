"""The waiting panel and event buttons, clicked with real comm messages as a front end sends them,
on the current ipykernel (7.x) and on 6.29."""

from __future__ import annotations

import queue
import textwrap
import time

import pytest
from kernels import Kernel, wait_for_file

LOAD = "%load_ext nbdurable"


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


def test_panel_button_click_releases_the_waiting_cell(tmp_path, ipykernel_python):
    cell = textwrap.dedent("""
        %%durable approval
        import nbdurable
        decision = nbdurable.wait_any(nbdurable.Event("approve"), nbdurable.Event("reject"),
                                      nbdurable.Sleep(3600))
        print("decided", decision.index, decision.payload)
    """).strip()
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        fe = FrontEnd(k)
        msg_id = k.send(cell)
        button = fe.button("reject")
        field = fe.field_next_to(button)
        fe.type_into(field, '"shorter"')
        fe.click(button)
        reply = fe.reply_to(msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        fe.pump_iopub()
        assert "decided 1 shorter" in fe.text_of(msg_id)
        # the panel says what fired; the event was consumed once
        listed = k.execute("print(nbdurable.list_events()[['key', 'status']].values.tolist())")
        assert listed.stream() == "[['reject', 'consumed']]\n"
    with Kernel(tmp_path, python=ipykernel_python) as k:  # replayed: no panel, no waiting
        k.execute(LOAD)
        r = k.execute(cell)
        assert r.notices()[0]["kind"] == "replayed"
        assert "decided 1 shorter" in r.stream()


def test_a_reloaded_page_gets_the_panel_and_its_button_works(tmp_path, ipykernel_python):
    """A browser reload while a cell waits: the new page knows no models, opens
    ``jupyter.widget.control`` and sends ``request_states`` (as @jupyter-widgets/base does);
    it gets the panel's models back within the page's 4 s and its button still releases the
    cell."""
    cell = "%%durable reload\nimport nbdurable\nprint('got', nbdurable.wait_for_event('go'))"
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        fe = FrontEnd(k)
        msg_id = k.send(cell)
        fe.button("go")  # the first page saw the panel
        control = "control-" + str(time.monotonic_ns())
        opened = k.kc.session.msg("comm_open", {"comm_id": control, "data": {},
                                                "target_name": "jupyter.widget.control"},
                                  metadata={"version": "1.0.0"})
        k.kc.shell_channel.send(opened)
        asked = time.monotonic()
        request = fe.send(control, {"method": "request_states"})
        states = None
        while states is None and time.monotonic() - asked < 4.0:
            try:
                msg = k.kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            data = msg["content"].get("data", {})
            if (msg["msg_type"] == "comm_msg" and msg["parent_header"].get("msg_id") == request
                    and data.get("method") == "update_states"):
                states = data["states"]
        assert states is not None, "no update_states within 4 s"
        buttons = [model_id for model_id, model in states.items()
                   if model["model_name"] == "ButtonModel" and "go" in model["state"]["description"]]
        assert len(buttons) == 1, states
        fe.click(buttons[0])
        reply = fe.reply_to(msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        fe.pump_iopub()
        assert "got None" in fe.text_of(msg_id)


def test_the_panel_says_what_it_waits_for_counts_down_then_says_what_fired(tmp_path):
    cell = ("%%durable countdown\nimport nbdurable\n"
            "r = nbdurable.wait_any(nbdurable.Event('go'), nbdurable.Sleep(3600))")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        fe = FrontEnd(k)
        msg_id = k.send(cell)
        status = fe.find(lambda s: s.get("_model_name") == "HTMLModel"
                         and "waiting for event `go` or sleep 60 min" in s.get("value", ""))
        first = fe.models[status]["value"]
        assert "0:59:" in first and first.endswith("left"), first
        deadline = time.monotonic() + 10
        while fe.models[status]["value"] == first:  # the countdown moves, once a second
            assert time.monotonic() < deadline, "the countdown did not move"
            fe.pump_iopub()
        fe.click(fe.button("go"))
        assert fe.reply_to(msg_id)["content"]["status"] == "ok"
        fe.pump_iopub()
        assert fe.models[status]["value"].startswith("✔ event `go` fired")
        assert "nbdurable: event `go` fired" in fe.text_of(msg_id)


def test_slider_updates_and_other_cells_while_waiting(tmp_path, ipykernel_python):
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        fe = FrontEnd(k)
        fe.run("import ipywidgets as w\nslider = w.IntSlider(value=1, description='level')\n"
               "slider")
        slider = fe.find(lambda s: s.get("description") == "level")
        waiting = k.send("%%durable w\nimport nbdurable\n"
                               "got = nbdurable.wait_for_event('go')\nlevel_seen = slider.value")
        go = fe.button("go")  # the panel is up: the cell blocks in its wait
        later = k.send("print('later cell ran, slider at', slider.value)")
        fe.send(slider, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
        fe.click(go)  # handled after the update, in order, while the cell still waits
        assert fe.reply_to(waiting)["content"]["status"] == "ok"
        assert fe.reply_to(later)["content"]["status"] == "ok"
        fe.pump_iopub()
        assert fe.text_of(later) == "later cell ran, slider at 7\n"
        assert k.execute("print(level_seen)").stream() == "7\n"  # updated during the wait


def test_a_click_sent_while_the_waiting_cell_is_queued_is_not_lost(tmp_path, ipykernel_python):
    gate = tmp_path / "gate"
    busy = tmp_path / "busy"
    with Kernel(tmp_path, python=ipykernel_python) as k:
        k.execute(LOAD)
        k.execute("%%durable setup\nx = 1")
        fe = FrontEnd(k)
        fe.run("import nbdurable\nnbdurable.event_button('go', {'from': 'button'})")
        button = fe.button("go")
        first = k.send(f"import pathlib, time\npathlib.Path({str(busy)!r}).touch()\n"
                             f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.01)")
        waiting = k.send("%%durable waits\nimport nbdurable\n"
                               "got = nbdurable.wait_for_event('go', timeout=120)\nprint(got)")
        wait_for_file(busy)
        fe.click(button)  # the waiting cell is still queued behind `first`
        time.sleep(0.3)
        gate.touch()
        assert fe.reply_to(first)["content"]["status"] == "ok"
        reply = fe.reply_to(waiting)
        assert reply["content"]["status"] == "ok", reply["content"]
        fe.pump_iopub()
        assert "{'from': 'button'}\n" in fe.text_of(waiting)
        n = k.execute("print(len(nbdurable.list_events()))").stream()
        assert n == "1\n"  # seen by the watcher and by the button: one event


def test_event_button_in_another_kernel_on_the_same_log(tmp_path):
    with Kernel(tmp_path) as waiter, Kernel(tmp_path) as other:
        waiter.execute(LOAD)
        msg_id = waiter.send("%%durable w\nimport nbdurable\n"
                                   "print(nbdurable.wait_for_event('ok'))")
        wait = FrontEnd(waiter)
        wait.button("ok")  # waiting
        fe = FrontEnd(other)
        fe.run("import nbdurable\n"
               "b = nbdurable.event_button('ok', 'from elsewhere', run='test-run')\nb")
        fe.click(fe.button("ok"))
        assert wait.reply_to(msg_id)["content"]["status"] == "ok"
        wait.pump_iopub()
        assert "from elsewhere" in wait.text_of(msg_id)


def test_await_form_gets_clicks_on_ipykernel_7_4(tmp_path):
    import ipykernel

    major, minor = (int(p) for p in ipykernel.__version__.split(".")[:2])
    if (major, minor) < (7, 4):
        pytest.skip("comm messages reach an awaiting cell from ipykernel 7.4 on")
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        fe = FrontEnd(k)
        fe.run("import nbdurable\nnbdurable.event_button('async-go', 5)")
        button = fe.button("async-go")
        msg_id = k.send("%%durable a\nv = await nbdurable.wait_for_event_async('async-go')"
                              "\nv * 2")
        time.sleep(0.2)
        fe.click(button)
        reply = fe.reply_to(msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert k.execute("print(v)").stream() == "5\n"
