"""Events over HTTP inside Jupyter: the server extension in a real Jupyter server (pytest-jupyter,
base_url ``/a%40b/``), with Jupyter's own authentication, and a real kernel released by a POST."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from kernels import Kernel, approval_cell, count, kernel_env, wait_for_file

# pytest-jupyter's fixtures for this module only: as a plugin, its autouse fixtures (an event
# loop closed after each test, a ServerApp cleaned up) would wrap every test of the suite.
from pytest_jupyter.jupyter_server import *  # noqa: E402, F403
from tornado.httpclient import HTTPClientError

import nbdurable
from nbdurable.store.logdb import open_log

SECRET = b"jupyter webhook secret"


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def jp_server_config(run_log, secret_file):
    return {"ServerApp": {"jpserver_extensions": {"nbdurable": True}},
            "NbdurableServer": {"log": str(run_log),
                                "webhook_secret_file": str(secret_file)}}


class Api:
    """Requests to the test server, run on its event loop: ``call`` with the server's token
    (jp_fetch adds it), ``anonymous`` without; a refusal comes back as (status, body)."""

    def __init__(self, jp_fetch, client, base_url: str, loop):
        self.jp_fetch, self.client, self.base_url, self.loop = jp_fetch, client, base_url, loop

    def call(self, path: str, body: bytes | None = None, method: str = "GET",
             **headers: str) -> tuple[int, dict]:
        path, _, query = path.partition("?")
        request = self.jp_fetch("nbdurable", "api", *path.split("/"), method=method, body=body,
                                headers=headers, params=dict(urllib.parse.parse_qsl(query)),
                                allow_nonstandard_methods=True)
        try:
            reply = self.loop.run_until_complete(request)
        except HTTPClientError as error:
            text = error.response.body
            assert len(text.strip().splitlines()) == 1, text
            return error.code, json.loads(text)
        return reply.code, json.loads(reply.body)

    def anonymous(self, path: str, body: bytes | None = b"1", method: str = "POST",
                  **headers: str) -> tuple[int, dict]:
        reply = self.loop.run_until_complete(self.client.fetch(
            f"{self.base_url}nbdurable/api/{path}", method=method,
            body=None if method == "GET" else body, headers=headers,
            raise_error=False))
        return reply.code, json.loads(reply.body) if reply.body else {}


@pytest.fixture
def api(jp_fetch, http_server_client, jp_base_url, jp_asyncio_loop) -> Api:
    return Api(jp_fetch, http_server_client, jp_base_url, jp_asyncio_loop)


def events(log: Path, run: str = "r1") -> list[tuple[str, str]]:
    return [(e["key"], e["payload"]) for _, e in nbdurable.list_events(run, log=log).iterrows()]


def signed(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_installing_nbdurable_enables_the_extension():
    out = subprocess.run([sys.executable, "-m", "jupyter", "server", "extension", "list"],
                         capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "nbdurable" in text and "enabled" in text.split("nbdurable", 1)[1].split("\n")[0], text
    assert "nbdurable 0" in text and "OK" in text.split("nbdurable 0", 1)[1].split("\n")[0]


def test_push_read_and_refusals_under_the_base_url(api, jp_base_url, run_log):
    assert jp_base_url == "/a%40b/"
    status, body = api.call("runs/r1/events/k", b'{"n": 1}', "POST",
                               **{"Idempotency-Key": "hook-1"})
    assert (status, body) == (201, {"id": "hook-1", "run": "r1", "key": "k"})
    assert (api.call("runs/r1/events/k", b'{"n": 1}', "POST",
                        **{"Idempotency-Key": "hook-1"}))[0] == 201
    for (status, body), expected in [
            (api.call("runs/r1/events/k", b'{"n": 2}', "POST",
                         **{"Idempotency-Key": "hook-1"}), 409),
            (api.call("runs/nope/events/k", b"1", "POST"), 404),
            (api.call("runs/r1/events/k", b"{bad", "POST"), 400),
            (api.call("runs/r1/events/k", b"1" * (2 << 20), "POST"), 413)]:
        assert status == expected and body["error"], (status, body)
    assert events(run_log) == [("k", '{"n": 1}')]
    status, listed = api.call("runs")
    assert status == 200 and [r["run"] for r in listed["runs"]] == ["r1"]
    status, listed = api.call("runs/r1/events")
    assert [(e["key"], e["payload"]) for e in listed["events"]] == [("k", {"n": 1})]
    assert api.call("runs/r1")[1]["run"] == "r1"


def test_jupyters_authentication_guards_every_endpoint(api, jp_serverapp, run_log):
    token = jp_serverapp.identity_provider.token
    go = api.anonymous
    assert go("runs/r1/events/k")[0] == 403  # no token, no XSRF cookie
    assert go("runs/r1/events/k", Authorization="token wrong")[0] == 403
    assert api.anonymous("runs", method="GET")[0] == 403
    assert go("runs/r1/events/k", Authorization=f"token {token}")[0] == 201
    assert go("runs/r1/events/k", Authorization=f"Bearer {token}")[0] == 201
    assert go(f"runs/r1/events/k?token={token}")[0] == 201
    assert events(run_log) == [("k", "1")] * 3


def test_signed_webhooks_need_no_token_and_wrong_ones_are_refused(api, jp_serverapp, run_log):
    token = jp_serverapp.identity_provider.token
    body = b'{"action": "approved"}'
    status, _ = api.anonymous("runs/r1/events/gh", body,
                                **{"X-Hub-Signature-256": signed(body)})
    assert status == 201
    for wrong in (signed(body + b" "), signed(body, b"other"), "garbage"):
        status, reply = api.anonymous("runs/r1/events/gh",
                                        body, Authorization=f"token {token}",
                                        **{"X-Hub-Signature-256": wrong})
        assert status == 401 and "does not match" in reply["error"], reply
    assert events(run_log) == [("gh", '{"action": "approved"}')]


def test_log_paths_outside_the_root_are_refused(api, jp_root_dir, tmp_path_factory, run_log):
    outside = tmp_path_factory.mktemp("outside")
    db = open_log(outside / "log.duckdb")
    with db.lease():
        pass
    db.close()
    (jp_root_dir / "link").symlink_to(outside)
    (jp_root_dir / "notes.txt").write_text("notes\n")
    for param, expected in [("../outside/log.duckdb", 403), (str(outside / "log.duckdb"), 403),
                            ("link/log.duckdb", 403), ("notes.txt", 400),
                            ("missing.duckdb", 404)]:
        status, body = api.call("runs/r1/events/k?"
                                   + urllib.parse.urlencode({"log": param}), b"1", "POST")
        assert status == expected, (param, status, body)
    assert (jp_root_dir / "notes.txt").read_text() == "notes\n"
    assert events(run_log) == []


def test_a_post_releases_a_waiting_kernel_which_replays_the_payload(api, jp_root_dir, tmp_path):
    work = jp_root_dir / "project"
    work.mkdir()
    counter = tmp_path / "count"
    cell = approval_cell(counter)
    with Kernel(work, env=kernel_env(work)) as k:
        k.execute("%load_ext nbdurable")
        msg_id = k.send(cell)
        wait_for_file(counter)
        status, _ = api.call("runs/test-run/events/approve?log=project/log.duckdb",
                                b'{"by": "ann"}', "POST")
        assert status == 201
        assert k.reply_to(msg_id)["content"]["status"] == "ok"  # the cell went on
    with Kernel(work, env=kernel_env(work)) as k:
        k.execute("%load_ext nbdurable")
        r = k.execute(cell)
        assert r.notices()[0]["kind"] == "replayed" and "got {'by': 'ann'}" in r.stream()
    assert count(counter) == 1
