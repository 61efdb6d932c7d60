"""The JSON views (nsnet.views) and their human rendering (nsnet.report), on snapshots built
in memory. Expectations are counted from the scenario each test builds."""
from __future__ import annotations

import json
import re

import pytest
from memnode import HOST_INODE, MemNode

from nsnet.report import Renderer, render_by_namespace, render_by_pod, render_by_user, render_sockets
from nsnet.views import (
    SocketFilter,
    by_namespace_view,
    by_pod_view,
    by_user_view,
    normalize_state,
    resolve_pod,
    sockets_view,
)

A, B = 4026532300, 4026532400
CLIENT_PORTS = (40001, 40002, 40003)


def tenants() -> MemNode:
    """Namespace A: a pause sandbox and tenant 10001's pre-fork server (master 200, workers
    201 and 202 all hold the listeners 0.0.0.0:8080 and [::]:9090; 200 a unix listener).
    Namespace B: tenant 10002's client 300, with three connections to 10.1.0.1:8080 (from
    three ephemeral ports), one that ended (TIME_WAIT, unheld), one to 10.1.0.1:9090 and a
    connected UDP socket to 8.8.8.8:53. The host: init, root."""
    node = MemNode()
    node.process(1, uid=0, cmdline=["/sbin/init"])
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container="b0" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    for pid in (200, 201, 202):
        node.process(pid, uid=10001, netns=A, ppid=200 if pid != 200 else 1,
                     cmdline=["/srv/api", "--port", "8080"])
    node.process(300, uid=10002, netns=B, cmdline=["/bin/client"])
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200, 201, 202])
    node.socket("tcp", "LISTEN", "[::]:9090", netns=A, holders=[200, 201, 202])
    node.socket("unix", "LISTEN", "/run/api.sock", netns=A, holders=[200])
    for port, worker in zip(CLIENT_PORTS, (201, 202, 201), strict=True):
        node.connection(f"10.1.0.2:{port}", "10.1.0.1:8080", client_netns=B, server_netns=A,
                        client_holders=[300], server_holders=[worker])
    node.socket("tcp", "TIME_WAIT", "10.1.0.2:40004", "10.1.0.1:8080", netns=B)
    node.connection("10.1.0.2:40005", "10.1.0.1:9090", client_netns=B, server_netns=A,
                    client_holders=[300], server_holders=[202])
    node.socket("udp", "ESTABLISHED", "10.1.0.2:38000", "8.8.8.8:53", netns=B, holders=[300])
    return node


@pytest.fixture
def snap():
    return tenants().build()


def user_doc(doc: dict, uid: int) -> dict:
    [u] = [u for u in doc["users"] if u["uid"] == uid]
    return u


# ---------------------------------------------------------------------------- by-user

def test_by_user_groups_outbound_connections_by_peer_endpoint(snap):
    u = user_doc(by_user_view(snap), 10002)
    assert u["namespaces"] == [B] and u["processes"] == [300]
    got = [(g["proto"], g["peer_addr"], g["peer_port"], g["count"], g["closed"], g["states"],
            g["peer"], g["attribution"], g["guessed_users"]) for g in u["connects_to"]]
    assert got == [
        # three open, one closed: the TIME_WAIT has no holder, and B's only owner (10002)
        # is its user -- not a guess, but said: namespace-owner
        ("tcp", "10.1.0.1", 8080, 3, 1, {"ESTABLISHED": 3, "TIME_WAIT": 1}, "node",
         ["holder", "namespace-owner"], []),
        ("tcp", "10.1.0.1", 9090, 1, 0, {"ESTABLISHED": 1}, "node", ["holder"], []),
        ("udp", "8.8.8.8", 53, 1, 0, {"ESTABLISHED": 1}, "external", ["holder"], []),
    ]
    first = u["connects_to"][0]
    assert first["pids"] == [300] and first["netns"] == [B]
    assert first["peer_netns"] == [A] and first["peer_users"] == [10001]
    assert first["local_port"] is None       # never the ephemeral ports
    assert u["connected_from"] == [] and u["listening"] == []
    assert u["sockets"] == 6


def test_by_user_groups_inbound_by_our_port_and_the_client_ip(snap):
    u = user_doc(by_user_view(snap), 10001)
    got = [(g["local_addr"], g["local_port"], g["peer_addr"], g["peer_port"], g["count"],
            g["pids"]) for g in u["connected_from"]]
    assert got == [("10.1.0.1", 8080, "10.1.0.2", None, 3, [201, 202]),
                   ("10.1.0.1", 9090, "10.1.0.2", None, 1, [202])]
    assert all(g["direction"] == "inbound" and g["peer_netns"] == [B]
               and g["peer_users"] == [10002] for g in u["connected_from"])
    listening = [(s["proto"], s["addr"], s["port"], s["pids"]) for s in u["listening"]]
    assert listening == [("tcp", "0.0.0.0", 8080, [200, 201, 202]),
                         ("tcp", "::", 9090, [200, 201, 202])]   # unix listeners: not here
    assert u["connects_to"] == []


def test_by_user_sandbox_user_owns_nothing(snap):
    u = user_doc(by_user_view(snap), 65535)
    assert u["processes"] == [100] and u["namespaces"] == [] and u["sockets"] == 0


def test_by_user_only_one_uid_even_an_unknown_one(snap):
    assert [u["uid"] for u in by_user_view(snap)["users"]] == [0, 10001, 10002, 65535]
    assert [u["uid"] for u in by_user_view(snap, 10002)["users"]] == [10002]
    [nobody] = by_user_view(snap, 4242)["users"]
    assert nobody["uid"] == 4242 and nobody["sockets"] == 0 and nobody["processes"] == []


# ---------------------------------------------------------------------- by-namespace

def test_by_namespace_lists_listeners_with_every_holder(snap):
    doc = by_namespace_view(snap)
    assert [n["inode"] for n in doc["namespaces"]] == [HOST_INODE, A, B]   # host first
    [a] = by_namespace_view(snap, snap.namespaces[f"net:[{A}]"])["namespaces"]
    assert a["owners"] == [10001] and a["found_by"] == ["processes"]
    assert [p["pid"] for p in a["processes"]] == [100, 200, 201, 202]
    assert [p["sandbox"] for p in a["processes"]] == [True, False, False, False]
    assert [(s["addr"], s["port"], s["pids"], s["users"]) for s in a["listening"]] == [
        ("0.0.0.0", 8080, [200, 201, 202], [10001]), ("::", 9090, [200, 201, 202], [10001])]
    assert [p["pid"] for p in a["listening"][0]["processes"]] == [200, 201, 202]
    assert [(s["addr"], s["pids"]) for s in a["unix_listening"]] == [("/run/api.sock", [200])]
    assert a["counts"] == {"tcp": {"ESTABLISHED": 4, "LISTEN": 2}, "unix": {"LISTEN": 1}}
    assert a["sockets"] == 7
    [b] = by_namespace_view(snap, snap.namespaces[f"net:[{B}]"])["namespaces"]
    assert b["counts"] == {"tcp": {"ESTABLISHED": 4, "TIME_WAIT": 1},
                           "udp": {"ESTABLISHED": 1}}
    # outbound before inbound, most open connections first; closed ones apart
    assert [(g["direction"], g["count"], g["closed"]) for g in b["connections"]] == [
        ("outbound", 3, 1), ("outbound", 1, 0), ("outbound", 1, 0)]


# ---------------------------------------------------------------------- sockets view

def test_sockets_view_counts_and_stats(snap):
    doc = sockets_view(snap)
    assert doc["schema"] == "nsnet/1" and doc["view"] == "sockets"
    stats = doc["stats"]
    assert stats["sockets"] == len(doc["sockets"]) == 3 + 2 * 4 + 1 + 1
    assert stats["namespaces"] == 3 and stats["processes"] == 6
    assert stats["sockets_without_pid"] == 1
    assert stats["host_netns"] == f"net:[{HOST_INODE}]"
    assert [p["pid"] for p in doc["processes"]] == [200, 201, 202, 300]   # holders only
    # ordered by namespace, protocol, listeners first
    keys = [(s["netns"], s["proto"], s["direction"] != "listening") for s in doc["sockets"]]
    assert keys == sorted(keys)


@pytest.mark.parametrize("keep, expected", [
    (SocketFilter(protos=frozenset({"udp"})), 1),
    (SocketFilter(protos=frozenset({"udp", "unix"})), 2),
    (SocketFilter(listening=True), 3),
    (SocketFilter(state=normalize_state("time-wait")), 1),
    (SocketFilter(state=normalize_state("estab")), 4 + 4 + 1),
    (SocketFilter(port=8080), 1 + 4 + 3),          # local or remote port
    (SocketFilter(pid=201), 2 + 2),                # two listeners, two accepted
    (SocketFilter(netns=f"net:[{B}]"), 6),
    (SocketFilter(netns=f"net:[{B}]", protos=frozenset({"tcp"}), state="ESTABLISHED"), 4),
])
def test_socket_filters(snap, keep, expected):
    doc = sockets_view(snap, keep)
    assert len(doc["sockets"]) == expected
    assert doc["stats"]["sockets"] == 13          # the stats stay the whole node's


# ---------------------------------------------------------------------------- by-pod

POD = "0f8d2a51-7c3e-4b7a-9a55-2f1c1e0b9d11"
OTHER = "5a3c9e77-1b2d-4f60-8e0a-3d4c5b6a7980"
SANDBOX, APP, SIDECAR = "f0" * 32, "a0" * 32, "b0" * 32


def pods_node(*, named: bool) -> MemNode:
    """Pod POD in namespace A: a pause sandbox (id sorting after the app's), an app and a
    sidecar; pod OTHER in namespace B connects to its app. named: the kubelet's log tree
    names POD shop/cart and its containers."""
    node = MemNode()
    if named:
        node.kubelet(POD, "shop", "cart", {"app": APP, "sidecar": SIDECAR})
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container=SANDBOX, pod=POD)
    app = node.process(200, uid=10001, netns=A, container=APP, pod=POD)
    node.process(210, uid=10011, netns=A, container=SIDECAR, pod=POD)
    node.process(300, uid=65535, netns=B, cmdline=["/pause"], container="c0" * 32, pod=OTHER)
    client = node.process(301, uid=10002, netns=B, container="d0" * 32, pod=OTHER)
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[app])
    node.connection("10.1.0.2:40001", "10.1.0.1:8080", client_netns=B, server_netns=A,
                    client_holders=[client], server_holders=[app])
    node.socket("tcp", "TIME_WAIT", "10.1.0.1:8080", "10.1.0.2:39999", netns=A)
    return node


def test_by_pod_sandbox_container_first_and_owners():
    snap = pods_node(named=False).build()
    doc = by_pod_view(snap)
    [pod] = [p for p in doc["pods"] if p["uid"] == POD]
    # without names, the ids would put the sandbox (f0...) last
    assert [(c["id"], c["sandbox"]) for c in pod["containers"]] == [
        (SANDBOX, True), (APP, False), (SIDECAR, False)]
    assert pod["containers"][0]["users"] == [65535]
    assert pod["owners"] == [10001, 10011] and pod["netns"] == [A]
    assert pod["pids"] == [100, 200, 210] and not pod["host_network"]
    # its sockets: the listener, the accepted connection, and the unheld TIME_WAIT (the
    # listener's: accepted on 8080), one open connection and one closed
    assert pod["sockets"] == 3
    assert [(g["local_port"], g["count"], g["closed"], g["users"], g["attribution"],
             [p["uid"] for p in g["peer_pods"]]) for g in pod["connected_from"]] == [
        (8080, 1, 1, [10001], ["holder", "listener"], [OTHER])]


def test_by_pod_names_from_the_kubelet_and_one_pod_only():
    snap = pods_node(named=True).build()
    doc = by_pod_view(snap)
    # a named pod sorts before one known by uid only
    assert [(p["namespace"], p["name"]) for p in doc["pods"]] == [("shop", "cart"),
                                                                   (None, None)]
    assert [c["name"] for c in doc["pods"][0]["containers"]] == [None, "app", "sidecar"]
    [other] = by_pod_view(snap, resolve_pod(OTHER, snap))["pods"]
    assert other["uid"] == OTHER
    [group] = other["connects_to"]
    assert [p["name"] for p in group["peer_pods"]] == ["cart"]


def test_resolve_pod_by_name_and_uid():
    snap = pods_node(named=True).build()
    assert resolve_pod("shop/cart", snap) is snap.pods[POD]
    assert resolve_pod(POD, snap) is snap.pods[POD]
    assert resolve_pod("shop/nope", snap) is None
    assert resolve_pod("cart", snap) is None


# ----------------------------------------------------------------------- hostile text

HOSTILE_COMM = "\x1b]0;owned\x07"
HOSTILE_ARGV = ["/bin/x\x1b[2J", "line1\nline2", "\x9b31m", "tab\there", "rtl\u202e"]
HOSTILE_PATH = "/run/\x1b[31mred\r.sock"
SGR = re.compile(r"\x1b\[[0-9;]*m")


def hostile() -> MemNode:
    node = MemNode()
    evil = node.process(666, uid=10066, netns=A, cmdline=HOSTILE_ARGV, comm=HOSTILE_COMM)
    bare = node.process(667, uid=10066, netns=A, cmdline=[], comm=HOSTILE_COMM)
    node.socket("unix", "LISTEN", HOSTILE_PATH, netns=A, holders=[evil])
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[evil, bare])
    node.socket("tcp", "ESTABLISHED", "10.1.0.1:8080", "10.1.0.2:4000", netns=A,
                holders=[bare])
    return node


@pytest.mark.parametrize("width", [None, 60])
def test_hostile_names_are_inert_when_rendered(width):
    snap = hostile().build()
    outputs = [render_sockets(sockets_view(snap), Renderer(width, False)),
               render_by_namespace(by_namespace_view(snap), Renderer(width, False)),
               render_by_user(by_user_view(snap), Renderer(width, False))]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
        assert "\r" not in text and "\u202e" not in text
        assert "line1\nline2" not in text
    if width is None:   # nothing cut: the escapes are shown in full
        assert "\\x1b]0;owned\\x07" in outputs[1]         # comm, for the bare process
        assert "line1\\nline2" in outputs[1] and "\\u009b31m" in outputs[1]
        assert "/run/\\x1b[31mred\\r.sock" in outputs[0]
    # with colour on, the only escape sequences are our own SGR codes
    coloured = render_by_namespace(by_namespace_view(snap), Renderer(width, True))
    assert "\x1b" not in SGR.sub("", coloured)


def test_hostile_names_are_exact_in_the_json_document():
    snap = hostile().build()
    for doc in (sockets_view(snap), by_namespace_view(snap)):
        text = json.dumps(doc, ensure_ascii=True)
        assert "\x1b" not in text and text.isascii()
        back = json.loads(text)
        procs = back["processes"] if "processes" in back else back["namespaces"][1]["processes"]
        by_pid = {p["pid"]: p for p in procs}
        assert by_pid[666]["cmdline"] == HOSTILE_ARGV
        assert by_pid[667]["comm"] == HOSTILE_COMM
    unix = [s for s in sockets_view(snap)["sockets"] if s["proto"] == "unix"]
    assert [s["local_addr"] for s in unix] == [HOSTILE_PATH]


def test_by_pod_rendering_lists_the_sandbox_and_the_clients():
    snap = pods_node(named=True).build()
    text = render_by_pod(by_pod_view(snap), Renderer(None, False))
    cart = text.split("pod shop/cart", 1)[1].split("pod pod:", 1)[0]
    lines = cart.splitlines()
    sandbox_row = next(i for i, line in enumerate(lines) if "(sandbox)" in line)
    app_row = next(i for i, line in enumerate(lines) if line.startswith("app "))
    assert sandbox_row < app_row
    assert "owners 10001,10011" in cart and "sockets 3" in cart
