"""The snapshot's data model: plain dataclasses, no I/O. The bottom of the pipeline:
this module imports nothing of nsnet's.

Sockets are keyed by (namespace, socket inode), never by their 4-tuple: the same
4-tuple (127.0.0.1:80 ...) exists in every pod. A namespace is keyed by a string built and
read only here (netns_key, procnet_key, key_inode): "net:[<inode>]", the text the kernel
shows for /proc/<pid>/ns/net, or "procnet:<n>" when the inode could not be read.
"""
from __future__ import annotations

import ipaddress
import operator
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field, fields
from typing import cast

from .records import record

# ----------------------------------------------------------------------- namespace keys

_NETNS_PREFIX = "net:["
_PROCNET_PREFIX = "procnet:"
_keys: dict[int, str] = {}
_KEY_CACHE_MAX = 1 << 16


def netns_key(inode: int) -> str:
    """The key of the namespace whose nsfs inode is `inode` (as readlink of ns/net shows it).
    Cached: the pidfd source asks once per socket."""
    key = _keys.get(inode)
    if key is None:
        key = f"{_NETNS_PREFIX}{inode}]"
        if len(_keys) < _KEY_CACHE_MAX:
            _keys[inode] = key
    return key


def procnet_key(ident: int) -> str:
    """The stand-in key of a namespace whose inode is unreadable (no CAP_SYS_PTRACE): the
    inode of its /proc/<pid>/net/dev entry, which is per namespace and readable by anyone."""
    return f"{_PROCNET_PREFIX}{ident}"


def key_inode(key: str) -> int | None:
    """The nsfs inode a key names; None for a stand-in (procnet:) key."""
    if key.startswith(_NETNS_PREFIX) and key.endswith("]"):
        return int(key[len(_NETNS_PREFIX):-1])
    return None


def is_stand_in(key: str) -> bool:
    return key.startswith(_PROCNET_PREFIX)


# ------------------------------------------------------------------ container identity

@record(frozen=True, slots=True)
class ContainerIdentity:
    """What /proc/<pid>/cgroup says about a process (nsnet.cgroup parses it)."""
    runtime: str | None       # docker, containerd, cri-o, podman; None: the layout does not say
    container_id: str | None  # 64 lower-case hex; None for a pod-level cgroup or a conmon
    pod_uid: str | None       # dashed UUID, or the 32-hex uid of a static pod
    qos: str | None           # guaranteed, burstable, besteffort (kubelet pods only)
    path: str                    # the cgroup path it came from


# --------------------------------------------------------------------- service names

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@record(frozen=True, slots=True)
class Rule:
    """One `match` entry of the operator's services file (nsnet.services parses it)."""
    name: str
    network: Network
    port: int | None


class ServiceMap:
    """The operator's names for endpoints: the most specific rule wins (longest prefix, then
    a rule with a port over one without; the file's order breaks ties)."""

    def __init__(self, rules: list[Rule]):
        self.rules = sorted(rules, key=lambda r: (-r.network.prefixlen, r.port is None))
        self._cache: dict[tuple[str, int | None], str | None] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServiceMap) and self.rules == other.rules

    def __hash__(self) -> int:   # equal maps have as many rules
        return len(self.rules)

    def __reduce__(self) -> tuple:
        # the rules, not the cache of names looked up (up to 65,536 entries)
        return (ServiceMap, (self.rules,))

    def name(self, addr: str, port: int | None) -> str | None:
        key = (addr, port)
        if key in self._cache:
            return self._cache[key]
        found = None
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = \
                ipaddress.ip_address(addr)
        except ValueError:
            ip = None
        if ip is not None:
            for rule in self.rules:
                if ip.version == rule.network.version and ip in rule.network \
                        and (rule.port is None or rule.port == port):
                    found = rule.name
                    break
        if len(self._cache) < 65536:
            self._cache[key] = found
        return found


NO_SERVICES = ServiceMap([])


# ------------------------------------------------------------- evidence and connection states

# How a socket's users and pods are known (nsnet.ownership.attribute), strongest first.
HOLDER = "holder"                      # a pid holds it
REMEMBERED = "remembered"              # the agent saw its 4-tuple held in an earlier sample
LISTENER = "listener"                  # unheld, accepted from a listener: the listener's
TABLE_UID = "table-uid"                # the table's uid column (a real one: the socket has an inode)
NAMESPACE_OWNER = "namespace-owner"    # unheld, outbound, in a namespace with one owner
NAMESPACE_OWNERS = "namespace-owners"  # unheld, in a namespace with several owners: a guess
EVIDENCE = (HOLDER, REMEMBERED, LISTENER, TABLE_UID, NAMESPACE_OWNER, NAMESPACE_OWNERS)
GUESSES = frozenset({NAMESPACE_OWNERS})
STRENGTH = {kind: n for n, kind in enumerate(EVIDENCE)}   # lower: stronger

# A connection in these states is open (being set up, up, or closed by the peer only: the
# local application still holds it); in these, it was closed recently (the kernel keeps the
# socket for the end of the handshake, TIME_WAIT for 60 s). CLOSE is neither: a socket that
# never connected, or a connect that failed.
OPEN_STATES = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "NEW_SYN_RECV", "CLOSE_WAIT"})
CLOSED_STATES = frozenset({"FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK", "TIME_WAIT"})


def is_guess(evidence: str | None) -> bool:
    return evidence in GUESSES


# ----------------------------------------------------------------------------- the model


class _NoFds(Mapping[int, list[int]]):
    """The empty pid -> fds mapping every unheld socket shares (immutable, so hashable: a
    dataclass default)."""

    def __getitem__(self, pid: int) -> list[int]:
        raise KeyError(pid)

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __reduce__(self) -> str:
        return "NO_FDS"     # unpickled as the one shared instance

    def __repr__(self) -> str:
        return "{}"


NO_FDS: Mapping[int, list[int]] = _NoFds()


class OneHolder(Mapping[int, list[int]]):
    """pid -> [fd] of the common socket: one process holding it through one fd. Two ints
    instead of a dict and a list (~300 bytes a socket: ~25 MB at 87k sockets)."""

    __slots__ = ("pid", "fd")

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd = pid, fd

    def __getitem__(self, pid: int) -> list[int]:
        if pid != self.pid:
            raise KeyError(pid)
        return [self.fd]

    def __iter__(self) -> Iterator[int]:
        return iter((self.pid,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"{{{self.pid}: [{self.fd}]}}"

    def __reduce__(self) -> tuple:
        return (OneHolder, (self.pid, self.fd))


# Socket kinds (Socket.proto). The IP ones have addresses and ports (icmp: a ping socket,
# whose "port" is its echo identifier; raw: the IP protocol number); the others do not.
IP_PROTOS = ("tcp", "udp", "udplite", "icmp", "raw", "mptcp")
LINK_PROTOS = ("packet", "netlink")
PROTOS = IP_PROTOS + ("unix",) + LINK_PROTOS + ("vsock",)
# A listed socket of these kinds is nobody's connection: no direction, no peer, no edge.
NOT_IP = frozenset({"unix", *LINK_PROTOS, "vsock"})
# Connection-oriented IP kinds: listeners, accepted (inbound) and connected (outbound) ones
STREAM_PROTOS = frozenset({"tcp", "mptcp"})
VMADDR_CID_ANY = 0xFFFFFFFF


def vsock_cid(cid: int) -> str:
    """A vsock context id as shown: "*" for VMADDR_CID_ANY (bound to every cid)."""
    return "*" if cid == VMADDR_CID_ANY else str(cid)
# A port-less IP kind: its remote "port" is 0 even when connected (the tables print 0).
PORTLESS = frozenset({"raw", "icmp"})

# Ethertypes a packet socket is most often opened for (linux/if_ether.h), for display.
ETHERTYPES = {0x0003: "all", 0x0800: "ip", 0x0806: "arp", 0x86DD: "ipv6", 0x88CC: "lldp",
              0x8100: "8021q", 0x888E: "eapol", 0x0004: "802.2", 0x0001: "802.3"}
# Netlink protocols (linux/netlink.h), for display.
NETLINK_PROTOCOLS = {0: "route", 2: "usersock", 4: "sock_diag", 5: "nflog", 6: "xfrm",
                     7: "selinux", 8: "iscsi", 9: "audit", 10: "fib_lookup", 11: "connector",
                     12: "netfilter", 13: "ip6_fw", 14: "dnrtmsg", 15: "kobject_uevent",
                     16: "generic", 18: "scsitransport", 19: "ecryptfs", 20: "rdma",
                     21: "crypto", 22: "smc"}


def ethertype_name(protocol: int) -> str:
    return ETHERTYPES.get(protocol) or f"0x{protocol:04x}"


def netlink_protocol_name(protocol: int) -> str:
    return NETLINK_PROTOCOLS.get(protocol) or str(protocol)


@record(frozen=True, slots=True)
class PacketInfo:
    """What a packet socket (AF_PACKET: tcpdump, a DHCP client, a sniffer) listens to. The
    Socket shows its interface as local_addr ("*": every interface) and no ports."""
    type: str                   # raw (frames with their link-layer header) | dgram | packet
    protocol: int               # the ethertype it receives, host order (3, ETH_P_ALL: all)
    # the interface it is bound to; 0: every interface; -1: the interface it was bound to
    # is gone (the kernel's packet_notifier on NETDEV_UNREGISTER)
    ifindex: int
    # the interface's name in the socket's namespace; None: the source could not name it
    # (the tables name an interface only when it has an IPv6 address: README)
    interface: str | None


@record(frozen=True, slots=True)
class NetlinkInfo:
    """A netlink socket (AF_NETLINK: route/uevent listeners, `ip monitor`, the kernel's
    own end). The Socket shows its protocol's name as local_addr and its port id as
    local_port (0: the kernel's socket of that protocol in the namespace)."""
    protocol: int               # NETLINK_ROUTE 0, NETLINK_AUDIT 9, NETLINK_GENERIC 16 ...
    portid: int
    groups: int                 # the first 32 multicast groups it has joined (a bitmask)


def packet_socket(type_: str, protocol: int, ifindex: int, interface: str | None, inode: int,
                  uid: int | None) -> Socket:
    """A packet socket as every source lists it (state UNCONN: packet sockets have none)."""
    shown = "*" if not ifindex else interface or (f"if{ifindex}" if ifindex > 0 else "gone")
    return Socket("packet", "packet", "UNCONN", shown, None, "", None, inode, uid,
                  info=PacketInfo(type_, protocol, ifindex, interface))


def netlink_socket(protocol: int, portid: int, groups: int, inode: int) -> Socket:
    """A netlink socket as every source lists it: no uid (neither /proc/net/netlink nor
    netlink_diag says one), state UNCONN (/proc/net/netlink does not say connected)."""
    return Socket("netlink", "netlink", "UNCONN", netlink_protocol_name(protocol), portid,
                  "", None, inode, None, info=NetlinkInfo(protocol, portid, groups))


# What SnapshotOptions.details may ask the sources for (off by default: the default snapshot
# pays nothing for them).
QUEUES = "queues"        # Recv-Q / Send-Q, timers, the socket cookie
TCP_INFO = "tcp_info"    # TCP_INFO and the congestion algorithm
OPTIONS = "options"      # socket options, read with getsockopt on a borrowed fd (knetstat)
MEMORY = "memory"        # socket memory (sk_meminfo: ss -m's skmem)
DETAILS = (QUEUES, TCP_INFO, OPTIONS, MEMORY)
SHOWN_DETAILS = frozenset(DETAILS)      # what a SocketDetail holds
# not a detail shown: a TCP socket's counters and rtt alone (Socket.traffic), what the
# agent's edges need of TCP_INFO, without a SocketDetail per socket
TRAFFIC = "traffic"

# The timer a TCP socket has running (the tables' `tr`, sock_diag's idiag_timer)
TIMERS = {0: "off", 1: "on", 2: "keepalive", 3: "timewait", 4: "probe"}


@record(slots=True)      # not frozen: one per TCP socket when asked, and frozen init costs
class TcpDetail:
    """What TCP_INFO (and INET_DIAG_CONG) say of a TCP connection; None: the kernel's
    tcp_info is too short to have the field (older kernels)."""
    congestion: str | None        # the congestion control algorithm (cubic, bbr ...)
    rtt_us: int                   # smoothed round-trip time, microseconds
    rttvar_us: int
    cwnd: int                     # congestion window, segments
    retransmits: int              # retransmissions of the current unacked segment
    total_retrans: int            # segments retransmitted over the connection's life
    bytes_acked: int | None       # bytes sent and acknowledged (Linux >= 4.1)
    bytes_received: int | None    # bytes received (Linux >= 4.2)
    delivery_rate: int | None     # bytes per second, the latest estimate (Linux >= 4.9)
    last_send_ms: int             # since data was last sent
    last_recv_ms: int             # since data was last received


@record(frozen=True, slots=True)
class SocketMemory:
    """A socket's memory, the kernel's sk_meminfo (SK_MEMINFO_*: SO_MEMINFO,
    INET_DIAG_SKMEMINFO, UNIX_DIAG_MEMINFO), bytes; ss -m prints it as skmem:(r,rb,t,tb,f,
    w,o,bl,d)."""
    rmem_alloc: int      # r: receive queue memory in use
    rcvbuf: int          # rb: its limit (SO_RCVBUF as the kernel keeps it)
    wmem_alloc: int      # t: transmit memory in use
    sndbuf: int          # tb: its limit
    fwd_alloc: int       # f: reserved, not yet used
    wmem_queued: int     # w: queued to send
    optmem: int          # o: ancillary (option) memory
    backlog: int         # bl: the backlog queue (packets arriving while the socket is busy)
    drops: int           # d: packets dropped


@record(slots=True)
class SocketDetail:
    """A socket's queues, timer and TCP internals (SnapshotOptions.details). A field is None
    where the source cannot tell (README: which source says what)."""
    # bytes waiting to be read / not yet acknowledged by the peer (datagram sockets: memory
    # queued); a listener: connections waiting to be accepted / the most it will queue
    recv_q: int | None = None
    send_q: int | None = None
    timer: str | None = None          # TIMERS: off | on (retransmit) | keepalive | timewait | probe
    timer_ms: int | None = None       # until it fires
    timer_retransmits: int | None = None   # unrecovered retransmission timeouts so far
    cookie: int | None = None         # the kernel's 64-bit id of the socket (SO_COOKIE)
    tcp: TcpDetail | None = None
    # option name -> value (SO_REUSEADDR: 1, TCP_CONGESTION: "cubic", SO_LINGER: None when
    # off, else seconds); None: not read (not asked, no holder, or borrowing refused)
    options: dict[str, int | str | None] | None = None
    memory: SocketMemory | None = None


@record(slots=True)
class Socket:
    proto: str                      # PROTOS: tcp, udp, udplite, icmp, raw, mptcp, unix, ...
    family: str                     # inet | inet6 | unix
    state: str                      # kernel name: LISTEN, ESTABLISHED, TIME_WAIT, ... UNCONN
    local_addr: str
    local_port: int | None
    remote_addr: str
    remote_port: int | None
    inode: int                      # 0 for sockets no process holds (TIME_WAIT, orphans)
    uid: int | None              # the table's uid column; unix tables have none
    netns: int | None = None     # nsfs inode of the namespace whose table lists it
    netns_key: str = ""             # stable key even when the nsfs inode is unreadable
    unix_type: str | None = None  # stream | dgram | seqpacket (unix only)
    # Shared empty defaults, not a new list and dict per socket: a snapshot makes one Socket
    # per line of every table (87k at 400 namespaces) and the join replaces them for held
    # sockets anyway; building three empty containers each was ~half of making a Socket.
    pids: Sequence[int] = ()
    fds: Mapping[int, list[int]] = NO_FDS                        # pid -> fd numbers
    direction: str | None = None  # listening | inbound | outbound | None
    peer: str | None = None       # local | node | external | None (not connected)
    peer_netns: int | None = None
    peer_pids: Sequence[int] = ()
    source: str = "proc"             # proc | netlink | pidfd: where this socket was read
    # who it belongs to, and how that is known (ownership.attribute; EVIDENCE)
    users: tuple[int, ...] = ()
    pod_uids: tuple[str, ...] = ()
    attribution: str | None = None
    # True: a /proc/net/unix line a bound name could have forged that nothing confirmed
    # (netparse.parse_unix, unixcheck): shown flagged, never as a fact
    unconfirmed: bool = False
    # what a packet or netlink socket is (PacketInfo, NetlinkInfo); None for the other kinds
    info: PacketInfo | NetlinkInfo | None = None
    # an IPv6 socket bound to [::] or listening: True when it takes IPv6 only (IPV6_V6ONLY),
    # False when IPv4 too; None where the source cannot tell (the /proc tables never say)
    v6only: bool | None = None
    # the interface it is bound to (SO_BINDTODEVICE, or the scope of a link-local address),
    # an index into its namespace's interfaces; 0: none, or the source cannot tell (/proc)
    bound_if: int = 0
    # MPTCP: a connection's token, or, on a TCP subflow, its connection's (None: plain
    # TCP, or a source that cannot tell: proc); the subflow's connection, by inode, once
    # joined (ownership.link_subflows)
    mptcp_token: int | None = None
    mptcp_connection: int | None = None
    # queues, timer, TCP internals: only when SnapshotOptions.details asks
    detail: SocketDetail | None = None
    # a TCP socket's (bytes_acked, bytes_received, total_retrans, rtt_us) from TCP_INFO,
    # when TRAFFIC is asked and the source reads TCP_INFO (not proc)
    traffic: tuple[int, int, int, int] | None = None
    # where the node's netfilter sends this connection: its remote is an address netfilter
    # translates (a Kubernetes Service VIP: kube-proxy's DNAT) and the host namespace's
    # connection-tracking entry names the backend it reaches, (addr, port); None: not
    # translated, or the table was not read (snapshot: translations)
    backend: tuple[str, int] | None = None

    def service_end(self) -> tuple[str, int | None]:
        """The other end this connection reaches: the backend a translation names, else
        its remote."""
        return self.backend if self.backend is not None else (self.remote_addr, self.remote_port)


def _pickled_by_fields(cls: type) -> None:
    """Pickle instances of a slotted dataclass as its fields in order, rebuilt through its
    __init__. The default for a class with __slots__ makes a dict of them per object: for a
    snapshot's sockets (the agent packs one per sample, agent/sampler.py), 1.5x the time
    and twice the bytes."""
    get = operator.attrgetter(*(f.name for f in fields(cls)))
    cls.__reduce__ = lambda self: (cls, get(self))   # type: ignore[assignment,misc]


_pickled_by_fields(Socket)


def endpoint(addr: str, port: int | None, scope: str | None = None) -> str:
    """addr:port, an IPv6 address in brackets; `scope` (a bound interface) as ss prints it,
    after the address: [fe80::1]%eth0:80. (How `via` names a Service VIP.)"""
    shown = f"[{addr}]" if ":" in addr and port is not None else addr
    if scope:
        shown = f"{shown}%{scope}"
    return shown if port is None else f"{shown}:{port}"


@record(slots=True)
class Process:
    pid: int
    ppid: int
    comm: str
    cmdline: list[str]
    uid: int                        # effective uid
    netns_key: str = ""
    netns: int | None = None
    sandbox: bool = False
    fds_readable: bool = True
    fds_complete: bool = True            # False: the walk's fd budget stopped short (walk.py)
    socket_fds: dict[int, int] = field(default_factory=dict)   # fd -> socket inode
    start_ticks: int = 0                 # clock ticks after boot (/proc/<pid>/stat)
    started: float | None = None      # epoch seconds, when the boot time is known
    identity: ContainerIdentity | None = None   # from /proc/<pid>/cgroup

    @property
    def container_id(self) -> str | None:
        return self.identity.container_id if self.identity else None

    @property
    def pod_uid(self) -> str | None:
        return self.identity.pod_uid if self.identity else None

    @property
    def command(self) -> str:
        """The full command line as one string; comm in brackets for kernel threads."""
        if self.cmdline:
            return " ".join(self.cmdline)
        return f"[{self.comm}]"


_pickled_by_fields(Process)


@record(slots=True)
class Namespace:
    key: str                        # "net:[<inode>]" or "procnet:<pde inode>" when unreadable
    inode: int | None
    name: str = ""                  # host, pod <ns>/<name>, a pin's name, or netns:<inode>
    host: bool = False
    pinned: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    threads: list[tuple[int, int]] = field(default_factory=list)   # (pid, tid) living here
    owners: list[int] = field(default_factory=list)
    read_via: str | None = None  # how its tables were read: "pid 123", "setns /run/netns/x"
    tables_read: bool = False
    error: str | None = None     # why the tables could not be read
    held_sockets: bool = False      # a held socket lives here (pidfd source: SIOCGSKNS)
    note: str | None = None         # what this entry is, when it is not simply a namespace
    # its own addresses (netparse.Address), read with its tables; None: not read
    addresses: list | None = None
    # ifindex -> name of its interfaces that have an IPv6 address (if_inet6); None: not read
    interfaces: dict[int, str] | None = None

    def interface_name(self, ifindex: int) -> str:
        """How an interface of this namespace is shown: its name, else `if<index>`."""
        known = self.interfaces.get(ifindex) if self.interfaces else None
        return known or f"if{ifindex}"

    @property
    def found_by(self) -> list[str]:
        how = []
        if self.pids:
            how.append("processes")
        if self.threads:
            how.append("threads")
        if self.pinned:
            how.append("bind-mount")
        if self.held_sockets and not how:
            how.append("sockets")
        return how


@record(slots=True)
class Container:
    """A container seen through its processes' cgroups (no runtime API is asked)."""
    id: str
    runtime: str | None
    pod_uid: str | None = None
    name: str | None = None       # from the kubelet's /var/log/containers, when there
    sandbox: bool = False            # the pod's namespace holder (pause / CRI sandbox)
    pids: list[int] = field(default_factory=list)
    # the pod its cgroup names, when it lives outside that pod's namespace (pods.assemble):
    # then pod_uid is None -- a claim, not a fact
    claimed_pod: str | None = None


@record(frozen=True, slots=True)
class Misfit:
    """A process whose cgroup names a pod but which lives outside the pod's namespace."""
    pid: int
    comm: str
    pod_uid: str
    pod: str        # the pod as shown (namespace/name, or its uid)


@record(slots=True)
class Pod:
    uid: str
    namespace: str | None = None  # Kubernetes namespace, from /var/log/pods (None: unknown)
    name: str | None = None
    qos: str | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)      # every process of the pod, sandbox included
    netns_keys: list[str] = field(default_factory=list)
    host_network: bool = False       # its app processes live in the host's namespace
    owners: list[int] = field(default_factory=list)    # uids of its non-sandbox processes

    @property
    def display(self) -> str:
        if self.namespace and self.name:
            return f"{self.namespace}/{self.name}"
        return f"pod {self.uid}"


@record(slots=True)
class Stats:
    processes: int = 0
    processes_vanished: int = 0      # exited between listing and reading
    processes_skipped: int = 0       # not walked: the walk's deadline had passed
    processes_unreadable: int = 0    # /proc/<pid> itself unreadable (hidepid, I/O error)
    processes_ns_denied: int = 0     # /proc/<pid>/ns/net unreadable (needs CAP_SYS_PTRACE)
    processes_fd_denied: int = 0     # /proc/<pid>/fd unreadable (needs CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH)
    processes_ns_changed: int = 0    # moved namespace while being read
    threads_elsewhere: int = 0
    fds_vanished: int = 0
    fds_skipped: int = 0             # fds listed but not read: a uid's fd budget was spent
    namespaces: int = 0
    namespaces_unread: int = 0
    namespace_read_retries: int = 0
    pinned_unreadable: int = 0       # bind-mount pinned namespaces we could not enter
    namespaces_matched_by_setns: int = 0   # stand-in groups found inside a pin (no ptrace)
    namespaces_unmatched: int = 0    # pins and stand-in groups that could not be matched
    sockets: int = 0
    sockets_without_pid: int = 0
    socket_fds_not_in_tables: int = 0   # fd points at a socket no table of ours listed
    # ... by the kind sockfs says it is and the holder's namespace: {"kind", "netns_key",
    # "count"} (snapshot.explain_unlisted)
    not_in_tables: list[dict] = field(default_factory=list)
    malformed_lines: int = 0
    sockets_listed_twice: int = 0    # a table read listed a socket again (kept once)
    unix_lines_dropped: int = 0      # /proc/net/unix lines the socket they name contradicts
    unix_unconfirmed: int = 0        # ... and lines nothing could check (flagged unconfirmed)
    mountinfo_unread: int = 0
    mountinfo_cut: int = 0           # mount tables longer than procfs.MAX_MOUNTINFO, cut there
    source: str = "proc"             # the source used: proc | netlink | pidfd
    source_reason: str = ""
    sockets_by_source: dict[str, int] = field(default_factory=dict)
    sockets_by_kind: dict[str, int] = field(default_factory=dict)   # proto -> sockets
    source_errors: list[str] = field(default_factory=list)   # first few errors of the source
    # protocols this kernel's sock_diag cannot dump (no diag module): read from /proc/net
    tables_from_proc: list[str] = field(default_factory=list)
    reader_threads: int = 0          # threads reading namespaces' tables (1: none but ours)
    reader_threads_reason: str = ""  # the CPUs this process may use (affinity, cgroup quota)
    pidfd_borrowed: int = 0
    pidfd_vanished: int = 0
    pidfd_denied: int = 0
    pidfd_netns_unknown: int = 0
    pidfd_unsafe: int = 0            # not borrowed: it would re-tag the socket's cgroup-v1 classid
    options_read: int = 0            # sockets whose options were read (details "options")
    options_unread: int = 0          # ... asked for, but could not be (no holder, refused)
    pods: int = 0
    containers: int = 0
    kubelet_errors: list[str] = field(default_factory=list)   # /var/log/pods unreadable, ...
    pod_claims_rejected: int = 0     # processes claiming a pod by cgroup, outside its netns
    pod_claims: list[str] = field(default_factory=list)   # one line saying which
    elapsed_seconds: float = 0.0
    # the host namespace's connection-tracking table: what read it ("ctnetlink", or the
    # procfs file), "" when not read (nothing to resolve, or not allowed); connections whose
    # translated destination (a Service VIP) it resolved to a backend
    conntrack: str = ""
    connections_translated: int = 0
    privileges: list[str] = field(default_factory=list)   # one line each: what is missing, why

    def reading_line(self) -> str:
        """What read this snapshot and why, in one line (--verbose)."""
        parts = [f"source {self.source} ({self.source_reason or 'requested'})"]
        if self.tables_from_proc:
            parts.append(f"{', '.join(self.tables_from_proc)} from /proc (this kernel's "
                         "sock_diag has no handler for them)")
        if self.reader_threads:
            parts.append(f"{self.reader_threads} reader thread(s): "
                         f"{self.reader_threads_reason}")
        parts.append(f"{self.namespaces} namespaces, {self.sockets} sockets in "
                     f"{self.elapsed_seconds:.2f} s")
        return "; ".join(parts)

    def warnings(self) -> list[str]:
        """One line each: what this snapshot could not see, and why."""
        unix = [f"{self.mountinfo_cut} mount table(s) longer than 32 MiB cut there: bind "
                "mounts past the cut not looked for"] if self.mountinfo_cut else []
        if self.unix_lines_dropped:
            unix.append(f"{self.unix_lines_dropped} /proc/net/unix line(s) dropped: the socket "
                        "they name says otherwise (a bound name can print lines)")
        if self.unix_unconfirmed:
            unix.append(f"{self.unix_unconfirmed} unix socket(s) unconfirmed: their "
                        "/proc/net/unix line may be part of a bound name and nothing could "
                        "check it (flagged)")
        return list(self.privileges) + list(self.kubelet_errors) + list(self.pod_claims) + unix + (
            [f"{self.malformed_lines} malformed /proc/net line(s) skipped"] if self.malformed_lines else [])


def pack(value: object) -> bytes:
    """A value as the agent keeps it between samples: pickled and compressed (a snapshot of
    13k sockets: 4.1 MB pickled, 0.35 MB so; as objects, 11 MB)."""
    import pickle  # the agent's only: not on every command's start-up
    import zlib

    return zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(data: bytes) -> object:
    import pickle
    import zlib

    return pickle.loads(zlib.decompress(data))


class PackedSockets(Sequence[Socket]):
    """A snapshot's sockets kept packed, a chunk of them per zlib-compressed pickle (the agent
    keeps its latest snapshot so between samples): iterating unpacks one chunk at a time, so
    a view streamed from them never holds them all. `in_view_order`: packed in the order the
    sockets view lists them (views.socket_order), which it then need not sort."""

    def __init__(self, chunks: tuple[bytes, ...], count: int, in_view_order: bool = False):
        self.chunks, self.length, self.in_view_order = chunks, count, in_view_order

    @staticmethod
    def pack(sockets: Sequence[Socket], per_chunk: int = 2048,
             in_view_order: bool = False) -> PackedSockets:
        chunks = tuple(pack(list(sockets[i:i + per_chunk]))
                       for i in range(0, len(sockets), per_chunk))
        return PackedSockets(chunks, len(sockets), in_view_order)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Socket]:
        for chunk in self.chunks:
            yield from cast(list[Socket], unpack(chunk))

    def __getitem__(self, index):
        return list(self)[index]   # whole: nothing indexes a snapshot's sockets in a hot path

    def packed_size(self) -> int:
        return sum(len(c) for c in self.chunks)


@record(slots=True)
class Snapshot:
    proc: str
    namespaces: dict[str, Namespace]
    processes: dict[int, Process]
    sockets: list[Socket]
    stats: Stats
    host_key: str | None = None
    pods: dict[str, Pod] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    # pods whose own (non-host) namespace this is: unheld sockets there belong to them
    pods_of_netns: dict[str, list[str]] = field(default_factory=dict)
    # the operator's names for endpoints (SnapshotOptions.services), given when it is taken
    services: ServiceMap = NO_SERVICES


# Why a held socket of a kind (sockfs' protocol name, system.sockprotoname) is in no table
UNLISTED_WHY = {
    "NETLINK": "never bound: the kernel lists a netlink socket once bound",
    "AF_VSOCK": "vsock has no table, and this kernel no vsock_diag",
    "MPTCP": "no table lists MPTCP, and this kernel has no mptcp_diag",
    "MPTCPv6": "no table lists MPTCP, and this kernel has no mptcp_diag",
    "PING": "never bound: the kernel lists a ping socket once bound",
    "PINGv6": "never bound: the kernel lists a ping socket once bound",
    "TCP": "bound but neither listening nor connecting, or made after its tables were read",
    "TCPv6": "bound but neither listening nor connecting, or made after its tables were read",
}
NOT_LISTED_YET = "a kind nsnet does not list yet"
# sockfs kinds no table of a namespace lists (or not until bound) that a held fd can still
# describe: the netlink source (and auto) borrows them from their holder
BORROWABLE_KINDS = frozenset({"AF_VSOCK", "MPTCP", "MPTCPv6", "NETLINK", "PING", "PINGv6"})


def unlisted_line(rows: list[dict]) -> str | None:
    """One warning line for the held sockets no table listed, by kind, with why."""
    by_kind: dict[str, int] = {}
    for row in rows:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0) + row["count"]
    if not by_kind:
        return None
    parts = [f"{n} {kind} ({UNLISTED_WHY.get(kind, NOT_LISTED_YET)})"
             for kind, n in sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"{sum(by_kind.values())} held socket(s) in no table: " + "; ".join(parts)


def condition_of(warning: str) -> str:
    """What a warning is about, without its counts and the processes it names: the agent
    says a condition once, not again each time a count in it changes."""
    head = warning.split(" for ", 1)[0] if " for " in warning else warning.split(": ", 1)[0]
    return re.sub(r"\d+", "#", head)
