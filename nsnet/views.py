"""The JSON documents (schema "nsnet/1") built from a snapshot: sockets, by-namespace,
by-user, by-pod.

Everything here is pure: it takes a Snapshot and returns plain dicts and lists, which the
human renderer and the JSON printer both use, so the two never disagree. Who a socket belongs
to is not decided here: nsnet.ownership says it, for every view, edge and metric alike.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from . import SCHEMA
from .model import Container, Namespace, Pod, Process, Snapshot, Socket
from .ownership import (
    namespace_pods,
    peer_pods,
    pod_order,
    process_container,
    process_pod,
    socket_containers,
    socket_pods,
    socket_service,
    socket_users,
    user_name,
)

__all__ = ["STATE_ALIASES", "SocketFilter", "by_namespace_view", "by_pod_view", "by_user_view",
           "endpoint", "normalize_state", "resolve_pod", "sockets_view"]

STATE_ALIASES = {"ESTAB": "ESTABLISHED", "SYN_RECEIVED": "SYN_RECV", "CLOSED": "CLOSE",
                 "LISTENING": "LISTEN", "UNCONNECTED": "UNCONN"}


def normalize_state(text: str) -> str:
    state = text.strip().upper().replace("-", "_")
    return STATE_ALIASES.get(state, state)


def endpoint(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def pod_ref(pod: Pod) -> dict:
    return {"uid": pod.uid, "namespace": pod.namespace, "name": pod.name}


def container_ref(c: Container) -> dict:
    return {"id": c.id, "name": c.name, "pod_uid": c.pod_uid}


def process_doc(p: Process, snap: Snapshot) -> dict:
    container = process_container(p, snap)
    pod = process_pod(p, snap)
    return {"pid": p.pid, "ppid": p.ppid, "uid": p.uid, "user": user_name(p.uid),
            "comm": p.comm, "cmdline": list(p.cmdline), "netns": p.netns,
            "netns_key": p.netns_key, "sandbox": p.sandbox, "fds_readable": p.fds_readable,
            "started": p.started,
            "container": None if container is None else {
                "id": container.id, "name": container.name, "runtime": container.runtime,
                "sandbox": container.sandbox},
            "pod": None if pod is None else {**pod_ref(pod), "qos": pod.qos}}


def namespace_doc(ns: Namespace, snap: Snapshot) -> dict:
    return {"inode": ns.inode, "key": ns.key, "host": ns.host, "pinned": list(ns.pinned),
            "found_by": ns.found_by, "pids": list(ns.pids),
            "threads": [{"pid": p, "tid": t} for p, t in ns.threads],
            "owners": list(ns.owners),
            "owner_names": {str(u): user_name(u) for u in ns.owners},
            "pods": [pod_ref(pod) for pod in namespace_pods(ns, snap)],
            "read_via": ns.read_via, "tables_read": ns.tables_read, "error": ns.error}


def socket_doc(s: Socket, snap: Snapshot) -> dict:
    return {"netns": s.netns, "netns_key": s.netns_key, "proto": s.proto, "family": s.family,
            "state": s.state, "local_addr": s.local_addr, "local_port": s.local_port,
            "remote_addr": s.remote_addr, "remote_port": s.remote_port, "inode": s.inode,
            "uid": s.uid, "users": socket_users(s, snap), "pids": list(s.pids),
            "fds": {str(p): fds for p, fds in s.fds.items()}, "direction": s.direction,
            "peer": s.peer, "peer_netns": s.peer_netns, "peer_pids": list(s.peer_pids),
            "unix_type": s.unix_type, "source": s.source,
            "pods": [pod_ref(p) for p in socket_pods(s, snap)],
            "containers": [container_ref(c) for c in socket_containers(s, snap)],
            "service": socket_service(s, snap)}


def stats_doc(snap: Snapshot) -> dict:
    doc = asdict(snap.stats)
    doc["host_netns"] = snap.host_key
    return doc


@dataclass
class SocketFilter:
    protos: frozenset[str] = frozenset()
    listening: bool = False
    state: str | None = None
    port: int | None = None
    pid: int | None = None
    netns: int | None = None

    def __call__(self, s: Socket) -> bool:
        if self.protos and s.proto not in self.protos:
            return False
        if self.listening and s.direction != "listening":
            return False
        if self.state is not None and s.state != self.state:
            return False
        if self.port is not None and self.port not in (s.local_port, s.remote_port):
            return False
        if self.pid is not None and self.pid not in s.pids:
            return False
        return self.netns is None or s.netns == self.netns


def _ns_order(ns: Namespace) -> tuple:
    # host first, then namespaces by inode; unreadable identities last
    return (not ns.host, ns.inode is None, ns.inode or 0, ns.key)


def sorted_namespaces(snap: Snapshot) -> list[Namespace]:
    return sorted(snap.namespaces.values(), key=_ns_order)


def _socket_order(s: Socket) -> tuple:
    return (s.netns is None, s.netns or 0, s.proto, s.direction != "listening",
            s.local_addr, s.local_port or 0, s.remote_addr, s.remote_port or 0, s.inode)


def filtered_sockets(snap: Snapshot, keep: SocketFilter | None = None) -> list[Socket]:
    chosen = [s for s in snap.sockets if keep is None or keep(s)]
    chosen.sort(key=_socket_order)
    return chosen


def sockets_view(snap: Snapshot, keep: SocketFilter | None = None) -> dict:
    chosen = filtered_sockets(snap, keep)
    pids = sorted({p for s in chosen for p in s.pids})
    return {"schema": SCHEMA, "view": "sockets",
            "namespaces": [namespace_doc(ns, snap) for ns in sorted_namespaces(snap)],
            "processes": [process_doc(snap.processes[p], snap) for p in pids],
            "sockets": [socket_doc(s, snap) for s in chosen],
            "stats": stats_doc(snap)}


def _holder_docs(pids: Iterable[int], snap: Snapshot) -> list[dict]:
    docs = []
    for pid in sorted(pids):
        p = snap.processes[pid]
        container = process_container(p, snap)
        docs.append({"pid": pid, "uid": p.uid, "comm": p.comm, "cmdline": list(p.cmdline),
                     "container": container.name if container else None})
    return docs


def listener_doc(s: Socket, snap: Snapshot) -> dict:
    return {"proto": s.proto, "family": s.family, "addr": s.local_addr, "port": s.local_port,
            "state": s.state, "inode": s.inode, "netns": s.netns, "pids": list(s.pids),
            "users": socket_users(s, snap), "processes": _holder_docs(s.pids, snap),
            "pods": [pod_ref(p) for p in socket_pods(s, snap)],
            "service": socket_service(s, snap)}


def _connection_groups(socks: Iterable[Socket], snap: Snapshot) -> list[dict]:
    """Connections grouped by peer: outbound by the peer's ip:port, inbound by our service
    port and the client's ip (never its ephemeral port)."""
    groups: dict[tuple, dict] = {}
    key: tuple[str, str, str, int | None, str | None, int | None]
    for s in socks:
        if s.proto == "unix" or s.direction not in ("inbound", "outbound"):
            continue
        if s.direction == "outbound":
            key = ("outbound", s.proto, s.remote_addr, s.remote_port, None, None)
        else:
            key = ("inbound", s.proto, s.remote_addr, None, s.local_addr, s.local_port)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "direction": key[0], "proto": s.proto, "peer_addr": s.remote_addr,
                "peer_port": key[3], "local_addr": key[4], "local_port": key[5],
                "peer": s.peer, "peer_netns": set(), "count": 0, "states": Counter(),
                "netns": set(), "pids": set(), "users": set(), "peer_users": set(),
                "pods": set(), "peer_pods": set(), "service": socket_service(s, snap)}
        g["count"] += 1
        g["states"][s.state] += 1
        g["netns"].add(s.netns)
        g["pids"].update(s.pids)
        g["users"].update(socket_users(s, snap))
        if s.peer_netns is not None:
            g["peer_netns"].add(s.peer_netns)
        if s.peer == "node":
            g["peer"] = "node"
        g["peer_users"].update(snap.processes[p].uid for p in s.peer_pids)
        if snap.pods:
            g["pods"].update(p.uid for p in socket_pods(s, snap))
            g["peer_pods"].update(p.uid for p in peer_pods(s, snap))
    out = []
    for g in groups.values():
        for k in ("peer_netns", "netns", "pids", "users", "peer_users"):
            g[k] = sorted(v for v in g[k] if v is not None)
        for k in ("pods", "peer_pods"):
            g[k] = [pod_ref(p) for p in sorted((snap.pods[u] for u in g[k]), key=pod_order)]
        g["states"] = dict(sorted(g["states"].items()))
        out.append(g)
    out.sort(key=lambda g: (g["direction"], -g["count"], g["peer_addr"], g["peer_port"] or 0,
                            g["local_port"] or 0))
    return out


def _counts(socks: Iterable[Socket]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in socks:
        counts[s.proto][s.state] += 1
    return {proto: dict(sorted(c.items())) for proto, c in sorted(counts.items())}


def by_namespace_view(snap: Snapshot, only_netns: int | None = None) -> dict:
    per_ns: dict[str, list[Socket]] = defaultdict(list)
    for s in snap.sockets:
        per_ns[s.netns_key].append(s)
    docs = []
    for ns in sorted_namespaces(snap):
        if only_netns is not None and ns.inode != only_netns:
            continue
        socks = sorted(per_ns.get(ns.key, []), key=_socket_order)
        doc = namespace_doc(ns, snap)
        doc["processes"] = [process_doc(snap.processes[p], snap) for p in ns.pids]
        doc["listening"] = [listener_doc(s, snap) for s in socks if s.direction == "listening"
                            and s.proto != "unix"]
        doc["unix_listening"] = [listener_doc(s, snap) for s in socks
                                 if s.direction == "listening" and s.proto == "unix"]
        doc["connections"] = _connection_groups(socks, snap)
        doc["counts"] = _counts(socks)
        doc["sockets"] = len(socks)
        docs.append(doc)
    return {"schema": SCHEMA, "view": "by-namespace", "namespaces": docs,
            "stats": stats_doc(snap)}


def by_user_view(snap: Snapshot, only_uid: int | None = None) -> dict:
    socks_of: dict[int, list[Socket]] = defaultdict(list)
    for s in snap.sockets:
        for uid in socket_users(s, snap):
            socks_of[uid].append(s)
    procs_of: dict[int, list[int]] = defaultdict(list)
    for p in snap.processes.values():
        procs_of[p.uid].append(p.pid)
    owned: dict[int, list[Namespace]] = defaultdict(list)
    for ns in sorted_namespaces(snap):
        for uid in ns.owners:
            owned[uid].append(ns)
    uids = sorted(set(socks_of) | set(procs_of) | set(owned))
    if only_uid is not None:
        uids = [u for u in uids if u == only_uid] or [only_uid]
    docs = []
    for uid in uids:
        socks = sorted(socks_of.get(uid, []), key=_socket_order)
        groups = _connection_groups(socks, snap)
        docs.append({
            "uid": uid, "name": user_name(uid),
            "namespaces": [ns.inode for ns in owned.get(uid, [])],
            "namespace_keys": [ns.key for ns in owned.get(uid, [])],
            "processes": sorted(procs_of.get(uid, [])),
            "pods": [pod_ref(pod) for pod in sorted(snap.pods.values(), key=pod_order)
                     if uid in pod.owners],
            "listening": [listener_doc(s, snap) for s in socks
                          if s.direction == "listening" and s.proto != "unix"],
            "connects_to": [g for g in groups if g["direction"] == "outbound"],
            "connected_from": [g for g in groups if g["direction"] == "inbound"],
            "sockets": len(socks)})
    return {"schema": SCHEMA, "view": "by-user", "users": docs, "stats": stats_doc(snap)}


def resolve_pod(text: str, snap: Snapshot) -> Pod | None:
    """A --pod argument: NAMESPACE/NAME, or the pod's uid."""
    if text in snap.pods:
        return snap.pods[text]
    namespace, _, name = text.partition("/")
    for pod in snap.pods.values():
        if pod.namespace == namespace and pod.name == name:
            return pod
    return None


def by_pod_view(snap: Snapshot, only: Pod | None = None) -> dict:
    """Per pod: containers, namespace(s), owners, listeners and dependencies. A pod's sockets
    are those of its own namespace plus those its processes hold elsewhere (hostNetwork)."""
    socks_of: dict[str, list[Socket]] = defaultdict(list)
    for s in snap.sockets:
        for pod in socket_pods(s, snap):
            socks_of[pod.uid].append(s)
    docs = []
    for pod in sorted(snap.pods.values(), key=pod_order):
        if only is not None and pod is not only:
            continue
        socks = sorted(socks_of.get(pod.uid, []), key=_socket_order)
        groups = _connection_groups(socks, snap)
        containers = sorted(pod.containers.values(), key=lambda c: (not c.sandbox, c.name or "", c.id))
        docs.append({
            **pod_ref(pod), "qos": pod.qos, "host_network": pod.host_network,
            "netns": [snap.namespaces[k].inode for k in pod.netns_keys if k in snap.namespaces],
            "netns_keys": list(pod.netns_keys),
            "containers": [{"id": c.id, "name": c.name, "runtime": c.runtime,
                            "sandbox": c.sandbox, "pids": list(c.pids),
                            "users": sorted({snap.processes[p].uid for p in c.pids})}
                           for c in containers],
            "pids": list(pod.pids),
            "owners": list(pod.owners),
            "owner_names": {str(u): user_name(u) for u in pod.owners},
            "listening": [listener_doc(s, snap) for s in socks
                          if s.direction == "listening" and s.proto != "unix"],
            "connects_to": [g for g in groups if g["direction"] == "outbound"],
            "connected_from": [g for g in groups if g["direction"] == "inbound"],
            "counts": _counts(socks),
            "sockets": len(socks)})
    return {"schema": SCHEMA, "view": "by-pod", "pods": docs, "stats": stats_doc(snap)}
