"""Events over HTTP with ``nbdurable serve``: a real server process, real HTTP requests, real
logs and kernels. Every refusal is one JSON line and changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from kernels import Kernel, approval_cell, count, kernel_env, wait_for_file

import nbdurable
from nbdurable.store.logdb import open_log

TOKEN = "test-token-0123456789"
SECRET = b"webhook secret"
TIMEOUT = 60


class Served:
    """``nbdurable serve --port 0`` in a subprocess, in directory ``root``."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nbdurable.cli", "serve", "--port", "0", *args],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NBDURABLE_TOKEN": TOKEN, **(env or {})})
        self.banner = self.proc.stdout.readline()
        assert "nbdurable serve: http://" in self.banner, self.proc.communicate(timeout=30)
        self.url = self.banner.split()[2]

    def call(self, method: str, path: str, body: bytes | None = None,
             token: str | None = TOKEN, **headers: str) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            text = error.read()
            assert len(text.strip().splitlines()) == 1, text  # one JSON line
            return error.code, {**json.loads(text), "_headers": error.headers}

    def push(self, run: str, key: str, payload: object = None, **headers: str):
        body = b"" if payload is None else json.dumps(payload).encode()
        return self.call("POST", f"runs/{run}/events/{key}", body, **headers)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def server(run_log):
    (run_log.parent / "secret").write_bytes(SECRET + b"\n")
    served = Served(run_log.parent, "--log", "log.duckdb", "--webhook-secret-file", "secret")
    yield served
    served.close()


def keys(log: Path, run: str = "r1") -> list[tuple[str, str]]:
    return [(e["key"], e["payload"]) for _, e in nbdurable.list_events(run, log=log).iterrows()]


def signature(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- pushing ----------------------------------------------------------------------------------------

def test_a_post_releases_a_waiting_cell_which_replays_its_payload_after_a_restart(tmp_path):
    counter = tmp_path / "count"
    cell = approval_cell(counter)
    server = None
    try:
        with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:
            k.execute("%load_ext nbdurable")
            k.execute("%%durable setup\nx = 1")
            server = Served(tmp_path, "--log", "log.duckdb")
            msg_id = k.send(cell)
            wait_for_file(counter)
            deadline = time.monotonic() + TIMEOUT
            while not (waits := _waits(server.call("GET", "runs/test-run")[1])):
                assert time.monotonic() < deadline, "the wait never showed"
                time.sleep(0.05)
            assert waits == [("approval", "waiting", ["approve"])]
            assert server.push("test-run", "approve", {"by": "ann"})[0] == 201
            reply = k.reply_to(msg_id)
            assert reply["content"]["status"] == "ok"
        with Kernel(tmp_path, env=kernel_env(tmp_path)) as k:
            k.execute("%load_ext nbdurable")
            r = k.execute(cell)
            assert r.notices()[0]["kind"] == "replayed"
            assert "got {'by': 'ann'}" in r.stream()
        assert count(counter) == 1
    finally:
        if server is not None:
            server.close()


def _waits(run: dict) -> list[tuple[str, str, list[str]]]:
    return [(step["step"], step["status"], wait["keys"])
            for step in run["steps"] for wait in step["waits"]]


def test_retries_add_nothing_and_every_refusal_changes_nothing(server, run_log):
    status, body = server.push("r1", "k", {"n": 1}, Idempotency_Key="hook-1")
    assert (status, body) == (201, {"id": "hook-1", "run": "r1", "key": "k"})
    assert server.push("r1", "k", {"n": 1}, Idempotency_Key="hook-1")[0] == 201  # a retry
    refusals = [
        (server.push("r1", "k", {"n": 2}, Idempotency_Key="hook-1"), 409, "already pushed"),
        (server.push("nope", "k", 1), 404, "not in the log"),
        (server.call("POST", "runs/r1/events/k", b"{not json"), 400, "not valid JSON"),
        (server.call("POST", "runs/r1/events/k", b"\xff\xfe"), 400, "not valid JSON"),
        (server.call("POST", "runs/r1/events/k", b"NaN"), 400, "not valid JSON"),
        (server.push("r1", "x" * 1000, 1), 400, "event key"),
        (server.call("POST", "runs/r1/events/k", b"1" * (2 << 20)), 413, "over this server"),
        (server.call("GET", "nowhere"), 404, "no such endpoint"),
    ]
    for (status, body), expected, words in refusals:
        assert status == expected and words in body["error"], (status, body)
    assert keys(run_log) == [("k", '{"n": 1}')]
    assert server.push("r1", "empty")[0] == 201  # an empty body is null
    assert keys(run_log)[-1] == ("empty", "null")


def test_a_smaller_body_limit(run_log):
    served = Served(run_log.parent, "--log", "log.duckdb", "--max-body", "10")
    try:
        assert served.call("POST", "runs/r1/events/k", b'"0123456789"')[0] == 413
        assert served.call("POST", "runs/r1/events/k", b'"01234567"')[0] == 201
    finally:
        served.close()


def test_tokens(server, run_log):
    status, body = server.push("r1", "k", 1, token=None)
    assert status == 401 and "Authorization: Bearer" in body["error"]
    assert body["_headers"]["WWW-Authenticate"].startswith("Bearer")
    assert server.push("r1", "k", 1, token="wrong")[0] == 403
    assert server.push("r1", "k", 1, token=TOKEN[:-1])[0] == 403
    assert server.call("GET", "runs", token=None)[0] == 401
    assert server.call("GET", f"runs?token={TOKEN}", token=None)[0] == 200
    assert server.call("POST", "runs/r1/events/k", b"2", token=None,
                       Authorization=f"token {TOKEN}")[0] == 201
    assert keys(run_log) == [("k", "2")]


def test_signed_webhooks(server, run_log):
    body = json.dumps({"action": "approved"}).encode()
    ok = server.call("POST", "runs/r1/events/gh", body, token=None,
                     X_Hub_Signature_256=signature(body))
    assert ok[0] == 201, ok  # the signature is the credential: no token needed
    assert server.call("POST", "runs/r1/events/gh", body, token=None,
                       X_Nbdurable_Signature=signature(body))[0] == 201
    for wrong in (signature(body + b" "), signature(body, b"other"), "sha1=" + "0" * 40, "x"):
        status, reply = server.call("POST", "runs/r1/events/gh", body,  # with a valid token
                                    X_Hub_Signature_256=wrong)
        assert status == 401 and "does not match" in reply["error"], reply
    assert server.call("GET", "runs", token=None, X_Hub_Signature_256=signature(b""))[0] == 401
    assert keys(run_log) == [("gh", '{"action": "approved"}')] * 2


def test_a_server_without_a_secret_refuses_signed_bodies(run_log):
    served = Served(run_log.parent, "--log", "log.duckdb")
    try:
        status, body = served.call("POST", "runs/r1/events/k", b"1",
                                   X_Hub_Signature_256=signature(b"1"))
        assert status == 401 and "--webhook-secret-file" in body["error"]
        assert keys(run_log) == []
    finally:
        served.close()


def test_log_paths_outside_the_root_are_refused_untouched(server, run_log, tmp_path_factory):
    root = run_log.parent
    outside = tmp_path_factory.mktemp("outside")
    other = outside / "log.duckdb"
    db = open_log(other)
    with db.lease():  # creates it
        pass
    db.close()
    (root / "link").symlink_to(outside)
    (root / "notes.txt").write_text("my notes\n")
    (root / "sub").mkdir()
    for param, expected in [("../outside/log.duckdb", 403), (str(other), 403),
                            ("link/log.duckdb", 403), ("sub/../../x.duckdb", 403),
                            ("notes.txt", 400), ("missing.duckdb", 404), ("sub", 400)]:
        before = other.read_bytes(), (root / "notes.txt").read_bytes()
        quoted = urllib.parse.quote(param, safe="")
        status, body = server.call("POST", f"runs/r1/events/k?log={quoted}", b"1")
        assert status == expected and body["error"], (param, status, body)
        assert server.call("GET", f"runs?log={quoted}")[0] == expected
        assert (other.read_bytes(), (root / "notes.txt").read_bytes()) == before
    assert not (root / "missing.duckdb").exists()
    assert keys(run_log) == []
    assert server.call("POST", "runs/r1/events/k?log=sub/../log.duckdb", b"1")[0] == 201
    assert keys(run_log) == [("k", "1")]


def test_reading_runs_steps_waits_and_events(server, run_log):
    assert server.push("r1", "hello", {"n": 1})[0] == 201
    status, body = server.call("GET", "runs")
    assert status == 200 and [r["run"] for r in body["runs"]] == ["r1"]
    status, run = server.call("GET", "runs/r1")
    assert status == 200 and run["run"] == "r1" and run["status"]
    assert run["steps"] == [] and run["pending"][0]["key"] == "hello"  # `once` is no step
    status, listed = server.call("GET", "runs/r1/events")
    assert status == 200
    assert [(e["key"], e["payload"], e["status"]) for e in listed["events"]] == \
        [("hello", {"n": 1}, "pending")]
    assert server.call("GET", "runs/nope")[0] == 404


def test_a_held_log_never_blocks_the_server(server, run_log):
    """A push waits for the log's lease in a worker thread: the server answers meanwhile."""
    db = open_log(run_log)
    done = {}
    with db.lease():
        pusher = threading.Thread(target=lambda: done.update(
            r=server.push("r1", "k", 1, Idempotency_Key="held")))
        pusher.start()
        deadline = time.monotonic() + TIMEOUT
        while server.call("GET", "nowhere")[0] != 404:  # answered while the lease is held
            assert time.monotonic() < deadline
        assert server.call("GET", "runs", token=None)[0] == 401
        assert "r" not in done  # the push still waits for the lease
    db.release()
    pusher.join(TIMEOUT)
    assert done["r"][0] == 201


def test_8_clients_times_100_posts_into_a_waiting_run(server, run_log):
    clients, per_client = 8, 100

    def client(c: int) -> None:
        for i in range(per_client):
            status, _ = server.push("r1", "job", {"c": c, "i": i},
                                    **({"Idempotency_Key": f"{c}-{i}"} if i % 10 == 0 else {}))
            assert status == 201

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    got = [nbdurable.wait_for_event("job", timeout=120) for _ in range(clients * per_client)]
    for t in threads:
        t.join(TIMEOUT)
    assert sorted((g["c"], g["i"]) for g in got) == \
        [(c, i) for c in range(clients) for i in range(per_client)]  # none lost, none twice
    with pytest.raises(nbdurable.WaitTimeout):
        nbdurable.wait_for_event("job", timeout=0.2)


# -- the command ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--log", "typo.duckdb"], "there is no log at"),
    (["--webhook-secret-file", "missing"], "cannot read the webhook secret file"),
    (["--port", "99999"], "port number"),
    (["--host", "no-such-host.invalid"], "cannot listen on"),
])
def test_bad_serve_arguments_are_one_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "nbdurable.cli", "serve", "--port", "0", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


def test_the_banner_says_where_and_prints_a_generated_token_once(run_log):
    env = {k: v for k, v in os.environ.items() if k != "NBDURABLE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "nbdurable.cli", "serve", "--port", "0",
                             "--log", "log.duckdb"], cwd=run_log.parent, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        where, token_line = proc.stdout.readline(), proc.stdout.readline()
        assert "127.0.0.1" in where and "loopback only" in where
        token = token_line.split()[-1]
        assert len(token) >= 32
        url = where.split()[2]
        request = urllib.request.Request(url + "runs", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            assert reply.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
