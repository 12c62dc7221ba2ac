"""The run viewer (``nbdurable.view``, ``%durable_log``): live updates, its actions and its
static copy, through real comm messages to real kernels, and a second process writing."""

from __future__ import annotations

import textwrap

from frontend import FrontEnd
from kernels import Kernel

import nbdurable
from nbdurable.engine.runview import snapshot

LOAD = "%load_ext nbdurable"


def steps_table(fe: FrontEnd) -> str:
    return fe.html_with('class="nbdurable-steps"')


def test_the_viewer_follows_a_step_from_running_to_completed_by_itself(tmp_path):
    go = tmp_path / "go"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute("%%durable first\nx = 1")
        fe = FrontEnd(k)
        reply = fe.run("import nbdurable\nnbdurable.view()")
        table = steps_table(fe)
        bundle = next(m["content"]["data"] for m in fe.outputs
                      if m["parent_header"]["msg_id"] == reply["parent_header"]["msg_id"]
                      and m["msg_type"] == "execute_result")
        assert 'class="nbdurable-steps"' in bundle["text/html"]  # the static copy
        assert "application/vnd.jupyter.widget-view+json" in bundle
        slow = k.send(textwrap.dedent(f"""
            %%durable slow
            import os, time
            open({str(tmp_path / 'started')!r}, 'w').close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.02)
            y = x + 1"""))
        fe.wait_for(table, lambda s: "▶ running" in s["value"] and "slow" in s["value"])
        go.touch()
        fe.wait_for(table, lambda s: s["value"].count("✓ completed") == 2)
        assert fe.reply_to(slow)["content"]["status"] == "ok"


def test_the_viewer_shows_what_another_process_writes_and_its_wait_buttons_push(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as waiting, Kernel(tmp_path) as viewing:
        waiting.execute(LOAD)
        cell = waiting.send("%%durable gate\nimport nbdurable\n"
                            "got = nbdurable.wait_for_event('approve', timeout=120)\nprint(got)")
        fe = FrontEnd(viewing)
        viewing.execute(LOAD)
        fe.run("import nbdurable\nnbdurable.view()")
        fe.find(lambda s: s.get("_model_name") == "HTMLModel"
                and "⏸ waiting" in s.get("value", "") and "event `approve`" in s["value"])
        nbdurable.push_event("other", {"n": 1}, run="test-run", log=log)  # a third process
        fe.html_with('class="nbdurable-pending"')
        button = fe.button("approve")  # the wait panel's button, in the viewer
        fe.type_into(fe.field_next_to(button), '{"by": "ana"}')
        fe.click(button)
        reply = waiting.reply_to(cell)
        assert reply["content"]["status"] == "ok"
    shown = nbdurable.list_events("test-run", log=log)
    assert sorted(shown[["key", "status"]].values.tolist()) == [["approve", "consumed"],
                                                                 ["other", "pending"]]


def test_viewer_actions_push_reset_after_confirmation_and_fork(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        for name in ("a", "b", "c"):
            k.execute(f"%%durable {name}\n{name} = 1")
        fe = FrontEnd(k)
        fe.run("%durable_log")
        key = fe.find(lambda s: s.get("placeholder") == "event key")
        payload = fe.find(lambda s: s.get("placeholder") == "payload (JSON, optional)")
        push = fe.button("push event")
        fe.type_into(key, "ship")
        fe.type_into(payload, "{not json")
        fe.click(push)
        fe.html_with("not pushed:")
        assert nbdurable.list_events("test-run", log=log).empty  # refused: nothing written
        fe.type_into(payload, '{"n": 2}')
        fe.click(push)
        fe.html_with("pushed `ship`")
        steps = fe.find(lambda s: s.get("_model_name") == "DropdownModel"
                        and s.get("description") == "from step")
        fe.select(steps, 1)  # b
        fe.click(fe.button("reset from step"))
        fe.html_with("reset b and every step after it?")
        assert _statuses(log) == ["completed"] * 3  # asked, not done
        fe.click(fe.button("confirm reset"))
        fe.html_with("reset b, c:")
        assert _statuses(log) == ["completed", "reset", "reset"]
        fe.type_into(fe.find(lambda s: s.get("placeholder") == "new run id"), "try2")
        fe.click(fe.button("fork"))
        fe.html_with("forked into try2")
    runs = nbdurable.runs(log=log).set_index("run")
    assert runs.loc["try2", "forked_from"] == "test-run"
    assert nbdurable.list_events("test-run", log=log)["key"].tolist() == ["ship"]


def _statuses(log) -> list[str]:
    return [s["status"] for s in nbdurable.log("test-run", log=log).steps]


def test_snapshot_of_a_run_with_waits_children_failures_and_events(tmp_path):
    log = tmp_path / "log.duckdb"
    with Kernel(tmp_path) as k:
        k.execute(LOAD)
        k.execute("%%durable ok\nimport nbdurable\nres = nbdurable.map(abs, [-1, -2], "
                  "executor='threads')")
        k.execute("%%durable boom\nraise ValueError('no luck\\nsecond line')")
        k.execute("%%durable boom\nraise ValueError('no luck\\nsecond line')")
        for i in range(54):
            nbdurable.push_event(f"early{i}", i, run="test-run", log=log)
        nbdurable.push_event("late", "x" * 500, run="test-run", log=log)
    view = snapshot("test-run", log=log)
    ok, boom = view.steps
    assert (ok.status, ok.attempts, ok.why) == ("completed", 1, "first run")
    assert [(g.group, g.children, g.completed) for g in ok.children] == [("map#0", 2, 2)]
    assert ok.stored_bytes > 0 and 0 <= ok.offset < boom.offset <= 1
    assert (boom.status, boom.attempts, boom.error) == ("failed", 2, "ValueError: no luck")
    assert "second line" in boom.error_detail
    assert view.counts == {"completed": 1, "failed": 1, "running": 0, "waiting": 0,
                           "reused": 0}
    assert [e.key for e in view.pending] == [f"early{i}" for i in range(5, 54)] + ["late"]
    assert view.more_events == {"pending": 5, "consumed": 0}  # the 5 oldest, counted
    assert len(view.pending[-1].payload) == 60 and view.pending[0].payload == "5"
    assert view.runs == ("test-run",)
