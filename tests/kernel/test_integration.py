"""nsnet against a real node: real namespaces, processes, uids and sockets (tests/support/realnode.py).

nsnet runs exactly as a user runs it (`python -m nsnet VIEW --json`, a subprocess), and its
documents are compared with ground truth that the fixture processes reported about their own
sockets (fstat, getsockname, SIOCGSKNS), never with anything parsed from /proc/net.

Other work may run on the same machine (other nodes, other users of uid 10001): assertions
about whole documents are scoped to this node's namespaces and pids, and exact within them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Callable, Optional

import pytest

from conftest import require_root
from realnode import (PORT_C, PORT_UDP, PORT_WEB, PORT_WEB6, TIME_WAIT_MAYBE, TIME_WAIT_SURE,
                      UID_A, UID_B, UID_FOREIGN, UID_PAUSE, V4_A, SockTruth, Truth)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NSNET_TIMEOUT = 300


# --------------------------------------------------------------------------- running nsnet

class Run:
    """One nsnet run: its document and when it ran (TIME_WAIT sockets age)."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "nsnet", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=NSNET_TIMEOUT)
        self.ended = time.monotonic()
        self.stderr = proc.stderr
        assert proc.returncode == 0, f"nsnet {args} exited {proc.returncode}: {proc.stderr}"
        self.stdout = proc.stdout
        self.doc = json.loads(proc.stdout) if "--ndjson" not in args else None


def nsnet(*args: str) -> Run:
    return Run(list(args))


def expected_present(truth: Truth, s: SockTruth, run: Run) -> Optional[bool]:
    """True: must be listed; False: must not; None: may or may not (a TIME_WAIT near 60 s,
    or one made while nsnet was running)."""
    if s.created > run.ended:
        return False
    if s.created > run.started:
        return None
    if s.state != "TIME_WAIT":
        return True
    if run.ended - s.created < TIME_WAIT_SURE:
        return True
    if run.started - s.created >= TIME_WAIT_MAYBE:
        return False
    return None


# Fields asserted by one dedicated test only, so that one known disagreement does not fail
# every view: the peer of B's connected UDP socket, whose server end in A is bound to
# 0.0.0.0 (test_udp_peer_in_another_namespace).
CHECKED_SEPARATELY = {"B.to_udp": {"peer", "peer_netns", "peer_pids"}}
GROUP_FIELDS_OF = {"peer": "peer", "peer_netns": "peer_netns", "peer_pids": "peer_users"}


def settle_time_waits(truth: Truth, horizon: float) -> None:
    """Wait until no TIME_WAIT (other modules share the node and make some) will expire
    during the next `horizon` seconds: by-namespace and by-user counts must be exact.
    This waits out a kernel timer of known length; it synchronises with nothing else."""
    now = time.monotonic()
    ages = [now - s.created for s in truth.sockets if s.state == "TIME_WAIT"]
    waits = [TIME_WAIT_MAYBE - a for a in ages if TIME_WAIT_SURE - horizon <= a < TIME_WAIT_MAYBE]
    if waits:
        time.sleep(max(waits))


# --------------------------------------------------------------------------- fixtures

# `node` is the session fixture of conftest.py: one RealNode, shared by every module.

@pytest.fixture(scope="session")
def views(node):
    """The three views, taken right after a fresh TIME_WAIT was made (it lives 60 s)."""
    require_root("ip", "nsenter", "setpriv", "unshare")
    settle_time_waits(node.truth, horizon=30)
    node.make_time_wait()
    runs = {"sockets": nsnet("sockets", "--json"),
            "by-namespace": nsnet("by-namespace", "--json"),
            "by-user": nsnet("by-user", "--json")}
    for r in runs.values():
        assert r.doc["schema"] == "nsnet/1", r.doc.get("schema")
    return runs


# --------------------------------------------------------------------------- helpers

def sock_key(d: dict) -> tuple:
    return (d["netns"], d["inode"], d["proto"], d["local_addr"], d["local_port"] or 0,
            d["remote_addr"], d["remote_port"] or 0)


def expected_doc(s: SockTruth) -> dict:
    return {"netns": s.netns, "proto": s.proto, "family": s.family, "state": s.state,
            "local_addr": s.local_addr, "local_port": s.local_port,
            "remote_addr": s.remote_addr, "remote_port": s.remote_port, "inode": s.inode,
            "uid": s.uid, "users": s.users, "pids": s.pids,
            "fds": {str(p): fds for p, fds in sorted(s.holders.items())},
            "direction": s.direction, "peer": s.peer, "peer_netns": s.peer_netns,
            "peer_pids": s.peer_pids, "unix_type": s.unix_type}


def compare_sockets(truth: Truth, run: Run, docs: list[dict],
                    want: Callable[[SockTruth], bool] = lambda s: True,
                    fields: Optional[set[str]] = None) -> list[str]:
    """Differences between nsnet's sockets of this node's namespaces and the truth."""
    ours = truth.netns_inodes()
    actual = {}
    problems = []
    for d in docs:
        if d["netns"] in ours:
            k = sock_key(d)
            if k in actual:
                problems.append(f"listed twice: {d}")
            actual[k] = d
    by_key = {s.key: s for s in truth.sockets}
    for s in truth.sockets:
        if not want(s):
            continue
        present = expected_present(truth, s, run)
        got = actual.get(s.key)
        if got is None:
            if present:
                problems.append(f"missing {s.name}: {expected_doc(s)}")
            continue
        if present is False:
            problems.append(f"{s.name} listed after it expired: {got}")
        exp = expected_doc(s)
        for f, v in exp.items():
            if (fields is not None and f not in fields) or f in CHECKED_SEPARATELY.get(s.name, ()):
                continue
            if got.get(f) != v:
                problems.append(f"{s.name}.{f}: nsnet says {got.get(f)!r}, truth is {v!r}")
    for k, d in actual.items():
        s = by_key.get(k)
        if s is None or not want(s):
            problems.append(f"unexpected socket in a test namespace: {d}")
    return problems


def ns_doc(doc: dict, inode: int) -> dict:
    found = [n for n in doc["namespaces"] if n["inode"] == inode]
    assert len(found) == 1, f"namespace {inode}: {len(found)} records"
    return found[0]


# --------------------------------------------------------------------------- sockets view

def test_namespace_records(node, views):
    t = node.truth
    doc = views["sockets"].doc
    for name, nt in t.ns.items():
        got = ns_doc(doc, nt.inode)
        want = {"inode": nt.inode, "host": False, "pinned": nt.pinned,
                "found_by": sorted(nt.found_by), "pids": nt.pids,
                "threads": [{"pid": p, "tid": tid} for p, tid in nt.threads],
                "owners": nt.owners, "tables_read": True, "error": None}
        have = {k: (sorted(got[k]) if k == "found_by" else got[k]) for k in want}
        assert have == want, f"namespace {name}"
    for name, nt in t.ns.items():
        got = ns_doc(doc, nt.inode)
        # uids without a passwd entry stay, as numbers
        assert sorted(got["owner_names"]) == sorted(str(u) for u in nt.owners), name
    assert ns_doc(doc, t.ns["A"].inode)["owners"] == [UID_A]
    assert ns_doc(doc, t.ns["B"].inode)["owners"] == [UID_B]
    assert ns_doc(doc, t.ns["C"].inode)["owners"] == []
    assert sorted(ns_doc(doc, t.ns["C"].inode)["found_by"]) == ["bind-mount"]
    assert sorted(ns_doc(doc, t.ns["B"].inode)["found_by"]) == ["bind-mount", "processes", "threads"]


def test_tables_read_from_a_member_of_the_namespace(node, views):
    """read_via names a task that really lives in the namespace (or the bind mount)."""
    t = node.truth
    doc = views["sockets"].doc
    for name, nt in t.ns.items():
        via = ns_doc(doc, nt.inode)["read_via"]
        m = re.fullmatch(r"pid (\d+)|task (\d+) of pid (\d+)", via or "")
        if name == "C":
            assert via == f"setns {nt.pinned[0]}", via
        elif m and m.group(1):
            assert int(m.group(1)) in nt.pids, (name, via)
        else:
            assert m and (int(m.group(3)), int(m.group(2))) in nt.threads, (name, via)


def test_host_namespace_holds_the_foreign_process(node, views):
    t = node.truth
    doc = views["sockets"].doc
    host = [n for n in doc["namespaces"] if n["host"]]
    assert len(host) == 1
    assert host[0]["inode"] == t.host_netns
    foreign = t.roles["host.foreign"]
    assert foreign in host[0]["pids"]
    assert UID_FOREIGN in host[0]["owners"]
    ours = {p for nt in t.ns.values() for p in nt.pids}
    assert not ours & set(host[0]["pids"]), "a test-namespace process listed in the host"


def test_every_socket_of_the_test_namespaces(node, views):
    run = views["sockets"]
    problems = compare_sockets(node.truth, run, run.doc["sockets"])
    assert not problems, "\n".join(problems)


def test_processes_of_socket_holders(node, views):
    t = node.truth
    procs = {p["pid"]: p for p in views["sockets"].doc["processes"]}
    for pid, pt in t.processes.items():
        if not pt.socket_fds:
            continue
        assert pid in procs, f"{pt.role} ({pid}) holds sockets but is not listed"
        got = procs[pid]
        assert (got["uid"], got["ppid"], got["netns"], got["cmdline"], got["sandbox"]) == \
            (pt.uid, pt.ppid, pt.netns, pt.cmdline, False), pt.role


def test_prefork_listener_is_one_socket_with_three_pids(node, views):
    t = node.truth
    web, w1, w2 = t.roles["A.web"], t.roles["A.web.worker1"], t.roles["A.web.worker2"]
    for name, port in (("A.web.listen4", PORT_WEB), ("A.web.listen6", PORT_WEB6)):
        s = t.sock(name)
        rows = [d for d in views["sockets"].doc["sockets"]
                if d["netns"] == t.ns["A"].inode and d["inode"] == s.inode]
        assert len(rows) == 1, rows
        d = rows[0]
        assert d["local_port"] == port and d["state"] == "LISTEN"
        assert d["pids"] == sorted([web, w1, w2])
        fd = s.holders[web][0]
        assert d["fds"] == {str(web): [fd], str(w1): [fd], str(w2): [fd]}
        assert d["users"] == [UID_A] and d["direction"] == "listening"


def test_ipv4_mapped_shown_as_ipv4(node, views):
    t = node.truth
    mapped = [s for s in t.sockets if s.name.startswith("A.web.listen6.accepted")
              and s.local_addr == V4_A]
    assert len(mapped) == 1
    d = [x for x in views["sockets"].doc["sockets"] if x["inode"] == mapped[0].inode][0]
    assert (d["family"], d["local_addr"], d["remote_addr"]) == ("inet6", V4_A, "10.77.0.2")
    assert (d["direction"], d["peer"], d["peer_netns"]) == ("inbound", "node", t.ns["B"].inode)
    assert d["peer_pids"] == [t.roles["B.client"]]


def test_time_wait_has_inode_zero_and_no_pid(node, views):
    t = node.truth
    run = views["sockets"]
    tws = [s for s in t.sockets if s.state == "TIME_WAIT" and expected_present(t, s, run)]
    assert tws, "the session fixture makes a fresh TIME_WAIT"
    for s in tws:
        rows = [d for d in run.doc["sockets"] if d["netns"] == t.ns["A"].inode
                and d["state"] == "TIME_WAIT" and d["local_port"] == s.local_port]
        assert len(rows) == 1, rows
        d = rows[0]
        assert (d["inode"], d["pids"], d["fds"], d["uid"]) == (0, [], {}, 0)
        assert d["users"] == [UID_A]        # the namespace's owner, not the uid column's 0
        assert (d["remote_addr"], d["remote_port"]) == ("127.0.0.1", s.remote_port)


def test_socket_of_pinned_only_namespace_held_from_host(node, views):
    t = node.truth
    rows = [d for d in views["sockets"].doc["sockets"] if d["netns"] == t.ns["C"].inode]
    assert [(d["proto"], d["state"], d["local_addr"], d["local_port"], d["pids"], d["users"])
            for d in rows] == [("tcp", "LISTEN", "127.0.0.1", PORT_C,
                                [t.roles["host.foreign"]], [UID_FOREIGN])]


def test_socket_made_by_a_thread_in_another_namespace(node, views):
    t = node.truth
    s = t.sock("B.thread.udp")
    rows = [d for d in views["sockets"].doc["sockets"] if d["inode"] == s.inode]
    assert [(d["netns"], d["pids"], d["users"], d["state"]) for d in rows] == \
        [(t.ns["B"].inode, [t.roles["A.thread"]], [UID_A], "UNCONN")]
    b = ns_doc(views["sockets"].doc, t.ns["B"].inode)
    assert t.roles["A.thread"] not in b["pids"]       # the process lives in A
    assert UID_A not in b["owners"]


def test_udp_peer_in_another_namespace(node, views):
    """B's connected UDP socket sends to 10.77.0.1:5353, which A's 0.0.0.0:5353 socket
    receives: the peer is on this node, in A, held by A.misc."""
    t = node.truth
    s = t.sock("B.to_udp")
    d = [x for x in views["sockets"].doc["sockets"] if x["inode"] == s.inode][0]
    assert (d["direction"], d["peer"], d["peer_netns"], d["peer_pids"]) == \
        ("outbound", "node", t.ns["A"].inode, [t.roles["A.misc"]]), (
        f"B's UDP socket {d['local_addr']}:{d['local_port']} -> {V4_A}:{PORT_UDP} talks to A's "
        f"0.0.0.0:{PORT_UDP} socket (pid {t.roles['A.misc']}); nsnet says peer={d['peer']!r}")


def test_ndjson_stream_matches_json(node):
    t = node.truth
    run = nsnet("sockets", "--ndjson", "--netns", str(t.ns["A"].inode))
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert all(x["schema"] == "nsnet/1" for x in lines)
    socks = [x for x in lines if x["type"] == "socket"]
    assert lines[-1]["type"] == "stats"
    problems = compare_sockets(t, run, socks, want=lambda s: s.ns == "A")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- filters

def _filter_cases(t: Truth) -> list[tuple[list[str], Callable[[SockTruth], bool]]]:
    A, B, C = (t.ns[n].inode for n in "ABC")
    w1, client = t.roles["A.web.worker1"], t.roles["B.client"]
    return [
        (["--tcp"], lambda s: s.proto == "tcp"),
        (["--udp"], lambda s: s.proto == "udp"),
        (["--unix"], lambda s: s.proto == "unix"),
        (["--tcp", "--udp"], lambda s: s.proto in ("tcp", "udp")),
        (["--listening"], lambda s: s.direction == "listening"),
        (["--state", "ESTABLISHED"], lambda s: s.state == "ESTABLISHED"),
        (["--state", "time-wait"], lambda s: s.state == "TIME_WAIT"),
        (["--port", str(PORT_WEB6)], lambda s: PORT_WEB6 in (s.local_port, s.remote_port)),
        (["--pid", str(w1)], lambda s: w1 in s.holders),
        (["--netns", str(C)], lambda s: s.netns == C),
        (["--tcp", "--listening", "--netns", str(A)],
         lambda s: s.proto == "tcp" and s.direction == "listening" and s.netns == A),
        (["--udp", "--state", "ESTABLISHED"], lambda s: s.proto == "udp" and s.state == "ESTABLISHED"),
        (["--port", str(PORT_WEB), "--state", "ESTABLISHED"],
         lambda s: PORT_WEB in (s.local_port, s.remote_port) and s.state == "ESTABLISHED"),
        (["--pid", str(client), "--udp", "--netns", str(B)],
         lambda s: client in s.holders and s.proto == "udp" and s.netns == B),
        (["--port", str(PORT_UDP), "--netns", str(A)],
         lambda s: PORT_UDP in (s.local_port, s.remote_port) and s.netns == A),
    ]


def test_filters(node):
    t = node.truth
    node.make_time_wait()
    problems = []
    for args, want in _filter_cases(t):
        run = nsnet("sockets", "--json", *args)
        for p in compare_sockets(t, run, run.doc["sockets"], want):
            problems.append(f"{' '.join(args)}: {p}")
        # filters that name one of ours must not let anything else through, anywhere
        if "--pid" in args or "--netns" in args:
            ours = t.netns_inodes()
            strays = [d for d in run.doc["sockets"] if d["netns"] not in ours]
            if strays:
                problems.append(f"{' '.join(args)}: {len(strays)} sockets of other namespaces, "
                                f"e.g. {strays[0]}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- by-namespace

def _group_key(g: dict) -> tuple:
    return (g["direction"], g["proto"], g["peer_addr"], g["peer_port"], g["local_addr"],
            g["local_port"])


def expected_groups(t: Truth, socks: list[SockTruth]) -> dict[tuple, dict]:
    """Connections grouped by peer endpoint (outbound: the service ip:port; inbound: our
    service port and the client's ip), computed from the truth."""
    groups: dict[tuple, dict] = {}
    for s in socks:
        if s.proto == "unix" or s.direction not in ("inbound", "outbound"):
            continue
        if s.direction == "outbound":
            key = ("outbound", s.proto, s.remote_addr, s.remote_port, None, None)
        else:
            key = ("inbound", s.proto, s.remote_addr, None, s.local_addr, s.local_port)
        g = groups.setdefault(key, {"count": 0, "closed": 0, "states": Counter(), "netns": set(),
                                    "pids": set(), "users": set(), "peer_users": set(),
                                    "peer_netns": set(), "peer": set(), "skip": set()})
        g["skip"].update(GROUP_FIELDS_OF[f] for f in CHECKED_SEPARATELY.get(s.name, ()))
        # open connections, and those closed recently apart (TIME_WAIT ...); nothing else here
        if s.state in ("FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK", "TIME_WAIT"):
            g["closed"] += 1
        elif s.state != "CLOSE":
            g["count"] += 1
        g["states"][s.state] += 1
        g["netns"].add(s.netns)
        g["pids"].update(s.pids)
        g["users"].update(s.users)
        g["peer_users"].update(t.processes[p].uid for p in s.peer_pids)
        if s.peer_netns is not None:
            g["peer_netns"].add(s.peer_netns)
        g["peer"].add(s.peer)
    out = {}
    for key, g in groups.items():
        out[key] = {"count": g["count"], "closed": g["closed"],
                    "states": dict(sorted(g["states"].items())),
                    "netns": sorted(g["netns"]), "pids": sorted(g["pids"]),
                    "users": sorted(g["users"]), "peer_users": sorted(g["peer_users"]),
                    "peer_netns": sorted(g["peer_netns"]),
                    "peer": "node" if "node" in g["peer"] else sorted(g["peer"])[0]}
        for f in g["skip"]:
            del out[key][f]
    return out


def compare_groups(t: Truth, got: list[dict], socks: list[SockTruth], what: str) -> list[str]:
    want = expected_groups(t, socks)
    have = {_group_key(g): g for g in got}
    problems = []
    if len(have) != len(got):
        problems.append(f"{what}: two groups with the same key")
    keys = set(want) | set(have)
    for k in sorted(keys, key=repr):
        if k not in have:
            problems.append(f"{what}: missing group {k}: {want[k]}")
        elif k not in want:
            problems.append(f"{what}: unexpected group {k}: {have[k]}")
        else:
            g = {f: have[k][f] for f in want[k]}
            if g != want[k]:
                problems.append(f"{what}: group {k}: nsnet {g} != truth {want[k]}")
    return problems


def _listener_view(d: dict) -> tuple:
    return (d["proto"], d["family"], d["addr"], d["port"], d["state"], d["inode"], d["netns"],
            tuple(d["pids"]), tuple(d["users"]))


def _listener_truth(s: SockTruth) -> tuple:
    return (s.proto, s.family, s.local_addr, s.local_port, s.state, s.inode, s.netns,
            tuple(s.pids), tuple(s.users))


def test_by_namespace(node, views):
    t = node.truth
    run = views["by-namespace"]
    assert run.doc["view"] == "by-namespace"
    problems = []
    for name, nt in t.ns.items():
        d = ns_doc(run.doc, nt.inode)
        socks = [s for s in t.sockets if s.ns == name and expected_present(t, s, run)]
        if any(s.state == "TIME_WAIT" and expected_present(t, s, run) is None for s in t.sockets):
            pytest.fail("a TIME_WAIT aged into its uncertain window while nsnet ran: the views "
                        "took longer than settle_time_waits' horizon (a very busy machine?)")
        if (d["host"], d["pinned"], d["pids"], d["owners"]) != (False, nt.pinned, nt.pids, nt.owners):
            problems.append(f"{name}: {d['host'], d['pinned'], d['pids'], d['owners']}")
        procs = {p["pid"]: p for p in d["processes"]}
        if sorted(procs) != nt.pids:
            problems.append(f"{name}: processes {sorted(procs)} != {nt.pids}")
        for pid in nt.pids:
            pt, got = t.processes[pid], procs.get(pid)
            if got and (got["uid"], got["cmdline"], got["sandbox"], got["netns"]) != \
                    (pt.uid, pt.cmdline, pt.sandbox, pt.netns):
                problems.append(f"{name}: process {pt.role}: {got}")
        want_l = sorted(_listener_truth(s) for s in socks
                        if s.direction == "listening" and s.proto != "unix")
        have_l = sorted(_listener_view(x) for x in d["listening"])
        if want_l != have_l:
            problems.append(f"{name}: listening {have_l} != {want_l}")
        want_u = sorted(_listener_truth(s) for s in socks
                        if s.direction == "listening" and s.proto == "unix")
        have_u = sorted(_listener_view(x) for x in d["unix_listening"])
        if want_u != have_u:
            problems.append(f"{name}: unix listening {have_u} != {want_u}")
        for x in d["listening"]:       # every holder with its full command line
            for p in x["processes"]:
                if p["cmdline"] != t.processes[p["pid"]].cmdline:
                    problems.append(f"{name}: listener holder {p}")
        problems += compare_groups(t, d["connections"], socks, name)
        counts: dict = {}
        for s in socks:
            counts.setdefault(s.proto, Counter())[s.state] += 1
        want_counts = {p: dict(sorted(c.items())) for p, c in sorted(counts.items())}
        if d["counts"] != want_counts:
            problems.append(f"{name}: counts {d['counts']} != {want_counts}")
        if d["sockets"] != len(socks):
            problems.append(f"{name}: {d['sockets']} sockets != {len(socks)}")
    assert not problems, "\n".join(problems)


def test_sandbox_holders(node, views):
    t = node.truth
    for name in ("A", "B"):
        d = ns_doc(views["by-namespace"].doc, t.ns[name].inode)
        pause = t.roles[f"{name}.pause"]
        p = [x for x in d["processes"] if x["pid"] == pause][0]
        assert (p["uid"], p["cmdline"], p["sandbox"]) == (UID_PAUSE, ["/pause", "infinity"], True)
        assert [x["pid"] for x in d["processes"] if x["sandbox"]] == [pause]
        assert UID_PAUSE not in d["owners"]


# --------------------------------------------------------------------------- by-user

def user_doc(doc: dict, uid: int) -> dict:
    found = [u for u in doc["users"] if u["uid"] == uid]
    assert len(found) == 1, f"user {uid}: {len(found)} records"
    return found[0]


def _user_sockets(t: Truth, uid: int, run: Run) -> list[SockTruth]:
    if any(uid in s.users and expected_present(t, s, run) is None for s in t.sockets):
        pytest.fail(f"a TIME_WAIT of uid {uid} aged into its uncertain window while nsnet ran")
    return [s for s in t.sockets if uid in s.users and expected_present(t, s, run)]


def check_user(t: Truth, run: Run, uid: int) -> list[str]:
    """Exact within this node: its namespaces, pids, listeners and connection groups."""
    u = user_doc(run.doc, uid)
    ours = t.netns_inodes()
    problems = []
    owned = sorted(n.inode for n in t.ns.values() if uid in n.owners)
    if sorted(set(u["namespaces"]) & ours) != owned:
        problems.append(f"uid {uid}: owns {sorted(set(u['namespaces']) & ours)} != {owned}")
    mine = {p for p in t.processes} | {p for n in t.ns.values() for p in n.pids}
    want_p = sorted(p for p, pt in t.processes.items() if pt.uid == uid)
    if sorted(set(u["processes"]) & mine) != want_p:
        problems.append(f"uid {uid}: processes {sorted(set(u['processes']) & mine)} != {want_p}")
    socks = _user_sockets(t, uid, run)
    want_l = sorted(_listener_truth(s) for s in socks
                    if s.direction == "listening" and s.proto != "unix")
    have_l = sorted(_listener_view(x) for x in u["listening"] if x["netns"] in ours)
    if want_l != have_l:
        problems.append(f"uid {uid}: listening {have_l} != {want_l}")
    for what, direction in (("connects_to", "outbound"), ("connected_from", "inbound")):
        got = [g for g in u[what] if set(g["netns"]) & ours]
        for g in got:
            if not set(g["netns"]) <= ours:
                problems.append(f"uid {uid} {what}: group mixes this node with others "
                                f"(concurrent fixture?): {g}")
        part = [s for s in socks if s.direction == direction]
        problems += compare_groups(t, got, part, f"uid {uid} {what}")
    return problems


def test_by_user_dependency_view(node, views):
    t = node.truth
    run = views["by-user"]
    assert run.doc["view"] == "by-user"
    problems = []
    for uid in (UID_A, UID_B, UID_FOREIGN):
        problems += check_user(t, run, uid)
    assert not problems, "\n".join(problems)


def test_by_user_who_talks_to_whom(node, views):
    """The questions the view exists for, spelled out."""
    t = node.truth
    doc = views["by-user"].doc
    A, B = t.ns["A"].inode, t.ns["B"].inode
    client = t.roles["B.client"]
    u2 = user_doc(doc, UID_B)
    to_web = [g for g in u2["connects_to"] if (g["proto"], g["peer_addr"], g["peer_port"])
              == ("tcp", V4_A, PORT_WEB)]
    assert len(to_web) == 1
    g = to_web[0]
    assert (g["count"], g["netns"], g["pids"], g["peer"], g["peer_netns"], g["peer_users"]) == \
        (1, [B], [client], "node", [A], [UID_A])
    u1 = user_doc(doc, UID_A)
    ports = {(x["proto"], x["port"]) for x in u1["listening"] if x["netns"] == A}
    assert {("tcp", PORT_WEB), ("tcp", PORT_WEB6)} <= ports
    from_b = [g for g in u1["connected_from"] if B in g["peer_netns"]]
    assert sorted((g["local_port"], g["peer_addr"]) for g in from_b) == \
        sorted([(PORT_WEB, "10.77.0.2"), (PORT_WEB6, "10.77.0.2"), (PORT_WEB6, "fd77::2")])
    assert all(g["peer_users"] == [UID_B] for g in from_b)
    u65535 = user_doc(doc, UID_PAUSE)
    assert not set(u65535["namespaces"]) & t.netns_inodes()
    assert {t.roles["A.pause"], t.roles["B.pause"]} <= set(u65535["processes"])


def test_by_user_filter(node):
    t = node.truth
    settle_time_waits(t, horizon=15)
    run = nsnet("by-user", "--json", "--user", str(UID_B))
    assert [u["uid"] for u in run.doc["users"]] == [UID_B]
    problems = check_user(t, run, UID_B)
    assert not problems, "\n".join(problems)
