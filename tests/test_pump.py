"""ShellPump and watch_comms on real kernels (ipykernel 7.x of this interpreter, and 6.29).

Each test drives a real ipykernel like a front end does: cells go out as ``execute_request``,
widget events as ``comm_open``/``comm_msg`` on the shell channel, and every IOPub message is
kept, in order, to check what came back and for which request. The cell under test blocks in
``with ShellPump(kernel) as pump: while not ...: pump.poll(0.01)``, as nbdurable's waits do.
"""

from __future__ import annotations

import json
import queue
import time
import uuid

import pytest
from kernels import Kernel

TIMEOUT = 30.0

PRELUDE = r'''
import json, threading, time
import ipykernel, ipywidgets as widgets
from nbdurable.ipython.pump import (ShellPump, CommRegistry, watch_comms, unwatch_comms,
                                    dispatching)
kernel = get_ipython().kernel
KERNEL_MAJOR = int(ipykernel.__version__.split(".")[0])
clicks = []
def on_click(_button):
    clicks.append(dispatching())
    print("clicked", flush=True)
button = widgets.Button(description="go")
button.on_click(on_click)

def block(until, limit=30.0):
    """A durable wait: block in poll(0.01) until until(), at most `limit` seconds."""
    t0 = time.monotonic()
    with ShellPump(kernel) as pump:
        print("waiting", pump.supported, flush=True)
        held = 0
        while not until() and time.monotonic() - t0 < limit:
            pump.poll(0.01)
            if pump.held != held:
                held = pump.held
                print("held", held, flush=True)
    print("released" if until() else "timed out", flush=True)
    return pump

print(json.dumps({"button": button.model_id, "ipykernel": ipykernel.__version__}))
'''


class Front:
    """One kernel, driven the way a front end drives it."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.kc = kernel.kc
        self.iopub: list[dict] = []
        self.replies: dict[str, dict] = {}
        info = json.loads(self.run(PRELUDE).strip().splitlines()[-1])
        self.button: str = info["button"]
        self.version: str = info["ipykernel"]
        self.major = int(self.version.split(".")[0])

    # -- sending -------------------------------------------------------------------------------
    def execute(self, code: str, **kwargs) -> str:
        return self.kc.execute(code, **kwargs)

    def send(self, msg_type: str, content: dict, metadata: dict | None = None) -> str:
        msg = self.kc.session.msg(msg_type, content, metadata=metadata or {})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def comm_msg(self, comm_id: str, data: dict) -> str:
        return self.send("comm_msg", {"comm_id": comm_id, "data": data})

    def click(self, comm_id: str | None = None) -> str:
        """What ipywidgets' front end sends when a Button is clicked."""
        return self.comm_msg(comm_id or self.button,
                             {"method": "custom", "content": {"event": "click"}})

    # -- receiving -----------------------------------------------------------------------------
    def _read(self, timeout: float) -> None:
        try:
            self.iopub.append(self.kc.get_iopub_msg(timeout=timeout))
        except queue.Empty:
            pass
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=0)
            except queue.Empty:
                break
            self.replies[reply["parent_header"].get("msg_id")] = reply

    def wait(self, condition, what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                seen = [(m["msg_type"], m["parent_header"].get("msg_type"),
                         str(m["content"])[:120]) for m in self.iopub[-15:]]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"last IOPub messages: {seen}")
            self._read(0.05)

    def of(self, parent_id: str, msg_type: str | None = None) -> list[dict]:
        return [m for m in self.iopub if m["parent_header"].get("msg_id") == parent_id
                and (msg_type is None or m["msg_type"] == msg_type)]

    def text(self, parent_id: str) -> str:
        return "".join(m["content"]["text"] for m in self.of(parent_id, "stream"))

    def index(self, parent_id: str, state: str) -> int:
        for i, m in enumerate(self.iopub):
            if (m["parent_header"].get("msg_id") == parent_id and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == state):
                return i
        raise AssertionError(f"no {state} status for {parent_id}")

    def is_idle(self, parent_id: str) -> bool:
        return any(m["content"]["execution_state"] == "idle" for m in self.of(parent_id, "status"))

    def finish(self, msg_id: str, timeout: float = TIMEOUT) -> dict:
        """Wait until the request is done; its reply content."""
        self.wait(lambda: self.is_idle(msg_id) and msg_id in self.replies,
                  f"the end of {msg_id}", timeout)
        return self.replies[msg_id]["content"]

    def wait_text(self, msg_id: str, text: str, timeout: float = TIMEOUT) -> None:
        self.wait(lambda: text in self.text(msg_id), f"{text!r} from the cell", timeout)

    def run(self, code: str, timeout: float = TIMEOUT) -> str:
        msg_id = self.execute(code)
        reply = self.finish(msg_id, timeout)
        assert reply["status"] == "ok", (reply, self.text(msg_id))
        return self.text(msg_id)


@pytest.fixture
def front(request, tmp_path, ipykernel_python):
    """A kernel of the ipykernel version the test is parametrized with, prelude run."""
    with Kernel(tmp_path, python=ipykernel_python) as kernel:
        front = Front(kernel)
        wanted = request.node.callspec.params["ipykernel_python"]
        if wanted == "current":
            assert front.major == 7, f"the test venv should have ipykernel 7.x: {front.version}"
        else:
            assert front.version == wanted
        yield front


# ---------------------------------------------------------------------------------------------
def test_click_during_wait_releases_it(front):
    """(1) A click reaches its handler while the cell blocks; handler errors don't stop the pump;
    a handler's output belongs to its comm message, the cell's own output to the cell."""
    bad_button = front.run(r'''
bad_calls = []
def bad_target(comm, open_msg):
    @comm.on_msg
    def _(msg):
        bad_calls.append(msg["content"]["data"])
        raise ValueError("comm handler failed on purpose")
kernel.comm_manager.register_target("nbd-test-bad", bad_target)
bad_button = widgets.Button()
def bad_click(_):
    raise RuntimeError("click handler failed on purpose")
bad_button.on_click(bad_click)
print(bad_button.model_id)
''')
    bad_button = bad_button.strip()
    cell = front.execute("pump = block(lambda: clicks)\nprint('after', pump.dispatched)")
    front.wait_text(cell, "waiting True")

    bad_comm = uuid.uuid4().hex
    front.send("comm_open", {"comm_id": bad_comm, "target_name": "nbd-test-bad", "data": {}})
    front.comm_msg(bad_comm, {"n": 1})
    bad_click = front.click(bad_button)
    good_click = front.click()

    reply = front.finish(cell)
    assert reply["status"] == "ok", reply
    assert "released" in front.text(cell)
    assert "after 4" in front.text(cell)  # comm_open + 3 comm_msg, no more
    assert front.text(good_click) == "clicked\n"  # the handler's output, under its click
    errors = front.of(bad_click, "error")
    assert errors and errors[0]["content"]["ename"] == "RuntimeError"  # shown as usual
    assert not front.of(good_click, "status")  # no idle published in the middle of the cell
    assert front.run("print(clicks, bad_calls)").strip() == "[True] [{'n': 1}]"
    # The kernel's own path is back: a click in an idle kernel runs as usual.
    click = front.click()
    front.wait(lambda: front.is_idle(click), "the idle click")
    assert front.run("print(clicks)").strip() == "[True, False]"


def test_execute_requests_wait_for_the_end_in_order(front):
    """(2) Cells sent while one blocks are held, then run after it, in order, with output."""
    front.run("order = []")
    cell = front.execute("block(lambda: clicks)\nprint('order at release', order)")
    front.wait_text(cell, "waiting True")
    b = front.execute("order.append('B'); print('B ran')")
    c = front.execute("order.append('C'); print('C ran')")
    front.wait_text(cell, "held 2")
    front.click()

    reply = front.finish(cell)
    assert reply["status"] == "ok"
    assert "order at release []" in front.text(cell)
    rb, rc = front.finish(b), front.finish(c)
    assert (rb["status"], rc["status"]) == ("ok", "ok")
    assert front.text(b) == "B ran\n" and front.text(c) == "C ran\n"
    assert rb["execution_count"] == reply["execution_count"] + 1
    assert rc["execution_count"] == reply["execution_count"] + 2
    assert front.index(cell, "idle") < front.index(b, "busy") < front.index(b, "idle") \
        < front.index(c, "busy")
    assert front.run("print(order)").strip() == "['B', 'C']"


def test_model_updates_reach_the_model(front):
    """(3) Slider and text updates (``method: update``) are applied during the wait."""
    ids = json.loads(front.run(
        "slider = widgets.IntSlider(0); text = widgets.Text('')\n"
        "print(json.dumps([slider.model_id, text.model_id]))").strip())
    cell = front.execute("block(lambda: slider.value == 42 and text.value == 'payload')")
    front.wait_text(cell, "waiting True")
    s = front.comm_msg(ids[0], {"method": "update", "state": {"value": 42}, "buffer_paths": []})
    t = front.comm_msg(ids[1], {"method": "update", "state": {"value": "payload"},
                                "buffer_paths": []})
    assert front.finish(cell)["status"] == "ok"
    assert "released" in front.text(cell)
    # ipywidgets echoes each update back, under the update that caused it.
    for msg_id in (s, t):
        echoes = [m for m in front.of(msg_id, "comm_msg")
                  if m["content"]["data"].get("method") == "echo_update"]
        assert echoes, f"no echo_update for {msg_id}"
    assert front.run("print(slider.value, text.value)").strip() == "42 payload"


def stage_queued_click(front: Front, until: str, limit: float) -> tuple[str, str]:
    """The race: a click sent while the waiting cell is still queued behind a running cell is
    read off the socket before the wait starts. Returns (waiting cell, click) msg ids."""
    front.run("peeked = []\nregistry = CommRegistry()\n"
              "registry.register(button.model_id, lambda *event: peeked.append(event))\n"
              "watch_comms(kernel, registry)")
    # The running cell ends only once the kernel has read the waiting cell and the click:
    # on 6.x into kernel.msg_queue (as the kernel does between cells); on 7.x once the
    # shell-channel thread has forwarded both to the main thread (the click second: it is
    # forwarded right after the peek, by the same thread, within a few loop iterations).
    running = front.execute(r'''
print("running", flush=True)
t0 = time.monotonic()
if KERNEL_MAJOR == 6:
    while kernel.msg_queue.qsize() < 2 and time.monotonic() - t0 < 20:
        kernel.shell_stream.flush()
        time.sleep(0.01)
    staged = kernel.msg_queue.qsize() >= 2
else:
    while not peeked and time.monotonic() - t0 < 20:
        time.sleep(0.01)
    hopped = threading.Event()
    loop = kernel.shell_channel_thread.io_loop
    def hop(n):
        hopped.set() if n == 0 else loop.add_callback(hop, n - 1)
    loop.add_callback(hop, 3)
    staged = bool(peeked) and hopped.wait(10)
print("staged", staged, flush=True)
''')
    front.wait_text(running, "running")
    waiting = front.execute(f"block(lambda: {until}, limit={limit})\n"
                            "print('paths', len(clicks), len(peeked))")
    click = front.click()
    assert front.finish(running)["status"] == "ok"
    assert "staged True" in front.text(running)
    return waiting, click


def test_click_sent_while_queued_is_not_lost(front):
    """(4) 7.x: watch_comms sees it at receive time; 6.x: the pump drains kernel.msg_queue."""
    waiting, click = stage_queued_click(front, "clicks or peeked", 20)
    assert front.finish(waiting)["status"] == "ok"
    assert "released" in front.text(waiting)
    if front.major == 7:
        assert "paths 0 1" in front.text(waiting)  # the pump never saw it: it was queued
        event = json.loads(front.run("print(json.dumps(peeked[0]))"))
        assert event == [front.button, {"method": "custom", "content": {"event": "click"}}, click]
        # The kernel still dispatches the real message after the cell (nbdurable: idempotent).
        front.wait(lambda: front.is_idle(click), "the queued click to run after the cell")
    else:
        assert "paths 1 0" in front.text(waiting)  # drained and dispatched during the wait
    assert front.run("print(len(clicks))").strip() == "1"  # exactly once through the handler
    front.run("unwatch_comms(kernel)")


def test_queued_click_race_is_real_on_ipykernel_7(tmp_path):
    """Control for (4): a wait that only looks at what the pump delivers misses the queued
    click on ipykernel 7 (it runs only after the cell) - the reason watch_comms exists."""
    with Kernel(tmp_path) as kernel:
        front = Front(kernel)
        assert front.major == 7
        waiting, click = stage_queued_click(front, "clicks", 3)
        assert front.finish(waiting)["status"] == "ok"
        assert "timed out" in front.text(waiting)
        assert "paths 0 1" in front.text(waiting)
        front.wait(lambda: front.is_idle(click), "the click, after the cell")
        assert front.run("print(clicks)").strip() == "[False]"


def test_interrupt_during_poll(front):
    """(5) Kernel → Interrupt while polling: KeyboardInterrupt in the cell, the held cell still
    runs, the kernel keeps working (its own message path restored)."""
    cell = front.execute("block(lambda: False, limit=60)", stop_on_error=False)
    front.wait_text(cell, "waiting True")
    held = front.execute("print('held cell ran')")
    front.wait_text(cell, "held 1")
    front.kernel.km.interrupt_kernel()

    reply = front.finish(cell)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert front.finish(held)["status"] == "ok"
    assert front.text(held) == "held cell ran\n"
    click = front.click()
    front.wait(lambda: front.is_idle(click), "a click in the idle kernel")
    assert front.run("print(clicks)").strip() == "[False]"
    # and a second wait works as well as the first
    cell = front.execute("block(lambda: clicks[1:])")
    front.wait_text(cell, "waiting True")
    front.click()
    assert front.finish(cell)["status"] == "ok" and "released" in front.text(cell)


def test_browser_reload_gets_widget_states(front):
    """(6) A reloaded page opens ``jupyter.widget.control`` and sends ``request_states``: the
    states come back on IOPub within the front end's 4 s."""
    cell = front.execute("block(lambda: clicks)")
    front.wait_text(cell, "waiting True")
    control = uuid.uuid4().hex
    sent = time.monotonic()
    front.send("comm_open", {"comm_id": control, "target_name": "jupyter.widget.control",
                             "data": {}}, metadata={"version": "1.0.0"})
    request = front.comm_msg(control, {"method": "request_states"})

    def states():
        for m in front.of(request, "comm_msg"):
            data = m["content"]["data"]
            if m["content"]["comm_id"] == control and data.get("method") == "update_states":
                return data["states"]
        return None

    found = front.wait(states, "update_states", timeout=4.0)
    assert time.monotonic() - sent < 4.0
    assert front.button in found
    assert found[front.button]["model_name"] == "ButtonModel"
    # The older fallback of the front end, comm_info_request, is answered during the wait too.
    info = front.send("comm_info_request", {"target_name": "jupyter.widget"})
    front.wait(lambda: info in front.replies, "comm_info_reply", timeout=4.0)
    assert front.button in front.replies[info]["content"]["comms"]
    assert not front.is_idle(cell)
    front.click()
    assert front.finish(cell)["status"] == "ok" and "released" in front.text(cell)
