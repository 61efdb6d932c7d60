"""Dependency edges (nsnet.agent.edges), the closed-connection memory, the sampler's merge of
destroy events, and the history documents (nsnet.agent.history), from in-memory snapshots."""
from __future__ import annotations

import ipaddress

import pytest

from memnode import HOST_INODE, FixedScanner, FixedWatcher, MemNode, closed, observed

from nsnet.agent.edges import (
    LISTENED_SAMPLES,
    EdgeBook,
    EdgeKey,
    Memory,
    Seen,
    closed_edges,
    observe,
    state_of,
    traffic,
)
from nsnet.agent.history import by_user_history, deps_view, split_where
from nsnet.agent.events import Closed
from nsnet.agent.isolate import ChildFailed
from nsnet.agent.sampler import NO_TRAFFIC, ForkedSampler, Sampler
from nsnet.agent.store import EdgeRow
from nsnet.errors import NsnetError
from nsnet.model import (
    NO_SERVICES,
    Rule,
    ServiceMap,
    Snapshot,
    Socket,
    SocketDetail,
    TcpDetail,
)
from nsnet.options import SamplingOptions
from nsnet.ownership import user_name
from nsnet.report import Renderer

A, B = 4026532300, 4026532400
WA, WB = f"netns:{A}", f"netns:{B}"
POD_B = "5a3c9e77-1b2d-4f60-8e0a-3d4c5b6a7980"


def busy_node() -> MemNode:
    """A: tenant 10001's server on 8080 with three accepted connections from 10.1.0.2.
    B: tenant 10002's client, the other ends of those three, one that ended (TIME_WAIT,
    unheld), one in CLOSE (no edge), a connected UDP socket to 8.8.8.8:53, a UDP server and
    a unix listener (no edges). Host: an unheld TIME_WAIT to 10.0.0.5:3306 and a connection
    to 10.0.0.5:5432 held by processes of users 1000 and 1001."""
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    node.process(400, uid=1000)
    node.process(401, uid=1001)
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
    for port in (40001, 40002, 40003):
        node.connection(f"10.1.0.2:{port}", "10.1.0.1:8080", client_netns=B, server_netns=A,
                        client_holders=[300], server_holders=[200])
    node.socket("tcp", "TIME_WAIT", "10.1.0.2:40004", "10.1.0.1:8080", netns=B)
    node.socket("tcp", "CLOSE", "10.1.0.2:40005", "10.1.0.1:8080", netns=B, holders=[300])
    node.socket("udp", "ESTABLISHED", "10.1.0.2:38000", "8.8.8.8:53", netns=B, holders=[300])
    node.socket("udp", "UNCONN", "0.0.0.0:5353", netns=B, holders=[300])
    node.socket("unix", "LISTEN", "/run/b.sock", netns=B, holders=[300])
    node.socket("tcp", "TIME_WAIT", "192.168.1.5:51000", "10.0.0.5:3306")
    node.socket("tcp", "ESTABLISHED", "192.168.1.5:52000", "10.0.0.5:5432",
                holders=[400, 401])
    return node


def test_observe_counts_open_and_closed_connections_per_edge():
    seen = observe(busy_node().build())
    assert seen == {
        # three open, the TIME_WAIT closed recently (B's one owner's)
        EdgeKey(10002, WB, "outbound", "tcp", "10.1.0.1", 8080): Seen(3, 1, evidence="holder"),
        EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.2", 8080): Seen(3, evidence="holder"),
        EdgeKey(10002, WB, "outbound", "udp", "8.8.8.8", 53): Seen(1, evidence="holder"),
        # an unheld TIME_WAIT in the host's namespace: the user stays unknown
        EdgeKey(-1, "host", "outbound", "tcp", "10.0.0.5", 3306): Seen(0, 1, evidence=None),
        EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.5", 5432): Seen(1, evidence="holder"),
        EdgeKey(1001, "host", "outbound", "tcp", "10.0.0.5", 5432): Seen(1, evidence="holder"),
    }


def test_observe_never_keys_by_an_ephemeral_port():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
    ephemeral = range(30000, 30050)
    for port in ephemeral:
        node.connection(f"10.1.0.2:{port}", "10.1.0.1:8080", client_netns=B, server_netns=A,
                        client_holders=[300], server_holders=[200])
    seen = observe(node.build())
    # fifty connections, two edges (one per side), no key carries a client port
    assert sorted(s.open for s in seen.values()) == [50, 50]
    assert {k.port for k in seen} == {8080}
    assert not {k.port for k in seen} & set(ephemeral)


# --------------------------------------------------------------------------- EdgeBook

K1 = EdgeKey(10002, WB, "outbound", "tcp", "10.1.0.1", 8080)
K2 = EdgeKey(10002, WB, "outbound", "udp", "8.8.8.8", 53)
K3 = EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.2", 8080)


def test_edge_book_first_last_samples_max_and_current():
    book = EdgeBook(retention=1000.0)
    book.update(observed({K1: 2, K2: 1}), 100.0)
    book.update(observed({K1: 3}), 200.0)
    book.update(observed({K1: 1, K3: 5}), 300.0)
    s1, s2, s3 = book.edges[K1], book.edges[K2], book.edges[K3]
    assert (s1.first_seen, s1.last_seen, s1.samples, s1.max_concurrent, s1.current) == \
        (100.0, 300.0, 3, 3, 1)
    assert (s2.first_seen, s2.last_seen, s2.samples, s2.max_concurrent, s2.current) == \
        (100.0, 100.0, 1, 1, 0)                      # not seen since: current back to 0
    assert (s3.first_seen, s3.samples, s3.max_concurrent, s3.current) == (300.0, 1, 5, 5)
    assert [k for k, _ in book.since(150.0)] == sorted([K1, K3])
    assert [k for k, _ in book.since(0.0)] == sorted([K1, K2, K3])


def test_edge_book_drops_edges_past_the_retention():
    book = EdgeBook(retention=150.0)
    book.update(observed({K1: 1, K2: 1}), 100.0)
    book.update(observed({K1: 1}), 200.0)
    book.update({}, 300.0)                 # horizon 150: K2 (last 100) goes, K1 (200) stays
    assert set(book.edges) == {K1}
    assert book.edges[K1].current == 0
    book.update({}, 351.0)                 # horizon 201: K1 goes too
    assert book.edges == {}


def test_edge_book_loads_history_rows():
    book = EdgeBook(retention=1000.0)
    book.load([EdgeRow("n1", 10002, WB, "outbound", "tcp", "10.1.0.1", 8080,
                       50.0, 90.0, 7, 4, "namespace-owners", 3, 2)])
    state = book.edges[K1]
    assert (state.first_seen, state.last_seen, state.samples, state.max_concurrent,
            state.current, state.evidence, state.guess) == (50.0, 90.0, 7, 4, 0,
                                                            "namespace-owners", True)
    # the agent's counters start with the agent: rate() in PromQL handles the reset
    assert (state.opened_total, state.closed_total) == (0, 0)
    book.update(observed({K1: 2}, opened=1), 100.0)
    assert (state.first_seen, state.samples, state.max_concurrent, state.current) == \
        (50.0, 8, 4, 2)
    # the stronger evidence wins, and is no guess any more
    assert (state.evidence, state.guess, state.opened_total) == ("holder", False, 1)


def test_edge_book_counts_closed_apart_from_open():
    book = EdgeBook(retention=1000.0)
    book.update(observed({K1: 0}, closed=9), 100.0)      # nine TIME_WAITs, nothing open
    state = book.edges[K1]
    assert (state.current, state.closed, state.max_concurrent) == (0, 9, 1)
    book.update(observed({K1: 2}, closed=0), 110.0)
    assert (state.current, state.closed, state.max_concurrent) == (2, 0, 2)


# ------------------------------------------------------------------ closed connections

def remembering_node(*, with_connection: bool = True) -> MemNode:
    """A: tenant 10001's server on 8080. B: pod POD_B (shop/client) whose namespace has two
    users, 10002 (pid 300) and 10003 (pid 301); 300 holds 10.1.0.2:40010 -> 10.1.0.1:8080
    (with_connection). Host: a connection of user 1000 to 10.0.0.5:5432."""
    node = MemNode()
    node.kubelet(POD_B, "shop", "client", {"app": "d0" * 32})
    node.process(200, uid=10001, netns=A)
    node.process(299, uid=65535, netns=B, cmdline=["/pause"], container="c0" * 32, pod=POD_B)
    node.process(300, uid=10002, netns=B, container="d0" * 32, pod=POD_B)
    node.process(301, uid=10003, netns=B, container="d0" * 32, pod=POD_B)
    node.process(400, uid=1000)
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
    if with_connection:
        node.connection("10.1.0.2:40010", "10.1.0.1:8080", client_netns=B, server_netns=A,
                        client_holders=[300], server_holders=[200])
        node.socket("tcp", "ESTABLISHED", "192.168.1.5:52000", "10.0.0.5:5432",
                    holders=[400])
    return node


def test_closed_connection_is_attributed_from_an_earlier_sample():
    memory = Memory()
    memory.learn(remembering_node().build())
    got = closed_edges([
        closed(B, "10.1.0.2:40010", "10.1.0.1:8080"),         # seen: held by 300 (10002)
        closed(A, "10.1.0.1:8080", "10.1.0.2:40010"),         # its server end: inbound
        closed(HOST_INODE, "192.168.1.5:52000", "10.0.0.5:5432"),
    ], memory)
    # all three were open when sampled: closed now, not opened again; their users remembered
    assert got == {
        EdgeKey(10002, "pod:shop/client", "outbound", "tcp", "10.1.0.1", 8080):
            Seen(ended=1, evidence="remembered"),
        EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.2", 8080):
            Seen(ended=1, evidence="remembered"),
        EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.5", 5432):
            Seen(ended=1, evidence="remembered"),
    }


def test_unseen_closed_connection_goes_to_the_namespace_owners_else_unknown():
    memory = Memory()
    memory.learn(remembering_node().build())
    got = closed_edges([
        closed(B, "10.1.0.2:40099", "10.1.0.1:8080"),          # never sampled
        closed(HOST_INODE, "192.168.1.5:51000", "10.0.0.5:3306"),
        closed(4026539999, "10.9.0.1:41000", "10.0.0.5:3306"),  # a namespace already gone
        closed(B, "10.1.0.2:8081", "0.0.0.0:0"),                # a listener closing: no edge
    ], memory)
    # never seen open: opened and closed since the last sample
    guess = Seen(opened=1, ended=1, evidence="namespace-owners")
    unknown = Seen(opened=1, ended=1, evidence=None)
    assert got == {
        # both users of B, not the sandbox: a guess
        EdgeKey(10002, "pod:shop/client", "outbound", "tcp", "10.1.0.1", 8080): guess,
        EdgeKey(10003, "pod:shop/client", "outbound", "tcp", "10.1.0.1", 8080): guess,
        EdgeKey(-1, "host", "outbound", "tcp", "10.0.0.5", 3306): unknown,
        EdgeKey(-1, "netns:4026539999", "outbound", "tcp", "10.0.0.5", 3306): unknown,
    }


def test_memory_keeps_two_samples():
    event = closed(B, "10.1.0.2:40010", "10.1.0.1:8080")
    memory = Memory()
    memory.learn(remembering_node().build())
    memory.learn(remembering_node(with_connection=False).build())
    # seen one sample ago: still 10002's alone
    assert {k.uid for k in closed_edges([event], memory)} == {10002}
    memory.learn(remembering_node(with_connection=False).build())
    # forgotten: the namespace's owners
    assert {k.uid for k in closed_edges([event], memory)} == {10002, 10003}


def closing_samples() -> tuple[Snapshot, Snapshot, list[Closed]]:
    """Two samples and the destroy events between them: 40010 closed (its event), a new
    connection to the same service open; and a host connection no sample saw closing."""
    first = remembering_node().build()
    second = remembering_node(with_connection=False)
    second.connection("10.1.0.2:40011", "10.1.0.1:8080", client_netns=B, server_netns=A,
                      client_holders=[300], server_holders=[200])
    return first, second.build(), [closed(B, "10.1.0.2:40010", "10.1.0.1:8080"),
                                   closed(HOST_INODE, "192.168.1.5:52000", "10.0.0.5:5432")]


SUBSCRIBED = {A: "/memnode/proc/200/ns/net", B: "/memnode/proc/299/ns/net",
              HOST_INODE: "/memnode/proc/400/ns/net"}
AFTER_CLOSING = {
    # 40011 open (and new: opened); 40010 closed (its event), seen held before
    EdgeKey(10002, "pod:shop/client", "outbound", "tcp", "10.1.0.1", 8080):
        Seen(1, opened=1, ended=1, evidence="holder"),
    EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.2", 8080):
        Seen(1, opened=1, evidence="holder"),
    # closed since the last sample, seen then as user 1000's
    EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.5", 5432):
        Seen(ended=1, evidence="remembered"),
}


def test_sampler_adds_closed_connections_once_and_subscribes_each_namespace():
    first, second, events = closing_samples()
    watcher = FixedWatcher([[], events])
    scanner = FixedScanner([first, second])
    said: list[str] = []
    sampler = Sampler(SamplingOptions(events=False, traffic=False), said.append,
                      scanner=scanner, watcher=watcher)
    one = sampler.sample()
    assert one.closed == 0 and one.observed == observe(first)
    assert watcher.subscribed == SUBSCRIBED
    two = sampler.sample()
    assert two.closed == 2 and two.observed == AFTER_CLOSING
    assert scanner.takes == 2 and scanner.paces_callable()
    sampler.close()
    assert scanner.closed and watcher.closed
    assert said == []


# ---------------------------------------------------------------------------- history


def test_forked_samples_subscribe_and_keep_the_events_of_a_failed_sample():
    """Samples taken in child processes: the agent drains the destroy events and subscribes
    in new namespaces itself (its watcher's thread stays with it); the events drained for a
    sample whose child failed reach the next one -- the same edges as in-process."""
    first, second, events = closing_samples()
    watcher = FixedWatcher([[], events, []])
    scanner = FixedScanner([first, NsnetError("the walk failed"), second])
    sampler = ForkedSampler(Sampler(SamplingOptions(events=False, traffic=False), [].append,
                                    scanner=scanner, watcher=watcher))
    one = sampler.sample()
    assert one.closed == 0 and one.observed == observe(first) and one.peak_rss > 0
    assert watcher.subscribed == SUBSCRIBED
    with pytest.raises(ChildFailed, match="the walk failed"):
        sampler.sample()
    three = sampler.sample()
    assert three.closed == 2 and three.observed == AFTER_CLOSING
    assert scanner.takes == 3


def test_split_where():
    assert split_where("pod:shop/cart") == {"pod_namespace": "shop", "pod": "cart",
                                            "pod_uid": None, "netns": None}
    assert split_where(f"pod:{POD_B}") == {"pod_namespace": None, "pod": None,
                                           "pod_uid": POD_B, "netns": None}
    assert split_where("host")["netns"] == "host"
    assert split_where(WA) == {"pod_namespace": None, "pod": None, "pod_uid": None,
                               "netns": WA}


def test_deps_view_and_by_user_history():
    # the tenants' uids have no passwd entry here: shown as numbers, with no user name
    assert user_name(10001) is None and user_name(10002) is None
    services = ServiceMap([Rule("api", ipaddress.ip_network("10.1.0.1/32"), 8080),
                           Rule("clients", ipaddress.ip_network("10.1.0.2/32"), None)])
    book = EdgeBook(retention=1000.0)
    unknown = EdgeKey(-1, "host", "outbound", "tcp", "10.0.0.5", 3306)
    root = EdgeKey(0, "host", "outbound", "tcp", "10.0.0.5", 3306)
    book.update(observed({K1: 2, K3: 2, unknown: 1, root: 1}), 100.0)
    doc = deps_view([("n1", k, s) for k, s in book.since(0.0)], services, None, "agent")
    assert doc["view"] == "dependencies" and doc["source"] == "agent"
    # by uid, the unknown user last
    assert [(e["uid"], e["user"]) for e in doc["edges"]] == [
        (0, "root"), (10001, None), (10002, None), (None, None)]
    by_uid = {e["uid"]: e for e in doc["edges"]}
    assert by_uid[10002]["service"] == "api"       # outbound: the peer's name
    assert by_uid[10001]["service"] is None        # inbound: not the client's name
    assert by_uid[10002]["netns"] == WB and by_uid[10002]["node"] == "n1"
    assert (by_uid[10002]["max_concurrent"], by_uid[10002]["samples"]) == (2, 1)
    assert (by_uid[10002]["open"], by_uid[10002]["closed_recently"]) == (2, 0)
    assert (by_uid[10002]["evidence"], by_uid[10002]["guess"]) == ("holder", False)
    history = deps_view([("n1", k, s) for k, s in book.since(0.0)], services, None,
                        "history h.db", live=False)
    assert {e["open"] for e in history["edges"]} == {None}   # the history knows no "now"
    users = by_user_history(doc)["users"]
    assert [u["uid"] for u in users] == [0, 10001, 10002, None]
    assert [len(u["connects_to"]) for u in users] == [1, 0, 1, 1]
    assert [len(u["connected_from"]) for u in users] == [0, 1, 0, 0]
    assert deps_view([], NO_SERVICES, 5.0, "db")["edges"] == []


def test_closed_connection_to_a_listener_new_since_the_last_sample_is_inbound():
    def pod_node(listening: bool) -> MemNode:
        node = MemNode()
        node.process(100, uid=65535, netns=A, cmdline=["/pause"])
        node.process(200, uid=10001, netns=A)
        if listening:
            node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
        return node

    # the kubelet's probe from the node's address: accepted and closed between the samples
    probe = closed(A, "10.1.0.1:8080", "10.1.0.254:51234")
    sampler = Sampler(SamplingOptions(events=False), lambda line: None,
                      scanner=FixedScanner([pod_node(False).build(), pod_node(True).build()]),
                      watcher=FixedWatcher([[], [probe]]))
    sampler.sample()
    second = sampler.sample()
    edge = second.observed[EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.254", 8080)]
    assert edge == Seen(opened=1, ended=1, evidence="listener")
    assert all(k.port != 51234 for k in second.observed)


def test_closed_server_ends_never_make_an_edge_per_client_port():
    """The soak found 115k edges in an hour, one per closed connection: server ends whose
    listener was not in the latest sample (a server that stopped, or one no sample saw) were
    keyed by the client's ephemeral port. A listener seen lately, or -- with nothing known --
    an ephemeral remote port against a non-ephemeral local one, makes them inbound."""
    def node(listening: bool) -> MemNode:
        n = MemNode()
        n.process(200, uid=10001, netns=A)
        if listening:
            n.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
        return n

    memory = Memory()
    memory.learn(node(True).build())
    memory.learn(node(False).build())     # the server stopped; its connections close after
    gone = [closed(A, "10.1.0.1:8080", f"10.1.0.254:{40000 + i}") for i in range(100)]
    never_seen = [closed(HOST_INODE, "127.0.0.1:5432", f"127.0.0.1:{50000 + i}")
                  for i in range(100)]
    client_end = closed(HOST_INODE, "127.0.0.1:50001", "127.0.0.1:5432")
    got = closed_edges([*gone, *never_seen, client_end], memory)
    assert set(got) == {
        EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.254", 8080),
        EdgeKey(-1, "host", "inbound", "tcp", "127.0.0.1", 5432),
        EdgeKey(-1, "host", "outbound", "tcp", "127.0.0.1", 5432),
    }
    assert got[EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.254", 8080)].ended == 100
    # a listener seen lately says which end served; the ports alone only infer it, marked
    assert not got[EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.254", 8080)].direction_inferred
    assert got[EdgeKey(-1, "host", "inbound", "tcp", "127.0.0.1", 5432)].direction_inferred
    assert got[EdgeKey(-1, "host", "outbound", "tcp", "127.0.0.1", 5432)].direction_inferred
    for _ in range(LISTENED_SAMPLES):   # long gone: forgotten, then the port rule alone
        memory.learn(node(False).build())
    assert (A, 8080) not in memory.listened


def test_server_ends_left_by_a_stopped_listener_are_one_inbound_edge():
    """200 connections accepted on 9200, then the server stops listening: their server ends
    (TIME_WAIT) are classified outbound -- no listener now -- but are one inbound edge on
    9200, not 200 edges on the clients' ephemeral ports."""
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    for i in range(200):
        node.socket("tcp", "TIME_WAIT", "10.1.0.1:9200", f"10.1.0.254:{40000 + i}", netns=A)
    observed = observe(node.build())
    assert {(k.direction, k.port) for k in observed} == {("inbound", 9200)}
    # which end served is inferred from the ports: said, in the book and in the documents
    (seen,) = observed.values()
    assert seen.direction_inferred and seen.inferred == 200 and seen.exact == 0
    book = EdgeBook(retention=3600.0)
    book.update(observed, 100.0)
    (key, state), = book.edges.items()
    assert state.direction_inferred and not state.guess
    doc = deps_view([("n", key, state)], NO_SERVICES, None, "agent")
    assert doc["edges"][0]["direction_inferred"] is True
    assert deps_view([("n", key, state)], NO_SERVICES, None, "agent", confirmed=True)["edges"] == []
    # one exact sight of the edge (its listener back) ends the guess for good
    again = MemNode()
    again.process(200, uid=10001, netns=A)
    again.socket("tcp", "LISTEN", "0.0.0.0:9200", netns=A, holders=[200])
    again.socket("tcp", "TIME_WAIT", "10.1.0.1:9200", "10.1.0.254:40000", netns=A)
    exact = observe(again.build())
    assert not exact[key].direction_inferred
    book.update(exact, 101.0)
    book.update(observed, 102.0)
    assert not book.edges[key].direction_inferred


def test_a_normal_connection_is_not_inferred():
    seen = observe(busy_node().build())
    assert seen and not any(s.direction_inferred for s in seen.values())


def test_a_pod_deleted_since_the_last_sample_is_no_crash():
    """Its connection lingers unheld (TIME_WAIT) and is remembered as its pod's: the pod is
    gone from the snapshot, so the place is the namespace's (it was a KeyError, exit 70)."""
    from memnode import FixedScanner

    from nsnet.agent.sampler import NO_TRAFFIC, Sampler
    from nsnet.options import SamplingOptions

    pod, cid = "a365373c-1d8c-4bad-8685-301881f1abb5", "c" * 64

    def node(pod_alive: bool):
        n = MemNode()
        n.process(200, 0)
        n.socket("tcp", "LISTEN", "10.0.0.1:5432", holders=[200])
        if pod_alive:
            n.process(100, 1000, B, pod=pod, container=cid)
            n.connection("10.1.0.5:40000", "10.0.0.1:5432", client_netns=B,
                         server_netns=HOST_INODE, client_holders=[100], server_holders=[200])
        else:
            n.socket("tcp", "TIME_WAIT", "10.1.0.5:40000", "10.0.0.1:5432", netns=B)
        return n.build()

    sampler = Sampler(SamplingOptions(events=False), lambda line: None,
                      scanner=FixedScanner([node(True), node(False)]))
    sampler.sample()
    second = sampler.sample()
    assert any(k.uid == 1000 and k.port == 5432 for k in second.observed)


def test_the_deps_table_and_the_graph_mark_an_inferred_direction():
    from nsnet.graph import render
    from nsnet.report import DIRECTION_LEGEND, Renderer, render_deps

    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.socket("tcp", "TIME_WAIT", "10.1.0.1:9200", "10.1.0.254:40000", netns=A)
    node.socket("tcp", "ESTABLISHED", "10.1.0.1:41000", "10.0.0.5:5432", netns=A, holders=[200])
    book = EdgeBook(retention=3600.0)
    book.update(observe(node.build()), 100.0)
    doc = deps_view([("n", k, s) for k, s in book.edges.items()], NO_SERVICES, None, "agent")
    text = render_deps(doc, Renderer(None, False))
    lines = [line for line in text.splitlines() if "10.1.0.254" in line or "10.0.0.5" in line]
    (inbound,) = [line for line in lines if "10.1.0.254" in line]
    (outbound,) = [line for line in lines if "10.0.0.5" in line]
    assert " tcp? " in inbound and " tcp " in outbound and " tcp? " not in outbound
    assert DIRECTION_LEGEND in text
    # the graph draws outbound edges: one inferred is dashed and marked
    guessed = dict(doc["edges"][0])
    guessed.update(direction="outbound", direction_inferred=True, guess=False)
    assert "style=dashed" in render([guessed], "dot", False)
    assert "style=dashed" not in render([dict(guessed, direction_inferred=False)], "dot", False)


# ---------------------------------------------------------------------------- traffic

def moved(sock: Socket, sent: int, received: int, retrans: int = 0, rtt_us: int = 1000) -> None:
    """Give a socket the TCP_INFO a source that reads it would have (netlink, pidfd)."""
    sock.detail = SocketDetail(tcp=TcpDetail("cubic", rtt_us, rtt_us // 2, 10, 0, retrans,
                                             sent, received, None, 0, 0))


CLIENT = EdgeKey(10002, "pod:shop/client", "outbound", "tcp", "10.1.0.1", 8080)
SERVER = EdgeKey(10001, WA, "inbound", "tcp", "10.1.0.2", 8080)
HOST_DB = EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.5", 5432)


def traffic_node(client: tuple, server: tuple, db: tuple | None = None,
                 port: int = 40010) -> MemNode:
    """remembering_node's connections with their counters (sent, received, retrans,
    rtt_us); db None: the host's connection is gone."""
    node = remembering_node(with_connection=False)
    c, s = node.connection(f"10.1.0.2:{port}", "10.1.0.1:8080", client_netns=B,
                           server_netns=A, client_holders=[300], server_holders=[200])
    moved(c, *client)
    moved(s, *server)
    if db is not None:
        moved(node.socket("tcp", "ESTABLISHED", "192.168.1.5:52000", "10.0.0.5:5432",
                          holders=[400]), *db)
    return node


def test_traffic_of_one_snapshot_is_over_the_connections_lives_and_rtt_a_mean():
    node = traffic_node((1000, 200, 1, 400), (200, 1000, 0, 600))
    c2, _ = node.connection("10.1.0.2:40011", "10.1.0.1:8080", client_netns=B,
                            server_netns=A, client_holders=[300], server_holders=[200])
    moved(c2, 24, 6, 2, 800)
    snap = node.build()
    got = traffic(snap)
    client = got[CLIENT]
    assert (client.sent, client.received, client.retransmits, client.rtt_us) == \
        (1024, 206, 3, 600.0)
    server = state_of(got[SERVER], 1.0)
    assert (server.sent_total, server.received_total, server.measured) == (200, 1000, True)
    # a socket without TCP_INFO (the proc source) measures nothing
    assert traffic(remembering_node().build()) == {}


def test_the_agent_counts_what_moved_between_samples_and_the_final_bytes_of_closed_ones():
    first = traffic_node((1000, 200, 1, 400), (200, 1000, 0, 400), db=(50, 60, 0, 900))
    second = traffic_node((1500, 260, 1, 500), (260, 1500, 0, 500))   # the db connection closed
    # the same 4-tuple, a new connection (its counters are smaller): everything it moved
    third = traffic_node((10, 5, 0, 300), (5, 10, 0, 300))
    db_closed = closed(HOST_INODE, "192.168.1.5:52000", "10.0.0.5:5432")
    moved(db_closed.sock, 80, 100, 2)     # the destroy event's final tcp_info
    watcher = FixedWatcher([[], [db_closed], []])
    said: list[str] = []
    for node in (first, second, third):
        node.stats.source = "netlink"
    sampler = Sampler(SamplingOptions(events=False), said.append,
                      scanner=FixedScanner([first.build(), second.build(), third.build()]),
                      watcher=watcher)
    book = EdgeBook(retention=3600)

    def sample() -> dict:
        one = sampler.sample()
        book.update(one.observed, one.ts)
        return {k: (s.sent, s.received, s.retransmits, s.rtt_us)
                for k, s in one.observed.items() if s.measured}

    # the first sight of a connection counts everything it moved since it opened
    assert sample() == {CLIENT: (1000, 200, 1, 400.0), SERVER: (200, 1000, 0, 400.0),
                        HOST_DB: (50, 60, 0, 900.0)}
    # then the differences; a closed one its final counters less what was seen (no rtt)
    assert sample() == {CLIENT: (500, 60, 0, 500.0), SERVER: (60, 500, 0, 500.0),
                        HOST_DB: (30, 40, 2, None)}
    assert sample() == {CLIENT: (10, 5, 0, 300.0), SERVER: (5, 10, 0, 300.0)}
    totals = {k: (s.sent_total, s.received_total, s.retransmits_total, s.rtt_us)
              for k, s in book.edges.items()}
    assert totals == {CLIENT: (1510, 265, 1, 300.0), SERVER: (265, 1510, 0, 300.0),
                      HOST_DB: (80, 100, 2, None)}
    assert said == []
    sampler.close()


def test_the_proc_source_says_once_that_edges_carry_no_traffic():
    said: list[str] = []
    sampler = Sampler(SamplingOptions(events=False), said.append,
                      scanner=FixedScanner([remembering_node().build()]), watcher=FixedWatcher())
    sampler.sample()
    assert said == [NO_TRAFFIC]
    sampler.close()


def test_an_unmeasured_edge_has_null_traffic_in_the_documents():
    book = EdgeBook(retention=3600)
    book.update(observe(remembering_node().build()), 10.0)
    doc = deps_view([("n", k, s) for k, s in book.edges.items()], NO_SERVICES, None, "agent")
    assert {(e["bytes_sent"], e["bytes_received"], e["retransmits"], e["rtt_ms"])
            for e in doc["edges"]} == {(None, None, None, None)}
    book.update(traffic(traffic_node((1000, 200, 1, 1500), (200, 1000, 0, 400)).build()),
                20.0)
    doc = deps_view([("n", k, s) for k, s in book.edges.items()], NO_SERVICES, None, "agent")
    got = {e["where"]: (e["bytes_sent"], e["bytes_received"], e["retransmits"], e["rtt_ms"])
           for e in doc["edges"] if e["bytes_sent"] is not None}
    assert got == {"pod:shop/client": (1000, 200, 1, 1.5), WA: (200, 1000, 0, 0.4)}


def test_the_deps_table_shows_traffic_columns_only_when_measured():
    from nsnet.report import render_deps

    def table(observed) -> list[list[str]]:
        doc = deps_view([("n", k, state_of(s, 10.0)) for k, s in observed.items()],
                        NO_SERVICES, None, "agent")
        return [line.split() for line in render_deps(doc, Renderer(None, False)).splitlines()]

    plain = table(observe(remembering_node().build()))
    assert not {"SENT/RECV", "RTT", "RETRANS"} & {w for line in plain for w in line}
    node = traffic_node((1_572_864, 200, 1, 1500), (200, 1_572_864, 0, 400))
    lines = table(traffic(node.build()))
    header = lines[1]
    row = dict(zip(header, next(line for line in lines if "pod:shop/client" in line)))
    assert (row["SENT/RECV"], row["RTT"], row["RETRANS"]) == ("1.5M/200B", "1.50ms", "1")
