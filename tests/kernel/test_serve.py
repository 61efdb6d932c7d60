"""`nsnet serve`: the agent the DaemonSet runs, exercised as a real process over real HTTP."""
from __future__ import annotations

import json
import os
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


REPO = Path(__file__).resolve().parents[2]


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_agent(*extra: str) -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                              "--interval", "0.5", "--max-cpu", "2", "--node-name", "test-node",
                              *extra], cwd=REPO, stderr=subprocess.PIPE, text=True)
    said = []
    for line in child.stderr:   # warnings (e.g. an unusable --db) come before the banner
        said.append(line)
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            child.said = said
            return child, int(found.group(1))
    child.kill()
    child.wait()
    raise AssertionError("".join(said))


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()
    child.stderr.close()


@pytest.fixture
def agent():
    """A running agent on a free port; yields (process, port)."""
    child, port = start_agent()
    try:
        yield child, port
    finally:
        stop(child)


def wait_ready(port: int, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(port, "/readyz")
        if status == 200:
            return body
        assert status == 503 and body["status"] == "no sample yet"
        assert time.monotonic() < deadline, f"no sample within {timeout} s"
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
    assert child.wait(timeout=120) == 0
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


def connected_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def wait_for_edge(port: int, service_port: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = get(port, "/api/v1/dependencies?since=1h")
        assert status == 200 and doc["view"] == "dependencies"
        found = [e for e in doc["edges"] if e["direction"] == "outbound"
                 and e["peer_addr"] == "127.0.0.1" and e["port"] == service_port]
        if found:
            return found[0]
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)


def test_edges_metrics_and_history_survive_kill_9(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    db = str(tmp_path / "history.db")
    server, client, accepted = connected_pair()
    service_port = server.getsockname()[1]
    child, port = start_agent("--db", db)
    try:
        edge = wait_for_edge(port, service_port)
        assert edge["uid"] == os.geteuid() and edge["node"] == "test-node"
        assert edge["where"] == "host" and edge["max_concurrent"] >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
            text = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ours = [m for m in families["nsnet_edge_connections"].samples
                if m.labels["port"] == str(service_port) and m.labels["direction"] == "outbound"]
        assert ours and ours[0].labels["peer"] == "127.0.0.1" and ours[0].value >= 1
        assert ours[0].labels["node"] == "test-node" and ours[0].labels["uid"] == str(os.geteuid())
        assert families["nsnet_samples"].samples[0].value >= 1
        assert "nsnet_sample_duration_seconds" in families and "nsnet_sockets" in families
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        stop(child)
        for s in (server, client, accepted):
            s.close()
    # the connection is gone; a restarted agent still knows the edge from its history
    child, port = start_agent("--db", db)
    try:
        again = wait_for_edge(port, service_port, timeout=30)
        assert again["first_seen"] == edge["first_seen"]
        run = subprocess.run([sys.executable, "-m", "nsnet", "deps", "--db", db, "--since", "1h",
                              "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        stored = [e for e in json.loads(run.stdout)["edges"] if e["port"] == service_port
                  and e["direction"] == "outbound"]
        assert stored and stored[0]["first_seen"] == edge["first_seen"]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 0
    finally:
        stop(child)


def test_unusable_db_is_said_once_and_the_agent_runs_on(tmp_path):
    child, port = start_agent("--db", str(tmp_path / "no" / "dir" / "h.db"))
    try:
        body = wait_ready(port)
        assert body["history"].startswith("memory only: history database")
        assert child.said[0].startswith("nsnet: warning: history database ")
        assert child.said[0].rstrip().endswith("keeping history in memory only")
    finally:
        stop(child)


def test_watch_draws_live_edges_and_stops_on_ctrl_c():
    server, client, accepted = connected_pair()
    service_port = server.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-m", "nsnet", "watch", "--interval", "0.5",
                              "--max-cpu", "2", "--source", "auto"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        frame = []
        for line in child.stdout:            # a pipe: one block per sample, no screen codes
            frame.append(line)
            if line == "\n" and any(f"127.0.0.1:{service_port}" in l for l in frame):
                break
        assert frame[0].startswith("nsnet watch ") and "\x1b" not in "".join(frame)
        ours = [n for n, l in enumerate(frame) if f"127.0.0.1:{service_port}" in l]
        # our client's edge, under "Connects to" (the server's side is a CLIENT 127.0.0.1
        # row with a PORT column: its service address is not in it)
        start = frame.index("Connects to\n")
        end = frame.index("Connected from\n") if "Connected from\n" in frame else len(frame)
        assert ours and start < ours[0] < end and "host" in frame[ours[0]]
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=120) == 0
        assert "Traceback" not in child.stderr.read()
    finally:
        stop(child)
        child.stdout.close()
        for s in (server, client, accepted):
            s.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def test_cpu_budget_holds_over_a_run():
    """Asked for samples every 0.2 s but allowed 2% of a core (a share of 4 ms: even a quiet
    machine's sample costs more), the agent stretches the interval: its CPU time over the run
    stays within the budget (plus one sample in flight), and the samples that cost more than
    their share are counted."""
    budget = 0.02
    child = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                              "--interval", "0.2", "--max-cpu", str(budget), "--events", "off"],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r":(\d+),", child.stderr.readline()).group(1))
        wait_ready(port)
        cpu0, t0 = cpu_seconds(child.pid), time.monotonic()
        time.sleep(12)
        cpu1, t1 = cpu_seconds(child.pid), time.monotonic()
        samples = metric(port, "nsnet_samples_total")
        per_sample = metric(port, "nsnet_sample_cpu_seconds_sum") / samples
        assert per_sample > 0.2 * budget            # each sample is over its 0.2 s share...
        assert metric(port, "nsnet_samples_over_budget_total") >= samples - 1
        # ...so the agent waits: CPU over the run <= budget x wall, plus one sample's cost
        assert cpu1 - cpu0 <= budget * (t1 - t0) + 2 * per_sample + 0.1, \
            (cpu1 - cpu0, t1 - t0, per_sample)
    finally:
        stop(child)


HOSTILE_COMM = "evil\x1b]0;pwned\x07\n\u202e"


def test_hostile_process_names_are_inert_in_every_answer():
    """A process named with escape sequences and a newline, holding a connection: the API
    (with command lines exposed) is ASCII JSON, /metrics still parses."""
    from prometheus_client.parser import text_string_to_metric_families

    server, client, accepted = connected_pair()
    code = ("import ctypes, sys, time; "
            "ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); time.sleep(60)")
    hostile = subprocess.Popen([sys.executable, "-c", code, HOSTILE_COMM, HOSTILE_COMM],
                               pass_fds=(client.fileno(),))
    child, port = start_agent("--expose-cmdlines")
    try:
        deadline = time.monotonic() + 120
        while True:
            wait_ready(port)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/snapshot",
                                        timeout=120) as resp:
                raw = resp.read()
            doc = json.loads(raw)
            mine = [p for p in doc["processes"] if p["pid"] == hostile.pid]
            if mine:
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert raw.isascii() and b"\x1b" not in raw
        assert mine[0]["cmdline"][-1] == HOSTILE_COMM and "\x1b" in mine[0]["comm"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
            assert list(text_string_to_metric_families(resp.read().decode()))
    finally:
        stop(child)
        hostile.kill()
        hostile.wait()
        for s in (server, client, accepted):
            s.close()




def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name}")


def test_an_idle_and_slow_connection_flood_does_not_stop_sampling_or_the_probes():
    """320 connections from 20 client addresses, half of them idle, half sending their
    headers a byte at a time, against a real agent sampling the real node every second:
    samples go on, /healthz answers 200 every time well within the DaemonSet's probe timeout
    (5 s; the longest waiting connections make room), and the agent's fds stay bounded by
    its connection cap."""
    child, port = start_agent("--interval", "1")
    flood: list[socket.socket] = []
    try:
        wait_ready(port)
        samples_before = metric(port, "nsnet_samples_total")
        for n in range(20):
            for i in range(16):
                s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                             source_address=(f"127.0.0.{10 + n}", 0))
                if i % 2:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                flood.append(s)
        started = time.monotonic()
        slowest = 0.0
        while time.monotonic() - started < 8:
            for s in flood[1::2]:
                try:
                    s.send(b"X")   # a byte of a header that never ends
                except OSError:
                    pass           # closed to make room: fine
            t0 = time.monotonic()
            status, body = get(port, "/healthz")
            slowest = max(slowest, time.monotonic() - t0)
            assert status == 200, body
            time.sleep(0.5)
        assert slowest < 2.5
        fds = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert fds < 256 + 64, fds
        assert metric(port, "nsnet_samples_total") >= samples_before + 4
    finally:
        for s in flood:
            s.close()
        stop(child)
    assert "Traceback" not in "".join(child.said)
