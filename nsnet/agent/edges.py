"""Dependency edges: who (user, pod or namespace) talks to which service endpoint.

An edge is keyed so that its number stays bounded on a busy node: outbound connections by the
peer's ip:port, inbound ones by our listening port and the client's ip -- never by an ephemeral
port. Pure: a snapshot in, edge observations out.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..model import Snapshot, Socket
from ..ownership import namespace_where, socket_users, socket_where
from .events import Closed

if TYPE_CHECKING:   # the store imports this module for EdgeKey
    from .store import EdgeRow

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


def edge_keys(sock: Socket, snap: Snapshot) -> list[EdgeKey]:
    """The edges one socket is evidence of (one per user it is attributed to)."""
    if sock.proto not in ("tcp", "udp") or sock.direction not in ("inbound", "outbound"):
        return []
    if sock.proto == "tcp" and sock.state not in EDGE_STATES:
        return []
    if sock.remote_port is None or sock.local_port is None:
        return []
    port = sock.remote_port if sock.direction == "outbound" else sock.local_port
    where = socket_where(sock, snap)
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

    def load(self, rows: Iterable[EdgeRow]) -> None:
        for r in rows:
            key = EdgeKey(r.uid, r.where, r.direction, r.proto, r.peer_addr, r.port)
            self.edges[key] = EdgeState(r.first_seen, r.last_seen, r.samples, r.max_concurrent)

    def update(self, observed: Counter[EdgeKey], ts: float) -> None:
        for state in self.edges.values():
            state.current = 0
        for key, count in observed.items():
            state = self.edges.get(key) or self.edges.setdefault(key, EdgeState(ts, ts))
            state.last_seen = max(state.last_seen, ts)
            state.samples += 1
            state.max_concurrent = max(state.max_concurrent, count)
            state.current = count
        horizon = ts - self.retention
        for key in [k for k, s in self.edges.items() if s.last_seen < horizon]:
            del self.edges[key]

    def since(self, ts: float) -> list[tuple[EdgeKey, EdgeState]]:
        return sorted((k, s) for k, s in self.edges.items() if s.last_seen >= ts)


Tuple = tuple[int, str, int, str, int]   # netns inode, local addr, port, remote addr, port


class Memory:
    """Who held each TCP connection in the last two samples, by namespace and 4-tuple: a
    connection seen again only when it closes keeps the user and place it was seen with."""

    def __init__(self) -> None:
        self.previous: dict[Tuple, tuple[tuple[int, ...], str]] = {}
        self.current: dict[Tuple, tuple[tuple[int, ...], str]] = {}
        self.listening: set[tuple[int, int]] = set()     # (netns inode, port)
        self.where_of_netns: dict[int, str] = {}
        self.owners_of_netns: dict[int, tuple[int, ...]] = {}   # not the host's: ambiguous

    def learn(self, snap: Snapshot) -> None:
        self.previous, self.current = self.current, {}
        self.listening = set()
        for sock in snap.sockets:
            if sock.proto != "tcp" or sock.netns is None:
                continue
            if sock.state == "LISTEN":
                self.listening.add((sock.netns, sock.local_port or 0))
            elif sock.pids:
                self.current[(sock.netns, sock.local_addr, sock.local_port or 0,
                              sock.remote_addr, sock.remote_port or 0)] = (
                    tuple(socket_users(sock, snap)), socket_where(sock, snap))
        self.where_of_netns = {}
        self.owners_of_netns = {}
        for ns in snap.namespaces.values():
            if ns.inode is None:
                continue
            if not ns.host:
                self.owners_of_netns[ns.inode] = tuple(ns.owners)
            self.where_of_netns[ns.inode] = namespace_where(ns, snap)

    def recall(self, key: Tuple) -> tuple[tuple[int, ...], str] | None:
        return self.current.get(key) or self.previous.get(key)


def closed_edges(closed: Iterable[Closed], memory: Memory) -> Counter[EdgeKey]:
    """Edges of connections the kernel reported closed (events.Closed). The kernel's destroy
    message carries no uid and no inode, so the user comes from what a sample saw of the same
    4-tuple, else from the owners of the namespace (a pod's tenant); in the host's namespace,
    where many users live, an unseen connection's user stays unknown (-1)."""
    seen: Counter[EdgeKey] = Counter()
    for event in closed:
        s = event.sock
        if not s.remote_port or not s.local_port:
            continue   # a listener or a never-connected socket closing: no edge
        key = (event.netns, s.local_addr, s.local_port, s.remote_addr, s.remote_port)
        known = memory.recall(key)
        if known is not None:
            users, where = known
        else:
            users = memory.owners_of_netns.get(event.netns, ())
            where = memory.where_of_netns.get(event.netns, f"netns:{event.netns}")
        inbound = (event.netns, s.local_port) in memory.listening
        port = s.local_port if inbound else s.remote_port
        for uid in users or (-1,):
            seen[EdgeKey(uid, where, "inbound" if inbound else "outbound", "tcp",
                         s.remote_addr, port)] += 1
    return seen
