"""Edge traffic and health from TCP_INFO (issue: every socket in full, item 4): bytes each way,
retransmits and rtt per dependency edge, in `nsnet deps` (one snapshot: over the lives of the
connections open now) and in the agent (differences between samples, and a closed
connection's final counters from its destroy event). Real namespaces, a real connection with
known bytes each way, `ss -ti` as the oracle."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import require_root
from nsnet.agent.edges import EdgeKey
from nsnet.agent.sampler import Sampler
from nsnet.options import SamplingOptions, SnapshotOptions

REPO = Path(__file__).resolve().parents[2]
CLIENT_UID, SERVER_UID = 10131, 10132
CLIENT_IP, SERVER_IP = "10.99.9.1", "10.99.9.2"

# One end of a connection, driven line by line on stdin: `send N` writes N bytes, `drain N`
# reads exactly N, `close` shuts it (after reading the peer's FIN, when `close wait`); each
# command answers `ok` when done. The server end accepts one connection first.
PEER = """
import socket, sys
if sys.argv[1] == "server":
    s = socket.socket()
    s.bind((sys.argv[2], 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
else:
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])))
print("ok", flush=True)
for line in sys.stdin:
    what, *n = line.split()
    if what == "send":
        c.sendall(b"x" * int(n[0]))
    elif what == "drain":
        left = int(n[0])
        while left:
            left -= len(c.recv(min(left, 65536)))
    elif what == "close":
        if n:
            c.recv(1)
        c.close()
    print("ok", flush=True)
"""


class End:
    def __init__(self, ns: str, uid: int, *args: str):
        from test_events import as_uid

        self.proc = subprocess.Popen(as_uid(ns, uid, PEER, *args), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def done(self) -> None:
        assert self.line() == "ok"


def exchange(sender: End, receiver: End, n: int) -> None:
    sender.do(f"send {n}")
    receiver.do(f"drain {n}")
    sender.done()
    receiver.done()


@pytest.fixture
def link():
    """Client namespace A (CLIENT_UID) and server namespace B (SERVER_UID) on a veth, one
    connection between them. Yields (a, b, port, client, server)."""
    require_root("ip", "setpriv", "ss")
    from netpair import veth_pair

    ends: list[End] = []
    with veth_pair("nsnt-tr", CLIENT_IP, SERVER_IP) as (a, b):
        try:
            server = End(b, SERVER_UID, "server", SERVER_IP)
            ends.append(server)
            port = int(server.line())
            client = End(a, CLIENT_UID, "client", SERVER_IP, str(port))
            ends.append(client)
            client.done()
            server.done()
            yield a, b, port, client, server
        finally:
            for end in ends:
                end.proc.kill()
                end.proc.wait()


def settled(ns: str, local: str) -> dict[str, float]:
    """`ss -ti` of the connection whose local address is `local`, once nothing it sent is
    unacknowledged (the last ACK may be delayed): bytes_acked, bytes_received, rtt (ms)."""
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tinH", "src", local],
                             capture_output=True, text=True, check=True).stdout
        fields = dict(re.findall(r"\b(bytes_acked|bytes_received|rtt|unacked):([\d.]+)", out))
        send_q = int(out.split()[2]) if out.split() else -1
        if send_q == 0 and "unacked" not in fields:
            return {k: float(v) for k, v in fields.items()}
        assert time.monotonic() < deadline, out
        time.sleep(0.05)


def deps(*args: str) -> list[dict]:
    run = subprocess.run([sys.executable, "-m", "nsnet", "deps", "--json", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["edges"]


@pytest.mark.parametrize("source", ["auto", "netlink", "pidfd"])
def test_deps_shows_each_edges_bytes_and_rtt_as_ss_does(link, source):
    a, b, port, client, server = link
    exchange(client, server, 100_000)
    exchange(server, client, 30_000)
    ss_client = settled(a, CLIENT_IP)
    ss_server = settled(b, SERVER_IP)
    # what the test made, as the kernel counts it (bytes_acked counts the SYN as one byte)
    assert (ss_client["bytes_acked"], ss_client["bytes_received"]) == (100_001, 30_000)
    edges = deps("--source", source)
    out = [e for e in edges if e["where"] == f"netns:{a}" and e["direction"] == "outbound"
           and e["port"] == port]
    inb = [e for e in edges if e["where"] == f"netns:{b}" and e["direction"] == "inbound"
           and e["port"] == port]
    assert [(e["uid"], e["bytes_sent"], e["bytes_received"], e["retransmits"]) for e in out] == \
        [(CLIENT_UID, ss_client["bytes_acked"], ss_client["bytes_received"], 0)]
    assert [(e["uid"], e["bytes_sent"], e["bytes_received"]) for e in inb] == \
        [(SERVER_UID, ss_server["bytes_acked"], ss_server["bytes_received"])]
    # the smoothed rtt of an idle connection does not move: ss's, to ss's precision
    assert out[0]["rtt_ms"] == pytest.approx(ss_client["rtt"], abs=0.0015)
    assert inb[0]["rtt_ms"] == pytest.approx(ss_server["rtt"], abs=0.0015)
    # no TCP_INFO: the proc source cannot tell, nor is it asked with --no-traffic; null
    for args in (("--source", "proc"), ("--source", "auto", "--no-traffic")):
        (edge,) = [e for e in deps(*args) if e["where"] == f"netns:{a}" and e["port"] == port]
        assert (edge["bytes_sent"], edge["bytes_received"], edge["rtt_ms"]) == \
            (None, None, None), args


def test_the_agent_counts_bytes_between_samples_and_a_closed_connections_last_ones(link):
    a, b, port, client, server = link
    a_ino = os.stat(f"/run/netns/{a}").st_ino
    exchange(client, server, 20_000)
    settled(a, CLIENT_IP)
    said: list[str] = []
    sampler = Sampler(SamplingOptions(snapshot=SnapshotOptions(source="auto"), interval=1.0,
                                      max_cpu=1.0), said.append)
    out_key = EdgeKey(CLIENT_UID, f"netns:{a}", "outbound", "tcp", SERVER_IP, port)
    in_key = EdgeKey(SERVER_UID, f"netns:{b}", "inbound", "tcp", CLIENT_IP, port)

    def moved(sample, key):
        seen = sample.observed[key]
        return seen.sent, seen.received, seen.retransmits

    try:
        first = sampler.sample()      # also subscribes to A's and B's destroy events
        assert sampler.watcher is not None, said
        assert a_ino in sampler.watcher.watched()
        # the first sight of a connection: all it moved since it opened (and the SYN)
        assert moved(first, out_key) == (20_001, 0, 0)
        exchange(client, server, 50_000)
        exchange(server, client, 4_000)
        settled(a, CLIENT_IP)
        settled(b, SERVER_IP)
        second = sampler.sample()
        assert moved(second, out_key) == (50_000, 4_000, 0)
        assert moved(second, in_key) == (4_000, 50_000, 0)
        assert second.observed[out_key].rtt_us is not None
        # the last bytes and the close, between two samples: only the destroy events'
        # tcp_info tells them (the kernel puts INET_DIAG_INFO in SOCK_DESTROY messages)
        exchange(client, server, 7_000)
        exchange(server, client, 3_000)
        client.do("close")
        client.done()
        server.do("close wait")
        server.done()
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", b, "ss", "-tnH", "state", "last-ack"],
                             capture_output=True, text=True).stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        third = sampler.sample()
        assert third.closed >= 2
        # measured: the final counters include the FIN each way, one byte as for the SYN
        assert moved(third, out_key) == (7_001, 3_001, 0)
        assert moved(third, in_key) == (3_001, 7_001, 0)
        assert third.observed[out_key].ended == 1
        assert third.observed[out_key].rtt_us is None      # nothing open: no rtt
    finally:
        sampler.close()


def test_the_agent_serves_the_traffic_in_its_api_and_metrics(link, tmp_path):
    a, b, port, client, server = link
    from test_serve import get, start_agent, stop, wait_ready

    child, http = start_agent("--interval", "0.5", "--source", "auto",
                              "--db", str(tmp_path / "h.db"))
    try:
        wait_ready(http)
        exchange(client, server, 64_000)
        exchange(server, client, 8_000)
        settled(a, CLIENT_IP)
        settled(b, SERVER_IP)
        deadline = time.monotonic() + 60
        while True:     # the samples after the exchange have counted it all
            status, doc = get(http, "/api/v1/dependencies?since=1h")
            mine = [e for e in doc["edges"] if e["where"] == f"netns:{a}"
                    and e["direction"] == "outbound" and e["port"] == port]
            if mine and mine[0]["bytes_sent"] == 64_001:
                break
            assert time.monotonic() < deadline, mine
            time.sleep(0.2)
        (edge,) = mine
        assert (edge["bytes_received"], edge["retransmits"]) == (8_000, 0)
        assert edge["rtt_ms"] is not None and edge["rtt_ms"] > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=120) as resp:
            text = resp.read().decode()
        labels = {"netns": f"netns:{a}", "direction": "outbound", "port": str(port)}

        def value(name: str) -> float:
            (v,) = [s.value for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == name and labels.items() <= s.labels.items()]
            return v
        assert value("nsnet_edge_sent_bytes_total") == 64_001
        assert value("nsnet_edge_received_bytes_total") == 8_000
        assert value("nsnet_edge_retransmitted_segments_total") == 0
        assert value("nsnet_edge_rtt_seconds") > 0
        # the history keeps the sums; `nsnet deps --db` reads them back
        run = subprocess.run([sys.executable, "-m", "nsnet", "deps", "--json", "--db",
                              str(tmp_path / "h.db")], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
        assert run.returncode == 0, run.stderr
        (kept,) = [e for e in json.loads(run.stdout)["edges"] if e["where"] == f"netns:{a}"
                   and e["direction"] == "outbound" and e["port"] == port]
        assert (kept["bytes_sent"], kept["bytes_received"]) == (64_001, 8_000)
    finally:
        stop(child)
