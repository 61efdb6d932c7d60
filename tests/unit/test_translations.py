"""Service VIPs resolved through the host's NAT translations (what conntrack.py reads), from
in-memory snapshots: the socket keeps the VIP the kernel gives it as its remote, gains the
backend, and everything built on it (peer, edges, groups, documents, metrics) names the
backend reached, `via` the VIP."""
from __future__ import annotations

import ipaddress

from memnode import MemNode, closed

from nsnet.agent.edges import EdgeBook, EdgeKey, Memory, closed_edges, observe, servers
from nsnet.agent.history import deps_view
from nsnet.agent.metrics import EdgeCollector
from nsnet.model import NO_SERVICES, Rule, ServiceMap
from nsnet.report import Renderer, render_by_user, render_deps
from nsnet.views import by_user_view, socket_doc

A, B = 4026532300, 4026532400          # the backend's namespace, the client's
WA, WB = f"netns:{A}", f"netns:{B}"
VIP = "10.96.0.10:5432"


def vip_node(*, translated: bool = True, backend: str = "10.1.0.1:5432") -> tuple:
    """B (uid 10002) connects to the VIP; the host's DNAT sends it to `backend`. A (uid
    10001) listens on 5432 at 10.1.0.1 and holds the accepted end (when the backend is
    there)."""
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    node.socket("tcp", "LISTEN", "10.1.0.1:5432", netns=A, holders=[200])
    client = node.socket("tcp", "ESTABLISHED", "10.1.0.2:40001", VIP, netns=B, holders=[300])
    server = None
    if backend == "10.1.0.1:5432":
        server = node.socket("tcp", "ESTABLISHED", backend, "10.1.0.2:40001", netns=A,
                             holders=[200])
    if translated:
        node.nat("10.1.0.2:40001", VIP, backend)
    return node, client, server


def test_a_vip_connection_reaches_its_backend_on_this_node():
    node, client, server = vip_node()
    snap = node.build()
    assert (client.remote_addr, client.remote_port) == ("10.96.0.10", 5432)   # the kernel's
    assert client.backend == ("10.1.0.1", 5432)
    assert (client.peer, client.peer_netns, client.peer_pids) == ("node", A, [200])
    assert (server.direction, server.peer, server.peer_netns) == ("inbound", "node", B)
    assert snap.stats.connections_translated == 1
    seen = observe(snap)
    out = EdgeKey(10002, WB, "outbound", "tcp", "10.1.0.1", 5432, VIP)
    assert out in seen and seen[out].open == 1
    # who serves it: the backend's listener, found at the backend's port
    assert servers(snap)[out] == {(10001, WA)}
    doc = socket_doc(client, snap)
    assert (doc["remote_addr"], doc["remote_port"]) == ("10.96.0.10", 5432)
    assert doc["backend"] == {"addr": "10.1.0.1", "port": 5432}


def test_without_the_table_the_vip_stays_the_peer_and_nothing_is_made_up():
    node, client, _ = vip_node(translated=False)
    snap = node.build()
    assert client.backend is None and client.peer == "external"
    assert snap.stats.connections_translated == 0
    assert EdgeKey(10002, WB, "outbound", "tcp", "10.96.0.10", 5432) in observe(snap)


def test_a_backend_on_another_node_is_external_and_named_by_its_address():
    node, client, _ = vip_node(backend="10.244.2.7:5432")
    snap = node.build()
    assert client.backend == ("10.244.2.7", 5432) and client.peer == "external"
    assert EdgeKey(10002, WB, "outbound", "tcp", "10.244.2.7", 5432, VIP) in observe(snap)


def test_a_pod_reaching_itself_through_its_service_is_local():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.socket("tcp", "LISTEN", "0.0.0.0:5432", netns=A, holders=[200])
    client = node.socket("tcp", "ESTABLISHED", "10.1.0.1:40002", VIP, netns=A, holders=[200])
    node.socket("tcp", "ESTABLISHED", "10.1.0.1:5432", "10.1.0.1:40002", netns=A,
                holders=[200])
    node.nat("10.1.0.1:40002", VIP, "10.1.0.1:5432")
    node.build()
    assert client.backend == ("10.1.0.1", 5432) and client.peer == "local"


def test_only_the_connection_conntrack_names_is_translated():
    """The key is the whole original tuple: another client port, or UDP, is not that entry."""
    node, client, _ = vip_node()
    other = node.socket("tcp", "ESTABLISHED", "10.1.0.2:40009", VIP, netns=B, holders=[300])
    udp = node.socket("udp", "ESTABLISHED", "10.1.0.2:40001", VIP, netns=B, holders=[300])
    node.build()
    assert client.backend is not None
    assert other.backend is None and udp.backend is None


def test_documents_tables_and_metrics_name_the_backend_via_the_vip():
    node, _, _ = vip_node()
    snap = node.build()
    services = ServiceMap([Rule("orders-db", ipaddress.ip_network("10.96.0.10/32"), 5432)])
    book = EdgeBook(retention=1000.0)
    book.update(observe(snap), 100.0)
    doc = deps_view([("n1", k, s) for k, s in book.since(0.0)], services, None, "agent")
    (out,) = [e for e in doc["edges"] if e["direction"] == "outbound"]
    assert (out["peer_addr"], out["port"], out["via"], out["service"]) == \
        ("10.1.0.1", 5432, VIP, "orders-db")      # the operator named the VIP
    text = render_deps(doc, Renderer(200, False))
    assert "VIA" in text and VIP in text and "10.1.0.1:5432" in text
    (inbound,) = [e for e in doc["edges"] if e["direction"] == "inbound"]
    assert inbound["via"] is None
    # the live views group by the backend reached, and say through which VIP
    view = by_user_view(snap)
    (group,) = [g for u in view["users"] if u["uid"] == 10002 for g in u["connects_to"]]
    assert (group["peer_addr"], group["peer_port"], group["via"]) == ("10.1.0.1", 5432, VIP)
    assert "VIA" in render_by_user(view, Renderer(200, False))
    # /metrics: the via label on the outbound edge only
    families = {f.name: f for f in EdgeCollector("n1", lambda: book.since(0.0), NO_SERVICES,
                                                 100).collect()}
    vias = {(s.labels["direction"], s.labels["peer"], s.labels["via"])
            for s in families["nsnet_edge_connections"].samples}
    assert vias == {("outbound", "10.1.0.1", VIP), ("inbound", "10.1.0.2", "")}


def test_a_closed_vip_connection_keeps_the_backend_a_sample_saw():
    node, _, _ = vip_node()
    memory = Memory()
    memory.learn(node.build())
    got = closed_edges([closed(B, "10.1.0.2:40001", VIP)], memory)
    assert set(got) == {EdgeKey(10002, WB, "outbound", "tcp", "10.1.0.1", 5432, VIP)}


def test_no_conntrack_leaves_the_vip_alone():
    from nsnet.cli import build_parser, snapshot_options
    from nsnet.options import SnapshotOptions

    args = build_parser({}).parse_args(["sockets", "--no-conntrack"])
    assert snapshot_options(args).translations is False
    assert snapshot_options(build_parser({}).parse_args(["sockets"])).translations is True
    node, client, _ = vip_node()
    node.build(SnapshotOptions(translations=False))
    assert client.backend is None and client.peer == "external"
