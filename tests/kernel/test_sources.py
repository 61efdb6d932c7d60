"""Every snapshot source yields the same sockets, states, addresses and pids.

Run on the real node of tests/support/realnode.py: listeners shared by forked pids, loopback and
cross-namespace TCP and UDP, IPv6 with an IPv4-mapped accepted socket, unix sockets with a
path and an abstract name, a TIME_WAIT nobody holds, a socket of B held by a process of A,
and a socket of C (pinned only by a bind mount) held from the host namespace.

Documented differences, asserted here as such: with pidfd, sockets nobody holds come from a
sock_diag pass restricted to those states, and their `source` says so. (pidfd gets the uid
column too: the kernel keeps a socket inode's owner equal to its sk_uid.)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("proc", "netlink", "pidfd")


def snapshot(source: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--source", source],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def ours(doc: dict, node) -> dict[tuple, dict]:
    inodes = node.truth.netns_inodes()
    return {(s["netns"], s["proto"], s["local_addr"], s["local_port"], s["remote_addr"],
             s["remote_port"], s["inode"]): s
            for s in doc["sockets"] if s["netns"] in inodes}


COMPARED = ("family", "state", "unix_type", "pids", "fds", "users", "direction", "peer",
            "peer_netns", "peer_pids")


@pytest.fixture(scope="module")
def docs(node):
    node.make_time_wait()
    return {source: snapshot(source) for source in SOURCES}


@pytest.mark.parametrize("source", ["netlink", "pidfd"])
def test_source_equals_proc(docs, node, source):
    reference, other = ours(docs["proc"], node), ours(docs[source], node)
    # TIME_WAIT may expire between two runs: compare what both saw, and require every one
    # younger than the kernel's timeout in both
    young = {s.inode for s in node.truth.sockets if s.state != "TIME_WAIT"}
    assert {k for k, s in reference.items() if s["state"] != "TIME_WAIT"} == \
        {k for k, s in other.items() if s["state"] != "TIME_WAIT"}
    assert any(s["state"] == "TIME_WAIT" for s in other.values()) or not any(
        node.truth.sure(s) for s in node.truth.sockets if s.state == "TIME_WAIT")
    for key in set(reference) & set(other):
        got, want = other[key], reference[key]
        for field in COMPARED:
            assert got[field] == want[field], (source, key, field, got[field], want[field])
        assert got["uid"] == want["uid"], (source, key)
        if source == "pidfd" and got["pids"]:
            assert got["source"] == "pidfd"
        else:
            assert got["source"] == ("proc" if source == "proc" else "netlink")
    assert young  # the node has sockets at all


def test_sources_cover_the_truth(docs, node):
    """Beyond agreeing with each other, each source finds every socket of the truth."""
    for source, doc in docs.items():
        got = {(s["netns"], s["inode"]) for s in doc["sockets"]}
        for truth in node.truth.sockets:
            if truth.inode and node.truth.sure(truth):
                assert (truth.netns, truth.inode) in got, (source, truth.name)


def test_pidfd_finds_socket_namespaces_not_holder_namespaces(docs, node):
    doc = docs["pidfd"]
    by_inode = {s["inode"]: s for s in doc["sockets"] if s["inode"]}
    c_listen = node.truth.sock("C.listen")
    thread_udp = node.truth.sock("B.thread.udp")
    assert by_inode[c_listen.inode]["netns"] == node.truth.ns["C"].inode
    assert by_inode[thread_udp.inode]["netns"] == node.truth.ns["B"].inode
    assert by_inode[c_listen.inode]["pids"] == c_listen.pids
    stats = doc["stats"]
    assert stats["source"] == "pidfd" and stats["pidfd_borrowed"] > 0
    assert stats["sockets_by_source"].get("pidfd", 0) > 0


def test_auto_reports_its_choice(node):
    doc = snapshot("auto")
    stats = doc["stats"]
    assert stats["source_reason"].startswith("auto")
    assert stats["source"] == "netlink"   # root here: CAP_SYS_ADMIN, the fastest source measured


def test_explicit_source_without_privilege_is_a_clear_error():
    run = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--",
                          sys.executable, "-m", "nsnet", "sockets", "--source", "netlink"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "nsnet: error: --source netlink needs CAP_SYS_ADMIN (setns into each namespace to "
        "open its sock_diag socket)")


def lasting(snap, node) -> set[tuple]:
    """The real node's sockets that stay from one snapshot to the next (not TIME_WAIT)."""
    return {(s.netns, s.inode, s.state) for s in snap.sockets
            if s.netns in node.truth.netns_inodes() and s.state != "TIME_WAIT"}


@pytest.mark.parametrize("forked", [False, True], ids=["in-process", "forked"])
def test_diag_sockets_are_kept_across_snapshots_and_pruned(node, forked):
    """A sampler keeps one sock_diag socket per namespace: the second snapshot enters no
    namespace; a namespace that disappears has its socket closed (not kept alive by us).
    forked: the agent samples in child processes (agent/isolate.py): the socket a child opened
    is handed to the agent (checked to be in its namespace: SIOCGSKNS) and inherited by the
    next child, which opens none."""
    import fcntl
    import io
    import os
    import uuid

    from nsnet.agent.sampler import ForkedSampler, Sampler
    from nsnet.options import SamplingOptions, SnapshotOptions
    from nsnet.snapshot import Snapshotter

    SIOCGSKNS = 0x894C     # linux/sockios.h: an fd of the socket's network namespace

    def netns_of(sock) -> int:
        fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
        try:
            return os.fstat(fd).st_ino
        finally:
            os.close(fd)

    name = f"nsnt-cache-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    if forked:
        sampler = ForkedSampler(Sampler(SamplingOptions(
            snapshot=SnapshotOptions(source="netlink"), events=False, max_cpu=8.0,
            interval=1.0), io.StringIO().write))
        take, close, cache = (lambda: sampler.sample().snap), sampler.close, \
            sampler.sampler.scanner.kept()
    else:
        snapshotter = Snapshotter(SnapshotOptions(source="netlink"), keep=True)
        take, close, cache = snapshotter.take, snapshotter.close, snapshotter.kept()
    try:
        inode, a = os.stat(f"/run/netns/{name}").st_ino, node.truth.ns["A"].inode
        first = take()
        opened = cache.created
        assert cache.get(inode) is not None and cache.get(a) is not None
        assert netns_of(cache.get(inode)) == inode and netns_of(cache.get(a)) == a
        second = take()
        assert cache.created == opened      # no setns, no new socket
        assert lasting(first, node) == lasting(second, node) and lasting(first, node)
        subprocess.run(["ip", "netns", "del", name], check=True)
        take()
        assert cache.get(inode) is None
    finally:
        close()
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_auto_without_cap_sys_admin_uses_proc():
    run = subprocess.run(["setpriv", "--inh-caps=-all",
                          "--bounding-set=-all,+sys_ptrace,+dac_read_search", "--",
                          sys.executable, "-m", "nsnet", "sockets", "--json", "--source", "auto"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stats"]["source"] == "proc"


SOCKET_ONLY = r'''
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
assert libc.unshare(0x40000000) == 0          # a new namespace for this (only) thread...
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
assert libc.setns(home, 0x40000000) == 0      # ...left again: only the socket keeps it alive
print(os.fstat(s.fileno()).st_ino, s.getsockname()[1], flush=True)
time.sleep(60)
'''


def test_namespace_kept_alive_only_by_a_socket():
    """No process lives in it and no bind mount pins it: /proc cannot list its sockets (it
    counts the fd), pidfd finds the namespace through the socket itself."""
    from conftest import require_root
    require_root()
    holder = subprocess.Popen([sys.executable, "-c", SOCKET_ONLY], stdout=subprocess.PIPE,
                              text=True)
    try:
        inode, port = map(int, holder.stdout.readline().split())
        pidfd_doc, proc_doc = snapshot("pidfd"), snapshot("proc")
        [sock] = [s for s in pidfd_doc["sockets"] if s["inode"] == inode]
        assert (sock["state"], sock["local_addr"], sock["local_port"], sock["pids"],
                sock["source"]) == ("LISTEN", "127.0.0.1", port, [holder.pid], "pidfd")
        [ns] = [n for n in pidfd_doc["namespaces"] if n["inode"] == sock["netns"]]
        assert ns["found_by"] == ["sockets"] and ns["pids"] == [] and ns["error"] is None
        assert all(n["inode"] != sock["netns"] for n in proc_doc["namespaces"])
        assert not any(s["inode"] == inode for s in proc_doc["sockets"])
        assert proc_doc["stats"]["socket_fds_not_in_tables"] >= 1
    finally:
        holder.kill()
        holder.wait()

