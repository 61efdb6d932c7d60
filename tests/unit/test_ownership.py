"""nsnet.ownership's rules and the direction/peer classification, on snapshots built in
memory (support/memnode.py) and run through the real join (snapshot_from).

Each test builds the smallest node that exercises one rule of ownership.py's docstring; the
expected owners, pods and places follow from who holds what in that node."""
from __future__ import annotations

import ipaddress

import pytest
from memnode import HOST_INODE, MemNode

from nsnet.model import Namespace, Rule, ServiceMap
from nsnet.options import SnapshotOptions
from nsnet.ownership import (
    namespace_where,
    peer_pods,
    pod_where,
    resolve_user,
    socket_containers,
    socket_pods,
    socket_service,
    socket_users,
    socket_where,
    user_name,
)

A, B = 4026532300, 4026532400
NO_UID_STATES = ("TIME_WAIT", "NEW_SYN_RECV")   # the kernel prints uid 0 and inode 0 for these
POD_A, POD_B, POD_H = ("0f8d2a51-7c3e-4b7a-9a55-2f1c1e0b9d11",
                       "5a3c9e77-1b2d-4f60-8e0a-3d4c5b6a7980",
                       "9e1f0c4d-2b3a-4c5d-8e7f-a0b1c2d3e4f5")
SANDBOX_A, APP_A, SANDBOX_B, APP_B, SANDBOX_H, APP_H = (c * 32 for c in
                                                        ("a1", "b2", "c3", "d4", "e5", "f6"))


# --------------------------------------------------------------------------- holders

def test_holders_are_every_pid_and_fd_across_namespaces():
    node = MemNode()
    node.netns(A)
    app = node.process(200, uid=10001, netns=A)
    helper = node.process(50, uid=0)            # lives in the host's namespace
    sock = node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A,
                       holders=[(200, 3), (200, 7), (50, 4)])
    node.hold(999999, app)                      # an fd whose socket no table listed
    snap = node.build()
    assert sock.pids == [50, 200]
    assert sock.fds == {50: [4], 200: [3, 7]}
    # a holder in another namespace still makes the socket its user's
    assert socket_users(sock, snap) == [0, 10001]
    assert snap.stats.socket_fds_not_in_tables == 1
    assert helper.netns == HOST_INODE and snap.stats.sockets_without_pid == 0


def test_socket_held_by_processes_of_two_users_belongs_to_both():
    node = MemNode()
    node.process(200, uid=10003, netns=A)
    node.process(201, uid=10001, netns=A)       # e.g. the fd was passed over a unix socket
    sock = node.socket("tcp", "ESTABLISHED", "10.1.0.1:8080", "10.1.0.9:5000", netns=A,
                       holders=[200, 201], uid=10003)
    snap = node.build()
    assert socket_users(sock, snap) == [10001, 10003]


# ------------------------------------------------------------------------------ users

@pytest.mark.parametrize("state", NO_UID_STATES)
def test_unheld_mini_socket_in_a_pod_namespace_goes_to_the_namespace_owners(state):
    node = MemNode()
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container="a0" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    node.process(200, uid=10001, netns=A)
    node.process(201, uid=10004, netns=A)
    mini = node.socket("tcp", state, "10.1.0.1:8080", "10.1.0.9:5000", netns=A)
    snap = node.build()
    assert mini.inode == 0 and mini.uid == 0 and list(mini.pids) == []
    # the kernel's uid 0 is ignored; the sandbox's 65535 is no owner
    assert socket_users(mini, snap) == [10001, 10004]


@pytest.mark.parametrize("state", NO_UID_STATES)
def test_unheld_mini_socket_in_the_host_namespace_goes_to_nobody(state):
    node = MemNode()
    node.process(1, uid=0, cmdline=["/sbin/init"])
    node.process(400, uid=1000)
    mini = node.socket("tcp", state, "192.168.1.5:22", "192.168.1.9:5000")
    snap = node.build()
    assert snap.namespaces[mini.netns_key].host
    assert snap.namespaces[mini.netns_key].owners == [0, 1000]
    assert socket_users(mini, snap) == []


def test_unheld_socket_that_is_not_a_mini_socket_goes_to_its_table_uid():
    node = MemNode()
    node.process(200, uid=10001, netns=A, fds_readable=False)
    node.process(1, uid=0)
    listener = node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, uid=10005)
    host_listener = node.socket("tcp", "LISTEN", "0.0.0.0:25", uid=10006)
    # an orphan after close: inode 0 like a mini-socket, but a full socket with its uid
    orphan = node.socket("tcp", "FIN_WAIT2", "10.1.0.1:8080", "10.1.0.9:5000", netns=A,
                         inode=0, uid=10005)
    unix = node.socket("unix", "LISTEN", "/run/app.sock", netns=A)
    snap = node.build()
    assert socket_users(listener, snap) == [10005]          # not the namespace's 10001
    assert socket_users(host_listener, snap) == [10006]     # the host rule is for minis only
    assert socket_users(orphan, snap) == [10005]
    assert socket_users(unix, snap) == []                   # unix tables have no uid column


# ----------------------------------------------------------------------------- owners

def test_pause_sandbox_is_never_an_owner():
    node = MemNode()
    pause = node.process(100, uid=65535, netns=A, cmdline=["/pause"], container="a1" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    node.process(200, uid=10001, netns=A)
    only_pause = node.process(300, uid=65535, netns=B, cmdline=["/pause"], container="a2" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000b")
    snap = node.build()
    assert pause.sandbox and only_pause.sandbox
    assert snap.namespaces[f"net:[{A}]"].owners == [10001]
    assert snap.namespaces[f"net:[{B}]"].owners == []


def test_sandbox_commands_come_from_the_options():
    node = MemNode(options=SnapshotOptions(sandbox_commands=("holder",)))
    pause = node.process(100, uid=65535, netns=A, cmdline=["/pause"], container="a3" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    holder = node.process(101, uid=65534, netns=A, cmdline=["/usr/bin/holder", "-x"], container="a4" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    snap = node.build()
    assert holder.sandbox and not pause.sandbox
    assert snap.namespaces[f"net:[{A}]"].owners == [65535]


def test_pause_that_holds_a_socket_is_no_sandbox_and_owns():
    node = MemNode()
    pause = node.process(100, uid=65535, netns=A, cmdline=["/pause"])
    node.process(200, uid=10001, netns=A)
    node.socket("tcp", "LISTEN", "0.0.0.0:80", netns=A, holders=[pause])
    snap = node.build()
    assert not pause.sandbox
    assert snap.namespaces[f"net:[{A}]"].owners == [10001, 65535]


def test_cri_sandbox_of_a_known_pod_is_told_by_its_missing_log_whatever_its_binary():
    node = MemNode()
    node.kubelet(POD_A, "shop", "cart", {"app": APP_A})
    sandbox = node.process(100, uid=0, netns=A, cmdline=["/usr/bin/sleep", "infinity"],
                           container=SANDBOX_A, pod=POD_A)
    app = node.process(200, uid=10001, netns=A, container=APP_A, pod=POD_A)
    snap = node.build()
    assert sandbox.sandbox and not app.sandbox
    assert snap.namespaces[f"net:[{A}]"].owners == [10001]      # not root
    pod = snap.pods[POD_A]
    assert pod.owners == [10001] and pod.pids == [100, 200]
    assert snap.containers[SANDBOX_A].sandbox and not snap.containers[APP_A].sandbox
    assert snap.containers[APP_A].name == "app" and snap.containers[SANDBOX_A].name is None


def test_threads_visiting_a_namespace_do_not_make_owners():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(50, uid=10009)                 # in the host; one of its threads is in A
    node.visit(50, 51, A)
    snap = node.build()
    ns = snap.namespaces[f"net:[{A}]"]
    assert ns.threads == [(50, 51)] and ns.found_by == ["processes", "threads"]
    assert ns.owners == [10001]


# ------------------------------------------------------------------------- pods, places

def two_pods() -> tuple[MemNode, dict]:
    """Pod shop/cart (POD_A) in namespace A serves 8080; pod uid POD_B (unknown to the
    kubelet's tree) in namespace B is its client; pod kube-system/node-exporter (POD_H) is
    hostNetwork; sshd is a plain host process."""
    node = MemNode()
    node.kubelet(POD_A, "shop", "cart", {"app": APP_A})
    node.kubelet(POD_H, "kube-system", "node-exporter", {"exporter": APP_H})
    node.process(1, uid=0, cmdline=["/sbin/init"])
    sshd = node.process(22, uid=0, cmdline=["/usr/sbin/sshd"])
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container=SANDBOX_A, pod=POD_A)
    server = node.process(200, uid=10001, netns=A, container=APP_A, pod=POD_A)
    node.process(300, uid=65535, netns=B, cmdline=["/pause"], container=SANDBOX_B, pod=POD_B)
    client = node.process(301, uid=10002, netns=B, container=APP_B, pod=POD_B)
    node.process(400, uid=65535, cmdline=["/pause"], container=SANDBOX_H, pod=POD_H)
    exporter = node.process(401, uid=65534, container=APP_H, pod=POD_H)
    s = {
        "listener": node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[server]),
        "a_time_wait": node.socket("tcp", "TIME_WAIT", "10.1.0.1:8080", "10.1.0.2:39999",
                                   netns=A),
        "exporter": node.socket("tcp", "LISTEN", "0.0.0.0:9100", holders=[exporter]),
        "sshd": node.socket("tcp", "LISTEN", "0.0.0.0:22", holders=[sshd]),
        "host_time_wait": node.socket("tcp", "TIME_WAIT", "192.168.1.5:9100",
                                      "192.168.1.9:5000"),
    }
    s["client"], s["accepted"] = node.connection(
        "10.1.0.2:40000", "10.1.0.1:8080", client_netns=B, server_netns=A,
        client_holders=[client], server_holders=[server])
    return node, s


def test_socket_pods_are_the_holders_pods_and_the_pod_owning_the_namespace():
    node, s = two_pods()
    snap = node.build()
    uids = {name: [p.uid for p in socket_pods(sock, snap)] for name, sock in s.items()}
    assert uids["listener"] == [POD_A]
    assert uids["a_time_wait"] == [POD_A]      # unheld, but in cart's own namespace
    assert uids["accepted"] == [POD_A]
    assert uids["client"] == [POD_B]
    assert socket_where(s["a_time_wait"], snap) == "pod:shop/cart"
    assert socket_where(s["client"], snap) == f"pod:{POD_B}"   # no kubelet name: its uid
    assert [c.id for c in socket_containers(s["listener"], snap)] == [APP_A]
    assert socket_containers(s["a_time_wait"], snap) == []


def test_host_network_pod_sockets_are_attributed_by_holder_cgroups():
    node, s = two_pods()
    snap = node.build()
    exporter_pod = snap.pods[POD_H]
    assert exporter_pod.host_network and not snap.pods[POD_A].host_network
    assert exporter_pod.owners == [65534]
    assert [p.uid for p in socket_pods(s["exporter"], snap)] == [POD_H]
    assert socket_where(s["exporter"], snap) == "pod:kube-system/node-exporter"
    # the host's namespace belongs to no pod: other host sockets stay the host's
    assert f"net:[{HOST_INODE}]" not in snap.pods_of_netns
    assert socket_pods(s["sshd"], snap) == [] and socket_where(s["sshd"], snap) == "host"
    # a TIME_WAIT accepted by the hostNetwork pod's listener is that pod's, by its listener
    tw = s["host_time_wait"]
    assert (tw.users, tw.attribution) == ((65534,), "listener")
    assert [p.uid for p in socket_pods(tw, snap)] == [POD_H]
    assert socket_where(tw, snap) == "pod:kube-system/node-exporter"


def test_peer_pods_are_the_pods_on_the_other_end():
    node, s = two_pods()
    snap = node.build()
    assert [p.uid for p in peer_pods(s["client"], snap)] == [POD_A]
    assert [p.uid for p in peer_pods(s["accepted"], snap)] == [POD_B]
    assert peer_pods(s["listener"], snap) == []


def test_peer_pods_and_socket_pods_are_empty_without_pods():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    c, srv = node.connection("10.1.0.2:40000", "10.1.0.1:8080", client_netns=B,
                             server_netns=A, client_holders=[300], server_holders=[200])
    snap = node.build()
    assert socket_pods(c, snap) == [] and peer_pods(c, snap) == []
    assert socket_where(c, snap) == f"netns:{B}" and socket_where(srv, snap) == f"netns:{A}"


def test_namespace_where_is_its_pod_else_host_else_the_namespace():
    node, _ = two_pods()
    node.netns(4026532999, pinned=["/run/netns/lonely"])
    snap = node.build()
    ns = snap.namespaces
    assert namespace_where(ns[f"net:[{A}]"], snap) == "pod:shop/cart"
    assert namespace_where(ns[f"net:[{B}]"], snap) == f"pod:{POD_B}"
    assert namespace_where(ns[f"net:[{HOST_INODE}]"], snap) == "host"
    assert namespace_where(ns["net:[4026532999]"], snap) == "netns:lonely"   # its pin's name
    assert namespace_where(Namespace("procnet:4242", None), snap) == "procnet:4242"
    assert pod_where(snap.pods[POD_A]) == "pod:shop/cart"


def test_service_is_the_peer_for_outbound_and_our_endpoint_otherwise():
    rules = [Rule("api", ipaddress.ip_network("10.1.0.1/32"), 8080),
             Rule("tenant-b", ipaddress.ip_network("10.1.0.2/32"), None)]
    node = MemNode(options=SnapshotOptions(services=ServiceMap(rules)))
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    listener = node.socket("tcp", "LISTEN", "10.1.0.1:8080", netns=A, holders=[200])
    wild = node.socket("tcp", "LISTEN", "0.0.0.0:9090", netns=A, holders=[200])
    unix = node.socket("unix", "LISTEN", "/run/x.sock", netns=A, holders=[200])
    client, accepted = node.connection("10.1.0.2:40000", "10.1.0.1:8080", client_netns=B,
                                       server_netns=A, client_holders=[300],
                                       server_holders=[200])
    snap = node.build()
    assert client.direction == "outbound" and accepted.direction == "inbound"
    assert socket_service(client, snap) == "api"       # the peer, not our own 10.1.0.2
    assert socket_service(accepted, snap) == "api"     # our endpoint, not the client
    assert socket_service(listener, snap) == "api"
    assert socket_service(wild, snap) is None
    assert socket_service(unix, snap) is None


def test_no_service_without_a_services_map():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    sock = node.socket("tcp", "LISTEN", "10.1.0.1:8080", netns=A, holders=[200])
    assert socket_service(sock, node.build()) is None


def test_user_names_and_resolution():
    assert user_name(0) == "root"
    assert user_name(None) is None
    assert user_name(3999999) is None          # no such user: the number is the truth
    assert resolve_user("root") == 0
    assert resolve_user("10001") == 10001
    with pytest.raises(ValueError, match="unknown user"):
        resolve_user("no-such-user-nsnet")


# -------------------------------------------------------------------- classification

def test_client_in_one_namespace_and_server_in_another():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(201, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    listener = node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200, 201])
    client, accepted = node.connection("10.1.0.2:40000", "10.1.0.1:8080", client_netns=B,
                                       server_netns=A, client_holders=[300],
                                       server_holders=[201])
    node.build()
    assert listener.direction == "listening" and listener.peer is None
    assert (client.direction, client.peer, client.peer_netns, client.peer_pids) == \
        ("outbound", "node", A, [201])
    assert (accepted.direction, accepted.peer, accepted.peer_netns, accepted.peer_pids) == \
        ("inbound", "node", B, [300])


def test_loopback_connection_in_one_namespace_is_local():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(210, uid=10001, netns=A)
    node.socket("tcp", "LISTEN", "127.0.0.1:6379", netns=A, holders=[210])
    client, server = node.connection("127.0.0.1:50000", "127.0.0.1:6379", client_netns=A,
                                     client_holders=[200], server_holders=[210])
    node.build()
    assert (client.direction, client.peer, client.peer_netns, client.peer_pids) == \
        ("outbound", "local", None, [210])
    assert (server.direction, server.peer, server.peer_pids) == ("inbound", "local", [200])


def test_peer_outside_the_node_is_external():
    node = MemNode()
    node.process(300, uid=10002, netns=B)
    sock = node.socket("tcp", "ESTABLISHED", "10.1.0.2:40000", "93.184.216.34:443", netns=B,
                       holders=[300])
    node.build()
    assert (sock.direction, sock.peer, sock.peer_netns, list(sock.peer_pids)) == \
        ("outbound", "external", None, [])


def test_udp_client_finds_a_wildcard_server_by_the_namespace_address():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.process(300, uid=10002, netns=B)
    dns = node.socket("udp", "UNCONN", "0.0.0.0:53", netns=A, holders=[200])
    # A's own address is learnt from a specific local address of one of its sockets
    node.socket("tcp", "LISTEN", "10.1.0.1:8080", netns=A, holders=[200])
    client = node.socket("udp", "ESTABLISHED", "10.1.0.2:38000", "10.1.0.1:53", netns=B,
                         holders=[300])
    node.build()
    assert dns.direction == "listening"
    assert (client.direction, client.peer, client.peer_netns, client.peer_pids) == \
        ("outbound", "node", A, [200])


def test_dual_stack_listener_makes_ipv4_connections_inbound():
    node = MemNode()
    node.process(200, uid=10001, netns=A)
    node.socket("tcp", "LISTEN", "[::]:9090", netns=A, holders=[200])
    accepted = node.socket("tcp", "ESTABLISHED", "10.1.0.1:9090", "10.1.0.2:40000", netns=A,
                           holders=[200])
    other = node.socket("tcp", "ESTABLISHED", "10.1.0.1:9091", "10.1.0.2:40001", netns=A,
                        holders=[200])
    node.build()
    assert accepted.direction == "inbound"
    assert other.direction == "outbound"     # no listener on 9091


# ------------------------------------------------------------- evidence (attribution)

SVC = 4026532500


def shared_services() -> tuple[MemNode, dict]:
    """A services namespace shared by a web server (uid 33, two workers holding :80 on any
    address), a redis (uid 999, :6379 on 10.5.0.1 only) and an admin listener of root on
    :6379 of 127.0.0.1; and unheld sockets the kernel leaves behind them."""
    node = MemNode()
    node.netns(SVC)
    web = [node.process(p, uid=33, netns=SVC) for p in (500, 501)]
    redis = node.process(600, uid=999, netns=SVC)
    admin = node.process(700, uid=0, netns=SVC)
    s = {
        "web": node.socket("tcp", "LISTEN", "0.0.0.0:80", netns=SVC, holders=web),
        "redis": node.socket("tcp", "LISTEN", "10.5.0.1:6379", netns=SVC, holders=[redis]),
        "admin": node.socket("tcp", "LISTEN", "127.0.0.1:6379", netns=SVC, holders=[admin]),
    }
    # the kernel's uid column of these is its placeholder 0, their inode 0
    for name, state in (("tw", "TIME_WAIT"), ("fw2", "FIN_WAIT2"), ("unacc", "ESTABLISHED"),
                        ("syn", "NEW_SYN_RECV"), ("closing", "LAST_ACK")):
        s[name] = node.socket("tcp", state, "10.5.0.1:80", f"10.6.0.9:{40000 + len(s)}",
                              netns=SVC, inode=0, uid=0)
    s["redis_tw"] = node.socket("tcp", "TIME_WAIT", "10.5.0.1:6379", "10.6.0.9:41000",
                                netns=SVC)
    s["admin_tw"] = node.socket("tcp", "TIME_WAIT", "127.0.0.1:6379", "127.0.0.1:41001",
                                netns=SVC)
    # an outbound TIME_WAIT of the shared namespace: four owners, so a guess
    s["out_tw"] = node.socket("tcp", "TIME_WAIT", "10.5.0.1:43000", "10.0.0.5:5432",
                              netns=SVC)
    return node, s


def test_an_unheld_inbound_socket_is_its_listeners():
    node, s = shared_services()
    snap = node.build()
    for name in ("tw", "fw2", "unacc", "syn", "closing"):
        sock = s[name]
        assert sock.direction == "inbound", name
        assert (sock.users, sock.attribution) == ((33,), "listener"), name   # never root's 0
    # the listener by address: redis on 10.5.0.1, the admin on 127.0.0.1, both on :6379
    assert (s["redis_tw"].users, s["redis_tw"].attribution) == ((999,), "listener")
    assert (s["admin_tw"].users, s["admin_tw"].attribution) == ((0,), "listener")
    assert s["out_tw"].direction == "outbound"
    assert (s["out_tw"].users, s["out_tw"].attribution) == ((0, 33, 999), "namespace-owners")
    assert snap.namespaces[f"net:[{SVC}]"].owners == [0, 33, 999]


def test_a_dual_stack_listener_takes_ipv4_connections_and_its_pods():
    node = MemNode()
    node.kubelet(POD_A, "shop", "cart", {"app": APP_A})
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container=SANDBOX_A, pod=POD_A)
    app = node.process(200, uid=10001, netns=A, container=APP_A, pod=POD_A)
    node.socket("tcp", "LISTEN", "[::]:8080", netns=A, holders=[app])
    tw = node.socket("tcp", "TIME_WAIT", "10.1.0.1:8080", "10.1.0.2:40000", netns=A)
    node.build()
    assert (tw.users, tw.attribution, tw.pod_uids) == ((10001,), "listener", (POD_A,))


def test_one_owner_is_no_guess_and_the_host_has_none():
    node = MemNode()
    node.process(100, uid=65535, netns=A, cmdline=["/pause"], container="a5" * 32, pod="9e1f0c1a-0000-4000-8000-00000000000a")
    node.process(200, uid=10001, netns=A)
    node.process(1, uid=0)
    node.process(400, uid=1000)
    mine = node.socket("tcp", "TIME_WAIT", "10.1.0.1:40000", "10.0.0.5:5432", netns=A)
    host = node.socket("tcp", "TIME_WAIT", "192.168.1.5:40000", "10.0.0.5:5432")
    node.build()
    assert (mine.users, mine.attribution) == ((10001,), "namespace-owner")
    assert (host.users, host.attribution) == ((), None)


def test_a_socket_whose_holder_cannot_be_read_is_its_table_uid():
    node = MemNode()
    node.process(200, uid=10001, netns=A, fds_readable=False)
    node.process(201, uid=10002, netns=A)
    conn = node.socket("tcp", "ESTABLISHED", "10.1.0.1:40000", "10.0.0.5:5432", netns=A,
                       uid=10001)       # held by 200, whose fds we may not list
    node.build()
    assert (conn.inode != 0, conn.users, conn.attribution) == (True, (10001,), "table-uid")


def test_the_unaccepted_end_of_a_unix_connection_is_its_listeners():
    node = MemNode()
    server = node.process(200, uid=10001, netns=A)
    node.process(201, uid=10002, netns=A)
    node.socket("unix", "LISTEN", "/run/app.sock", netns=A, holders=[server])
    unacc = node.socket("unix", "ESTABLISHED", "/run/app.sock", netns=A, inode=0)
    orphan = node.socket("unix", "ESTABLISHED", "", netns=A, inode=0)
    node.build()
    assert (unacc.users, unacc.attribution) == ((10001,), "listener")
    assert (orphan.users, orphan.attribution) == ((), None)   # unix: no namespace guess


def test_the_agent_remembers_who_held_a_connection():
    from nsnet.agent.edges import Memory

    def pod(held: bool) -> MemNode:
        node = MemNode()
        node.process(200, uid=10001, netns=A)
        node.process(210, uid=10011, netns=A)            # a sidecar: two owners
        node.socket("tcp", "ESTABLISHED" if held else "TIME_WAIT", "10.1.0.1:40000",
                    "10.0.0.5:5432", netns=A, holders=[200] if held else [],
                    inode=None if held else 0)
        return node

    memory = Memory()
    memory.learn(pod(True).build())
    later = pod(False).build()
    [tw] = later.sockets
    assert (tw.users, tw.attribution) == ((10001, 10011), "namespace-owners")
    memory.remember(later)
    assert (tw.users, tw.attribution) == ((10001,), "remembered")
