"""Documents about dependency edges over time: `nsnet deps`, the agent's
/api/v1/dependencies, `nsnet graph`. Pure: edges (from the store or the agent's memory) in,
JSON-ready dicts out."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .. import SCHEMA
from ..model import ServiceMap
from ..ownership import user_name
from .edges import EdgeKey, EdgeState, Server, Servers, service_name
from .store import EdgeRow


def split_where(where: str) -> dict:
    """'pod:shop/cart' -> namespace shop, pod cart; 'netns:4026532300' / 'host' -> netns."""
    if where.startswith("pod:"):
        ns, sep, name = where[4:].partition("/")
        if sep:
            return {"pod_namespace": ns, "pod": name, "pod_uid": None, "netns": None}
        return {"pod_namespace": None, "pod": None, "pod_uid": where[4:], "netns": None}
    return {"pod_namespace": None, "pod": None, "pod_uid": None, "netns": where}


def edge_doc(node: str, key: EdgeKey, state: EdgeState, services: ServiceMap,
             live: bool = True, served_by: Iterable[Server] | None = None) -> dict:
    """One edge. live: the state has a latest sample (the agent, watch, a snapshot), so
    `open` and `closed_recently` say what it saw; from the history they are null.
    served_by: who listens at an outbound edge's service, when a snapshot told it (null:
    not known; `nsnet graph` then infers it from inbound edges, and says so)."""
    return {"node": node, "uid": key.uid if key.uid >= 0 else None,
            "user": user_name(key.uid) if key.uid >= 0 else None,
            "where": key.where, **split_where(key.where),
            "direction": key.direction, "proto": key.proto,
            "peer_addr": key.peer_addr, "port": key.port,
            # the Service VIP it went through (peer_addr:port is then the backend reached)
            "via": key.via or None,
            # inbound edges name our own service by port only (the listener's address is
            # not part of the key)
            "service": service_name(services, key),
            "first_seen": state.first_seen, "last_seen": state.last_seen,
            "samples": state.samples, "max_concurrent": state.max_concurrent,
            "open": state.current if live else None,
            "closed_recently": state.closed if live else None,
            "opened": state.opened_total, "closed": state.closed_total,
            "evidence": state.evidence, "guess": state.guess,
            # which end served was only inferred from the ports (no listener seen)
            "direction_inferred": state.direction_inferred,
            # traffic from TCP_INFO (null: not measured -- the proc source, --no-traffic):
            # bytes we sent (and the peer acknowledged) and received, segments we
            # retransmitted, the mean smoothed RTT of the connections open now
            "bytes_sent": state.sent_total if state.measured else None,
            "bytes_received": state.received_total if state.measured else None,
            "retransmits": state.retransmits_total if state.measured else None,
            "rtt_ms": None if state.rtt_us is None else round(state.rtt_us / 1000, 3),
            "served_by": None if served_by is None else [
                {"uid": uid if uid >= 0 else None,
                 "user": user_name(uid) if uid >= 0 else None, "where": where}
                for uid, where in sorted(served_by)]}


def deps_view(rows: Iterable[tuple[str, EdgeKey, EdgeState]], services: ServiceMap,
              since: float | None, source: str, *, live: bool = True,
              confirmed: bool = False, servers: Servers | None = None) -> dict:
    """The edges as a document. confirmed: only edges whose user is known by evidence that is
    not a guess (and known at all); servers: who serves each outbound edge (a snapshot's
    edges.servers), else served_by is null."""
    edges = [edge_doc(node, key, state, services, live,
                      None if servers is None or key.direction != "outbound"
                      else servers.get(key, set()))
             for node, key, state in rows
             if not confirmed or (state.evidence is not None and not state.guess
                                  and not state.direction_inferred)]
    edges.sort(key=lambda e: (e["uid"] is None, e["uid"] or 0, e["where"], e["direction"],
                              e["peer_addr"], e["port"], e["node"]))
    return {"schema": SCHEMA, "view": "dependencies", "since": since, "source": source,
            "confirmed_only": confirmed, "edges": edges}


def rows_from_store(store_rows: Iterable[EdgeRow]) -> list[tuple[str, EdgeKey, EdgeState]]:
    return [(r.node, EdgeKey(r.uid, r.where, r.direction, r.proto, r.peer_addr, r.port, r.via),
             EdgeState(r.first_seen, r.last_seen, r.samples, r.max_concurrent,
                       evidence=r.evidence, opened_total=r.opened, closed_total=r.closed,
                       direction_inferred=bool(r.direction_inferred),
                       sent_total=r.bytes_sent or 0, received_total=r.bytes_received or 0,
                       retransmits_total=r.retransmits or 0, rtt_us=r.rtt_us,
                       measured=r.bytes_sent is not None))
            for r in store_rows]


def by_user_history(deps: dict) -> dict:
    """The by-user view over time: per user, the services it connected to and who connected
    to it, from the history's edges."""
    per_user: dict = defaultdict(lambda: {"connects_to": [], "connected_from": []})
    for e in deps["edges"]:
        side = "connects_to" if e["direction"] == "outbound" else "connected_from"
        per_user[e["uid"]][side].append(e)
    users = [{"uid": uid, "name": user_name(uid) if uid is not None else None, **sides}
             for uid, sides in sorted(per_user.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    return {"schema": SCHEMA, "view": "by-user", "since": deps["since"],
            "source": deps["source"], "users": users}
