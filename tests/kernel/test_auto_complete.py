"""`auto` (the default source) lists everything `proc` lists, on a kernel whose sock_diag
cannot dump every protocol.

raw_diag is often not built (it is not on these machines: a raw dump answers ENOENT). The
netlink source then reads those protocols' /proc tables for the namespace -- through a member
task, or by entering a namespace only a bind mount keeps -- and says so in
stats.tables_from_proc. Real sockets: a process in its own namespace holds an ICMP raw socket
over IPv4 and one over IPv6, and one more raw socket it made inside a namespace kept only by
`ip netns add`. Each must be listed, in its namespace and with its holder, by every source,
and `netlink`/`auto` must list exactly what `proc` lists for those namespaces.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_root
from realnode import ip_tool

REPO = Path(__file__).resolve().parents[2]

# argv: path of a pinned namespace. Holds raw sockets in its own namespace and one made in the
# pinned one; prints {"own": [inodes], "pinned": inode, "pid": pid}; waits on stdin.
HOLDER = r"""
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
own = [socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
       socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)]
home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
there = os.open(sys.argv[1], os.O_RDONLY)
assert libc.setns(there, 0x40000000) == 0
pinned = socket.socket(socket.AF_INET, socket.SOCK_RAW, 89)    # OSPF's protocol number
assert libc.setns(home, 0x40000000) == 0
ino = lambda s: os.fstat(s.fileno()).st_ino
print(json.dumps({"own": [ino(s) for s in own], "pinned": ino(pinned), "pid": os.getpid()}),
      flush=True)
sys.stdin.read()
"""


def _sockets(source: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--raw", "--json",
                          "--source", source], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _diag_missing(proto: str = "raw") -> bool:
    from nsnet.sources.netlink import dump_namespace, open_diag_socket

    with open_diag_socket() as sock:
        return proto in dump_namespace(sock, protos=(proto,)).missing


@pytest.fixture(scope="module")
def raw_node():
    require_root("ip", "unshare")
    name = f"nsnt-raw-{secrets.token_hex(3)}"
    subprocess.run([ip_tool(), "netns", "add", name], check=True)
    holder = None
    try:
        holder = subprocess.Popen(["unshare", "-n", sys.executable, "-c", HOLDER,
                                   f"/run/netns/{name}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        truth = json.loads(holder.stdout.readline())
        truth["own_netns"] = os.stat(f"/proc/{truth['pid']}/ns/net").st_ino
        truth["pinned_netns"] = os.stat(f"/run/netns/{name}").st_ino
        yield truth
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        subprocess.run([ip_tool(), "netns", "del", name], capture_output=True)


def _ours(doc: dict, truth: dict) -> dict[int, dict]:
    netns = {truth["own_netns"], truth["pinned_netns"]}
    return {s["inode"]: s for s in doc["sockets"] if s["netns"] in netns}


@pytest.mark.parametrize("source", ["proc", "netlink", "auto"])
def test_every_source_lists_the_raw_sockets(raw_node, source):
    doc = _sockets(source)
    got = _ours(doc, raw_node)
    pid = raw_node["pid"]
    for inode in raw_node["own"]:
        assert got[inode]["netns"] == raw_node["own_netns"] and pid in got[inode]["pids"]
    pinned = got[raw_node["pinned"]]
    assert pinned["netns"] == raw_node["pinned_netns"] and pid in pinned["pids"]
    assert pinned["local_port"] == 89          # /proc/net/raw prints the protocol as the port
    assert {got[i]["family"] for i in raw_node["own"]} == {"inet", "inet6"}
    missing = _diag_missing()
    if source == "proc":
        assert doc["stats"]["tables_from_proc"] == []
    else:
        assert doc["stats"]["source"] == "netlink"
        # ping sockets have no sock_diag handler in any kernel: icmp comes from /proc, where
        # a namespace has ping sockets (its /proc/net/protocols says which kinds are there)
        assert _diag_missing("icmp")
        assert set(doc["stats"]["tables_from_proc"]) - {"icmp"} == ({"raw"} if missing else set())
        assert doc["stats"]["source_errors"] == []
        want = "proc" if missing else "netlink"
        assert {got[i]["source"] for i in [*raw_node["own"], raw_node["pinned"]]} == {want}


def test_netlink_lists_what_proc_lists(raw_node):
    compared = ("proto", "family", "state", "local_addr", "local_port", "remote_addr",
                "remote_port", "netns", "pids", "uid")
    proc, netlink = _ours(_sockets("proc"), raw_node), _ours(_sockets("netlink"), raw_node)
    assert set(proc) == set(netlink)
    for inode in proc:
        assert {k: proc[inode][k] for k in compared} == {k: netlink[inode][k] for k in compared}



def test_the_default_is_auto_and_verbose_says_what_read_the_node(raw_node):
    """No --source: auto, as root netlink; -v says so in one stderr line, with the tables
    read from /proc instead and the reader threads."""
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--raw", "--json", "-v"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)["stats"]
    assert stats["source"] == "netlink" and stats["source_reason"].startswith("auto: ")
    said = [line for line in run.stderr.splitlines() if not line.startswith("nsnet: warning:")]
    assert len(said) == 1, run.stderr
    line = said[0]
    assert line.startswith(f"nsnet: source netlink ({stats['source_reason']})")
    assert ("raw from /proc" in line) == ("raw" in stats["tables_from_proc"])
    assert f"{stats['reader_threads']} reader thread(s): {stats['reader_threads_reason']}" in line
    assert f"{stats['namespaces']} namespaces, {stats['sockets']} sockets in " in line
    quiet = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--raw", "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert not [x for x in quiet.stderr.splitlines() if not x.startswith("nsnet: warning:")]
