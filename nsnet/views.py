"""The JSON documents (schema "nsnet/1") built from a snapshot: sockets, by-namespace,
by-user, by-pod.

Everything here is pure: it takes a Snapshot and returns plain dicts and lists, which the
human renderer and the JSON printer both use, so the two never disagree. Who a socket belongs
to is not decided here: nsnet.ownership says it, for every view, edge and metric alike.
"""
from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from . import SCHEMA
from .model import (
    CLOSED_STATES,
    IP_PROTOS,
    OPEN_STATES,
    STRENGTH,
    Container,
    Namespace,
    NetlinkInfo,
    PackedSockets,
    PacketInfo,
    Pod,
    Process,
    Snapshot,
    Socket,
    SocketDetail,
    endpoint,
    ethertype_name,
    is_guess,
    key_inode,
    netlink_protocol_name,
)
from .ownership import (
    namespace_pods,
    netns_name,
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
from .records import record
from .sanitize import Stream

__all__ = ["STATE_ALIASES", "SocketFilter", "by_namespace_view", "by_pod_view", "by_user_view",
           "connection_state", "endpoint", "normalize_state", "resolve_netns", "resolve_pod",
           "sockets_view", "summary_view", "user_names"]

STATE_ALIASES = {"ESTAB": "ESTABLISHED", "SYN_RECEIVED": "SYN_RECV", "CLOSED": "CLOSE",
                 "LISTENING": "LISTEN", "UNCONNECTED": "UNCONN"}


def normalize_state(text: str) -> str:
    state = text.strip().upper().replace("-", "_")
    return STATE_ALIASES.get(state, state)


def pod_ref(pod: Pod) -> dict:
    return {"uid": pod.uid, "namespace": pod.namespace, "name": pod.name}


def container_ref(c: Container) -> dict:
    return {"id": c.id, "name": c.name, "pod_uid": c.pod_uid, "claimed_pod": c.claimed_pod}


def process_doc(p: Process, snap: Snapshot) -> dict:
    container = process_container(p, snap)
    pod = process_pod(p, snap)
    return {"pid": p.pid, "ppid": p.ppid, "uid": p.uid, "user": user_name(p.uid),
            "comm": p.comm, "cmdline": list(p.cmdline), "netns": p.netns,
            "netns_key": p.netns_key, "sandbox": p.sandbox, "fds_readable": p.fds_readable,
            "fds_complete": p.fds_complete,
            "started": p.started,
            "container": None if container is None else {
                "id": container.id, "name": container.name, "runtime": container.runtime,
                "sandbox": container.sandbox},
            "pod": None if pod is None else {**pod_ref(pod), "qos": pod.qos}}


def connection_state(s: Socket) -> str | None:
    """open (a live connection), closed (closed recently: the kernel still keeps its end), or
    None (not a connection: listening, unconnected, unix)."""
    if s.proto == "unix" or s.direction not in ("inbound", "outbound"):
        return None
    if s.state in OPEN_STATES:
        return "open"
    return "closed" if s.state in CLOSED_STATES else None


def namespace_doc(ns: Namespace, snap: Snapshot) -> dict:
    return {"inode": ns.inode, "key": ns.key, "name": ns.name, "host": ns.host,
            "pinned": list(ns.pinned),
            "found_by": ns.found_by, "pids": list(ns.pids),
            "threads": [{"pid": p, "tid": t} for p, t in ns.threads],
            "owners": list(ns.owners),
            "owner_names": {str(u): user_name(u) for u in ns.owners},
            "pods": [pod_ref(pod) for pod in namespace_pods(ns, snap)],
            "read_via": ns.read_via, "tables_read": ns.tables_read, "error": ns.error,
            "note": ns.note,
            "addresses": None if ns.addresses is None else [
                {"addr": a.addr, "prefix": a.prefix, "interface": a.interface}
                for a in ns.addresses]}


def socket_doc(s: Socket, snap: Snapshot) -> dict:
    ns = snap.namespaces.get(s.netns_key)
    return {"netns": s.netns, "netns_key": s.netns_key, "netns_name": ns.name if ns else None,
            "proto": s.proto, "family": s.family,
            "state": s.state, "connection": connection_state(s),
            "local_addr": s.local_addr, "local_port": s.local_port,
            "remote_addr": s.remote_addr, "remote_port": s.remote_port,
            "backend": None if s.backend is None else
            {"addr": s.backend[0], "port": s.backend[1]}, "inode": s.inode,
            "uid": s.uid, "users": socket_users(s, snap), "attribution": s.attribution,
            "guess": is_guess(s.attribution), "pids": list(s.pids),
            "fds": {str(p): fds for p, fds in s.fds.items()}, "direction": s.direction,
            "peer": s.peer, "peer_netns": s.peer_netns,
            "peer_netns_name": netns_name(s.peer_netns, snap), "peer_pids": list(s.peer_pids),
            "v6only": s.v6only, **bound_interface_doc(s, ns), "detail": detail_doc(s.detail),
            "unix_type": s.unix_type, "packet": packet_doc(s.info),
            "netlink": netlink_doc(s.info, s.pids), "mptcp": mptcp_doc(s),
            "source": s.source, "unconfirmed": s.unconfirmed,
            "pods": [pod_ref(p) for p in socket_pods(s, snap)],
            "containers": [container_ref(c) for c in socket_containers(s, snap)],
            "service": socket_service(s, snap)}


def mptcp_doc(s: Socket) -> dict | None:
    """An MPTCP connection's token; a TCP subflow's, and its connection (by inode) when
    one was found in its namespace. None: not MPTCP, or the source cannot tell (proc)."""
    if s.mptcp_token is None:
        return None
    # a listener has none (0)
    doc: dict = {"token": f"{s.mptcp_token:08x}" if s.mptcp_token else None}
    if s.proto == "tcp":
        doc["connection"] = s.mptcp_connection
    return doc


def packet_doc(info: PacketInfo | NetlinkInfo | None) -> dict | None:
    if not isinstance(info, PacketInfo):
        return None
    return {"type": info.type, "protocol": info.protocol,
            "protocol_name": ethertype_name(info.protocol), "ifindex": info.ifindex,
            "interface": info.interface}


def netlink_doc(info: PacketInfo | NetlinkInfo | None, pids: Sequence[int] = ()) -> dict | None:
    if not isinstance(info, NetlinkInfo):
        return None
    # port id 0 in a table is the kernel's socket (a process's socket is listed once bound,
    # with its own id); a held one with id 0 is a process's socket never bound (pidfd)
    return {"protocol": info.protocol, "protocol_name": netlink_protocol_name(info.protocol),
            "portid": info.portid, "groups": info.groups,
            "kernel": info.portid == 0 and not pids}


def user_names(snap: Snapshot) -> dict[str, str | None]:
    """uid -> name (None: no name in our passwd) for every uid a view may show: the renderer
    names users the same way in every table and heading."""
    uids = {p.uid for p in snap.processes.values()}
    uids.update(u for ns in snap.namespaces.values() for u in ns.owners)
    uids.update(u for s in snap.sockets for u in s.users)
    return {str(u): user_name(u) for u in sorted(u for u in uids if u is not None)}


def stats_doc(snap: Snapshot) -> dict:
    doc = asdict(snap.stats)
    doc["host_netns"] = snap.host_key
    return doc


@record
class SocketFilter:
    protos: frozenset[str] = frozenset()
    listening: bool = False
    state: str | None = None
    port: int | None = None
    pid: int | None = None
    netns: str | None = None          # a namespace key (resolve_netns)

    def __call__(self, s: Socket) -> bool:
        if self.protos and s.proto not in self.protos:
            return False
        if self.listening and s.direction != "listening":
            return False
        if self.state is not None and s.state != self.state:
            return False
        if self.port is not None and (s.proto not in IP_PROTOS
                                      or self.port not in (s.local_port, s.remote_port)):
            return False
        if self.pid is not None and self.pid not in s.pids:
            return False
        return self.netns is None or s.netns_key == self.netns


def _ns_order(ns: Namespace) -> tuple:
    # host first, then namespaces by inode; unreadable identities last
    return (not ns.host, ns.inode is None, ns.inode or 0, ns.key)


def sorted_namespaces(snap: Snapshot) -> list[Namespace]:
    return sorted(snap.namespaces.values(), key=_ns_order)


def socket_order(s: Socket) -> tuple:
    """The order the sockets view lists sockets in."""
    return (s.netns is None, s.netns or 0, s.proto, s.direction != "listening",
            s.local_addr, s.local_port or 0, s.remote_addr, s.remote_port or 0, s.inode)


def filtered_sockets(snap: Snapshot, keep: SocketFilter | None = None) -> list[Socket]:
    chosen = [s for s in snap.sockets if keep is None or keep(s)]
    chosen.sort(key=socket_order)
    return chosen


def sockets_view(snap: Snapshot, keep: SocketFilter | None = None) -> dict:
    chosen = filtered_sockets(snap, keep)
    pids = sorted({p for s in chosen for p in s.pids})
    return {"schema": SCHEMA, "view": "sockets",
            "namespaces": [namespace_doc(ns, snap) for ns in sorted_namespaces(snap)],
            "processes": [process_doc(snap.processes[p], snap) for p in pids],
            "sockets": [socket_doc(s, snap) for s in chosen],
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def sockets_stream(snap: Snapshot, keep: SocketFilter | None = None) -> dict:
    """sockets_view with its lists as Streams: each item built as it is written
    (sanitize.json_chunks), never the whole list at once. The same JSON text. Sockets kept
    packed in the view's order (model.PackedSockets) are read a chunk at a time, never all
    at once."""
    sockets = snap.sockets
    if isinstance(sockets, PackedSockets) and sockets.in_view_order:
        def chosen() -> Iterable[Socket]:
            return (s for s in sockets if keep is None or keep(s))
    else:
        listed = filtered_sockets(snap, keep)

        def chosen() -> Iterable[Socket]:
            return listed
    pids = sorted({p for s in chosen() for p in s.pids})
    return {"schema": SCHEMA, "view": "sockets",
            "namespaces": Stream(namespace_doc(ns, snap) for ns in sorted_namespaces(snap)),
            "processes": Stream(process_doc(snap.processes[p], snap) for p in pids),
            "sockets": Stream(socket_doc(s, snap) for s in chosen()),
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def _holder_docs(pids: Iterable[int], snap: Snapshot) -> list[dict]:
    docs = []
    for pid in sorted(pids):
        p = snap.processes[pid]
        container = process_container(p, snap)
        docs.append({"pid": pid, "uid": p.uid, "comm": p.comm, "cmdline": list(p.cmdline),
                     "container": container.name if container else None})
    return docs


def detail_doc(detail: SocketDetail | None) -> dict | None:
    """A socket's queues, timer and TCP internals; None when they were not asked for."""
    return None if detail is None else asdict(detail)


def bound_interface_doc(s: Socket, ns: Namespace | None) -> dict:
    """The interface a socket is bound to (SO_BINDTODEVICE, a link-local address's scope),
    by index and by its name in the socket's namespace."""
    if not s.bound_if:
        return {"bound_ifindex": None, "bound_interface": None}
    return {"bound_ifindex": s.bound_if,
            "bound_interface": ns.interface_name(s.bound_if) if ns else f"if{s.bound_if}"}


def listener_doc(s: Socket, snap: Snapshot) -> dict:
    return {"proto": s.proto, "family": s.family, "addr": s.local_addr, "port": s.local_port,
            "v6only": s.v6only, **bound_interface_doc(s, snap.namespaces.get(s.netns_key)),
            "state": s.state, "unconfirmed": s.unconfirmed, "inode": s.inode, "netns": s.netns,
            "netns_name": netns_name(s.netns, snap), "pids": list(s.pids),
            "users": socket_users(s, snap), "attribution": s.attribution,
            "processes": _holder_docs(s.pids, snap),
            "pods": [pod_ref(p) for p in socket_pods(s, snap)],
            "service": socket_service(s, snap)}


def _group_key(s: Socket) -> tuple[str, str, str, int | None, str | None, int | None, str]:
    """Outbound: by the end reached (a Service VIP's backend) and the VIP it went through."""
    if s.direction == "outbound":
        addr, port = s.service_end()
        via = endpoint(s.remote_addr, s.remote_port) if s.backend is not None else ""
        return ("outbound", s.proto, addr, port, None, None, via)
    return ("inbound", s.proto, s.remote_addr, None, s.local_addr, s.local_port, "")


def _new_group(key: tuple, s: Socket, snap: Snapshot) -> dict:
    return {"direction": key[0], "proto": s.proto, "peer_addr": key[2], "via": key[6] or None,
            "peer_port": key[3], "local_addr": key[4], "local_port": key[5],
            "peer": s.peer, "peer_netns": set(), "count": 0, "closed": 0, "states": Counter(),
            "netns": set(), "pids": set(), "users": set(), "confirmed_users": set(),
            "attribution": set(), "peer_users": set(), "pods": set(), "peer_pods": set(),
            "service": socket_service(s, snap)}


def _connection_groups(socks: Iterable[Socket], snap: Snapshot) -> list[dict]:
    """Connections grouped by peer: outbound by the peer's ip:port, inbound by our service
    port and the client's ip (never its ephemeral port). `count` is the open connections,
    `closed` those closed recently (TIME_WAIT and the other closing states); `guessed_users`
    the users known only by a guess (model.GUESSES)."""
    groups: dict[tuple, dict] = {}
    for s in socks:
        state = connection_state(s)
        if s.proto == "unix" or s.direction not in ("inbound", "outbound"):
            continue
        key = _group_key(s)
        g = groups.get(key)
        if g is None:
            g = groups[key] = _new_group(key, s, snap)
        g["count" if state == "open" else "closed"] += state is not None
        g["states"][s.state] += 1
        g["netns"].add(s.netns)
        g["pids"].update(s.pids)
        g["users"].update(s.users)
        if s.attribution is not None:
            g["attribution"].add(s.attribution)
            if not is_guess(s.attribution):
                g["confirmed_users"].update(s.users)
        if s.peer_netns is not None:
            g["peer_netns"].add(s.peer_netns)
        if s.peer == "node":
            g["peer"] = "node"
        g["peer_users"].update(snap.processes[p].uid for p in s.peer_pids)
        if snap.pods:
            g["pods"].update(s.pod_uids)
            g["peer_pods"].update(p.uid for p in peer_pods(s, snap))
    return sorted((_finish_group(g, snap) for g in groups.values()),
                  key=lambda g: (g["direction"], -g["count"], -g["closed"], g["peer_addr"],
                                 g["peer_port"] or 0, g["local_port"] or 0))


def _finish_group(g: dict, snap: Snapshot) -> dict:
    for k in ("peer_netns", "netns", "pids", "users", "peer_users"):
        g[k] = sorted(v for v in g[k] if v is not None)
    g["guessed_users"] = sorted(set(g["users"]) - g.pop("confirmed_users"))
    g["attribution"] = sorted(g["attribution"], key=STRENGTH.__getitem__)
    g["peer_names"] = [netns_name(n, snap) for n in g["peer_netns"]]
    g["netns_names"] = [netns_name(n, snap) for n in g["netns"]]
    for k in ("pods", "peer_pods"):
        g[k] = [pod_ref(p) for p in sorted((snap.pods[u] for u in g[k]), key=pod_order)]
    g["states"] = dict(sorted(g["states"].items()))
    return g


# The namespace, user and pod views count every kind `nsnet sockets` shows unasked: all but
# netlink (the kernel's own in every namespace, a few per daemon; stats.sockets_by_kind
# counts them all).
UNCOUNTED_KINDS = frozenset({"netlink"})


def counted_sockets(snap: Snapshot) -> Iterable[Socket]:
    return (s for s in snap.sockets if s.proto not in UNCOUNTED_KINDS)


def _counts(socks: Iterable[Socket]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in socks:
        counts[s.proto][s.state] += 1
    return {proto: dict(sorted(c.items())) for proto, c in sorted(counts.items())}


def by_namespace_view(snap: Snapshot, only: Namespace | None = None) -> dict:
    per_ns: dict[str, list[Socket]] = defaultdict(list)
    for s in counted_sockets(snap):
        per_ns[s.netns_key].append(s)
    docs = []
    for ns in sorted_namespaces(snap):
        if only is not None and ns is not only:
            continue
        socks = sorted(per_ns.get(ns.key, []), key=socket_order)
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
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def by_user_view(snap: Snapshot, only_uid: int | None = None) -> dict:
    socks_of: dict[int, list[Socket]] = defaultdict(list)
    for s in counted_sockets(snap):
        for uid in s.users:
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
        socks = sorted(socks_of.get(uid, []), key=socket_order)
        groups = _connection_groups(socks, snap)
        docs.append({
            "uid": uid, "name": user_name(uid),
            "namespaces": [ns.inode for ns in owned.get(uid, [])],
            "namespace_keys": [ns.key for ns in owned.get(uid, [])],
            "namespace_names": [ns.name for ns in owned.get(uid, [])],
            "processes": sorted(procs_of.get(uid, [])),
            "pods": [pod_ref(pod) for pod in sorted(snap.pods.values(), key=pod_order)
                     if uid in pod.owners],
            "listening": [listener_doc(s, snap) for s in socks
                          if s.direction == "listening" and s.proto != "unix"],
            "connects_to": [g for g in groups if g["direction"] == "outbound"],
            "connected_from": [g for g in groups if g["direction"] == "inbound"],
            "sockets": len(socks)})
    return {"schema": SCHEMA, "view": "by-user", "users": docs,
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def resolve_pod(text: str, snap: Snapshot) -> Pod | None:
    """A --pod argument as the views show pods: NAMESPACE/NAME (also pod:NAMESPACE/NAME), the
    pod's uid, or a prefix of the uid that only one pod has."""
    text = text.removeprefix("pod:")
    if text in snap.pods:
        return snap.pods[text]
    namespace, sep, name = text.partition("/")
    if sep:
        for pod in snap.pods.values():
            if pod.namespace == namespace and pod.name == name:
                return pod
        return None
    matches = [pod for uid, pod in snap.pods.items() if uid.startswith(text)] if text else []
    return matches[0] if len(matches) == 1 else None


def resolve_netns(text: str, snap: Snapshot) -> Namespace | None:
    """A --netns argument as the views show namespaces: its name (host, pod:NS/NAME,
    netns:PIN or netns:INODE), the name without its kind (PIN, NS/NAME), or the inode."""
    for ns in snap.namespaces.values():
        if text in (ns.name, ns.key) or ns.name.partition(":")[2] == text:
            return ns
    if text.isdigit():
        for ns in snap.namespaces.values():
            if ns.inode == int(text) or key_inode(ns.key) == int(text):
                return ns
    return None


def by_pod_view(snap: Snapshot, only: Pod | None = None) -> dict:
    """Per pod: containers, namespace(s), owners, listeners and dependencies. A pod's sockets
    are those of its own namespace plus those its processes hold elsewhere (hostNetwork)."""
    socks_of: dict[str, list[Socket]] = defaultdict(list)
    for s in counted_sockets(snap):
        for uid in s.pod_uids:
            socks_of[uid].append(s)
    docs = []
    for pod in sorted(snap.pods.values(), key=pod_order):
        if only is not None and pod is not only:
            continue
        socks = sorted(socks_of.get(pod.uid, []), key=socket_order)
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
    return {"schema": SCHEMA, "view": "by-pod", "pods": docs,
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def summary_view(snap: Snapshot) -> dict:
    """The node at a glance, one row per namespace (what `lsns -t net` is for one namespace
    type, with the sockets counted): `nsnet` with no command."""
    per_ns: dict[str, list[Socket]] = defaultdict(list)
    for s in counted_sockets(snap):
        per_ns[s.netns_key].append(s)
    rows = []
    for ns in sorted_namespaces(snap):
        socks = per_ns.get(ns.key, [])
        states = Counter(connection_state(s) for s in socks)
        first = next((snap.processes[p] for p in ns.pids
                      if p in snap.processes and not snap.processes[p].sandbox),
                     snap.processes.get(ns.pids[0]) if ns.pids else None)
        rows.append({
            "name": ns.name, "inode": ns.inode, "key": ns.key, "host": ns.host,
            "pinned": list(ns.pinned), "owners": list(ns.owners),
            "pods": [pod_ref(pod) for pod in namespace_pods(ns, snap)],
            "processes": len(ns.pids),
            "listening": sum(1 for s in socks if s.direction == "listening"),
            "open": states["open"], "closed": states["closed"], "sockets": len(socks),
            "tables_read": ns.tables_read, "note": ns.note or ns.error,
            "pid": first.pid if first else None,
            "command": list(first.cmdline) if first and first.cmdline else
            ([f"[{first.comm}]"] if first else [])})
    return {"schema": SCHEMA, "view": "summary", "namespaces": rows,
            "processes": len(snap.processes), "pods": len(snap.pods),
            "user_names": user_names(snap), "stats": stats_doc(snap)}


def _unique_address(addr: str, prefix: int) -> bool:
    """An address that names one namespace of one node: one host address (not a local
    range), neither loopback nor link-local (every namespace has 127.0.0.1 and ::1, and
    link-local addresses repeat across links)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return prefix == ip.max_prefixlen and not (ip.is_loopback or ip.is_link_local
                                               or ip.is_unspecified)


def address_rows(snap: Snapshot) -> tuple[tuple[str, ...], ...]:
    """Each namespace's own addresses and whose they are: (address, interface, netns, kind,
    pod namespace, pod name, pod uid), kind being "pod" (a pod's own namespace), "host"
    (hostNetwork pods share it, and are not named) or "netns" (a namespace several pods
    claim, or none) -- what joins the edges of two nodes (the agent's nsnet_address_info):
    an edge's peer address on one node is a pod's address on the other."""
    rows = []
    for key, ns in sorted(snap.namespaces.items()):
        pods = [snap.pods[u] for u in snap.pods_of_netns.get(key, ()) if u in snap.pods]
        pod = pods[0] if len(pods) == 1 and not ns.host else None
        kind = "host" if ns.host else "pod" if pod is not None else "netns"
        netns = "host" if ns.host else ns.name or key
        seen: set[str] = set()
        for a in ns.addresses or ():
            if a.addr in seen or not _unique_address(a.addr, a.prefix):
                continue
            seen.add(a.addr)
            rows.append((a.addr, a.interface or "", netns, kind,
                         (pod.namespace or "") if pod else "", (pod.name or "") if pod else "",
                         pod.uid if pod else ""))
    return tuple(rows)
