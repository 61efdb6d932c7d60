"""The pidfd source: every held socket asked itself, never a table; then what no process holds.

For every socket fd of a process: duplicate it into our fd table with pidfd_getfd(2)
(Linux >= 5.6), ask the duplicate (fstat, getsockname, getsockopt SO_TYPE / SO_PROTOCOL /
TCP_INFO / SO_NETNS_COOKIE, getpeername, SO_ACCEPTCONN) and close it at once. No table is
walked, so the cost is O(sockets held), where every read of /proc/<pid>/net/tcp walks the
host-wide TCP hash. Sockets nobody holds (TIME_WAIT, request sockets) come from a table pass
restricted to those states (sock_diag when CAP_SYS_ADMIN allows, else the /proc tables
filtered), and a namespace with a member whose sockets could not be borrowed is read in full,
so nothing is lost (PidfdSource.collect).

Privileges, measured on this kernel (6.18) with setpriv and a target of another uid:
  pidfd_open   nothing.
  pidfd_getfd  ptrace "attach" rights over the target: CAP_SYS_PTRACE, or the same uid AND a
               target whose permitted capabilities are a subset of ours (uid 0 without
               CAP_SYS_PTRACE is refused for a root process with full capabilities). EPERM.
  SIOCGSKNS    CAP_NET_ADMIN (over the socket's network namespace). EPERM: the socket is
               still described, its namespace is None (counted in netns_unknown).
  getsockopt / getsockname / getpeername on the duplicate: nothing.

Safety. The duplicate shares the target's open file description (like dup(2)): whatever
changes the description changes the target's socket (O_NONBLOCK, shutdown, options, queued
data). So only read-only queries are issued, and close(2) of our duplicate, which drops a
reference and nothing else. The queries go through a `_socket.socket` object used as a bare
handle, constructed with explicit family/type/proto and SOCK_NONBLOCK in the type: CPython
then makes no fcntl call (init_sockobject sets its own timeout to 0 instead; its one
syscall is a validating getsockname). Never `socket.socket(fileno=fd)` or the bare
`_socket.socket(fileno=fd)`: once socket.setdefaulttimeout() has been called anywhere in the
process, they run fcntl(F_SETFL, O_NONBLOCK) on the shared description, turning the target's
blocking socket non-blocking (checked on 3.11, 3.12, 3.13; tests/kernel/test_pidfd.py proves ours
does not). The handle's family (AF_UNIX) only sizes its address buffer (110 bytes, enough for
every family described here); addresses are decoded by their own sa_family.
pidfd_getfd sets FD_CLOEXEC on our descriptor only (a per-fd flag, not the shared one), but it
also re-tags the socket with our cgroup v1 net_cls classid / net_prio index (as SCM_RIGHTS
does): where those controllers are bound to a v1 hierarchy, only processes in our own
net_cls/net_prio cgroups are borrowed (see cgroup_retag_hazard; the others count as unsafe). At
most three fds of ours are open at a time: the pidfd, one duplicate, one nsfs fd during a
namespace cache miss -- so a low RLIMIT_NOFILE is enough.

The socket's network namespace comes from the socket, not its holder (which may live in
another): SO_NETNS_COOKIE (Linux >= 5.14, no privilege, a 64-bit id never reused during a
boot) looked up in a cache that SIOCGSKNS + fstat fills the first time a cookie is seen. The
ioctl opens an nsfs file (~4 us, as much as everything else together), so it runs once per
namespace instead of once per socket. Without the cookie (older kernels), once per socket.

Differences from /proc/<pid>/net/*, documented and tested (tests/kernel/test_pidfd.py):
  - uid: fstat(2) of the socket inode. The kernel keeps sk_uid equal to the socket inode's
    owner (sock_init_data; sock_graft on accept; sockfs_setattr on fchown), which is the
    tables' uid column. Unix sockets get None: their table has no uid column.
  - unix dgram: /proc/net/unix prints sk_state, and unix_dgram_connect() marks the *target*
    of a connect() ESTABLISHED as well; that socket has no peer (getpeername: ENOTCONN), so
    here it is UNCONN. Connected dgram sockets and dgram pairs are ESTABLISHED in both.
  - TCP in SYN_SENT (and CLOSE): getpeername refuses (ENOTCONN) in those states, so the
    remote is the wildcard with port 0, where /proc shows the destination.
  - raw: getpeername always refuses (a raw socket has no destination port), so a connect()ed
    raw socket is UNCONN with a wildcard remote here, ESTABLISHED in /proc/net/raw.
  - only sockets a process holds: TIME_WAIT, orphans and not-yet-accepted connections are in
    no fd table; PidfdSource completes the picture from a table pass.
  - ping sockets (icmp): getpeername refuses as for raw, so a connected one is UNCONN here.
  - packet sockets: the interface is named with SIOCGIFNAME on the duplicate (a query,
    answered in the socket's namespace), where the tables name only interfaces that have
    an IPv6 address (if_inet6).
  - vsock and MPTCP sockets, which no table lists, are described here (an MPTCP socket's
    first TCP subflow shares its inode: the table pass keeps it, as a tcp socket).
  - families other than inet/inet6/unix/packet/netlink/vsock (bluetooth, can, alg ...) are
    skipped and counted; inet sockets of other protocols (sctp) are counted apart.
"""
from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import time
from dataclasses import field

from ..model import (
    MEMORY,
    OPTIONS,
    QUEUES,
    SHOWN_DETAILS,
    TCP_INFO,
    TRAFFIC,
    Socket,
    SocketDetail,
    Stats,
    netlink_socket,
    netns_key,
    packet_socket,
    vsock_cid,
)
from ..netparse import PACKET_TYPES, TCP_STATES, UNIX_TYPES
from ..records import record
from ..sockdiag import (
    ALL,
    IPPROTO_UDPLITE,
    ORPHAN_STATES,
    UNHELD,
    parse_meminfo,
    parse_tcp_info,
)
from ..sockdiag import unix_name as _diag_unix_name
from ..walk import Discovery
from .base import Batch, ReadContext, TableSource
from .netlink import DiagSockets, NetlinkSource
from .proc import ProcSource

SYS_pidfd_getfd = 438            # the same number on every architecture
SIOCGSKNS = 0x894C
SIOCGIFNAME = 0x8910
_IFREQ = struct.Struct("=16si20x")             # struct ifreq: name, ifindex (a union of 24)
_SOCKADDR_LL = struct.Struct("=HHi")           # sll_family, sll_protocol (network), ifindex
_AF_PACKET, _AF_NETLINK = socket.AF_PACKET, socket.AF_NETLINK
_LINK_FAMILIES = frozenset({_AF_PACKET, _AF_NETLINK})
_AF_VSOCK = getattr(socket, "AF_VSOCK", 40)
_IPPROTO_MPTCP = 262
_SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
_SO_MEMINFO = 55
_MEMINFO = struct.Struct("=9I")       # SK_MEMINFO_*: rmem_alloc, rcvbuf, wmem_alloc, ...
_TCP_CONGESTION = socket.TCP_CONGESTION
_SIOCINQ, _SIOCOUTQ = 0x541B, 0x5411   # FIONREAD, TIOCOUTQ
_MEMORY_QUEUED = frozenset({"udp", "udplite", "icmp", "raw"})
_IPPROTO_IPV6, _IPV6_V6ONLY = socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
_SO_BINDTOIFINDEX = getattr(socket, "SO_BINDTOIFINDEX", 62)     # Linux >= 5.0
_V6ONLY_KINDS = frozenset({"tcp", "udp", "udplite"})
_V6ONLY_STATES = frozenset({"LISTEN", "UNCONN"})
_UDP_PROTOCOLS = frozenset({socket.IPPROTO_UDP, IPPROTO_UDPLITE})
_PING_PROTOCOLS = frozenset({socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6})
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)
TCP_LISTEN = 10

_AF_INET, _AF_INET6, _AF_UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
_STREAM, _DGRAM, _RAW = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW
_SOL_SOCKET = socket.SOL_SOCKET
_SO_TYPE, _SO_PROTOCOL, _SO_DOMAIN, _SO_ACCEPTCONN = (
    socket.SO_TYPE, socket.SO_PROTOCOL, socket.SO_DOMAIN, socket.SO_ACCEPTCONN)
_IPPROTO_TCP, _IPPROTO_UDP, _TCP_INFO = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.TCP_INFO
_S_IFMT, _S_IFSOCK = 0o170000, 0o140000
_ENOTCONN, _EBADF = errno.ENOTCONN, errno.EBADF
_DENIED = (errno.EPERM, errno.EACCES)

# A bare handle: explicit family/type/proto, SOCK_NONBLOCK so that no fcntl is ever made.
_Handle = _socket.socket
_HANDLE_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK

# struct tcp_info (include/uapi/linux/tcp.h), native byte order: tcpi_state (offset 0),
# tcpi_rtt and tcpi_rttvar (68, 72, microseconds), tcpi_total_retrans (100),
# tcpi_bytes_acked and tcpi_bytes_received (120, 128; Linux >= 4.1 / 4.2).
_TCP_INFO_LAYOUT = struct.Struct("=B67xII24xI16xQQ")
_TCP_INFO_LEN = _TCP_INFO_LAYOUT.size
# tcpi_unacked (at 24): a listener's accept queue (tcp_get_info); mptcpi_token (at 12)
_U32 = struct.Struct("=I")
# getsockopt(SOL_MPTCP, MPTCP_INFO): struct mptcp_info, whose mptcpi_token (offset 12) its
# subflows carry too (Linux >= 5.16; older kernels: no token, the subflows stay unlinked)
_SOL_MPTCP, _MPTCP_INFO = 284, 1


def _mptcp_token(h: _socket.socket) -> int | None:
    try:
        info = h.getsockopt(_SOL_MPTCP, _MPTCP_INFO, 64)
    except OSError:
        return None
    return _U32.unpack_from(info, 12)[0] if len(info) >= 16 else None

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
# No argtypes: the arguments are small non-negative ints, passed as C int, which libffi
# widens into the full register (syscall(2) reads longs); argtypes conversion would add
# ~0.5 us per call here (measured), 6% of the whole per-socket cost.
_get_errno = ctypes.get_errno

# SO_NETNS_COOKIE -> nsfs inode. Cookies come from a per-boot 64-bit counter and are never
# reused, so an entry never names the wrong namespace; the bound only guards against leaks.
_netns_by_cookie: dict[int, int] = {}
_NETNS_CACHE_MAX = 1 << 16

_WILDCARD: dict[int, str] = {_AF_INET: "0.0.0.0", _AF_INET6: "::"}
_FAMILY_NAME: dict[int, str] = {_AF_INET: "inet", _AF_INET6: "inet6"}


@record(slots=True)
class BorrowResult:
    """What one process's sockets told us. Counts are of sockets (fds), not processes."""
    sockets: list[Socket] = field(default_factory=list)
    borrowed: int = 0          # described: one Socket each
    already_seen: int = 0      # described earlier through another holder (inode in `seen`)
    skipped_family: int = 0    # bluetooth, can, alg ...: not in the tables nsnet reads
    skipped_protocol: int = 0  # inet but not tcp/udp/udplite/icmp/raw/mptcp: sctp
    vanished: int = 0          # process exited (ESRCH), fd closed (EBADF) or reused meanwhile
    denied: int = 0            # pidfd_getfd refused (EPERM/EACCES): no CAP_SYS_PTRACE
    unsafe: int = 0            # not borrowed: borrowing would re-tag them (cgroup v1, below)
    failed: int = 0            # any other error (e.g. EMFILE in our own fd table)
    netns_unknown: int = 0     # described, but SIOCGSKNS refused (no CAP_NET_ADMIN)
    process_gone: bool = False
    process_denied: bool = False
    # namespaces (inodes) where TCP sockets no process holds may be in any state: a
    # listener's accept queue is not empty (TCP_INFO's tcpi_unacked), or an MPTCP socket
    # lives there (its subflows are the kernel's TCP sockets)
    pending_accept: set[int] = field(default_factory=set)
    unsafe_reason: str | None = None
    errors: list[str] = field(default_factory=list)   # the first few unexpected errors

    def note(self, what: str, err: int) -> None:
        if len(self.errors) < 3:
            name = errno.errorcode.get(err, str(err))
            self.errors.append(f"{what}: {name} {os.strerror(err)}")


def ip_text(host: str) -> str:
    """An address as the socket module prints it (inet_ntop), IPv4-mapped IPv6 as IPv4 --
    the rule netparse.decode_address applies to the tables."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def unix_name(name: str | bytes) -> str:
    """A unix socket's getsockname() as /proc/net/unix prints it (unix_seq_show): a path as
    is; an abstract name (bytes with a leading NUL) as '@' and the name, every NUL as '@'."""
    # Python gives bytes only for abstract names; sock_diag's rule covers them exactly.
    return _diag_unix_name(name) if isinstance(name, bytes) else name


def describe_process_sockets(pid: int, socket_fds: dict[int, int], *, seen: set[int],
                             pidfd: int | None = None,
                             allow_cgroup_retag: bool = False,
                             details: frozenset[str] = frozenset()) -> BorrowResult:
    """Describe the sockets of one process whose inode is not in `seen` yet.

    socket_fds: fd -> socket inode, from the process's /proc/<pid>/fd (the walk). A socket
    is described once however many processes hold it: its inode is added to `seen` once
    described (or skipped as a family nsnet does not show). The Sockets carry no pids/fds:
    the caller joins holders from the fd walk, as for the /proc source. A borrowed fd whose
    inode is not the walk's (closed and reused meanwhile) counts as vanished.
    pidfd: an already open pidfd of the process (kept open); else one is opened and closed.
    allow_cgroup_retag: borrow even where it re-tags the process's sockets (see
    cgroup_retag_hazard); off by default, those sockets are then counted as unsafe.
    Never raises for a process that exits or that we may not inspect: counted instead.
    Threads may call this concurrently for different processes; `seen` is then best
    effort (a socket two of them hold at once may be described twice).
    """
    result = BorrowResult()
    todo = [(fd, inode) for fd, inode in socket_fds.items() if inode not in seen]
    result.already_seen = len(socket_fds) - len(todo)
    if not todo:
        return result
    if not allow_cgroup_retag:
        try:
            reason = cgroup_retag_hazard(pid)
        except OSError as exc:
            _give_up(result, errno.ESRCH if exc.errno == errno.ENOENT else exc.errno or 0,
                     len(todo), "cgroup")
            return result
        if reason is not None:
            result.unsafe, result.unsafe_reason = len(todo), reason
            return result
    own_pidfd = pidfd is None
    if own_pidfd:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            _give_up(result, exc.errno or 0, len(todo), "pidfd_open")
            return result
    assert pidfd is not None
    try:
        _Describer(result, seen, details).run(pidfd, todo)
    finally:
        if own_pidfd:
            os.close(pidfd)
    return result


# --------------------------------------------------------------------------- cgroup v1 guard
# pidfd_getfd installs the fd like SCM_RIGHTS does (receive_fd -> __receive_sock), which
# re-tags the *socket* with the receiver's cgroup v1 net_cls classid and net_prio index.
# Measured here: a listener of a process in a net_cls cgroup with classid 0x100001 read
# classid 0 (sock_diag INET_DIAG_CLASS_ID) after one borrow by a process of the root cgroup.
# Those tags steer tc cls_cgroup filters, iptables -m cgroup --cgroup and net_prio priomaps.
# With no v1 hierarchy bound to either controller (cgroup v2 hosts) every task sits in their
# root css, the values written equal the values held, and nothing changes. Otherwise the
# process must be in our own net_cls / net_prio cgroups (its sockets carry its cgroup's
# tags: sockets get them at creation, on receipt, and when their holder is moved).
NET_CGROUP_CONTROLLERS = ("net_cls", "net_prio")
_CGROUP_RECHECK_SECONDS = 1.0
_cgroup_view: tuple[float, frozenset[str], dict[str, str]] = (-1e9, frozenset(), {})


def v1_net_controllers(proc_cgroups: bytes) -> frozenset[str]:
    """From /proc/cgroups: net_cls / net_prio when enabled and bound to a v1 hierarchy."""
    found = set()
    for line in proc_cgroups.decode("ascii", "replace").splitlines():
        fields = line.split()
        if (len(fields) >= 4 and fields[0] in NET_CGROUP_CONTROLLERS and fields[1] != "0"
                and fields[3] == "1"):
            found.add(fields[0])
    return frozenset(found)


def cgroup_paths(pid_cgroup: bytes, controllers: frozenset[str]) -> dict[str, str]:
    """From /proc/<pid>/cgroup ("id:ctrl,ctrl:path" lines): each controller's path."""
    paths = {}
    for line in pid_cgroup.decode("utf-8", "surrogateescape").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(","):
                if name in controllers:
                    paths[name] = parts[2]
    return paths


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cgroup_retag_hazard(pid: int) -> str | None:
    """Why borrowing pid's sockets would change them, or None (always None on hosts with no
    cgroup v1 net_cls/net_prio hierarchy: then it costs one clock read). Raises OSError
    when /proc/<pid>/cgroup cannot be read (ENOENT: the process is gone)."""
    global _cgroup_view
    checked, controllers, ours = _cgroup_view
    now = time.monotonic()
    if now - checked > _CGROUP_RECHECK_SECONDS:
        try:
            controllers = v1_net_controllers(_read("/proc/cgroups"))
            ours = cgroup_paths(_read("/proc/self/cgroup"), controllers) if controllers else {}
        except OSError:
            controllers, ours = frozenset(NET_CGROUP_CONTROLLERS), {}   # unknown: assume
        _cgroup_view = (now, controllers, ours)
    if not controllers:
        return None
    # Read now, just before borrowing, not taken from the walk: a process moved to another
    # cgroup since would be re-tagged all the same.
    theirs = cgroup_paths(_read(f"/proc/{pid}/cgroup"), controllers)
    differ = [name for name in sorted(controllers) if theirs.get(name) != ours.get(name)]
    if not differ:
        return None
    return (f"cgroup v1 {' and '.join(differ)} of pid {pid} differ from ours: pidfd_getfd "
            f"would re-tag its sockets with our classid/priority index")


def _give_up(result: BorrowResult, err: int, left: int, what: str) -> None:
    """Count the `left` sockets not described because of err, which holds for the process."""
    if err == errno.ESRCH or err == errno.EINVAL:   # EINVAL: pidfd_open, no such process now
        result.vanished += left
        result.process_gone = True
    elif err in _DENIED:
        result.denied += left
        result.process_denied = True
    else:
        result.failed += left
        result.note(what, err)


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once the process has exited (zombie or reaped)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return False


class _Describer:
    """The per-call state: result, counters and the namespace lookups of one process.
    Not shared between calls, so concurrent callers (threads) share nothing but the
    cookie cache, whose single get/set operations are atomic under the GIL."""
    __slots__ = ("result", "seen", "want_traffic", "cookies", "refused", "details")

    def __init__(self, result: BorrowResult, seen: set[int],
                 details: frozenset[str] = frozenset()) -> None:
        self.result = result
        self.seen = seen
        # the counters and rtt the agent's edges need (model.TRAFFIC), from the TCP_INFO
        # the state is read with anyway; a SocketDetail only for the details shown
        self.want_traffic = TRAFFIC in details
        self.details = details & SHOWN_DETAILS
        self.cookies = True              # False once the kernel says it has no netns cookie
        self.refused: set[int] = set()   # cookies whose SIOCGSKNS was refused (EPERM)

    def run(self, pidfd: int, todo: list[tuple[int, int]]) -> None:
        result, seen = self.result, self.seen
        append = result.sockets.append
        getfd, fstat, describe = _syscall, os.fstat, self.describe
        for i, (fd, inode) in enumerate(todo):
            if inode in seen:                 # a second fd of the same socket (dup)
                result.already_seen += 1
                continue
            dup = getfd(SYS_pidfd_getfd, pidfd, fd, 0)
            if dup < 0:
                err = _get_errno()
                if err == _EBADF and not _exited(pidfd):
                    result.vanished += 1      # this fd was closed meanwhile
                    continue
                # exited (a zombie has no fd table: EBADF), ESRCH, EPERM: the whole
                # process; EMFILE: our own table. Either way, stop asking.
                _give_up(result, errno.ESRCH if err == _EBADF else err, len(todo) - i,
                         "pidfd_getfd")
                return
            handle = None
            try:
                st = fstat(dup)
                if st.st_ino != inode or st.st_mode & _S_IFMT != _S_IFSOCK:
                    result.vanished += 1      # the fd now holds something else
                    continue
                try:
                    # its one syscall is a validating getsockname
                    handle = _Handle(_AF_UNIX, _HANDLE_TYPE, 0, dup)
                except OSError:
                    # a family without getsockname (AF_ALG ...): none of inet/inet6/unix
                    result.skipped_family += 1
                    seen.add(inode)
                    continue
                sock = describe(handle, inode, st.st_uid)
                if sock is not None and self.details:
                    sock.detail = self.detail(handle, sock)
            except OSError as exc:
                result.failed += 1
                result.note(f"fd {fd}", exc.errno or 0)
                continue
            finally:
                # close(2) of our duplicate only, never shutdown: the process's fd and
                # socket are untouched
                if handle is not None:
                    handle.close()
                else:
                    os.close(dup)
            seen.add(inode)
            if sock is not None:
                append(sock)
                result.borrowed += 1

    def describe(self, h: _socket.socket, inode: int, uid: int) -> Socket | None:  # noqa: C901, PLR0912, PLR0915
        """One borrowed socket -> Socket, or None when skipped (counted).

        One branch per kind in one body, not a method per kind: it runs once per held
        socket of the node, and the whole per-socket cost is ~9 us (measured, bench/)."""
        # SO_DOMAIN, not the shape of getsockname()'s answer: the socket module returns
        # tuples like inet's for netlink, vsock, bluetooth, can ...
        family = h.getsockopt(_SOL_SOCKET, _SO_DOMAIN)
        if family == _AF_UNIX:
            return self.describe_unix(h, inode, h.getsockname())
        if family in _LINK_FAMILIES:
            return self.describe_link(h, family, inode, uid)
        if family == _AF_VSOCK:
            return self.describe_vsock(h, inode, uid)
        if family != _AF_INET and family != _AF_INET6:
            self.result.skipped_family += 1   # bluetooth, can, alg ...
            return None
        local = h.getsockname()
        kind = h.getsockopt(_SOL_SOCKET, _SO_TYPE)
        proto = h.getsockopt(_SOL_SOCKET, _SO_PROTOCOL)
        local_addr, local_port = ip_text(local[0]), local[1]
        remote_addr, remote_port = _WILDCARD[family], 0
        pending = False
        token: int | None = None
        traffic: tuple[int, int, int, int] | None = None
        if kind == _STREAM and proto == _IPPROTO_TCP:
            info = h.getsockopt(_IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
            state_no = info[0]
            state = TCP_STATES.get(state_no) or str(state_no)
            if state_no != TCP_LISTEN:
                try:
                    peer = h.getpeername()
                    remote_addr, remote_port = ip_text(peer[0]), peer[1]
                except OSError as exc:
                    if exc.errno != _ENOTCONN:
                        raise
            elif len(info) >= 28 and _U32.unpack_from(info, 24)[0]:
                pending = True          # a listener with connections waiting in its queue
            if self.want_traffic and len(info) == _TCP_INFO_LEN:
                _, rtt, _rttvar, retrans, acked, received = _TCP_INFO_LAYOUT.unpack(info)
                traffic = (acked, received, retrans, rtt)
            name = "tcp"
        elif kind == _DGRAM and proto in _UDP_PROTOCOLS:
            peer = _peer(h)
            state = "UNCONN" if peer is None else "ESTABLISHED"
            if peer is not None:
                remote_addr, remote_port = peer
            name = "udp" if proto == _IPPROTO_UDP else "udplite"
        elif kind == _DGRAM and proto in _PING_PROTOCOLS:
            # a ping socket: its "port" is its echo identifier, as /proc/net/icmp prints
            # it; getpeername refuses (no destination port), as for raw: UNCONN here
            state = "UNCONN"
            name = "icmp"
        elif kind == _STREAM and proto == _IPPROTO_MPTCP:
            # the MPTCP connection (its subflows are kernel TCP sockets, in the tables)
            state = "LISTEN" if h.getsockopt(_SOL_SOCKET, _SO_ACCEPTCONN) else "CLOSE"
            peer = None if state == "LISTEN" else _peer(h)
            if peer is not None:
                (remote_addr, remote_port), state = peer, "ESTABLISHED"
            name = "mptcp"
            pending = True              # its subflows: unheld TCP sockets, any state
            token = _mptcp_token(h)
        elif kind == _RAW:
            # /proc/net/raw{,6} print the protocol number as the local port and 0 as remote
            local_port, state = proto, "UNCONN"
            try:
                remote_addr, state = ip_text(h.getpeername()[0]), "ESTABLISHED"
            except OSError as exc:           # ENOTCONN always, today: see the module doc
                if exc.errno != _ENOTCONN:
                    raise
            name = "raw"
        else:
            self.result.skipped_protocol += 1
            return None
        netns = self.netns(h)
        if pending and netns is not None:
            self.result.pending_accept.add(netns)
        sock = Socket(name, _FAMILY_NAME[family], state, local_addr, local_port, remote_addr,
                      remote_port, inode, uid, netns, _key(netns))
        if name == "mptcp":
            sock.mptcp_token = token
        elif traffic is not None:
            sock.traffic = traffic
        _scope(h, sock, family == _AF_INET6)
        return sock

    def detail(self, h: _socket.socket, sock: Socket) -> SocketDetail:
        """What SnapshotOptions.details asked for, from the borrowed socket: queries only
        (getsockopt, SIOCINQ/SIOCOUTQ). Timers: no query says them (None)."""
        detail = SocketDetail(cookie=int.from_bytes(
            h.getsockopt(_SOL_SOCKET, _SO_COOKIE, 8), sys.byteorder))
        info = None
        if sock.proto == "tcp" and sock.state != "TIME_WAIT":
            cong = h.getsockopt(_IPPROTO_TCP, _TCP_CONGESTION, 16).split(b"\0", 1)[0]
            info = parse_tcp_info(h.getsockopt(_IPPROTO_TCP, _TCP_INFO, 256),
                                  cong.decode("ascii", "replace"))
            if TCP_INFO in self.details and info is not None:
                detail.tcp = info[0]
        if OPTIONS in self.details:
            detail.options = socket_options(h, sock)
        if MEMORY in self.details:
            detail.memory = parse_meminfo(h.getsockopt(_SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))
        if QUEUES not in self.details:
            return detail
        if sock.state == "LISTEN":
            # TCP_INFO of a listener: tcpi_unacked is its accept queue, tcpi_sacked its
            # backlog (tcp_get_info); a unix listener says neither to a query
            if info is not None:
                detail.recv_q, detail.send_q = info[1], info[2]
        elif sock.proto in ("tcp", "unix"):
            detail.recv_q = _ioctl_int(h.fileno(), _SIOCINQ)     # unread bytes
            detail.send_q = _ioctl_int(h.fileno(), _SIOCOUTQ)    # unacknowledged (TCP)
        elif sock.proto in _MEMORY_QUEUED:
            # the tables print a datagram socket's memory in use each way: SO_MEMINFO's
            # rmem_alloc and wmem_alloc (SIOCINQ would say the next datagram's size)
            mem = _MEMINFO.unpack(h.getsockopt(_SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size))
            detail.recv_q, detail.send_q = mem[0], mem[2]
        return detail

    def describe_link(self, h: _socket.socket, family: int, inode: int, uid: int
                      ) -> Socket | None:
        """A packet or netlink socket, as /proc/net/packet and /proc/net/netlink list it."""
        if family == _AF_NETLINK:
            portid, groups = h.getsockname()      # sockaddr_nl: nl_pid, nl_groups
            sock = netlink_socket(h.getsockopt(_SOL_SOCKET, _SO_PROTOCOL), portid, groups,
                                  inode)
        else:
            # sockaddr_ll raw (the socket module names the interface but drops its index)
            buf = ctypes.create_string_buffer(_SOCKADDR_LL.size + 8)
            size = ctypes.c_uint(len(buf))
            if _libc.getsockname(h.fileno(), buf, ctypes.byref(size)) != 0:
                raise OSError(_get_errno(), "getsockname")
            _fam, protocol, ifindex = _SOCKADDR_LL.unpack_from(buf.raw)
            kind = h.getsockopt(_SOL_SOCKET, _SO_TYPE)
            type_ = PACKET_TYPES.get(kind)
            if type_ is None:
                self.result.skipped_protocol += 1
                return None
            sock = packet_socket(type_, socket.ntohs(protocol), ifindex,
                                 _interface_name(h.fileno(), ifindex), inode, uid)
        netns = self.netns(h)
        sock.netns, sock.netns_key = netns, _key(netns)
        return sock

    def describe_vsock(self, h: _socket.socket, inode: int, uid: int) -> Socket:
        """A vsock socket: (cid, port) each end (no table lists vsock)."""
        cid, port = h.getsockname()
        kind = h.getsockopt(_SOL_SOCKET, _SO_TYPE)
        remote_cid, remote_port, state = "", None, "UNCONN"
        if kind != _DGRAM and h.getsockopt(_SOL_SOCKET, _SO_ACCEPTCONN):
            state = "LISTEN"
        else:
            try:
                peer_cid, remote_port = h.getpeername()
                remote_cid, state = vsock_cid(peer_cid), "ESTABLISHED"
            except OSError as exc:
                if exc.errno != _ENOTCONN:
                    raise
        netns = self.netns(h)
        return Socket("vsock", "vsock", state, vsock_cid(cid), port, remote_cid, remote_port,
                      inode, uid, netns, _key(netns), unix_type=UNIX_TYPES.get(kind))

    def describe_unix(self, h: _socket.socket, inode: int, local: str | bytes) -> Socket:
        kind = h.getsockopt(_SOL_SOCKET, _SO_TYPE)
        try:
            h.getpeername()
            state = "ESTABLISHED"
        except OSError as exc:
            if exc.errno != _ENOTCONN:
                raise
            listening = kind != _DGRAM and h.getsockopt(_SOL_SOCKET, _SO_ACCEPTCONN)
            state = "LISTEN" if listening else "UNCONN"
        netns = self.netns(h)
        # uid None: /proc/net/unix has no uid column, and the sources must agree (model.Socket)
        return Socket("unix", "unix", state, unix_name(local), None, "", None, inode, None,
                      netns, _key(netns), unix_type=UNIX_TYPES.get(kind, str(kind)))

    def netns(self, h: _socket.socket) -> int | None:
        """The nsfs inode of the socket's own namespace; None when SIOCGSKNS is refused."""
        cookie = None
        if self.cookies:
            try:
                cookie = int.from_bytes(h.getsockopt(_SOL_SOCKET, SO_NETNS_COOKIE, 8),
                                        sys.byteorder)
            except OSError as exc:
                if exc.errno != errno.ENOPROTOOPT:
                    raise
                self.cookies = False          # kernel < 5.14: SIOCGSKNS for every socket
            else:
                netns = _netns_by_cookie.get(cookie)
                if netns is not None:
                    return netns
                if cookie in self.refused:
                    self.result.netns_unknown += 1
                    return None
        try:
            nsfd = fcntl.ioctl(h.fileno(), SIOCGSKNS)
        except OSError as exc:
            if exc.errno not in _DENIED:
                raise
            if cookie is not None:
                self.refused.add(cookie)
            self.result.netns_unknown += 1
            return None
        try:
            netns = os.fstat(nsfd).st_ino
        finally:
            os.close(nsfd)
        if cookie is not None:
            if len(_netns_by_cookie) >= _NETNS_CACHE_MAX:
                _netns_by_cookie.clear()
            _netns_by_cookie[cookie] = netns
        return netns


# knetstat's options: (name, level, option, kinds it applies to). IP_TOS for IPv4 sockets,
# IPV6_TCLASS and IPV6_V6ONLY for IPv6 ones; every kind has the SOL_SOCKET ones.
_ANY, _TCP_ONLY = None, frozenset({"tcp"})
_OPTIONS: tuple[tuple[str, int, int, frozenset[str] | None], ...] = (
    ("SO_REUSEADDR", socket.SOL_SOCKET, socket.SO_REUSEADDR, _ANY),
    ("SO_REUSEPORT", socket.SOL_SOCKET, socket.SO_REUSEPORT, _ANY),
    ("SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, _ANY),
    ("SO_RCVBUF", socket.SOL_SOCKET, socket.SO_RCVBUF, _ANY),
    ("SO_SNDBUF", socket.SOL_SOCKET, socket.SO_SNDBUF, _ANY),
    ("SO_MARK", socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), _ANY),
    ("TCP_NODELAY", socket.IPPROTO_TCP, socket.TCP_NODELAY, _TCP_ONLY),
    ("TCP_KEEPIDLE", socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _TCP_ONLY),
    ("TCP_KEEPINTVL", socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _TCP_ONLY),
    ("TCP_KEEPCNT", socket.IPPROTO_TCP, socket.TCP_KEEPCNT, _TCP_ONLY),
    ("TCP_USER_TIMEOUT", socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18),
     _TCP_ONLY),
)
_INET_KINDS = frozenset({"tcp", "udp", "udplite", "icmp", "raw"})
_LINGER = struct.Struct("=ii")


def socket_options(h: _socket.socket, sock: Socket) -> dict[str, int | str | None]:
    """knetstat's view of one borrowed socket: getsockopt only (never setsockopt, nothing
    that changes it). An option the socket's kind does not have is left out."""
    found: dict[str, int | str | None] = {}
    for name, level, option, kinds in _OPTIONS:
        if kinds is None or sock.proto in kinds:
            found[name] = h.getsockopt(level, option)
    onoff, seconds = _LINGER.unpack(h.getsockopt(_SOL_SOCKET, socket.SO_LINGER, _LINGER.size))
    found["SO_LINGER"] = seconds if onoff else None
    if sock.proto == "tcp":
        found["TCP_CONGESTION"] = h.getsockopt(_IPPROTO_TCP, _TCP_CONGESTION, 16).split(
            b"\0", 1)[0].decode("ascii", "replace")
    if sock.proto in _INET_KINDS:
        if sock.family == "inet":
            found["IP_TOS"] = h.getsockopt(socket.IPPROTO_IP, socket.IP_TOS)
        else:
            found["IPV6_TCLASS"] = h.getsockopt(_IPPROTO_IPV6, socket.IPV6_TCLASS)
            found["IPV6_V6ONLY"] = h.getsockopt(_IPPROTO_IPV6, _IPV6_V6ONLY)
    return found


def read_options(sockets: list[Socket], stats: Stats) -> None:
    """The options of every held socket (details "options", under any source): borrowed
    from one of its holders, as the pidfd source borrows (pidfd_getfd, with its cgroup-v1
    guard); counted in stats.options_read / options_unread, one line saying why the others
    could not be read."""
    by_holder: dict[int, dict[int, int]] = {}
    want: dict[int, Socket] = {}
    for sock in sockets:
        if not sock.pids or not sock.inode or sock.proto in ("packet", "netlink"):
            continue
        pid = sock.pids[0]
        held = sock.fds.get(pid)
        if held:
            by_holder.setdefault(pid, {})[held[0]] = sock.inode
            want[sock.inode] = sock
    why: dict[str, int] = {}
    read = 0
    for pid, fds in sorted(by_holder.items()):
        result = describe_process_sockets(pid, fds, seen=set(),
                                          details=frozenset({OPTIONS}))
        for got in result.sockets:
            target = want.get(got.inode)
            if target is None or got.detail is None or got.detail.options is None:
                continue
            if target.detail is None:
                target.detail = SocketDetail()
            target.detail.options = got.detail.options
            read += 1
        for count, reason in ((result.denied, "pidfd_getfd refused (needs CAP_SYS_PTRACE)"),
                              (result.unsafe, result.unsafe_reason or "cgroup v1 re-tag"),
                              (result.vanished, "the process or fd went away")):
            if count:
                why[reason] = why.get(reason, 0) + count
    stats.options_read += read
    stats.options_unread += len(want) - read
    if len(want) > read:
        reasons = "; ".join(f"{n}: {r}" for r, n in sorted(why.items())) or "not borrowed"
        stats.privileges.append(f"socket options not read for {len(want) - read} "
                                f"socket(s) ({reasons})")


def _peer(h: _socket.socket) -> tuple[str, int] | None:
    """The other end of a connected inet socket; None when it has none (ENOTCONN)."""
    try:
        peer = h.getpeername()
    except OSError as exc:
        if exc.errno != _ENOTCONN:
            raise
        return None
    return ip_text(peer[0]), peer[1]


def _ioctl_int(fd: int, request: int) -> int | None:
    """SIOCINQ / SIOCOUTQ: a read of the socket's queue length (None: refused)."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, request, b"\0\0\0\0"), sys.byteorder,
                              signed=True)
    except OSError:
        return None


def _scope(h: _socket.socket, sock: Socket, v6: bool) -> None:
    """The bound interface, and whether an IPv6 listener takes IPv4 too: what sock_diag says
    of the same sockets (idiag_if, INET_DIAG_SKV6ONLY), no more."""
    if v6 and sock.proto in _V6ONLY_KINDS and sock.state in _V6ONLY_STATES:
        sock.v6only = h.getsockopt(_IPPROTO_IPV6, _IPV6_V6ONLY) != 0
    bound = h.getsockopt(_SOL_SOCKET, _SO_BINDTOIFINDEX)   # sk_bound_dev_if
    if bound:
        sock.bound_if = bound


def _interface_name(fd: int, ifindex: int) -> str | None:
    """The name of interface `ifindex` in the namespace of socket `fd`: SIOCGIFNAME, a query
    the kernel answers in the socket's own namespace (sock_net); None when there is none."""
    if ifindex <= 0:
        return None
    try:
        answer = fcntl.ioctl(fd, SIOCGIFNAME, _IFREQ.pack(b"", ifindex))
    except OSError:
        return None         # gone meanwhile
    return answer[:16].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _key(netns: int | None) -> str:
    return netns_key(netns) if netns is not None else ""


def pidfd_getfd_works() -> bool:
    """Whether this kernel lets us borrow an fd: tried on a pipe end of our own."""
    read_end, write_end = os.pipe()
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        os.close(read_end)
        os.close(write_end)
        return False
    try:
        dup = _syscall(SYS_pidfd_getfd, pidfd, read_end, 0)
        if dup >= 0:
            os.close(dup)
            return True
        return False   # ENOSYS (kernel < 5.6) or refused
    finally:
        os.close(pidfd)
        os.close(read_end)
        os.close(write_end)


class PidfdSource:
    """Held sockets borrowed one by one; then, from a table pass, what pidfd cannot see:
    sockets no process holds in every namespace -- TIME_WAIT, request sockets, orphans
    (FIN_WAIT1/2, CLOSING, LAST_ACK), the kernel's netlink sockets, and where a listener's
    accept queue is not empty (its TCP_INFO says so) or MPTCP sockets live, every unheld TCP
    socket (the connections waiting to be accepted, MPTCP's subflows) --
    restricted to those states where sock_diag allows (unheld_via "netlink"), and -- for a
    namespace with a member whose fds could not be borrowed -- everything, in full."""

    name = "pidfd"

    def __init__(self, unheld_via: str, cache: DiagSockets | None = None,
                 details: frozenset[str] = frozenset()):
        self.cache = cache
        self.details = details
        if unheld_via == "netlink":
            # the kernel's own netlink sockets are held by no process; orphans are in states
            # held sockets can be in too (the held ones are dropped by inode)
            self.unheld: TableSource = NetlinkSource(
                cache, tcp_states=UNHELD | ORPHAN_STATES, protos=("tcp", "netlink"),
                details=details)
            # ... and where a listener has connections waiting to be accepted, or MPTCP
            # sockets have subflows, every TCP state (held ones dropped by kind and inode)
            self.pending: TableSource = NetlinkSource(
                cache, tcp_states=ALL, protos=("tcp", "netlink"), details=details)
            self.full: TableSource = NetlinkSource(cache, details=details)
        else:
            self.unheld = self.pending = self.full = ProcSource(details)

    def met(self, ctx: ReadContext, key: str, pid: int) -> None:
        pass   # nothing is read namespace by namespace before the walk ends

    def forget(self, live: set[int]) -> None:
        if self.cache is not None:
            self.cache.prune(live)

    def kept(self) -> DiagSockets | None:
        return self.cache

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def collect(self, ctx: ReadContext, found: Discovery, on_batch: Batch) -> list[Socket]:
        sockets, blind, pending = self._borrow_all(ctx, found)
        # by kind too: an MPTCP socket's first TCP subflow has its inode, and no fd of its own
        held = {(s.proto, s.inode) for s in sockets}
        keys = set()
        for key, ns in found.namespaces.items():
            if ns.pids or ns.threads or ns.inode in found.pins:
                keys.add(key)
            elif ns.held_sockets:   # only a held socket keeps it: no task to read it through
                ns.read_via = "pidfd (its held sockets only)"
        waiting = {key for key in keys - blind if found.namespaces[key].inode in pending}
        for source, chosen in ((self.unheld, keys - blind - waiting), (self.pending, waiting),
                               (self.full, keys & blind)):
            if not chosen:
                continue
            namespaces = {k: found.namespaces[k] for k in sorted(chosen)}
            for sock in source.read_namespaces(ctx, found, namespaces):
                if sock.inode == 0 or (sock.proto, sock.inode) not in held:
                    sockets.append(sock)
        on_batch(sockets)
        return sockets

    def _borrow_all(self, ctx: ReadContext, found: Discovery
                    ) -> tuple[list[Socket], set[str], set[int]]:
        """Every held socket, asked itself; the namespaces that must be read in full
        because a member's sockets could not all be borrowed (or its fds not even listed);
        and those (inodes) with a listener whose accept queue is not empty."""
        stats = ctx.stats
        seen: set[int] = set()
        pending: set[int] = set()
        sockets: list[Socket] = []
        blind = {p.netns_key for p in found.processes.values() if not p.fds_readable}
        for pid, process in found.processes.items():
            if not process.socket_fds:
                continue
            result = describe_process_sockets(pid, process.socket_fds, seen=seen,
                                              details=self.details)
            stats.pidfd_borrowed += result.borrowed
            stats.pidfd_vanished += result.vanished
            stats.pidfd_denied += result.denied
            stats.pidfd_netns_unknown += result.netns_unknown
            stats.pidfd_unsafe += result.unsafe
            if result.denied or result.unsafe or result.failed or result.netns_unknown:
                blind.add(process.netns_key)   # what it holds comes from its namespace's tables
            pending |= result.pending_accept
            for err in result.errors:
                ctx.note_error(f"pid {pid}: {err}")
            for sock in result.sockets:
                sock.source = "pidfd"
                if sock.netns is None:
                    continue   # counted in pidfd_netns_unknown: never guess the namespace
                found.namespace(sock.netns_key).held_sockets = True
                sockets.append(sock)
        return sockets, blind, pending
