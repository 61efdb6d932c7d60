"""Every source lists packet, netlink, ping and UDP-Lite sockets, the same way, with their
holders; `ss -0` and `ss -A netlink` agree.

A process in a fresh namespace holds the sockets tests/support/link_scenario.py builds (a
sniffer on lo, a cooked IPv4 packet socket on every interface, a route listener with groups,
an unbound generic netlink socket, ping sockets over IPv4 and IPv6, a bound and a connected
UDP-Lite socket) and prints what each is, from fstat() and what it was made to do. Each source
(`proc`, `netlink`, `pidfd`, `auto`) must list each of them in that namespace, held by that
process, with exactly those fields; the kernel's own netlink sockets there (port id 0) must be
listed unheld and attributed to nobody by every source; the default `nsnet sockets` leaves
netlink out and `--all-kinds` puts it back.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"

HOLDER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import link_scenario
built = link_scenario.build()
print(json.dumps({"pid": os.getpid(), "expected": built.expected,
                  "packet": {str(k): v for k, v in built.packet.items()},
                  "netlink": {str(k): v for k, v in built.netlink.items()}}), flush=True)
sys.stdin.read()
"""
ROW = ("proto", "family", "state", "local_addr", "local_port", "remote_addr", "remote_port",
       "inode", "uid")
# ss -A netlink's protocol names (iproute2 lib/ll_proto... nl_proto_n2a) -> the kernel's
SS_NETLINK = {"rtnl": "route", "tcpdiag": "sock_diag", "genl": "generic", "xfrm": "xfrm",
              "audit": "audit", "fiblookup": "fib_lookup", "nft": "netfilter",
              "uevent": "kobject_uevent", "selinux": "selinux", "connector": "connector"}


@pytest.fixture(scope="module")
def kinds_node():
    with holder(HOLDER) as truth:
        yield truth


@contextlib.contextmanager
def holder(script: str, *args: str):
    """A process in a fresh namespace running `script` (it builds sockets with link_scenario
    and prints what it made, with its pid, as one JSON line); what it printed, with its
    namespace's inode and the process itself ("holder")."""
    require_root("unshare", "nsenter", "ss", "ip")
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", script, str(SUPPORT),
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        truth = json.loads(proc.stdout.readline())
        truth["netns"] = os.stat(f"/proc/{truth['pid']}/ns/net").st_ino
        truth["holder"] = proc
        yield truth
    finally:
        proc.kill()
        proc.wait()


def _sockets(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _there(doc: dict, node: dict) -> list[dict]:
    return [s for s in doc["sockets"] if s["netns"] == node["netns"]]


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_every_source_lists_every_kind(kinds_node, source):
    doc = _sockets("--all-kinds", "--source", source)
    there = _there(doc, kinds_node)
    by_inode = {s["inode"]: s for s in there}
    for want in kinds_node["expected"]:
        got = by_inode.get(want[7])
        assert got is not None, f"{source} lost {want}"
        assert tuple(got[k] for k in ROW) == tuple(want), source
        assert got["pids"] == [kinds_node["pid"]] and got["attribution"] == "holder"
        if got["proto"] == "packet":
            type_, proto, ifindex = kinds_node["packet"][str(want[7])]
            assert got["packet"] == {"type": type_, "protocol": proto,
                                     "protocol_name": {3: "all", 0x800: "ip"}[proto],
                                     "ifindex": ifindex,
                                     "interface": "lo" if ifindex else None}
        elif got["proto"] == "netlink":
            protocol, portid, groups = kinds_node["netlink"][str(want[7])]
            assert got["netlink"] == {"protocol": protocol, "portid": portid, "groups": groups,
                                      "protocol_name": {0: "route", 16: "generic"}[protocol],
                                      "kernel": False}
        assert got["direction"] is None or got["proto"] == "udplite"
    # the kernel's end of each netlink protocol: unheld, nobody's
    kernel = [s for s in there if s["proto"] == "netlink" and s["local_port"] == 0]
    assert {"route", "sock_diag", "generic", "audit"} <= {s["local_addr"] for s in kernel}
    assert all(not s["pids"] and not s["users"] and s["netlink"]["kernel"] for s in kernel)


def test_sources_agree_on_the_namespace(kinds_node):
    """The same sockets of the kinds, the same fields, whichever source read them (the
    sock_diag sockets nsnet itself made there are in some and not others: left out)."""
    def rows(source: str) -> set[tuple]:
        return {tuple(s[k] for k in ROW) for s in _there(_sockets("--all-kinds", "--source",
                                                                  source), kinds_node)
                if s["proto"] in ("packet", "netlink", "icmp", "udplite")
                and not (s["proto"] == "netlink" and s["local_addr"] == "sock_diag"
                         and s["local_port"])}
    proc = rows("proc")
    for source in ("netlink", "pidfd", "auto"):
        assert rows(source) == proc, source


def test_ss_agrees(kinds_node):
    pid = str(kinds_node["pid"])
    doc = _there(_sockets("--all-kinds", "--source", "auto"), kinds_node)
    ss = subprocess.run(["nsenter", "-t", pid, "-n", "ss", "-0", "-a", "-e", "-H"],
                        capture_output=True, text=True, check=True).stdout
    # p_raw UNCONN 0 0 *:lo * users:... ino:13884266 sk:...
    seen = {int(ino): local.rsplit(":", 1)[1]
            for local, ino in re.findall(r"^p_\w+\s+\S+\s+\d+\s+\d+\s+(\S+)\s.*?ino:(\d+)", ss,
                                         re.M)}
    ours = {s["inode"]: s["local_addr"] for s in doc if s["proto"] == "packet"}
    assert ours == seen and len(ours) == 2
    ss = subprocess.run(["nsenter", "-t", pid, "-n", "ss", "-A", "netlink", "-a", "-H"],
                        capture_output=True, text=True, check=True).stdout
    listed = set()
    for local in re.findall(r"^\S+\s+\d+\s+\d+\s+(\S+)", ss, re.M):
        proto, _, who = local.partition(":")
        portid = 0 if who == "kernel" else int(who.rsplit("/", 1)[-1])
        listed.add((SS_NETLINK.get(proto, proto), portid))
    ours_nl = {(s["local_addr"], s["local_port"]) for s in doc if s["proto"] == "netlink"}
    # ss's and nsnet's own sock_diag sockets differ (each sees the other's only by chance)
    drop = {x for x in listed | ours_nl if x[0] == "sock_diag" and x[1]}
    assert ours_nl - drop == listed - drop
    route = next(v for v in kinds_node["netlink"].values() if v[0] == 0)
    assert ("route", route[1]) in ours_nl


def test_default_view_leaves_netlink_out(kinds_node):
    default = {s["proto"] for s in _there(_sockets("--source", "proc"), kinds_node)}
    assert {"packet", "icmp", "udplite"} <= default and "netlink" not in default
    only = {s["proto"] for s in _there(_sockets("--packet", "--netlink", "--source", "proc"),
                                       kinds_node)}
    assert only == {"packet", "netlink"}


# ------------------------------------------------------------ IPv6-only, bound interfaces

SCOPED_HOLDER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import link_scenario
built, scoped = link_scenario.build_scoped()
print(json.dumps({"pid": os.getpid(), "scoped": {str(k): v for k, v in scoped.items()}}),
      flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def scoped_node():
    with holder(SCOPED_HOLDER) as truth:
        yield truth


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_v6only_and_bound_interface(scoped_node, source):
    there = {s["inode"]: s for s in _there(_sockets("--source", source, "--tcp", "--udp"),
                                           scoped_node)}
    for inode, (v6only, bound) in scoped_node["scoped"].items():
        got = there[int(inode)]
        if source == "proc":     # the tables say neither
            assert (got["v6only"], got["bound_interface"]) == (None, None)
        else:
            assert (got["v6only"], got["bound_interface"]) == (v6only, bound), got


def test_classifier_and_tables_against_ss(scoped_node):
    """ss prints a dual-stack wildcard as *, an IPv6-only one as [::], a bound interface as
    %IF after the address; nsnet's table says the same of the same sockets."""
    pid = str(scoped_node["pid"])
    ss = subprocess.run(["nsenter", "-t", pid, "-n", "ss", "-tulnH"], capture_output=True,
                        text=True, check=True).stdout
    ss_local = {int(m.group(2)): m.group(1)
                for m in re.finditer(r"^\S+\s+\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s", ss, re.M)}
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--tcp", "--udp",
                          "--listening", "--netns", str(scoped_node["netns"]),
                          "--color", "never"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    ours = {}
    for m in re.finditer(r"(\[?[0-9a-f.:*]+\]?(?:%\S+)?):(\d+)( \((?:v6only|\+IPv4)\))?",
                         run.stdout):
        ours[int(m.group(2))] = (m.group(1), m.group(3))
    from link_scenario import SCOPED_PORTS
    assert ss_local[SCOPED_PORTS["dual"]] == "*"
    assert ours[SCOPED_PORTS["dual"]] == ("[::]", " (+IPv4)")
    assert ss_local[SCOPED_PORTS["v6only"]] == "[::]"
    assert ours[SCOPED_PORTS["v6only"]] == ("[::]", " (v6only)")
    for name in ("link_local", "bound_v4"):
        assert ours[SCOPED_PORTS[name]][0] == ss_local[SCOPED_PORTS[name]], name
    assert ss_local[SCOPED_PORTS["link_local"]] == "[fe80::1]%nsnt0"
    # the IPv4 connection the dual-stack listener accepted is inbound to it
    doc = _there(_sockets("--tcp"), scoped_node)
    accepted = [s for s in doc if s["local_port"] == SCOPED_PORTS["dual"]
                and s["state"] == "ESTABLISHED"]
    assert accepted and all(s["direction"] == "inbound" for s in accepted)


# ------------------------------------------------------------ queues, timers, TCP_INFO

QUEUES_HOLDER = r"""
import json, os, sys, tempfile
sys.path.insert(0, sys.argv[1])
import link_scenario
built, inodes = link_scenario.build_queues(tempfile.mkdtemp())
print(json.dumps({"pid": os.getpid(), "inodes": inodes}), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def queues_node():
    with holder(QUEUES_HOLDER) as truth:
        yield truth


def _details(node: dict, source: str) -> dict[int, dict]:
    doc = _sockets("--source", source, "-e", "-i", "--tcp", "--unix", "--udp")
    return {s["inode"]: s["detail"] for s in _there(doc, node) if s["inode"]}


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_queues_and_tcp_info_from_every_source(queues_node, source):
    from link_scenario import (
        ANSWERED,
        BACKLOG,
        PENDING,
        SENT,
        UNIX_BACKLOG,
        UNIX_PENDING,
        UNIX_UNREAD,
        UNREAD,
    )
    ino = queues_node["inodes"]
    got = _details(queues_node, source)
    tables = source == "proc"
    assert got[ino["backlog"]]["recv_q"] == PENDING
    # the tables do not print a listener's backlog; sock_diag and TCP_INFO do
    assert got[ino["backlog"]]["send_q"] == (None if tables else BACKLOG)
    assert got[ino["unread_reader"]]["recv_q"] == UNREAD
    client, server = got[ino["traffic_client"]], got[ino["traffic_server"]]
    if tables:      # neither TCP_INFO nor a cookie in /proc
        assert client["tcp"] is None and client["cookie"] is None
    else:
        assert (client["tcp"]["bytes_acked"], client["tcp"]["bytes_received"]) == \
            (SENT + 1, ANSWERED)
        assert (server["tcp"]["bytes_acked"], server["tcp"]["bytes_received"]) == \
            (ANSWERED, SENT)
        assert client["tcp"]["congestion"] and client["tcp"]["cwnd"] > 0
    # unix queues: sock_diag (UNIX_DIAG_RQLEN) and the borrowed socket (SIOCINQ) say them;
    # a unix listener's queue only sock_diag
    unix_listener, right = got.get(ino["unix_backlog"]), got.get(ino["unix_right"])
    if source in ("netlink", "auto"):
        assert (unix_listener["recv_q"], unix_listener["send_q"]) == (UNIX_PENDING, UNIX_BACKLOG)
    if source != "proc":
        assert right["recv_q"] == UNIX_UNREAD
    # timers: the tables and sock_diag; a query cannot read one
    assert (got[ino["backlog"]]["timer"] is None) == (source == "pidfd")


def test_cookies_agree(queues_node):
    """The cookie sock_diag reports is the one SO_COOKIE gives for the same socket."""
    netlink, pidfd = _details(queues_node, "netlink"), _details(queues_node, "pidfd")
    both = [i for i in queues_node["inodes"].values() if i in netlink and i in pidfd]
    assert len(both) >= 10
    assert all(netlink[i]["cookie"] == pidfd[i]["cookie"] and netlink[i]["cookie"]
               for i in both)


def test_ss_agrees_on_queues(queues_node):
    from link_scenario import BACKLOG, PENDING, QUEUE_PORTS
    ss = subprocess.run(["nsenter", "-t", str(queues_node["pid"]), "-n", "ss", "-ltnH"],
                        capture_output=True, text=True, check=True).stdout
    row = next(line.split() for line in ss.splitlines()
               if f":{QUEUE_PORTS['backlog']} " in line + " ")
    assert (int(row[1]), int(row[2])) == (PENDING, BACKLOG)
    doc = _sockets("--source", "auto", "-e", "--tcp", "--listening")
    ours = next(s for s in _there(doc, queues_node)
                if s["local_port"] == QUEUE_PORTS["backlog"])
    assert (ours["detail"]["recv_q"], ours["detail"]["send_q"]) == (int(row[1]), int(row[2]))


# ------------------------------------------------------------ socket options (knetstat)

OPTIONS_HOLDER = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
import link_scenario
built, inodes = link_scenario.build_options()
print(json.dumps({"pid": os.getpid(), "inodes": inodes}), flush=True)
sys.stdin.readline()        # then: each option read back by the holder itself
back = {}
for s in built.held:
    ino = os.fstat(s.fileno()).st_ino
    back[ino] = [s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
                 s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                 s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), s.getblocking()]
print(json.dumps(back), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def options_node():
    with holder(OPTIONS_HOLDER) as truth:
        yield truth


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_every_option_set_and_unset(options_node, source):
    from link_scenario import OPTIONS_SET
    doc = _sockets("--source", source, "--options", "--tcp", "--udp")
    got = {s["inode"]: s["detail"]["options"] for s in _there(doc, options_node)
           if s["inode"] in options_node["inodes"].values()}
    ino = options_node["inodes"]
    assert got[ino["set"]] == {**OPTIONS_SET, "SO_LINGER": 5}
    unset = got[ino["unset"]]
    assert unset["SO_LINGER"] is None and unset["TCP_NODELAY"] == 0
    assert all(unset[k] == 0 for k in ("SO_REUSEADDR", "SO_REUSEPORT", "SO_KEEPALIVE",
                                       "SO_MARK", "TCP_USER_TIMEOUT", "IP_TOS"))
    assert unset["TCP_CONGESTION"] != "reno" and unset["TCP_KEEPIDLE"] == 7200
    six = got[ino["set6"]]
    assert (six["IPV6_TCLASS"], six["IPV6_V6ONLY"]) == (0x20, 1) and "IP_TOS" not in six
    udp = got[ino["udp_set"]]
    assert udp["SO_REUSEADDR"] == 1 and "TCP_NODELAY" not in udp
    assert doc["stats"]["options_read"] >= 4


def test_options_oracle_and_nothing_changed(options_node):
    """ss -e shows the mark (fwmark) the options say; the holder reads its sockets back
    unchanged after every borrow (and still blocking: nothing touched the description)."""
    pid = str(options_node["pid"])
    ss = subprocess.run(["nsenter", "-t", pid, "-n", "ss", "-ltneH"], capture_output=True,
                        text=True, check=True).stdout
    line = next(x for x in ss.splitlines() if ":4700 " in x)
    assert "fwmark:0x42" in line
    holder = options_node["holder"]
    holder.stdin.write("\n")
    holder.stdin.flush()
    back = json.loads(holder.stdout.readline())
    ino = options_node["inodes"]
    assert back[str(ino["set"])] == [1, 1, 2 * 65536, True]
    assert back[str(ino["unset"])][:2] == [0, 0] and back[str(ino["unset"])][3] is True


def test_options_not_read_say_why(options_node):
    """A holder that is gone: its sockets' options stay null and the output says why once."""
    from nsnet.model import Socket, Stats
    from nsnet.sources.pidfd import read_options
    s = Socket("tcp", "inet", "LISTEN", "127.0.0.1", 1, "0.0.0.0", 0, 1, 0)
    dead = subprocess.Popen(["true"])
    dead.wait()
    s.pids, s.fds = [dead.pid], {dead.pid: [3]}
    stats = Stats()
    read_options([s], stats)
    assert (stats.options_read, stats.options_unread) == (0, 1)
    assert s.detail is None
    assert len(stats.privileges) == 1 and "socket options not read for 1 socket" in \
        stats.privileges[0]


def test_pidfd_lists_every_unheld_state(queues_node):
    """What no process holds -- connections waiting in a listener's accept queue (inode 0,
    ESTABLISHED), an orphan in FIN_WAIT2 -- pidfd lists as proc does."""
    from link_scenario import PENDING, QUEUE_PORTS

    def unheld(source: str) -> set[tuple]:
        doc = _sockets("--source", source, "--tcp")
        return {(s["state"], s["local_port"], s["remote_port"]) for s in _there(doc, queues_node)
                if not s["inode"]}
    proc = unheld("proc")
    waiting = {x for x in proc if x[0] == "ESTABLISHED" and x[1] == QUEUE_PORTS["backlog"]}
    assert len(waiting) == PENDING
    assert ("FIN_WAIT2", QUEUE_PORTS["orphan"]) in {x[:2] for x in proc}
    assert unheld("pidfd") == proc


# ------------------------------------------------------------ in no table: MPTCP, vsock, unbound

UNLISTED_HOLDER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import link_scenario
built, inodes = link_scenario.build_unlisted(int(sys.argv[2]))
print(json.dumps({"pid": os.getpid(), "inodes": inodes}), flush=True)
sys.stdin.read()
"""


def _free_vsock_port() -> int:
    import socket as _socket
    for port in range(40000 + os.getpid() % 5000, 60000):
        probe = _socket.socket(_socket.AF_VSOCK, _socket.SOCK_STREAM)
        try:
            probe.bind((_socket.VMADDR_CID_ANY, port))
            return port
        except OSError:
            continue
        finally:
            probe.close()
    raise AssertionError("no free vsock port")


@pytest.fixture(scope="module")
def unlisted_node():
    port = _free_vsock_port()
    with holder(UNLISTED_HOLDER, str(port)) as truth:
        truth["vsock_port"] = port
        yield truth


@pytest.mark.parametrize("source", ["netlink", "pidfd", "auto"])
def test_what_no_table_lists_is_listed(unlisted_node, source):
    from link_scenario import MPTCP_PORT
    doc = _sockets("-A", "--source", source)
    there = _there(doc, unlisted_node)
    ino = unlisted_node["inodes"]
    held = {(s["proto"], s["inode"]): s for s in there if unlisted_node["pid"] in s["pids"]}
    assert held[("mptcp", ino["mptcp_listener"])]["state"] == "LISTEN"
    assert held[("mptcp", ino["mptcp_listener"])]["local_port"] == MPTCP_PORT
    client = held[("mptcp", ino["mptcp_client"])]
    assert (client["state"], client["remote_port"], client["direction"]) == \
        ("ESTABLISHED", MPTCP_PORT, "outbound")
    assert held[("mptcp", ino["mptcp_server"])]["direction"] == "inbound"
    vsock = held[("vsock", ino["vsock"])]
    assert (vsock["state"], vsock["local_addr"], vsock["local_port"], vsock["unix_type"]) == \
        ("LISTEN", "*", unlisted_node["vsock_port"], "stream")
    assert ("netlink", ino["netlink_unbound"]) in held
    assert held[("icmp", ino["ping_unbound"])]["local_port"] == 0
    # the MPTCP listener's first subflow: a TCP listener with its inode
    assert held[("tcp", ino["mptcp_listener"])]["state"] == "LISTEN"
    # what is still in no table: the idle TCP socket, said by kind and namespace -- but
    # pidfd asks every held socket, that one too (CLOSE: bound, never listening)
    key = f"net:[{unlisted_node['netns']}]"
    rows = [r for r in doc["stats"]["not_in_tables"] if r["netns_key"] == key]
    if source == "pidfd":
        assert held[("tcp", ino["tcp_idle"])]["state"] == "CLOSE" and rows == []
    else:
        assert rows == [{"kind": "TCP", "netns_key": key, "count": 1}]


def test_proc_lists_the_tables_and_says_what_they_miss(unlisted_node):
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "-A", "--json",
                          "--source", "proc"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    there = _there(doc, unlisted_node)
    assert not [s for s in there if s["proto"] in ("mptcp", "vsock")]
    key = f"net:[{unlisted_node['netns']}]"
    rows = {r["kind"]: r["count"] for r in doc["stats"]["not_in_tables"]
            if r["netns_key"] == key}
    assert rows == {"AF_VSOCK": 1, "NETLINK": 1, "PING": 1, "TCP": 1}
    line = next(x for x in run.stderr.splitlines() if "held socket(s) in no table" in x)
    assert "AF_VSOCK (vsock has no table" in line and "NETLINK (never bound" in line


def test_socket_memory_from_sock_diag_and_the_socket(queues_node):
    """-m: the same sk_meminfo from INET_DIAG_SKMEMINFO (netlink) and SO_MEMINFO (pidfd) for
    a socket nothing touches, and ss -m's skmem says the same; proc cannot say it."""
    import re

    from link_scenario import QUEUE_PORTS
    ino = queues_node["inodes"]["unread_reader"]

    def memory(source: str) -> dict | None:
        doc = _sockets("--source", source, "-m", "--tcp")
        return next((s["detail"] or {}).get("memory") for s in _there(doc, queues_node)
                    if s["inode"] == ino)
    netlink, pidfd = memory("netlink"), memory("pidfd")
    assert netlink == pidfd and netlink["rmem_alloc"] > 0
    assert memory("proc") is None
    ss = subprocess.run(["nsenter", "-t", str(queues_node["pid"]), "-n", "ss", "-tmnH",
                         "state", "established"], capture_output=True, text=True,
                        check=True).stdout
    seen = re.search(r"127\.0\.0\.1:" + str(QUEUE_PORTS["unread"]) + r" +127\.0\.0\.1:\d+\s+"
                     r"skmem:\(r(\d+),rb(\d+),t(\d+),tb(\d+)", ss)
    assert seen is not None, ss
    assert [int(x) for x in seen.groups()] == [netlink[k] for k in
                                              ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf")]


# ------------------------------------------------------------ MPTCP: every subflow, linked

MULTIPATH_HOLDER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import link_scenario
link_scenario.lo_up()
built = link_scenario.Built()
tokens = link_scenario.build_multipath(built)
print(json.dumps({"pid": os.getpid(), "inodes": built.inodes, "tokens": tokens}), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def multipath_node():
    with holder(MULTIPATH_HOLDER) as truth:
        yield truth


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_every_subflow_of_an_mptcp_connection_is_listed_and_linked(multipath_node, source):
    from link_scenario import MULTIPATH_PORT
    node = multipath_node
    ino, tokens = node["inodes"], node["tokens"]
    there = _there(_sockets("--tcp", "--mptcp", "--source", source), node)
    subflows = [s for s in there if s["proto"] == "tcp" and s["state"] == "ESTABLISHED"
                and MULTIPATH_PORT in (s["local_port"], s["remote_port"])]
    # ss, in the namespace, is the oracle: every subflow, with its connection's token
    ss = subprocess.run(["nsenter", "-t", str(node["pid"]), "-n", "ss", "-tinH", "state",
                         "established"], capture_output=True, text=True, check=True).stdout
    oracle = {}     # (local addr, port, remote addr, port) -> (token, bound interface)
    for head, info in re.findall(r"^(\S[^\n]*)\n\s([^\n]*)", ss, re.M):
        (laddr, lport), (raddr, rport) = (e.rsplit(":", 1) for e in head.split()[-2:])
        laddr, _, dev = laddr.partition("%")
        token = re.search(r"token:[0-9a-f]+\(id:\d+\)/([0-9a-f]+)", info)
        if token and MULTIPATH_PORT in (int(lport), int(rport)):
            oracle[(laddr, int(lport), raddr, int(rport))] = (int(token.group(1), 16),
                                                               dev or None)
    assert len(oracle) == 4, ss
    assert {(s["local_addr"], s["local_port"], s["remote_addr"], s["remote_port"])
            for s in subflows} == set(oracle)
    # each held, through its connection's inode, by the process that holds the connection
    by_token = {tokens["client"]: ino["multipath_client"],
                tokens["server"]: ino["multipath_server"]}
    for s in subflows:
        assert s["pids"] == [node["pid"]] and s["attribution"] == "holder"
        assert s["inode"] in by_token.values()
    if source == "proc":    # no table says which connection a subflow carries
        assert {json.dumps(s["mptcp"]) for s in subflows} == {"null"}
        return
    for s in subflows:
        token, dev = oracle[(s["local_addr"], s["local_port"], s["remote_addr"],
                             s["remote_port"])]
        assert s["mptcp"] == {"token": f"{token:08x}", "connection": by_token[token]}
        assert s["inode"] == by_token[token]
        # the path manager binds the extra subflow to its endpoint's device, as ss shows
        assert s["bound_interface"] == dev
    conns = {s["inode"]: s for s in there if s["proto"] == "mptcp"}
    assert conns[ino["multipath_client"]]["mptcp"] == {"token": f"{tokens['client']:08x}"}
    assert conns[ino["multipath_server"]]["mptcp"] == {"token": f"{tokens['server']:08x}"}
