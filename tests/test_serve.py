"""`nsnet serve`: the agent the DaemonSet runs, exercised as a real process over real HTTP."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nsnet.serve import without_cmdlines

REPO = Path(__file__).resolve().parent.parent


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def agent():
    """A running agent on a free port; yields (process, port)."""
    child = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                              "--interval", "0.5"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stderr.readline()
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        assert found, line
        yield child, int(found.group(1))
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stderr.close()


def wait_ready(port: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(port, "/readyz")
        if status == 200:
            return body
        assert status == 503 and body["status"] == "no sample yet"
        assert time.monotonic() < deadline, "no sample within 30 s"
        time.sleep(0.1)


def test_agent_serves_snapshots_and_stops_cleanly_on_sigterm(agent):
    child, port = agent
    status, body = get(port, "/healthz")
    assert status == 200 and body["status"] == "ok"
    wait_ready(port)
    status, doc = get(port, "/api/v1/snapshot?view=by-namespace")
    assert status == 200 and doc["schema"] == "nsnet/1" and doc["view"] == "by-namespace"
    # the agent itself is on the node it observes: find it, with its command line blanked
    ours = [p for ns in doc["namespaces"] for p in ns["processes"] if p["pid"] == child.pid]
    assert ours and ours[0]["cmdline"] == [] and ours[0]["comm"]
    # it listens: the snapshot shows our port held by our pid
    status, socks = get(port, "/api/v1/snapshot")
    assert status == 200 and socks["view"] == "sockets"
    mine = [s for s in socks["sockets"] if s["local_port"] == port and s["state"] == "LISTEN"]
    assert mine and child.pid in mine[0]["pids"]
    assert all(p["cmdline"] == [] for p in socks["processes"])
    # a later sample replaces the first
    first = get(port, "/readyz")[1]["samples"]
    deadline = time.monotonic() + 20
    while get(port, "/readyz")[1]["samples"] <= first:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status, body = get(port, "/api/v1/snapshot?view=nonsense")
    assert status == 400 and "by-pod" in body["error"]
    status, body = get(port, "/nowhere")
    assert status == 404 and "/healthz" in body["paths"]
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 0
    assert "Traceback" not in child.stderr.read()


def test_port_in_use_is_one_line_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "nsnet", "serve", "--listen",
                              f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"nsnet: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("argv", [["--listen", "nowhere"], ["--listen", "1.2.3.4:99999"],
                                  ["--interval", "0"], ["--interval", "soon"]])
def test_bad_serve_arguments(argv):
    run = subprocess.run([sys.executable, "-m", "nsnet", "serve", *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1
    assert run.stderr.startswith("nsnet: error: ") and "Traceback" not in run.stderr


def test_command_lines_are_blanked_everywhere_in_a_document():
    doc = {"processes": [{"pid": 1, "cmdline": ["mysql", "--password=hunter2"]}],
           "namespaces": [{"listening": [{"processes": [{"cmdline": ["x", "secret"]}]}]}]}
    assert "hunter2" not in json.dumps(without_cmdlines(doc))
    assert "secret" not in json.dumps(without_cmdlines(doc))
    assert without_cmdlines(doc)["processes"][0] == {"pid": 1, "cmdline": []}
