"""Who a socket belongs to: the holder join and every ownership rule, in one place.

The views, the dependency edges, the history and the metrics all ask here; none of them
decides ownership itself.

* Holders: a socket is joined, by socket inode, to every (pid, fd) that holds it, across all
  namespaces (a socket made in one namespace can be held by a process of another).
* Owners of a namespace: the effective uids of the processes whose ns/net it is, excluding
  sandbox holders (pods.assemble marks them); threads visiting it do not count.
* Users of a socket: its holders' effective uids. With no holder, the uid column of its table
  -- except TIME_WAIT/NEW_SYN_RECV mini-sockets, whose uid column the kernel always prints as
  0: those go to the owners of their namespace, and to nobody in the host's namespace, where
  every system user and hostNetwork pod lives.
* Pods of a socket: its holders' pods, and the pod whose own namespace it lives in (so an
  unheld TIME_WAIT of a pod is still that pod's).
* Service: the operator's name (--services) for the service end: the peer of an outbound
  connection, our own endpoint otherwise.
* Place (`where`): the pod, else the namespace, else the host -- what an edge is keyed by.
"""
from __future__ import annotations

import pwd
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

from .model import Container, Namespace, Pod, Process, Snapshot, Socket, netns_key

NO_UID_STATES = ("TIME_WAIT", "NEW_SYN_RECV")   # mini-sockets: the kernel prints uid 0


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
                sock.pids = [pid]
                sock.fds = {pid: [fd]}
                continue
            fds: dict[int, list[int]] = defaultdict(list)
            for pid, fd in held:
                fds[pid].append(fd)
            sock.pids = sorted(fds)
            sock.fds = {pid: sorted(fds[pid]) for pid in sock.pids}

    def not_listed(self) -> int:
        """Socket fds whose socket no table of ours listed."""
        return len(self.holders) - len(self.listed)


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
    """The uids a socket is attributed to (see the module's rules)."""
    if sock.pids:
        return sorted({snap.processes[p].uid for p in sock.pids})
    if sock.inode == 0 and sock.state in NO_UID_STATES:
        # a pod's namespace has its tenant as owner; the host's has every system user and
        # every hostNetwork pod's: there the user is unknown rather than everybody
        ns = snap.namespaces.get(sock.netns_key)
        return list(ns.owners) if ns and not ns.host else []
    return [] if sock.uid is None else [sock.uid]


def pod_order(pod: Pod) -> tuple[bool, str, str, str]:
    return (pod.namespace is None, pod.namespace or "", pod.name or "", pod.uid)


def _pods_by_uid(uids: set[str], snap: Snapshot) -> list[Pod]:
    return sorted((snap.pods[u] for u in uids), key=pod_order)


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
    """The pods a socket belongs to: its holders' pods, and the pod whose own namespace it
    lives in (which covers sockets no process holds, such as TIME_WAIT)."""
    if not snap.pods:
        return []
    return _pods_of(snap.pods_of_netns.get(sock.netns_key, ()), sock.pids, snap)


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
        return snap.services.name(sock.remote_addr, sock.remote_port)
    return snap.services.name(sock.local_addr, sock.local_port)


def pod_where(pod: Pod) -> str:
    """A pod's place: its name when the kubelet's log tree gave one, else its uid."""
    return f"pod:{pod.namespace}/{pod.name}" if pod.namespace and pod.name else f"pod:{pod.uid}"


def namespace_where(ns: Namespace, snap: Snapshot) -> str:
    """A namespace's place: the pod whose own namespace it is, else the host, else itself."""
    pods = snap.pods_of_netns.get(ns.key)
    if pods:
        return pod_where(snap.pods[pods[0]])
    if ns.host:
        return "host"
    return f"netns:{ns.inode}" if ns.inode is not None else ns.key


def socket_where(sock: Socket, snap: Snapshot) -> str:
    """A socket's place: its first pod, else its namespace (the host, or netns:<inode>)."""
    pods = socket_pods(sock, snap)
    if pods:
        return pod_where(pods[0])
    ns = snap.namespaces.get(sock.netns_key)
    if ns is not None and ns.host:
        return "host"
    return f"netns:{sock.netns}" if sock.netns is not None else sock.netns_key
