"""Direction and peer of each socket, from the whole snapshot.

direction: TCP LISTEN -> listening; a TCP socket whose local endpoint matches a listener of
its own namespace -> inbound (it was accepted); any other TCP socket -> outbound. Bound
unconnected UDP/raw sockets count as listening (what `ss -l` shows), connected ones as
outbound; unix listeners as listening; everything else None.

peer (connected sockets only): `local` when the other end is in the same namespace (the
reverse 4-tuple is there, or the remote address is loopback); `node` when the other end is in
another namespace of this snapshot: the reverse 4-tuple is there, or a socket bound to exactly
the remote address and port, or the remote address is one of that namespace's own addresses
(learnt from the specific local addresses of its sockets) -- then a socket bound there to the
wildcard address on the remote port is the peer (a UDP server on 0.0.0.0:53). peer_netns says
which namespace when it is one; otherwise `external`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

from .model import Socket
from .netparse import is_loopback, is_wildcard

_V6_WILDCARD = "::"


def _listens_on(listeners: dict[int, set[str]], addr: str, port: int) -> bool:
    bound = listeners.get(port)
    if not bound:
        return False
    if addr in bound or _V6_WILDCARD in bound:
        return True   # a dual-stack [::] listener accepts IPv4 too (shown unmapped)
    return "0.0.0.0" in bound and ":" not in addr


def classify(sockets: list[Socket]) -> None:
    listeners: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    by_tuple: dict[tuple, list[Socket]] = defaultdict(list)
    bound_exact: dict[tuple[str, str, int], list[Socket]] = defaultdict(list)
    bound_wild: dict[tuple[str, int], list[Socket]] = defaultdict(list)
    addr_owners: dict[str, dict[str, Optional[int]]] = defaultdict(dict)   # addr -> key -> inode
    for s in sockets:
        if s.proto == "unix":
            continue
        if not is_wildcard(s.local_addr) and not is_loopback(s.local_addr):
            addr_owners[s.local_addr][s.netns_key] = s.netns
        if s.state == "LISTEN" or s.state == "UNCONN":
            if s.proto == "tcp":
                listeners[s.netns_key][s.local_port].add(s.local_addr)
            if not is_wildcard(s.local_addr):
                bound_exact[(s.proto, s.local_addr, s.local_port)].append(s)
            else:
                bound_wild[(s.proto, s.local_port)].append(s)
        else:
            by_tuple[(s.proto, s.local_addr, s.local_port, s.remote_addr, s.remote_port)].append(s)

    for s in sockets:
        if s.proto == "unix":
            s.direction = "listening" if s.state == "LISTEN" else None
            continue
        if s.state == "LISTEN" or (s.proto != "tcp" and s.state == "UNCONN"):
            s.direction = "listening" if (s.local_port or s.proto == "raw") else None
            continue
        if s.proto == "tcp":
            s.direction = ("inbound" if _listens_on(listeners[s.netns_key], s.local_addr,
                                                    s.local_port) else "outbound")
        else:
            s.direction = "outbound" if s.remote_port or s.proto == "raw" else None
        if not s.remote_port and s.proto != "raw":
            continue
        _find_peer(s, by_tuple, bound_exact, bound_wild, addr_owners)


def _find_peer(s: Socket, by_tuple: dict, bound_exact: dict, bound_wild: dict,
               addr_owners: dict) -> None:
    others = by_tuple.get((s.proto, s.remote_addr, s.remote_port, s.local_addr, s.local_port), ())
    same = [o for o in others if o.netns_key == s.netns_key and o is not s]
    if same or is_loopback(s.remote_addr):
        s.peer = "local"
        s.peer_pids = sorted({p for o in same for p in o.pids})
        return
    elsewhere = [o for o in others if o.netns_key != s.netns_key]
    if not elsewhere:
        elsewhere = [o for o in bound_exact.get((s.proto, s.remote_addr, s.remote_port), ())
                     if o.netns_key != s.netns_key]
    if elsewhere:
        s.peer = "node"
        s.peer_netns = elsewhere[0].netns
        s.peer_pids = sorted({p for o in elsewhere for p in o.pids})
        return
    owners = {k: v for k, v in addr_owners.get(s.remote_addr, {}).items() if k != s.netns_key}
    if not owners:
        s.peer = "external"
        return
    s.peer = "node"
    bound = [o for o in bound_wild.get((s.proto, s.remote_port), ()) if o.netns_key in owners]
    keys = {o.netns_key for o in bound} or set(owners)
    if len(keys) == 1:      # the same address in several namespaces: on this node, but which?
        s.peer_netns = owners[keys.pop()]
        s.peer_pids = sorted({p for o in bound for p in o.pids})
