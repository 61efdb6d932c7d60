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


@dataclass(slots=True, order=False)
class EdgeState:
    first_seen: float
    last_seen: float
    samples: int = 0
    max_concurrent: int = 0
    current: int = 0          # connections in the latest sample (0: not seen in it)


class EdgeBook:
    """The agent's edges in memory (loaded from the history at start), for /metrics and the
    API. Bounded like the store: edges older than the retention are dropped."""

    def __init__(self, retention: float):
        self.retention = retention
        self.edges: dict[EdgeKey, EdgeState] = {}

    def load(self, rows) -> None:
        for r in rows:
            key = EdgeKey(r.uid, r.where, r.direction, r.proto, r.peer_addr, r.port)
            self.edges[key] = EdgeState(r.first_seen, r.last_seen, r.samples, r.max_concurrent)

    def update(self, observed: Counter[EdgeKey], ts: float) -> None:
        for state in self.edges.values():
            state.current = 0
        for key, count in observed.items():
            state = self.edges.get(key)
            if state is None:
                state = self.edges[key] = EdgeState(ts, ts)
            state.last_seen = max(state.last_seen, ts)
            state.samples += 1
            state.max_concurrent = max(state.max_concurrent, count)
            state.current = count
        horizon = ts - self.retention
        for key in [k for k, s in self.edges.items() if s.last_seen < horizon]:
            del self.edges[key]

    def since(self, ts: float) -> list[tuple[EdgeKey, EdgeState]]:
        return sorted((k, s) for k, s in self.edges.items() if s.last_seen >= ts)
