"""Who a socket belongs to: the holder join and every ownership rule, in one place.

The views, the dependency edges, the history and the metrics all ask here; none of them
decides ownership itself.

* Holders: a socket is joined, by socket inode, to every (pid, fd) that holds it, across all
  namespaces (a socket made in one namespace can be held by a process of another).
* Owners of a namespace: the effective uids of the processes whose ns/net it is, excluding
  sandbox holders (pods.assemble marks them); threads visiting it do not count.
* MPTCP subflows (link_subflows): a TCP subflow is joined to its connection, the MPTCP
  socket of its namespace with the same token. Every subflow carries its connection's inode
  (the kernel grafts each onto the MPTCP socket), so the holder join already gives it the
  connection's holders; one it did not is given them through the token.
* Users and pods of a socket, and how they are known (attribute(); model.EVIDENCE), the first
  rule that applies:
    holder            its holders' effective uids, and their pods (an MPTCP subflow: its
                      connection's);
    table-uid         no holder can be read (no privilege) but the socket has an inode: the
                      table's uid column is then the socket's owner (sk_uid);
    listener          unheld and accepted from a listener of its namespace (TIME_WAIT,
                      FIN_WAIT1/2, CLOSING, LAST_ACK, CLOSE_WAIT orphans, un-accepted
                      connections, SYN_RECV): the users and pods of that listener (same local
                      port, its address or a wildcard). The uid column of such sockets is the
                      kernel's placeholder 0, never used;
    namespace-owner   unheld otherwise (an outbound TIME_WAIT), in a namespace with one owner;
    namespace-owners  the same with several owners: a guess, marked as one everywhere;
  and nobody in the host's namespace, where every system user and hostNetwork pod lives. The
  agent adds `remembered` (a 4-tuple an earlier sample saw held: agent/edges.py). Every
  socket also belongs to the pod whose own namespace it lives in.
* Service: the operator's name (--services) for the service end: the peer of an outbound
  connection, our own endpoint otherwise.
* Names and places: a namespace is named `host`, `pod:<ns>/<name>` (the pod whose own
  namespace it is), `netns:<pin name>` (ip netns, CNI, docker), else `netns:<inode>`; a
  socket's place (`where`, what an edge is keyed by) is its first pod, else its namespace's
  name.
"""
from __future__ import annotations

import pwd
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

from .model import (
    HOLDER,
    LISTENER,
    NAMESPACE_OWNER,
    NAMESPACE_OWNERS,
    TABLE_UID,
    Container,
    Namespace,
    OneHolder,
    Pod,
    Process,
    Snapshot,
    Socket,
    netns_key,
)


class HolderJoin:
    """Joins sockets to the (pid, fd)s that hold them, by socket inode, batch by batch (the
    snapshot joins each namespace's sockets as its tables come in)."""

    def __init__(self, holders: dict[int, list[tuple[int, int]]]):
        self.holders = holders
        self.listed: set[int] = set()

    def attach(self, sockets: list[Socket]) -> None:
        get = self.holders.get
        listed = self.listed.add
        for sock in sockets:
            held = get(sock.inode) if sock.inode else None
            if not held:
                continue
            listed(sock.inode)
            if len(held) == 1:   # the common case: one process, one fd
                pid, fd = held[0]
                sock.pids = (pid,)
                sock.fds = OneHolder(pid, fd)
                continue
            fds: dict[int, list[int]] = defaultdict(list)
            for pid, fd in held:
                fds[pid].append(fd)
            sock.pids = sorted(fds)
            sock.fds = {pid: sorted(fds[pid]) for pid in sock.pids}

    def not_listed(self) -> int:
        """Socket fds whose socket no table of ours listed."""
        return len(self.holders) - len(self.listed)

    def unlisted(self) -> dict[int, list[tuple[int, int]]]:
        """inode -> its (pid, fd) holders, for the sockets no table of ours listed."""
        return {inode: held for inode, held in self.holders.items()
                if inode not in self.listed}


def link_subflows(sockets: list[Socket]) -> None:
    """Join each MPTCP subflow to its connection by token (Socket.mptcp_token: the sources
    that can tell set it; proc cannot, and its subflows stay plain TCP). Tokens are unique
    per namespace (the kernel's token hash rejects a duplicate); 0 is no token (a listener)."""
    connections = {(s.netns_key, s.mptcp_token): s for s in sockets
                   if s.proto == "mptcp" and s.mptcp_token}
    if not connections:
        return
    for sock in sockets:
        if sock.proto != "tcp" or not sock.mptcp_token:
            continue
        connection = connections.get((sock.netns_key, sock.mptcp_token))
        if connection is None:
            continue
        sock.mptcp_connection = connection.inode
        if not sock.pids and connection.pids:
            # not joined by inode (a kernel that does not graft it): the token says whose
            sock.pids, sock.fds = connection.pids, connection.fds


def assign_owners(namespaces: dict[str, Namespace], processes: dict[int, Process]) -> None:
    """Each namespace's owners: the uids of its member processes that are not sandboxes."""
    for ns in namespaces.values():
        ns.owners = sorted({processes[p].uid for p in ns.pids if not processes[p].sandbox})


@lru_cache(maxsize=4096)
def user_name(uid: int | None) -> str | None:
    """The name of a uid in the passwd of the system nsnet runs on (inside a container: the
    container's), or None. The numeric uid is the truth; a name is a convenience."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def resolve_user(text: str) -> int:
    """A user given by name or uid to a uid; ValueError when neither."""
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"unknown user {text!r} (give a name from this system or a "
                         "numeric uid)") from None


def socket_users(sock: Socket, snap: Snapshot) -> list[int]:
    """The uids a socket is attributed to (attribute() has set them; see the module's rules)."""
    return list(sock.users)


def _listens_on(listener: Socket, addr: str) -> bool:
    """Whether a connection to local address `addr` was accepted by this listener: the same
    address, or a wildcard (IPv4 0.0.0.0; a dual-stack [::] takes IPv4 too, shown unmapped;
    one known to be IPv6-only does not)."""
    bound = listener.local_addr
    if bound == addr:
        return True
    if bound == "::":
        return listener.v6only is not True or ":" in addr
    return bound == "0.0.0.0" and ":" not in addr


class _Attribution:
    """attribute()'s state: the listeners by (namespace, port), and shared tuples (most
    sockets of a node have one of a few user sets)."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.listeners: dict[tuple[str, int | None], list[Socket]] = defaultdict(list)
        self.unix_listeners: dict[tuple[str, str], list[Socket]] = defaultdict(list)
        self.tuples: dict[tuple, tuple] = {}
        self.by_holders: dict[tuple[object, str], tuple[tuple, tuple]] = {}
        for sock in snap.sockets:
            if sock.state == "LISTEN":
                if sock.proto == "tcp":
                    self.listeners[(sock.netns_key, sock.local_port)].append(sock)
                elif sock.proto == "unix" and sock.local_addr:
                    self.unix_listeners[(sock.netns_key, sock.local_addr)].append(sock)

    def shared(self, values: Iterable) -> tuple:
        t = tuple(sorted(set(values)))
        return self.tuples.setdefault(t, t)

    def own_pods(self, sock: Socket) -> tuple[str, ...]:
        return self.shared(self.snap.pods_of_netns.get(sock.netns_key, ()))

    def holders(self, sock: Socket) -> None:
        # Per socket of the node: the answer depends only on the holders and the namespace,
        # which most sockets share with others (a worker's connections), so it is cached.
        pids = sock.pids
        key = (pids[0] if len(pids) == 1 else tuple(pids), sock.netns_key)
        known = self.by_holders.get(key)
        if known is None:
            processes = self.snap.processes
            users = self.shared(processes[p].uid for p in pids)
            pods = set(self.snap.pods_of_netns.get(sock.netns_key, ()))
            pods.update(u for u in (processes[p].pod_uid for p in pids) if u is not None)
            known = self.by_holders[key] = (users, self.shared(pods))
        sock.users, sock.pod_uids = known
        sock.attribution = HOLDER

    def accepted_from(self, sock: Socket) -> list[Socket]:
        """The listeners an unheld inbound socket may have been accepted from."""
        if sock.proto == "unix":
            return self.unix_listeners.get((sock.netns_key, sock.local_addr), [])
        return [lst for lst in self.listeners.get((sock.netns_key, sock.local_port), ())
                if _listens_on(lst, sock.local_addr)]

    def unheld(self, sock: Socket) -> None:
        snap = self.snap
        own = self.own_pods(sock)
        if sock.inode and sock.uid is not None:
            # held by processes we may not read: the socket's own uid is in the table
            sock.users, sock.pod_uids, sock.attribution = (sock.uid,), own, TABLE_UID
            return
        inbound = sock.direction == "inbound" or (
            sock.proto == "unix" and sock.state == "ESTABLISHED" and sock.local_addr != "")
        listeners = [lst for lst in self.accepted_from(sock) if lst.users] if inbound else []
        if listeners:
            sock.users = self.shared(u for lst in listeners for u in lst.users)
            sock.pod_uids = self.shared([*own, *(p for lst in listeners for p in lst.pod_uids)])
            sock.attribution = LISTENER
            return
        sock.pod_uids = own
        ns = snap.namespaces.get(sock.netns_key)
        if sock.proto == "unix" or sock.proto == "netlink" or ns is None or ns.host \
                or not ns.owners:
            # nobody to say: the host's namespace has every system user; an unheld netlink
            # socket is the kernel's own end of its protocol in the namespace
            return
        sock.users = self.shared(ns.owners)
        sock.attribution = NAMESPACE_OWNER if len(ns.owners) == 1 else NAMESPACE_OWNERS


def attribute(snap: Snapshot) -> None:
    """Set every socket's users, pods and the evidence for them (the module's rules)."""
    work = _Attribution(snap)
    unheld = []
    for sock in snap.sockets:
        if sock.pids:
            work.holders(sock)
        else:
            unheld.append(sock)
    # listeners first: an unheld accepted socket takes what its listener has
    unheld.sort(key=lambda s: s.state != "LISTEN")
    for sock in unheld:
        work.unheld(sock)


def pod_order(pod: Pod) -> tuple[bool, str, str, str]:
    return (pod.namespace is None, pod.namespace or "", pod.name or "", pod.uid)


def _pods_by_uid(uids: set[str], snap: Snapshot) -> list[Pod]:
    # a uid remembered from an earlier sample may name a pod that is gone by now
    return sorted((snap.pods[u] for u in uids if u in snap.pods), key=pod_order)


def _pods_of(netns_pods: Iterable[str], pids: Iterable[int], snap: Snapshot) -> list[Pod]:
    """The pods whose own namespace is the socket's, and the pods of the given holders."""
    uids = set(netns_pods)
    for pid in pids:
        uid = snap.processes[pid].pod_uid
        if uid is not None:
            uids.add(uid)
    return _pods_by_uid(uids, snap)


def process_container(p: Process, snap: Snapshot) -> Container | None:
    return snap.containers.get(p.container_id) if p.container_id else None


def process_pod(p: Process, snap: Snapshot) -> Pod | None:
    return snap.pods.get(p.pod_uid) if p.pod_uid else None


def namespace_pods(ns: Namespace, snap: Snapshot) -> list[Pod]:
    """Pods with a process in this namespace (for the host's: its hostNetwork pods)."""
    uids = {u for u in (snap.processes[p].pod_uid for p in ns.pids) if u is not None}
    return _pods_by_uid(uids, snap)


def socket_pods(sock: Socket, snap: Snapshot) -> list[Pod]:
    """The pods a socket is attributed to (attribute(); see the module's rules)."""
    return _pods_by_uid(set(sock.pod_uids), snap) if sock.pod_uids else []


def peer_pods(sock: Socket, snap: Snapshot) -> list[Pod]:
    """Pods on the other end of a connection inside this node."""
    if not snap.pods:
        return []
    own = snap.pods_of_netns.get(netns_key(sock.peer_netns), ()) \
        if sock.peer_netns is not None else ()
    return _pods_of(own, sock.peer_pids, snap)


def socket_containers(sock: Socket, snap: Snapshot) -> list[Container]:
    ids = {c for c in (snap.processes[p].container_id for p in sock.pids) if c is not None}
    return [snap.containers[i] for i in sorted(ids)]


def socket_service(sock: Socket, snap: Snapshot) -> str | None:
    """The operator's name for the service side: the peer of an outbound connection, our
    own endpoint otherwise."""
    if not snap.services or sock.proto not in ("tcp", "udp"):
        return None
    if sock.direction == "outbound":
        # a Service VIP's name (the operator named the VIP), else its backend's
        named = snap.services.name(sock.remote_addr, sock.remote_port)
        if named is None and sock.backend is not None:
            named = snap.services.name(*sock.backend)
        return named
    return snap.services.name(sock.local_addr, sock.local_port)


def pod_where(pod: Pod) -> str:
    """A pod's place: its name when the kubelet's log tree gave one, else its uid."""
    return f"pod:{pod.namespace}/{pod.name}" if pod.namespace and pod.name else f"pod:{pod.uid}"


def namespace_name(ns: Namespace, snap: Snapshot, pins_taken: dict[str, int]) -> str:
    """host, pod:<ns>/<name>, netns:<pin name> when no other namespace's pin has that name,
    else netns:<inode> (a stand-in key when even that is unknown)."""
    if ns.host:
        return "host"
    pods = snap.pods_of_netns.get(ns.key)
    if pods:
        return pod_where(snap.pods[pods[0]])
    for path in ns.pinned:
        base = path.rstrip("/").rpartition("/")[2]
        if base and pins_taken.get(base) == 1:
            return f"netns:{base}"
    return f"netns:{ns.inode}" if ns.inode is not None else ns.key


def name_namespaces(snap: Snapshot) -> None:
    """Give every namespace its name (unique in the snapshot: a pin name two namespaces
    share names neither)."""
    taken: dict[str, int] = defaultdict(int)
    for ns in snap.namespaces.values():
        for base in {p.rstrip("/").rpartition("/")[2] for p in ns.pinned}:
            taken[base] += 1
    for ns in snap.namespaces.values():
        ns.name = namespace_name(ns, snap, taken)


def netns_name(inode: int | None, snap: Snapshot) -> str | None:
    """The name of the namespace of that inode in this snapshot (None: not known here)."""
    if inode is None:
        return None
    ns = snap.namespaces.get(netns_key(inode))
    return ns.name if ns is not None else f"netns:{inode}"


def namespace_where(ns: Namespace, snap: Snapshot) -> str:
    """A namespace's place: its name (the pod whose own namespace it is, the host, a pin)."""
    return ns.name or namespace_name(ns, snap, {})


def socket_where(sock: Socket, snap: Snapshot) -> str:
    """A socket's place: its first pod, else its namespace's name."""
    pods = socket_pods(sock, snap)
    if pods:
        return pod_where(pods[0])
    ns = snap.namespaces.get(sock.netns_key)
    if ns is not None:
        return namespace_where(ns, snap)
    return f"netns:{sock.netns}" if sock.netns is not None else sock.netns_key
