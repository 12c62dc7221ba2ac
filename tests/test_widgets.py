"""The waiting panel and event buttons, clicked with real comm messages as a front end sends them,
on the current ipykernel (7.x) and on 6.29."""

from __future__ import annotations

import queue
import textwrap
import time

import pytest
from frontend import FrontEnd
from kernels import Kernel, wait_for_file

LOAD = "%load_ext nbdurable"


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


def test_a_replayed_wait_shows_what_fired_not_the_panel(tmp_path):
    """The panel was recorded with the cell's outputs as a widget; its replay must not show the
    widget's repr (``VBox(children=(HTML(value='⏳ waiting for…``), which reads as waiting."""
    import nbdurable

    cell = "%%durable gate\nimport nbdurable\nprint(nbdurable.wait_for_event('go', timeout=60))"
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\n%durable_run gated")
        k.execute("%%durable first\nx = 1")
        fe = FrontEnd(k)
        msg_id = k.send(cell)
        fe.button("go")  # the panel is shown
        nbdurable.push_event("go", "yes", run="gated", log=tmp_path / "log.duckdb")
        assert fe.reply_to(msg_id)["content"]["status"] == "ok"
    with Kernel(tmp_path) as k:
        k.execute(LOAD + "\n%durable_run gated")
        k.execute("%%durable first\nx = 1")
        r = k.execute(cell)
    assert r.notices()[0]["kind"] == "replayed"
    assert "yes" in r.stream() and "event `go` fired" in r.stream()
    shown = [o for o in r.outputs if o["msg_type"] in ("display_data", "execute_result")]
    assert not any("VBox(" in str(o["content"]["data"]) or "waiting for" in
                   str(o["content"]["data"]) for o in shown), shown
