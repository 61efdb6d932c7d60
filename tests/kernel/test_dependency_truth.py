"""Dependency truth on real namespaces (support/depnode.py): every socket and edge says who
it belongs to and how that is known; counts are open connections, closed ones apart;
namespaces and peers have names; the agent remembers holders and counts connections that
open and close between its samples. nsnet runs as a user runs it (`python -m nsnet`), except
the agent, run in-process on the real node so that its samples can be stepped.

The expectations come from the plan the node was built with (who listens where, which side
closed first), never from nsnet's own output."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import require_root
from depnode import (APP_A, APP_B, DNS, PG, POD_A_IP, POD_B_IP, REDIS, SIDECAR_A, SVC_A, SVC_B,
                     WEB, Conn, DepNode)

REPO = Path(__file__).resolve().parents[2]


def nsnet(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "nsnet", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    """The node, and every view taken right after it was built (its TIME_WAITs live 60 s)."""
    require_root("ip", "setpriv", "ss")
    root = tmp_path_factory.mktemp("host")
    with DepNode.build(root) as node:
        common = ("--json", "--host-root", str(root))
        views = {view: nsnet(view, *common) for view in
                 ("sockets", "by-namespace", "by-user", "by-pod", "deps")}
        views["sockets-netlink"] = nsnet("sockets", *common, "--source", "netlink")
        views["deps-confirmed"] = nsnet("deps", "--confirmed", *common)
        # the plan's states were still there after the views: nothing aged away meanwhile
        assert {k: {r for r in node.ss(k) if r[0] != "LISTEN"} for k in ("svc", "a", "b")} \
            == node.expected_ss()
        yield node, views


def find(doc: dict, netns: int, local: str, remote: str, proto: str = "tcp") -> dict:
    la, _, lp = local.rpartition(":")
    ra, _, rp = remote.rpartition(":")
    found = [s for s in doc["sockets"] if s["netns"] == netns and s["proto"] == proto
             and (s["local_addr"], s["local_port"], s["remote_addr"], s["remote_port"])
             == (la, int(lp), ra, int(rp))]
    assert len(found) == 1, (netns, local, remote, found)
    return found[0]


def svc_side(node: DepNode, c: Conn) -> tuple[int, str, str]:
    return node.inodes["svc"], f"{c.host}:{c.port}", f"{c.local_addr}:{c.local_port}"


def pod_side(node: DepNode, c: Conn) -> tuple[int, str, str]:
    return node.inodes[c.pod], f"{c.local_addr}:{c.local_port}", f"{c.host}:{c.port}"


def who(s: dict) -> tuple:
    return (s["state"], s["direction"], s["connection"], s["users"], s["attribution"],
            s["guess"], [p["name"] for p in s["pods"]])


# ------------------------------------------------------------------------ every socket

def expected_sockets(node: DepNode) -> dict[tuple, tuple]:
    c, A, B = node.conn, ["tenant-a"], ["tenant-b"]
    return {
        # the services' ends: held by the server's processes, or -- unheld -- the listener's
        svc_side(node, c["a_keep"]): ("ESTABLISHED", "inbound", "open", [WEB], "holder",
                                      False, []),
        svc_side(node, c["a_tw"]): ("TIME_WAIT", "inbound", "closed", [WEB], "listener",
                                    False, []),
        svc_side(node, c["a_fw2"]): ("FIN_WAIT2", "inbound", "closed", [WEB], "listener",
                                     False, []),
        svc_side(node, c["a_unacc"]): ("ESTABLISHED", "inbound", "open", [WEB], "listener",
                                       False, []),
        svc_side(node, c["a_redis"]): ("ESTABLISHED", "inbound", "open", [REDIS], "holder",
                                       False, []),
        svc_side(node, c["b_pg"]): ("ESTABLISHED", "inbound", "open", [PG], "holder", False,
                                    []),
        # the pods' ends
        pod_side(node, c["a_keep"]): ("ESTABLISHED", "outbound", "open", [APP_A], "holder",
                                      False, A),
        pod_side(node, c["a_fw2"]): ("CLOSE_WAIT", "outbound", "open", [APP_A], "holder",
                                     False, A),
        # no holder, two owners (the app and its sidecar): a guess, and said to be one
        pod_side(node, c["a_cc"]): ("TIME_WAIT", "outbound", "closed", [APP_A, SIDECAR_A],
                                    "namespace-owners", True, A),
        pod_side(node, c["a_unacc"]): ("ESTABLISHED", "outbound", "open", [APP_A], "holder",
                                       False, A),
        pod_side(node, c["a_redis"]): ("ESTABLISHED", "outbound", "open", [APP_A], "holder",
                                       False, A),
        pod_side(node, c["b_pg"]): ("ESTABLISHED", "outbound", "open", [APP_B], "holder",
                                    False, B),
        # no holder, one owner: that owner's, no guess
        pod_side(node, c["b_cc"]): ("TIME_WAIT", "outbound", "closed", [APP_B],
                                    "namespace-owner", False, B),
    }


@pytest.mark.parametrize("view", ["sockets", "sockets-netlink"])
def test_every_connection_socket_has_its_users_pods_and_evidence(dep, view):
    node, views = dep
    doc = views[view]
    problems = []
    for (netns, local, remote), want in expected_sockets(node).items():
        got = who(find(doc, netns, local, remote))
        if got != want:
            problems.append(f"{local} -> {remote}: {got} != {want}")
    assert not problems, "\n".join(problems)
    dns = find(doc, *pod_side(node, node.conn["a_dns"]), proto="udp")
    assert who(dns) == ("ESTABLISHED", "outbound", "open", [APP_A], "holder", False,
                        ["tenant-a"])


def test_listeners_and_owners_of_the_shared_namespace(dep):
    node, views = dep
    doc = views["sockets"]
    svc = node.inodes["svc"]
    listening = {(s["proto"], s["local_port"]): (s["users"], s["attribution"], len(s["pids"]))
                 for s in doc["sockets"] if s["netns"] == svc and s["direction"] == "listening"}
    assert listening == {("tcp", 8080): ([WEB], "holder", 3), ("tcp", 8081): ([WEB], "holder", 3),
                         ("tcp", 6379): ([REDIS], "holder", 2), ("tcp", 5432): ([PG], "holder", 2),
                         ("udp", 10053): ([DNS], "holder", 1)}
    [ns] = [n for n in doc["namespaces"] if n["inode"] == svc]
    assert ns["owners"] == [WEB, REDIS, PG, DNS]
    # the sidecar's only socket: its unix listener
    sidecar = [s for s in doc["sockets"] if SIDECAR_A in s["users"] and s["proto"] == "unix"]
    assert [(s["state"], s["attribution"]) for s in sidecar] == [("LISTEN", "holder")]


def test_namespaces_and_peers_have_names(dep):
    node, views = dep
    doc = views["sockets"]
    names = {n["inode"]: n["name"] for n in doc["namespaces"]}
    svc_name = f"netns:{node.netns['svc']}"
    assert names[node.inodes["svc"]] == svc_name        # its pin's name (ip netns add)
    assert names[node.inodes["a"]] == "pod:shop/tenant-a"
    assert names[node.inodes["b"]] == "pod:shop/tenant-b"
    assert [n["name"] for n in doc["namespaces"] if n["host"]] == ["host"]
    client = find(doc, *pod_side(node, node.conn["a_keep"]))
    server = find(doc, *svc_side(node, node.conn["a_keep"]))
    assert (client["netns_name"], client["peer"], client["peer_netns_name"]) == \
        ("pod:shop/tenant-a", "node", svc_name)
    assert (server["netns_name"], server["peer_netns_name"]) == (svc_name, "pod:shop/tenant-a")


@pytest.mark.parametrize("netns", ["name", "bare name", "inode"])
def test_a_namespace_is_selected_by_what_is_shown(dep, netns):
    node, _ = dep
    given = {"name": f"netns:{node.netns['svc']}", "bare name": node.netns["svc"],
             "inode": str(node.inodes["svc"])}[netns]
    doc = nsnet("by-namespace", "--json", "--netns", given)
    assert [n["inode"] for n in doc["namespaces"]] == [node.inodes["svc"]]
    pod = nsnet("by-pod", "--json", "--pod", node.pod_uid["a"][:8])   # a unique uid prefix
    assert [p["uid"] for p in pod["pods"]] == [node.pod_uid["a"]]


# ------------------------------------------------------------------------------ views

def group(groups: list[dict], **match: object) -> dict:
    found = [g for g in groups if all(g[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, groups)
    return found[0]


def test_by_namespace_counts_open_connections_and_recently_closed_apart(dep):
    node, views = dep
    [svc] = [n for n in views["by-namespace"]["namespaces"] if n["inode"] == node.inodes["svc"]]
    web = group(svc["connections"], direction="inbound", local_port=8080, peer_addr=POD_A_IP)
    # one open (a_keep); a TIME_WAIT (a_tw) and a FIN_WAIT2 orphan (a_fw2) closed recently
    assert (web["count"], web["closed"], web["users"], web["attribution"],
            web["guessed_users"]) == (1, 2, [WEB], ["holder", "listener"], [])
    assert web["states"] == {"ESTABLISHED": 1, "FIN_WAIT2": 1, "TIME_WAIT": 1}
    unaccepted = group(svc["connections"], direction="inbound", local_port=8081)
    assert (unaccepted["count"], unaccepted["users"], unaccepted["attribution"]) == \
        (1, [WEB], ["listener"])
    # nobody but the web server is said to serve 8080 or 8081
    assert {u for g in svc["connections"] if g["local_port"] in (8080, 8081)
            for u in g["users"]} == {WEB}


def test_by_user_shows_each_tenant_its_own_and_marks_the_guess(dep):
    node, views = dep
    users = {u["uid"]: u for u in views["by-user"]["users"]}
    for service in (REDIS, PG, DNS):   # none of them serves the web ports
        assert {g["local_port"] for g in users[service]["connected_from"]} <= {6379, 5432}
    web = users[WEB]
    assert sorted((g["local_port"], g["peer_addr"], g["count"], g["closed"])
                  for g in web["connected_from"]) == [(8080, POD_A_IP, 1, 2),
                                                      (8081, POD_A_IP, 1, 0)]
    app = group(users[APP_A]["connects_to"], peer_port=8080)
    # a_keep and the CLOSE_WAIT kept (open), a_cc's TIME_WAIT (closed): the app's for sure
    # (the group also names the sidecar, as a guess, through a_cc)
    assert (app["count"], app["closed"], app["users"], app["guessed_users"]) == \
        (2, 1, [APP_A, SIDECAR_A], [SIDECAR_A])
    side = group(users[SIDECAR_A]["connects_to"], peer_port=8080)
    # the sidecar appears only through the guess on a_cc: the group is nothing but a guess
    assert (side["count"], side["closed"], side["guessed_users"], side["attribution"]) == \
        (0, 1, [APP_A, SIDECAR_A], ["namespace-owners"])
    assert [g["peer_port"] for g in users[SIDECAR_A]["connects_to"]] == [8080]
    b = group(users[APP_B]["connects_to"], peer_port=8080)
    assert (b["count"], b["closed"], b["attribution"], b["guessed_users"]) == \
        (0, 1, ["namespace-owner"], [])


def test_by_pod_a_pod_with_a_sidecar(dep):
    node, views = dep
    pods = {p["name"]: p for p in views["by-pod"]["pods"]}
    a = pods["tenant-a"]
    assert a["owners"] == [APP_A, SIDECAR_A] and a["netns"] == [node.inodes["a"]]
    assert [(c["name"], c["sandbox"]) for c in a["containers"]] == [
        (None, True), ("app", False), ("sidecar", False)]
    web = group(a["connects_to"], peer_port=8080)
    assert (web["count"], web["closed"], web["users"], web["guessed_users"]) == \
        (2, 1, [APP_A, SIDECAR_A], [SIDECAR_A])
    assert [p["name"] for p in web["peer_pods"]] == []          # the services are no pod


def test_deps_edges_say_how_they_are_known(dep):
    node, views = dep
    svc = f"netns:{node.netns['svc']}"
    edges = {(e["uid"], e["where"], e["direction"], e["peer_addr"], e["port"]):
             (e["open"], e["closed_recently"], e["evidence"], e["guess"])
             for e in views["deps"]["edges"] if e["where"] in (svc, "pod:shop/tenant-a",
                                                              "pod:shop/tenant-b")}
    A, B = "pod:shop/tenant-a", "pod:shop/tenant-b"
    want = {
        (APP_A, A, "outbound", SVC_A, 8080): (2, 1, "holder", False),
        (SIDECAR_A, A, "outbound", SVC_A, 8080): (0, 1, "namespace-owners", True),
        (APP_A, A, "outbound", SVC_A, 8081): (1, 0, "holder", False),
        (APP_A, A, "outbound", SVC_A, 6379): (1, 0, "holder", False),
        (APP_A, A, "outbound", SVC_A, 10053): (1, 0, "holder", False),
        (APP_B, B, "outbound", SVC_B, 5432): (1, 0, "holder", False),
        (APP_B, B, "outbound", SVC_B, 8080): (0, 1, "namespace-owner", False),
        (WEB, svc, "inbound", POD_A_IP, 8080): (1, 2, "holder", False),
        (WEB, svc, "inbound", POD_A_IP, 8081): (1, 0, "listener", False),
        (REDIS, svc, "inbound", POD_A_IP, 6379): (1, 0, "holder", False),
        (PG, svc, "inbound", POD_B_IP, 5432): (1, 0, "holder", False),
    }
    assert edges == want
    confirmed = {(e["uid"], e["port"]) for e in views["deps-confirmed"]["edges"]
                 if e["where"] == A}
    assert confirmed == {(APP_A, 8080), (APP_A, 8081), (APP_A, 6379), (APP_A, 10053)}


# ------------------------------------------------------------------------------ agent

def edge_metrics(agent, **match: str) -> dict[str, dict[tuple, float]]:
    text = generate_latest(agent.metrics.registry).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("nsnet_edge_") and all(s.labels.get(k) == v
                                                         for k, v in match.items()):
                key = (s.labels["uid"], s.labels["direction"], s.labels["evidence"])
                out.setdefault(s.name, {})[key] = s.value
    return out


def test_the_agent_remembers_holders_and_counts_what_opens_and_closes_between_samples(dep):
    from nsnet.agent.serve import Agent
    from nsnet.options import AgentOptions, SamplingOptions, SnapshotOptions

    node, _ = dep
    options = AgentOptions(sampling=SamplingOptions(
        snapshot=SnapshotOptions(source="auto", host_root=str(node.host_root)),
        interval=1.0, max_cpu=1.0, events=True), node="n1")
    agent = Agent(options, io.StringIO())
    try:
        # a connection to postgres held by the app of pod A, seen held by sample 1 ...
        node.run("a", Conn("a_late", "a", "keep", SVC_A, 5432))
        agent.step()
        # /metrics: the web server's edge from pod A has one connection open, and the
        # FIN_WAIT2 orphan (and, while it lasts, the TIME_WAIT) closed recently
        web = edge_metrics(agent, peer=POD_A_IP, port="8080")
        key = (str(WEB), "inbound", "holder")
        assert web["nsnet_edge_connections"][key] == 1
        closed = web["nsnet_edge_recently_closed_connections"][key]
        if time.monotonic() - node.conn["a_tw"].made < 50:
            assert closed == 2
        else:   # the TIME_WAIT may have expired (it lives 60 s)
            assert closed in (1, 2)
        # ... then closed by the app first: its TIME_WAIT has no holder, and pod A two
        # owners -- but the agent saw who held it
        node.run("a", Conn("a_late", "a", "close", SVC_A, 5432))
        late = node.conn["a_late"]
        node.wait_for("a", ("TIME-WAIT", f"{late.local_addr}:{late.local_port}",
                            f"{SVC_A}:5432"))
        agent.step()
        late = find_socket(agent, node, node.conn["a_late"])
        assert (late.users, late.attribution) == ((APP_A,), "remembered")
        # pod B: a connection to redis that opens and closes between two samples
        node.run("b", Conn("b_flash", "b", "client_closes", SVC_B, 6379))
        time.sleep(0.5)      # the destroy events reach the agent's reader thread
        agent.step()
        deps = {(e["uid"], e["direction"], e["port"]): e
                for e in agent.dependencies(None, None)["edges"]
                if e["where"] in ("pod:shop/tenant-a", "pod:shop/tenant-b")}
        late_edge = deps[(APP_A, "outbound", 5432)]
        assert (late_edge["evidence"], late_edge["max_concurrent"]) == ("holder", 1)
        assert late_edge["closed"] >= 1          # the agent saw it end (its destroy event)
        assert (SIDECAR_A, "outbound", 5432) not in deps   # remembered: no guess
        flash = deps[(APP_B, "outbound", 6379)]
        assert (flash["opened"], flash["closed"], flash["open"]) == (1, 1, 0)
        assert flash["evidence"] == "namespace-owner"
        metrics = edge_metrics(agent, peer=SVC_B, port="6379")
        assert metrics["nsnet_edge_connections_opened_total"][
            (str(APP_B), "outbound", "namespace-owner")] == 1
        assert metrics["nsnet_edge_connections_closed_total"][
            (str(APP_B), "outbound", "namespace-owner")] == 1
        assert metrics["nsnet_edge_connections"][(str(APP_B), "outbound", "namespace-owner")] == 0
    finally:
        agent.close()


def find_socket(agent, node: DepNode, c: Conn):
    snap = agent.latest()
    found = [s for s in snap.sockets if s.netns == node.inodes[c.pod] and s.proto == "tcp"
             and (s.local_addr, s.local_port, s.remote_port) == (c.local_addr, c.local_port,
                                                                 c.port)]
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------ without privileges

def nsnet_without(caps: str, *args: str) -> subprocess.CompletedProcess:
    """nsnet as root with those capabilities removed from its bounding set (setpriv)."""
    return subprocess.run(["setpriv", "--inh-caps=-all", f"--bounding-set={caps}", "--",
                           sys.executable, "-m", "nsnet", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_without_ptrace_nor_sys_admin_pins_and_groups_are_shown_as_what_they_are(dep):
    node, _ = dep
    run = nsnet_without("-sys_ptrace,-sys_admin", "by-namespace", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    by_inode = {n["inode"]: n for n in doc["namespaces"] if n["inode"] is not None}
    for key in ("svc", "a", "b"):
        pin = by_inode[node.inodes[key]]
        # listed once, for what it is: a pin that could not be read -- not an empty namespace
        assert (pin["found_by"], pin["tables_read"]) == (["bind-mount"], False)
        assert pin["note"].startswith(f"pinned at /run/netns/{node.netns[key]}, not readable "
                                      "without CAP_SYS_ADMIN")
    groups = [n for n in doc["namespaces"] if n["key"].startswith("procnet:")]
    svc_group = [g for g in groups if WEB in g["owners"]]
    assert len(svc_group) == 1 and "needs CAP_SYS_PTRACE" in svc_group[0]["note"]
    said = [line for line in run.stderr.splitlines() if "could not be matched" in line]
    # once (other test nodes on the machine may add their pins to the count)
    assert len(said) == 1 and re.match(r"nsnet: warning: \d+ pinned namespace\(s\) and \d+ "
                                       r"process group\(s\) could not be matched", said[0])
    # a namespace selected by what is shown, which shows nothing, says why
    run = nsnet_without("-sys_ptrace,-sys_admin", "sockets", "--netns", node.netns["svc"])
    assert run.returncode == 0 and "0 sockets shown" in run.stdout
    assert any(line.startswith(f"nsnet: warning: netns:{node.netns['svc']}: no sockets shown: "
                               "its tables were not read (pinned at ")
               for line in run.stderr.splitlines()), run.stderr


def test_without_ptrace_the_pins_are_entered_to_match_the_groups(dep):
    node, _ = dep
    run = nsnet_without("-sys_ptrace", "by-namespace", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    by_inode = {n["inode"]: n for n in doc["namespaces"] if n["inode"] is not None}
    svc = by_inode[node.inodes["svc"]]
    assert svc["found_by"] == ["processes", "bind-mount"] and svc["owners"] == [WEB, REDIS, PG,
                                                                                 DNS]
    assert by_inode[node.inodes["a"]]["owners"] == [APP_A, SIDECAR_A]
    assert doc["stats"]["namespaces_matched_by_setns"] >= 3
    assert not [n for n in doc["namespaces"] if n["key"].startswith("procnet:")
                and set(n["owners"]) & {WEB, APP_A, APP_B}]
    assert "could not be matched" not in run.stderr
