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

A socket can be bound to an address its namespace does not have: IP_FREEBIND (and
IP_TRANSPARENT) need no capability for that, so a tenant can bind 10.0.0.5:3306 and would
otherwise pass for the node's own end of every connection to that external service. Where a
namespace's own addresses were read (fib_trie's "host LOCAL" entries and if_inet6: set
with own_addresses before finish), its sockets are the other end of a connection only when
they are bound to one of them, and the addresses a namespace owns are those, not the ones
its sockets claim.

Service VIPs: a connection to an address the node's netfilter translates (kube-proxy's
DNAT of a ClusterIP) names the VIP as its remote; the host namespace's connection-tracking
table names the backend it reaches (conntrack.py). Given those translations before finish
(translate), such a socket gets `backend`, and its peer is looked for there: the namespace
on this node that serves it, or `external`.
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from .model import NOT_IP, PORTLESS, STREAM_PROTOS, Socket
from .netparse import is_loopback

_WILDCARDS = frozenset(("0.0.0.0", "::"))
# what netfilter's NAT tracks by ports (conntrack.Translations keys), among nsnet's protocols
_TRANSLATED_PROTOS = frozenset(("tcp", "udp", "udplite", "sctp", "dccp"))
# (proto, src addr, src port, dst addr, dst port) -> (backend addr, backend port)
Translations = Mapping[tuple[str, str, int, str, int], tuple[str, int]]


# How a [::] listener that takes IPv6 only (IPV6_V6ONLY; sock_diag and pidfd tell, the
# /proc tables do not: then it counts as dual-stack, the kernel's default) is filed among a
# port's listening addresses: a string no address can be.
V6ONLY_WILDCARD = "::/v6only"


def _listens_on(bound: set[str], addr: str) -> bool:
    if addr in bound or "::" in bound:
        return True   # a dual-stack [::] listener accepts IPv4 too (shown unmapped)
    if ":" in addr:
        return V6ONLY_WILDCARD in bound
    return "0.0.0.0" in bound


class OwnAddresses:
    """A namespace's own addresses: exact ones, and the IPv4 ranges it answers for."""

    def __init__(self, addresses: Iterable) -> None:   # netparse.Address
        self.exact: set[str] = set()
        self.ranges: list[ipaddress.IPv4Network] = []
        for a in addresses:
            if ":" in a.addr or a.prefix >= 32:
                self.exact.add(a.addr)
            else:
                self.ranges.append(ipaddress.IPv4Network(f"{a.addr}/{a.prefix}", strict=False))

    def __contains__(self, addr: str) -> bool:
        if addr in self.exact:
            return True
        if ":" in addr or not self.ranges:
            return False
        try:
            ip = ipaddress.IPv4Address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.ranges)


def classify(sockets: list[Socket]) -> None:
    classifier = Classifier()
    classifier.add(sockets)
    classifier.finish(sockets)


class Classifier:
    """classify() in steps, so that a snapshot can do most of it while other namespaces are
    still being read: add() indexes sockets; settle() classifies those of a namespace whose
    sockets have all been added, as far as they depend on that namespace only (listeners,
    unconnected and same-namespace peers), and keeps the others; finish() classifies the
    kept ones (or the given sockets) against everything added. Adding the same sockets in
    the same order gives the same result as classify()."""

    def __init__(self) -> None:
        # Ports are None only for unix sockets, which are never indexed here; the keys say
        # int | None rather than pay a check per socket on this path.
        self.listeners: dict[str, dict[int | None, set[str]]] = \
            defaultdict(lambda: defaultdict(set))
        self.by_tuple: dict[tuple[str, str, int | None, str, int | None], list[Socket]] = \
            defaultdict(list)
        self.bound_exact: dict[tuple[str, str, int | None], list[Socket]] = defaultdict(list)
        self.bound_wild: dict[tuple[str, int | None], list[Socket]] = defaultdict(list)
        self.addr_owners: dict[str, dict[str, int | None]] = defaultdict(dict)  # addr -> key -> inode
        self.kept: list[Socket] = []
        # netns key -> its own addresses, where they were read (own_addresses)
        self.own: dict[str, OwnAddresses] = {}
        self.translations: Translations = {}
        self.translated = 0       # sockets finish() gave a backend

    def translate(self, translations: Translations) -> None:
        """Before finish(): the host's NAT translations (conntrack.py)."""
        self.translations = translations

    def own_addresses(self, namespaces: Iterable) -> None:   # model.Namespace
        """Before finish(): each namespace's own addresses, where read. Its sockets bound
        elsewhere are then no one's other end, and do not make it own their address."""
        for ns in namespaces:
            if ns.addresses is None:
                continue
            # Only a filter: an address is still learnt from the sockets bound to it. Owning
            # every interface address would make kube-proxy's IPVS service addresses
            # (on kube-ipvs0, in the host's namespace) look like host services.
            self.own[ns.key] = OwnAddresses(ns.addresses)
        for addr, owners in self.addr_owners.items():
            for key in [k for k in owners if k in self.own and addr not in self.own[k]]:
                del owners[key]   # learnt from a socket bound to an address it lacks

    def _bound_here(self, o: Socket) -> bool:
        """Whether a socket is bound to an address its namespace has (True where unknown)."""
        own = self.own.get(o.netns_key)
        return own is None or o.local_addr in own

    def add(self, sockets: list[Socket]) -> None:
        listeners, by_tuple = self.listeners, self.by_tuple
        bound_exact, bound_wild, addr_owners = self.bound_exact, self.bound_wild, self.addr_owners
        for s in sockets:
            proto = s.proto
            if proto in NOT_IP:
                continue
            addr = s.local_addr
            wild = addr in _WILDCARDS
            if not wild and not is_loopback(addr):
                addr_owners[addr][s.netns_key] = s.netns
            state = s.state
            if state == "LISTEN" or state == "UNCONN":
                if proto in STREAM_PROTOS:
                    listeners[s.netns_key][s.local_port].add(
                        V6ONLY_WILDCARD if s.v6only and addr == "::" else addr)
                if not wild:
                    bound_exact[(proto, addr, s.local_port)].append(s)
                else:
                    bound_wild[(proto, s.local_port)].append(s)
            else:
                by_tuple[(proto, addr, s.local_port, s.remote_addr, s.remote_port)].append(s)

    def settle(self, sockets: list[Socket]) -> None:
        self.kept.extend(self._classify(sockets, own_namespace_only=True))

    def finish(self, sockets: list[Socket] | None = None) -> None:
        todo = self.kept if sockets is None else sockets
        if self.translations:
            self._translate(todo)
        self._classify(todo, own_namespace_only=False)
        self.kept = []

    def _translate(self, sockets: list[Socket]) -> None:
        """Give each connection netfilter translated its backend. The table is keyed by the
        connection as its client sent it (conntrack's original tuple), which is the client
        socket's own view: local -> remote (the VIP)."""
        get = self.translations.get
        for s in sockets:
            if s.proto in _TRANSLATED_PROTOS and s.remote_port and s.local_port and \
                    s.state not in ("LISTEN", "UNCONN"):
                backend = get((s.proto, s.local_addr, s.local_port, s.remote_addr,
                               s.remote_port))
                if backend is not None:
                    s.backend = backend
                    self.translated += 1

    def _classify(self, sockets: list[Socket], own_namespace_only: bool) -> list[Socket]:
        """Returns the sockets left for later (own_namespace_only: peer maybe elsewhere)."""
        kept: list[Socket] = []
        listeners = self.listeners
        by_tuple_get = self.by_tuple.get
        no_listeners: dict[int | None, set[str]] = {}
        for s in sockets:
            proto, state = s.proto, s.state
            if proto in NOT_IP:   # packet and netlink sockets take part in no connection
                s.direction = "listening" if state == "LISTEN" else None
                continue
            if state == "LISTEN" or (proto not in STREAM_PROTOS and state == "UNCONN"):
                # a ping socket's "port" is its echo id: it answers nobody
                s.direction = "listening" if (s.local_port and proto != "icmp") \
                    or proto == "raw" else None
                continue
            if proto in STREAM_PROTOS:
                bound = listeners.get(s.netns_key, no_listeners).get(s.local_port)
                s.direction = ("inbound" if bound and _listens_on(bound, s.local_addr)
                               else "outbound")
            else:
                s.direction = "outbound" if s.remote_port or proto in PORTLESS else None
            if not s.remote_port and proto not in PORTLESS:
                continue
            key = s.netns_key
            remote_addr, remote_port = s.backend or (s.remote_addr, s.remote_port)
            others = by_tuple_get((proto, remote_addr, remote_port, s.local_addr,
                                   s.local_port), ())
            if len(others) == 1:   # the common case: the one other end, or nothing here
                o = others[0]
                if o.netns_key == key:
                    if o is not s:
                        s.peer = "local"
                        s.peer_pids = sorted(set(o.pids))
                        continue
                    others = ()
                elif (not own_namespace_only and not is_loopback(remote_addr)
                      and self._bound_here(o)):
                    s.peer = "node"
                    s.peer_netns = o.netns
                    s.peer_pids = sorted(set(o.pids))
                    continue
            same = [o for o in others if o.netns_key == key and o is not s]
            if same or is_loopback(remote_addr):
                s.peer = "local"
                s.peer_pids = sorted({p for o in same for p in o.pids})
            elif own_namespace_only:
                kept.append(s)
            else:
                self._find_peer(s, others)
        return kept

    def _find_peer(self, s: Socket, others: Sequence[Socket]) -> None:
        """The other end of a connected socket whose peer is not in its own namespace."""
        key = s.netns_key
        remote_addr, remote_port = s.service_end()
        elsewhere = [o for o in others if o.netns_key != key and self._bound_here(o)]
        if not elsewhere:
            elsewhere = [o for o in self.bound_exact.get((s.proto, remote_addr, remote_port), ())
                         if o.netns_key != key and self._bound_here(o)]
        if elsewhere:
            s.peer = "node"
            s.peer_netns = elsewhere[0].netns
            s.peer_pids = sorted({p for o in elsewhere for p in o.pids})
            return
        owners = {k: v for k, v in self.addr_owners.get(remote_addr, {}).items() if k != key}
        if not owners:
            s.peer = "external"
            return
        s.peer = "node"
        bound = [o for o in self.bound_wild.get((s.proto, remote_port), ())
                 if o.netns_key in owners]
        keys = {o.netns_key for o in bound} or set(owners)
        if len(keys) == 1:      # the same address in several namespaces: on this node, but which?
            s.peer_netns = owners[keys.pop()]
            s.peer_pids = sorted({p for o in bound for p in o.pids})
