"""Dependency edges: who (user, pod or namespace) talks to which service endpoint, how many
connections are open, how many opened and closed, and how the user is known.

An edge is keyed so that its number stays bounded on a busy node: outbound connections by the
peer's ip:port, inbound ones by our listening port and the client's ip -- never by an ephemeral
port. Pure: snapshots and destroy events in, edge observations out.

Counts mean connections: `open` are sockets in an open state now (model.OPEN_STATES), `closed`
those closed recently (TIME_WAIT and the other closing states) -- evidence that the edge was
used, never counted as open. Across samples (Memory), a 4-tuple open now that no earlier
sample saw is a connection opened; one that ended (a destroy event, or, without events, a
4-tuple newly in a closing state) a connection closed: the counters behind rate() in PromQL.

Traffic and health (where the source gives TCP_INFO: netlink, pidfd, auto; proc does not):
bytes each way and retransmitted segments are counted per connection as the difference
between two samples' tcpi_bytes_acked / tcpi_bytes_received / tcpi_total_retrans (a
connection first seen counts everything it has moved since it opened), plus, for a
connection that closed, the difference to its destroy event's final tcp_info (the kernel
puts INET_DIAG_INFO in SOCK_DESTROY messages: tests/kernel/test_edge_traffic.py measures
it). Without destroy events what a connection moved after the last sample that saw it open
is not known: the counters are then lower bounds. The rtt is the mean smoothed RTT of the
edge's connections open in the latest sample.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import field
from typing import TYPE_CHECKING

from ..model import (
    CLOSED_STATES,
    GUESSES,
    LISTENER,
    NAMESPACE_OWNER,
    NAMESPACE_OWNERS,
    OPEN_STATES,
    REMEMBERED,
    STRENGTH,
    ServiceMap,
    Snapshot,
    Socket,
    endpoint,
    netns_key,
)
from ..ownership import namespace_where, socket_where
from ..records import record
from .events import Closed

if TYPE_CHECKING:   # the store imports this module for EdgeKey
    from .store import EdgeRow

# A TCP socket in these states is evidence of a dependency: alive, being set up, or just
# closed (TIME_WAIT: a short-lived connection that ended since the last sample).
EDGE_STATES = OPEN_STATES | CLOSED_STATES
UNKNOWN_UID = -1


@record(frozen=True, slots=True, order=True)
class EdgeKey:
    uid: int                 # the user on our side (-1: unknown)
    where: str               # "pod:<ns>/<name>", "pod:<uid>", "netns:<name>" or "host"
    direction: str           # outbound | inbound
    proto: str               # tcp | udp
    peer_addr: str           # outbound: the service's ip; inbound: the client's ip
    port: int                # outbound: the service's port; inbound: our listening port
    # outbound through a Service VIP the node's netfilter translated: "vip:port" (then
    # peer_addr and port are the backend it reached: Socket.backend); "" otherwise
    via: str = ""


def service_name(services: ServiceMap, key: EdgeKey) -> str | None:
    """The operator's name for an outbound edge's service: the Service VIP's it went through
    (--services names what clients ask for), else the endpoint's it reached."""
    if key.direction != "outbound":
        return None
    if key.via:
        addr, _, port = key.via.rpartition(":")
        named = services.name(addr.strip("[]"), int(port)) if port.isdigit() else None
        if named is not None:
            return named
    return services.name(key.peer_addr, key.port)


def stronger(a: str | None, b: str | None) -> str | None:
    """The stronger of two kinds of evidence (model.EVIDENCE; None: no user known)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if STRENGTH[a] <= STRENGTH[b] else b


@record(slots=True)
class Seen:
    """What one sample saw of an edge."""
    open: int = 0            # connections open now
    closed: int = 0          # connections closed recently (still in a closing state)
    opened: int = 0          # connections opened since the previous sample (Memory)
    ended: int = 0           # connections that ended since the previous sample
    evidence: str | None = None   # the strongest evidence for the edge's user
    # observations whose direction came from the ports alone (no listener known): an
    # accepted connection whose listener went away, a destroy event nothing else told of;
    # and those whose direction was known (bookkeeping: not part of what a Seen equals)
    inferred: int = field(default=0, compare=False)
    exact: int = field(default=0, compare=False)
    # traffic (TCP_INFO): bytes sent (and acknowledged) and received, segments
    # retransmitted -- since the previous sample in the agent, over the connections' lives
    # in one snapshot; the sum and number of smoothed RTTs of the connections open now
    sent: int = field(default=0, compare=False)
    received: int = field(default=0, compare=False)
    retransmits: int = field(default=0, compare=False)
    rtt_sum_us: int = field(default=0, compare=False)
    rtt_count: int = field(default=0, compare=False)
    measured: bool = field(default=False, compare=False)   # TCP_INFO told any of these

    def add(self, other: Seen) -> None:
        self.open += other.open
        self.closed += other.closed
        self.opened += other.opened
        self.ended += other.ended
        self.evidence = stronger(self.evidence, other.evidence)
        self.inferred += other.inferred
        self.exact += other.exact
        self.sent += other.sent
        self.received += other.received
        self.retransmits += other.retransmits
        self.rtt_sum_us += other.rtt_sum_us
        self.rtt_count += other.rtt_count
        self.measured = self.measured or other.measured

    def moved(self, counters: Counters, before: Counters | None) -> None:
        """One connection's traffic since `before` (its counters in an earlier sample; None,
        or larger than now -- another connection on the same 4-tuple -- counts them all)."""
        self.measured = True
        if before is None or counters[0] < before[0] or counters[1] < before[1] or \
                counters[2] < before[2]:
            before = (0, 0, 0, 0)
        self.sent += counters[0] - before[0]
        self.received += counters[1] - before[1]
        self.retransmits += counters[2] - before[2]

    @property
    def rtt_us(self) -> float | None:
        """The mean smoothed RTT of the edge's connections open now, when measured."""
        return self.rtt_sum_us / self.rtt_count if self.rtt_count else None

    @property
    def direction_inferred(self) -> bool:
        """Only the ports said which end served: a guess, shown as one."""
        return self.inferred > 0 and self.exact == 0

    def saw(self, inferred: bool) -> None:
        if inferred:
            self.inferred += 1
        else:
            self.exact += 1


Observed = dict[EdgeKey, Seen]
# a TCP connection's tcpi_bytes_acked, tcpi_bytes_received, tcpi_total_retrans, tcpi_rtt
# (Socket.traffic's order; the rtt is no counter, carried along)
Counters = tuple[int, int, int, int]


def counters(sock: Socket) -> Counters | None:
    """What a TCP socket has moved, from its TCP_INFO: Socket.traffic (what the agent asks),
    else the detail (-i); None: not asked, a source without TCP_INFO (proc), or a kernel too
    old for the byte counters (Linux < 4.2)."""
    if sock.traffic is not None:
        return sock.traffic
    tcp = sock.detail.tcp if sock.detail is not None else None
    if tcp is None or tcp.bytes_acked is None or tcp.bytes_received is None:
        return None
    return (tcp.bytes_acked, tcp.bytes_received, tcp.total_retrans, tcp.rtt_us)


def edge_keys(sock: Socket, snap: Snapshot) -> list[EdgeKey]:
    """The edges one socket is evidence of (one per user it is attributed to)."""
    if sock.proto not in ("tcp", "udp") or sock.direction not in ("inbound", "outbound"):
        return []
    if sock.proto == "tcp" and sock.state not in EDGE_STATES:
        return []
    if sock.remote_port is None or sock.local_port is None:
        return []
    direction = "inbound" if direction_inferred(sock) else sock.direction
    where = socket_where(sock, snap)
    if direction != "outbound":
        addr, port, via = sock.remote_addr, sock.local_port, ""
    elif sock.backend is not None:
        (addr, port), via = sock.backend, endpoint(sock.remote_addr, sock.remote_port)
    else:
        addr, port, via = sock.remote_addr, sock.remote_port, ""
    return [EdgeKey(uid, where, direction, sock.proto, addr, port, via)
            for uid in (sock.users or (UNKNOWN_UID,))]


def direction_inferred(sock: Socket) -> bool:
    """A connection classified outbound because no listener is at its port now, whose other
    end's port only is an ephemeral one: the server end of a connection whose listener went
    away. Taken as inbound (keyed by the other end's ephemeral port, each such connection
    would be an edge of its own), and marked as inferred."""
    return sock.direction == "outbound" and _ephemeral(sock.remote_port) and \
        not _ephemeral(sock.local_port)


def observe(snap: Snapshot) -> Observed:
    """Every edge seen in a snapshot: its open and recently closed connections, and the
    strongest evidence for its user."""
    seen: Observed = {}
    for sock in snap.sockets:
        for key in edge_keys(sock, snap):
            edge = seen.get(key)
            if edge is None:
                edge = seen[key] = Seen()
            if sock.state in CLOSED_STATES:
                edge.closed += 1
            else:
                edge.open += 1
            edge.evidence = stronger(edge.evidence, sock.attribution)
            edge.saw(direction_inferred(sock))
    return seen


Server = tuple[int, str]          # (uid, where) of a service's listening end
Servers = dict["EdgeKey", set[Server]]


def servers(snap: Snapshot) -> Servers:
    """Who serves each outbound edge's service, as this snapshot knows it exactly: the users
    and place of the listening (or bound UDP) socket on the service's port in the namespace
    the connection's other end is in (classify found it: the same namespace for loopback
    and same-namespace peers, peer_netns for another one of this node)."""
    listeners: dict[tuple[str, str, int], list[Socket]] = {}
    for sock in snap.sockets:
        if sock.direction == "listening" and sock.local_port is not None:
            listeners.setdefault((sock.netns_key, sock.proto, sock.local_port), []).append(sock)
    found: Servers = {}
    for sock in snap.sockets:
        if sock.direction != "outbound" or sock.remote_port is None:
            continue
        if sock.peer == "local":
            there = sock.netns_key
        elif sock.peer_netns is not None:
            there = netns_key(sock.peer_netns)
        else:
            continue
        port = sock.backend[1] if sock.backend is not None else sock.remote_port
        serving = {(uid, socket_where(listener, snap))
                   for listener in listeners.get((there, sock.proto, port), ())
                   for uid in listener.users}
        if serving:
            for key in edge_keys(sock, snap):
                found.setdefault(key, set()).update(serving)
    return found


@record(slots=True)
class EdgeState:
    first_seen: float
    last_seen: float
    samples: int = 0
    max_concurrent: int = 0   # most connections open at once
    current: int = 0          # connections open in the latest sample (0: not seen in it)
    closed: int = 0           # connections closed recently, in the latest sample
    evidence: str | None = None   # the strongest evidence seen for the edge's user
    opened_total: int = 0     # connections seen opening since this agent started
    closed_total: int = 0     # connections seen ending since this agent started
    # which end served was only ever inferred from the ports (Seen.direction_inferred)
    direction_inferred: bool = False
    # traffic (TCP_INFO; Seen): totals since this agent started (one snapshot: over the
    # lives of the connections open now); measured False: the source never told them
    sent_total: int = 0
    received_total: int = 0
    retransmits_total: int = 0
    rtt_us: float | None = None     # mean smoothed RTT of its connections open, latest sample
    measured: bool = False

    @property
    def guess(self) -> bool:
        """The edge's user is a guess (model.GUESSES)."""
        return self.evidence in GUESSES


def state_of(seen: Seen, ts: float) -> EdgeState:
    """An edge as one sample saw it (a live `nsnet deps`)."""
    return EdgeState(ts, ts, 1, max(seen.open, int(bool(seen.closed or seen.ended))),
                     seen.open, seen.closed, seen.evidence, seen.opened, seen.ended,
                     seen.direction_inferred, seen.sent, seen.received, seen.retransmits,
                     seen.rtt_us, seen.measured)


class EdgeBook:
    """The agent's edges in memory (loaded from the history at start), for /metrics and the
    API. Bounded like the store: edges older than the retention are dropped."""

    def __init__(self, retention: float):
        self.retention = retention
        self.edges: dict[EdgeKey, EdgeState] = {}
        self.version = 0     # changes whenever the edges do

    def load(self, rows: Iterable[EdgeRow]) -> None:
        self.version += 1
        for r in rows:
            key = EdgeKey(r.uid, r.where, r.direction, r.proto, r.peer_addr, r.port, r.via)
            self.edges[key] = EdgeState(r.first_seen, r.last_seen, r.samples, r.max_concurrent,
                                        evidence=r.evidence,
                                        direction_inferred=bool(r.direction_inferred))

    def update(self, observed: Observed, ts: float) -> None:
        self.version += 1    # what was rendered of the edges (/metrics) is stale now
        for state in self.edges.values():
            state.current = state.closed = 0
            state.rtt_us = None
        for key, seen in observed.items():
            known = self.edges.get(key)
            if known is None:
                state = self.edges[key] = EdgeState(
                    ts, ts, direction_inferred=seen.direction_inferred)
            else:   # known once, known: an exact sight of the edge ends the guess
                state = known
                state.direction_inferred = state.direction_inferred and seen.direction_inferred
            state.last_seen = max(state.last_seen, ts)
            state.samples += 1
            # a connection seen only closed (TIME_WAIT, a destroy event) was open once
            state.max_concurrent = max(state.max_concurrent, seen.open,
                                       int(bool(seen.closed or seen.ended)))
            state.current, state.closed = seen.open, seen.closed
            state.evidence = stronger(state.evidence, seen.evidence)
            state.opened_total += seen.opened
            state.closed_total += seen.ended
            if seen.measured:
                state.measured = True
                state.sent_total += seen.sent
                state.received_total += seen.received
                state.retransmits_total += seen.retransmits
                state.rtt_us = seen.rtt_us
        horizon = ts - self.retention
        for key in [k for k, s in self.edges.items() if s.last_seen < horizon]:
            del self.edges[key]

    def since(self, ts: float) -> list[tuple[EdgeKey, EdgeState]]:
        return sorted(((k, s) for k, s in self.edges.items() if s.last_seen >= ts),
                      key=lambda kv: kv[0])


Tuple = tuple[int, str, int, str, int]   # netns inode, local addr, port, remote addr, port


@record(frozen=True, slots=True)
class Held:
    """Who held a connection when a sample saw it, and where."""
    users: tuple[int, ...]
    pod_uids: tuple[str, ...]
    where: str
    backend: tuple[str, int] | None = None   # Socket.backend: where a Service VIP led


@record
class _SampleTuples:
    held: dict[Tuple, Held] = field(default_factory=dict)    # held TCP connections
    # TCP 4-tuples in an open state, and in a closing state, each with its TCP_INFO
    # counters when read, packed (one table for both: on a 400-namespace node these are 50k
    # each). Packed into one int made here rather than keeping the snapshot's own tuple:
    # what is kept for two samples should not be objects the parse made among the sockets.
    open: dict[Tuple, int | None] = field(default_factory=dict)
    closing: dict[Tuple, int | None] = field(default_factory=dict)

    def moved(self, key: Tuple) -> Counters | None:
        """A connection's counters as this sample saw them (the rtt left out: 0)."""
        packed = self.open.get(key) or self.closing.get(key)
        if packed is None:
            return None
        return (packed & _U64, packed >> 64 & _U64, packed >> 128, 0)


_U64 = (1 << 64) - 1


def _packed(moved: Counters | None) -> int | None:
    """Counters as one int: bytes_acked, bytes_received (u64 each), total_retrans above."""
    return None if moved is None else moved[0] | moved[1] << 64 | moved[2] << 128


def _tuple(sock: Socket) -> Tuple | None:
    if sock.proto != "tcp" or sock.netns is None:
        return None
    return (sock.netns, sock.local_addr, sock.local_port or 0, sock.remote_addr,
            sock.remote_port or 0)


class Memory:
    """What the last two samples saw of each TCP connection, by namespace and 4-tuple: who
    held it (a connection seen again unheld -- TIME_WAIT -- or only when it closes keeps the
    user and place it was seen with: `remembered`), and which were open or closing (the
    opened/closed counters). learn() takes each sample in turn."""

    def __init__(self) -> None:
        self.samples = 0                 # learned so far: the first has nothing before it
        self.previous = _SampleTuples()
        self.current = _SampleTuples()
        # (netns inode, port) -> who listens there, in the latest sample
        self.listening: dict[tuple[int, int], Held] = {}
        # ... and in the last LISTENED_SAMPLES samples: a connection closed after its
        # listener (a server that stopped) was still accepted there
        self.listened: dict[tuple[int, int], tuple[int, Held]] = {}
        self.where_of_netns: dict[int, str] = {}
        self.owners_of_netns: dict[int, tuple[int, ...]] = {}   # not the host's: ambiguous

    def learn(self, snap: Snapshot) -> None:
        self.samples += 1
        self.previous, self.current = self.current, _SampleTuples()
        helds: dict[Held, Held] = {}     # this sample's, by value
        self.listening = {}
        for sock in snap.sockets:
            key = _tuple(sock)
            if key is None:
                continue
            if sock.state == "LISTEN":
                self.listening[(key[0], key[2])] = Held(sock.users, sock.pod_uids,
                                                        socket_where(sock, snap))
            else:
                self._learn_connection(sock, key, snap, helds)
        for port, held in self.listening.items():
            self.listened[port] = (self.samples, held)
        if len(self.listened) > len(self.listening):
            self.listened = {k: v for k, v in self.listened.items()
                             if self.samples - v[0] < LISTENED_SAMPLES}
        self.where_of_netns = {}
        self.owners_of_netns = {}
        for ns in snap.namespaces.values():
            if ns.inode is None:
                continue
            if not ns.host:
                self.owners_of_netns[ns.inode] = tuple(ns.owners)
            self.where_of_netns[ns.inode] = namespace_where(ns, snap)

    def _learn_connection(self, sock: Socket, key: Tuple, snap: Snapshot,
                          helds: dict[Held, Held]) -> None:
        moved = _packed(counters(sock)) \
            if sock.traffic is not None or sock.detail is not None else None
        if sock.state in OPEN_STATES:
            self.current.open[key] = moved
        elif sock.state in CLOSED_STATES:
            self.current.closing[key] = moved
        if sock.pids:
            # one Held per distinct holder: a pod's connections share theirs (fewer objects to
            # keep for two samples, and to pack between them: agent/sampler.py)
            held = Held(sock.users, sock.pod_uids, socket_where(sock, snap), sock.backend)
            self.current.held[key] = helds.setdefault(held, held)

    def moved_before(self, key: Tuple) -> Counters | None:
        """A connection's counters in the latest sample that saw them (the current one, then
        the previous): where a destroy event's final counters are counted from."""
        return self.current.moved(key) or self.previous.moved(key)

    def recall(self, key: Tuple) -> Held | None:
        return self.current.held.get(key) or self.previous.held.get(key)

    def listener(self, netns: int, port: int) -> Held | None:
        """Who listens, or listened in a recent sample, on that port of that namespace."""
        held = self.listening.get((netns, port))
        if held is None:
            recent = self.listened.get((netns, port))
            held = recent[1] if recent is not None else None
        return held

    def remember(self, snap: Snapshot) -> None:
        """Give an unheld connection of this snapshot the holder an earlier sample saw with
        the same 4-tuple (before learn(snap): `current` is then the previous sample)."""
        for sock in snap.sockets:
            if sock.pids or sock.state == "LISTEN" or \
                    STRENGTH.get(sock.attribution or "", len(STRENGTH)) <= STRENGTH[REMEMBERED]:
                continue
            key = _tuple(sock)
            held = self.recall(key) if key is not None else None
            if held is not None and held.users:
                sock.users, sock.attribution = held.users, REMEMBERED
                # only pods still on the node: one deleted since is no place to name
                alive = {uid for uid in held.pod_uids if uid in snap.pods}
                sock.pod_uids = tuple(sorted(set(sock.pod_uids) | alive))


def transitions(snap: Snapshot, memory: Memory, with_events: bool) -> Observed:
    """Connections opened (open now, unseen by the previous sample) and, without destroy
    events, closed (newly in a closing state) since the previous sample, by edge. Call after
    memory.learn(snap). The first sample has nothing before it: what it finds open was not
    seen opening."""
    seen: Observed = {}
    if memory.samples < 2:
        return seen
    before, now = memory.previous, memory.current
    for sock in snap.sockets:
        key = _tuple(sock)
        if key is None:
            continue
        opened = key in now.open and key not in before.open and key not in before.closing
        ended = not with_events and key in now.closing and key not in before.closing
        if opened or ended:
            for edge in edge_keys(sock, snap):
                s = seen.setdefault(edge, Seen())
                s.opened += opened
                s.ended += ended
                s.saw(direction_inferred(sock))
    return seen


def traffic(snap: Snapshot, before: _SampleTuples | None = None) -> Observed:
    """What each edge's connections moved since `before` (the previous sample's counters,
    Memory.previous after learn(); None in a single snapshot: over their lives), and the
    RTT of those open now. Only sockets whose TCP_INFO was read count."""
    earlier = before.moved if before is not None else _nothing
    seen: Observed = {}
    for sock in snap.sockets:
        if sock.proto != "tcp" or (sock.traffic is None and sock.detail is None):
            continue
        moved = counters(sock)
        key = _tuple(sock)
        if moved is None or key is None:
            continue
        for edge in edge_keys(sock, snap):
            s = seen.setdefault(edge, Seen())
            s.moved(moved, earlier(key))
            if sock.state in OPEN_STATES:
                s.rtt_sum_us += moved[3]
                s.rtt_count += 1
    return seen


def _nothing(key: Tuple) -> None:
    return None


def closed_edges(closed: Iterable[Closed], memory: Memory) -> Observed:
    """Edges of connections the kernel reported closed (events.Closed), after memory.learn()
    of the sample that drained them. The kernel's destroy message carries no uid and no
    inode, so the user is what a sample saw of the same 4-tuple (remembered), else the
    listener's when it was accepted on a port that is listening (listener: by the port only --
    the event has no socket to look at), else the owners of its namespace (one: namespace-owner;
    several: a guess); in the host's namespace an unseen connection's user stays unknown
    (-1). A connection no sample saw open was also opened since the previous sample."""
    seen: Observed = {}
    for event in closed:
        s = event.sock
        if not s.remote_port or not s.local_port:
            continue   # a listener or a never-connected socket closing: no edge
        key = (event.netns, s.local_addr, s.local_port, s.remote_addr, s.remote_port)
        listener = memory.listener(event.netns, s.local_port)
        held = memory.recall(key)
        # Accepted, when its port is (or was lately) listening; else, with nothing known of
        # it, when only the other end's port is an ephemeral one (the client's): keyed by the
        # other end's ephemeral port, each such connection would be an edge of its own.
        inbound = listener is not None or (
            held is None and _ephemeral(s.remote_port) and not _ephemeral(s.local_port))
        evidence: str | None
        if held is not None:
            users, where, evidence = held.users, held.where, REMEMBERED
        elif listener is not None and listener.users:
            users, where, evidence = listener.users, listener.where, LISTENER
        else:
            users = memory.owners_of_netns.get(event.netns, ())
            where = memory.where_of_netns.get(event.netns, f"netns:{event.netns}")
            evidence = NAMESPACE_OWNER if len(users) == 1 else NAMESPACE_OWNERS
        if not users:
            evidence = None
        was_open = key in memory.previous.open or key in memory.current.open
        final = counters(s)      # the destroy message's tcp_info: what it moved in all
        peer, port, via = s.remote_addr, s.local_port if inbound else s.remote_port, ""
        if not inbound and held is not None and held.backend is not None:
            # a Service VIP's connection: the backend a sample saw it reach
            (peer, port), via = held.backend, endpoint(s.remote_addr, s.remote_port)
        for uid in users or (UNKNOWN_UID,):
            edge = seen.setdefault(EdgeKey(uid, where, "inbound" if inbound else "outbound",
                                           "tcp", peer, port, via), Seen())
            edge.ended += 1
            edge.opened += not was_open
            if final is not None:
                edge.moved(final, memory.moved_before(key))
            edge.evidence = stronger(edge.evidence, evidence)
            # with neither a listener nor a sample's sight of it, only the ports said which
            # end served
            edge.saw(listener is None and held is None)
    return seen


# Linux's default net.ipv4.ip_local_port_range: the ports connect() picks for a client.
EPHEMERAL_PORTS = range(32768, 61000)
LISTENED_SAMPLES = 20    # how long a listener that went away is remembered, in samples


def _ephemeral(port: int | None) -> bool:
    return port is not None and port in EPHEMERAL_PORTS


def merge(into: Observed, more: Observed) -> Observed:
    for key, seen in more.items():
        edge = into.get(key)
        if edge is None:
            into[key] = seen
        else:
            edge.add(seen)
    return into
