"""Classifier (classify in steps, as a snapshot runs it) against classify() in one go, and the
snapshot's garbage-collector handling.

The sockets are built by hand to reach every branch of the peer search: a peer in the same
namespace, loopback, the reverse 4-tuple in another namespace, a socket bound to exactly the
remote address, a wildcard server in the namespace that owns the remote address, two
namespaces owning it, a self-connected socket, external, listeners and unix sockets.
"""
from __future__ import annotations

import copy
import gc
from itertools import groupby

from nsnet import classify, snapshot
from nsnet.model import Socket

A, B, C, D = "net:[1]", "net:[2]", "net:[3]", "net:[4]"


def sock(key, proto, state, la, lp, ra="", rp=0, pids=(), family="inet") -> Socket:
    s = Socket(proto, family, state, la, lp, ra, rp, 0, 0)
    s.netns_key, s.netns = key, int(key[5:-1])
    s.pids = list(pids)
    return s


def node() -> list[Socket]:
    return [
        # A: a pod with a loopback pair, a listener, clients of B and of a UDP server in C
        sock(A, "tcp", "LISTEN", "0.0.0.0", 8080, pids=[10]),
        sock(A, "tcp", "ESTABLISHED", "127.0.0.1", 8080, "127.0.0.1", 40000, pids=[10]),
        sock(A, "tcp", "ESTABLISHED", "127.0.0.1", 40000, "127.0.0.1", 8080, pids=[11]),
        sock(A, "tcp", "ESTABLISHED", "10.0.0.2", 50000, "10.0.0.3", 3306, pids=[11]),
        sock(A, "udp", "ESTABLISHED", "10.0.0.2", 50001, "10.0.0.4", 53, pids=[12]),
        sock(A, "tcp", "ESTABLISHED", "10.0.0.2", 50002, "10.0.0.5", 6379, pids=[12]),
        sock(A, "tcp", "ESTABLISHED", "10.0.0.2", 50003, "8.8.8.8", 443, pids=[12]),
        sock(A, "tcp", "ESTABLISHED", "10.0.0.2", 50004, "10.0.0.2", 50004, pids=[12]),
        sock(A, "tcp", "ESTABLISHED", "10.0.0.2", 50005, "10.0.0.9", 80, pids=[12]),
        sock(A, "tcp", "ESTABLISHED", "127.0.0.1", 50006, "127.0.0.1", 9, pids=[13]),
        sock(A, "unix", "LISTEN", "/run/a.sock", None, "", None, pids=[10], family="unix"),
        sock(A, "unix", "ESTABLISHED", "", None, "", None, pids=[10, 11], family="unix"),
        sock(A, "udp", "UNCONN", "0.0.0.0", 5353, pids=[10]),
        # B: the database, accepted end of A's connection
        sock(B, "tcp", "LISTEN", "10.0.0.3", 3306, pids=[20]),
        sock(B, "tcp", "ESTABLISHED", "10.0.0.3", 3306, "10.0.0.2", 50000, pids=[20, 21]),
        # C: a DNS server bound to the wildcard, its own address learnt from another socket
        sock(C, "udp", "UNCONN", "0.0.0.0", 53, pids=[30]),
        sock(C, "tcp", "ESTABLISHED", "10.0.0.4", 60000, "1.1.1.1", 443, pids=[31]),
        # D: bound to exactly A's redis address; 10.0.0.9 is owned by both C and D
        sock(D, "tcp", "LISTEN", "10.0.0.5", 6379, pids=[40]),
        sock(D, "tcp", "ESTABLISHED", "10.0.0.9", 61000, "1.1.1.1", 443, pids=[41]),
        sock(C, "tcp", "ESTABLISHED", "10.0.0.9", 61001, "1.1.1.1", 443, pids=[32]),
    ]


FIELDS = ("direction", "peer", "peer_netns", "peer_pids")


def result(sockets: list[Socket]) -> list[tuple]:
    return [tuple(getattr(s, f) for f in FIELDS) for s in sockets]


def test_stepwise_classification_equals_classify():
    expected = node()
    classify.classify(expected)
    # sanity: the fixture reaches the branches it claims to
    peers = {(s.local_port, s.peer) for s in expected}
    assert {(40000, "local"), (50000, "node"), (50001, "node"), (50002, "node"),
            (50003, "external"), (50005, "node"), (50006, "local")} <= peers

    in_steps = copy.deepcopy(node())
    in_steps.sort(key=lambda s: s.netns_key)   # a snapshot hands over one namespace at a time
    classifier = classify.Classifier()
    for _, group in groupby(in_steps, key=lambda s: s.netns_key):
        batch = list(group)
        classifier.add(batch)
        classifier.settle(batch)
    assert 0 < len(classifier.kept) < len(in_steps)   # only what may need another namespace
    classifier.finish()
    by_identity = {(s.netns_key, s.proto, s.local_addr, s.local_port, s.remote_addr,
                    s.remote_port, s.state): s for s in in_steps}
    got = [by_identity[(s.netns_key, s.proto, s.local_addr, s.local_port, s.remote_addr,
                        s.remote_port, s.state)] for s in expected]
    assert result(got) == result(expected)


def test_resume_gc_reenables_and_leaves_a_deliberate_freeze_alone():
    assert gc.get_freeze_count() == 0
    gc.disable()
    try:
        garbage = [[] for _ in range(1000)]
        snapshot._resume_gc()
        assert gc.isenabled() and gc.get_freeze_count() == 0
        del garbage

        gc.disable()
        gc.freeze()                     # someone froze objects on purpose (before a fork)
        frozen = gc.get_freeze_count()
        assert frozen > 0
        snapshot._resume_gc()
        assert gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_socket_bound_to_an_address_its_namespace_lacks_is_no_peer() -> None:
    """IP_FREEBIND: a tenant's listener on an external service's address. With the
    namespaces' own addresses known, the connection's other end is off the node; a listener
    on an address its namespace has is still found."""
    from nsnet.classify import Classifier
    from nsnet.model import Namespace
    from nsnet.netparse import Address
    own = [Namespace("net:[1]", 1, addresses=[Address("192.0.2.10", 32, None)]),
           Namespace("net:[2]", 2, addresses=[Address("127.0.0.1", 32, None)]),
           Namespace("net:[3]", 3, addresses=[Address("10.0.0.0", 24, None)])]
    for with_addresses in (False, True):
        client = sock("net:[1]", "tcp", "ESTABLISHED", "192.0.2.10", 40000, "10.0.0.5", 3306)
        to_svc = sock("net:[1]", "tcp", "ESTABLISHED", "192.0.2.10", 40001, "10.0.0.6", 5432)
        fake = sock("net:[2]", "tcp", "LISTEN", "10.0.0.5", 3306, "0.0.0.0", 0, pids=(7,))
        real = sock("net:[3]", "tcp", "LISTEN", "10.0.0.6", 5432, "0.0.0.0", 0, pids=(8,))
        c = Classifier()
        c.add([client, to_svc, fake, real])
        if with_addresses:
            c.own_addresses(own)
        c.finish([client, to_svc])
        assert (to_svc.peer, to_svc.peer_netns, to_svc.peer_pids) == ("node", 3, [8])
        if with_addresses:
            assert (client.peer, client.peer_netns, list(client.peer_pids)) == ("external", None, [])
        else:   # what a snapshot without the addresses would say: fooled
            assert (client.peer, client.peer_netns, client.peer_pids) == ("node", 2, [7])
