"""TCP destroy events: connections that live between two samples are still seen, with the
right user. Real namespaces, real connections, real kernel events."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require_root
from nsnet.agent import events
from nsnet.agent.edges import EdgeKey, Held, Memory, closed_edges

REPO = Path(__file__).resolve().parents[2]
SERVER_UID, CLIENT_UID = 10124, 10123

SERVER_IP, CLIENT_IP = "10.99.7.2", "10.99.7.1"
# The server closes first: its side goes to TIME_WAIT, the client's is freed at once. So the
# client namespace keeps no trace of the connection for a sample to see.
SERVER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""
CLIENT = """
import socket, sys
for _ in range(int(sys.argv[3])):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    c.recv(1)          # the server's FIN
    c.close()
"""
TENANT = "import time; time.sleep(3600)"


def as_uid(ns: str, uid: int, code: str, *args: str) -> list[str]:
    from realnode import interpreter_for, ip_tool, util_linux

    return [ip_tool(), "netns", "exec", ns, util_linux("setpriv"), "--reuid", str(uid),
            "--regid", str(uid), "--clear-groups", interpreter_for(uid), "-c", code, *args]


@pytest.fixture
def pair():
    """Client namespace A (a tenant process of CLIENT_UID lives there) and server namespace
    B (a listener of SERVER_UID), joined by a veth. Yields (a, a_inode, port)."""
    require_root("ip", "setpriv")
    from netpair import veth_pair

    children: list[subprocess.Popen] = []
    with veth_pair("nsnt-ev", CLIENT_IP, SERVER_IP) as (a, b):
        try:
            children.append(subprocess.Popen(as_uid(a, CLIENT_UID, TENANT)))
            server = subprocess.Popen(as_uid(b, SERVER_UID, SERVER, SERVER_IP),
                                      stdout=subprocess.PIPE, text=True)
            children.append(server)
            port = int(server.stdout.readline())
            yield a, os.stat(f"/run/netns/{a}").st_ino, port
        finally:
            for child in children:
                child.kill()
                child.wait()


def connect(a: str, port: int, times: int) -> None:
    subprocess.run(as_uid(a, CLIENT_UID, CLIENT, SERVER_IP, str(port), str(times)), check=True,
                   timeout=60)


def test_the_kernel_reports_closed_connections(pair):
    a, inode, port = pair
    watcher = events.DestroyWatcher()
    try:
        assert watcher.watch(f"/run/netns/{a}", inode) is None
        connect(a, port, 3)
        deadline = time.monotonic() + 10
        closed = []
        while len(closed) < 3:
            assert time.monotonic() < deadline, closed
            time.sleep(0.05)
            closed += watcher.drain()
    finally:
        watcher.close()
    assert len(closed) == 3 and {c.netns for c in closed} == {inode}
    socks = [c.sock for c in closed]
    assert all((s.local_addr, s.remote_addr, s.remote_port) == (CLIENT_IP, SERVER_IP, port)
               for s in socks)
    assert len({s.local_port for s in socks}) == 3          # three distinct connections
    # the kernel's destroy message has no uid and no inode: attribution must come from us
    assert all(s.uid == 0 and s.inode == 0 for s in socks)
    memory = Memory()
    memory.owners_of_netns = {inode: (CLIENT_UID,)}
    memory.where_of_netns = {inode: f"netns:{inode}"}
    assert set(closed_edges(closed, memory)) == {
        EdgeKey(CLIENT_UID, f"netns:{inode}", "outbound", "tcp", SERVER_IP, port)}
    # a connection a sample saw keeps the user it was seen with, even in another namespace
    seen = (inode, CLIENT_IP, socks[0].local_port, SERVER_IP, port)
    memory.current.held = {seen: Held((4242,), (), "pod:shop/cart")}
    edge = closed_edges(closed, memory)[
        EdgeKey(4242, "pod:shop/cart", "outbound", "tcp", SERVER_IP, port)]
    assert (edge.ended, edge.evidence) == (1, "remembered")


def test_subscribing_without_cap_net_admin_says_why(pair):
    """What the agent says when the capability is missing (the bind is refused)."""
    name, inode, _ = pair

    def without_net_admin():
        raise PermissionError(1, "Operation not permitted")

    watcher = events.DestroyWatcher(opener=without_net_admin)
    try:
        why = watcher.watch(f"/run/netns/{name}", inode)
    finally:
        watcher.close()
    assert why == ("subscribing to TCP destroy events: Operation not permitted "
                   "(needs CAP_NET_ADMIN)")


def test_agent_records_connections_shorter_than_its_interval(pair, tmp_path):
    """Each connection lives a few ms, between two samples 3 s apart, and leaves nothing in
    the client's namespace (the server closed first). Only destroy events can show it."""
    a, inode, port = pair
    from test_serve import get, start_agent, stop, wait_ready

    child, http = start_agent("--interval", "3", "--source", "auto",
                              "--db", str(tmp_path / "h.db"))
    try:
        wait_ready(http)
        deadline = time.monotonic() + 60
        while get(http, "/readyz")[1]["samples"] < 2:   # subscribed after a sample saw A
            assert time.monotonic() < deadline
            time.sleep(0.2)
        connect(a, port, 5)
        deadline = time.monotonic() + 60
        while True:
            status, deps = get(http, "/api/v1/dependencies?since=1h")
            # the namespace is named by its pin (ip netns add)
            mine = [e for e in deps["edges"] if e["where"] == f"netns:{a}"
                    and e["direction"] == "outbound" and e["port"] == port]
            if mine and mine[0]["closed"] >= 5:
                break
            assert time.monotonic() < deadline, deps
            time.sleep(0.3)
        assert [(e["uid"], e["peer_addr"]) for e in mine] == [(CLIENT_UID, SERVER_IP)]
        # five connections, none seen open by a sample: opened and closed between samples,
        # credited to the namespace's one owner (no sample saw them held)
        (edge,) = mine
        assert (edge["opened"], edge["closed"], edge["open"], edge["max_concurrent"]) == \
            (5, 5, 0, 1)
        assert (edge["evidence"], edge["guess"]) == ("namespace-owner", False)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=120) as resp:
            text = resp.read().decode()
        received = [float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("nsnet_destroy_events_total ")]
        assert received and received[0] >= 5
    finally:
        stop(child)
