"""Dependency edges: who (user, pod or namespace) talks to which service endpoint.

An edge is keyed so that its number stays bounded on a busy node: outbound connections by the
peer's ip:port, inbound ones by our listening port and the client's ip -- never by an ephemeral
port. Pure: a snapshot in, edge observations out.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .model import Snapshot, Socket
from .views import socket_pods, socket_users

# A connection in these states is evidence of a dependency: alive, being set up, or just closed
# (TIME_WAIT: a short-lived connection that ended since the last sample).
EDGE_STATES = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
                         "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "CLOSING"})


@dataclass(frozen=True, slots=True, order=True)
class EdgeKey:
    uid: int                 # the user on our side (-1: unknown)
    where: str               # "pod:<ns>/<name>", "pod:<uid>", "netns:<inode>" or "host"
    direction: str           # outbound | inbound
    proto: str               # tcp | udp
    peer_addr: str           # outbound: the service's ip; inbound: the client's ip
    port: int                # outbound: the service's port; inbound: our listening port


def where_of(sock: Socket, snap: Snapshot) -> str:
    pods = socket_pods(sock, snap)
    if pods:
        pod = pods[0]
        return f"pod:{pod.namespace}/{pod.name}" if pod.namespace and pod.name \
            else f"pod:{pod.uid}"
    ns = snap.namespaces.get(sock.netns_key)
    if ns is not None and ns.host:
        return "host"
    return f"netns:{sock.netns}" if sock.netns is not None else sock.netns_key


def edge_keys(sock: Socket, snap: Snapshot) -> list[EdgeKey]:
    """The edges one socket is evidence of (one per user it is attributed to)."""
    if sock.proto not in ("tcp", "udp") or sock.direction not in ("inbound", "outbound"):
        return []
    if sock.proto == "tcp" and sock.state not in EDGE_STATES:
        return []
    if sock.remote_port is None or sock.local_port is None:
        return []
    port = sock.remote_port if sock.direction == "outbound" else sock.local_port
    where = where_of(sock, snap)
    users = socket_users(sock, snap) or [-1]
    return [EdgeKey(uid, where, sock.direction, sock.proto, sock.remote_addr, port)
            for uid in users]


def observe(snap: Snapshot) -> Counter[EdgeKey]:
    """Every edge seen in a snapshot, with how many connections it had at once."""
    seen: Counter[EdgeKey] = Counter()
    for sock in snap.sockets:
        for key in edge_keys(sock, snap):
            seen[key] += 1
    return seen
