"""The netlink source: NETLINK_SOCK_DIAG dumps from a socket created inside each namespace.

Needs CAP_SYS_ADMIN (setns, main thread only) and CAP_SYS_PTRACE to open another user's
/proc/<pid>/ns/net. A sock_diag socket answers for the namespace it was created in, whichever
thread later uses it: it is made after setns on the main thread (the walk's), and the dump runs
in a reader thread. TCP over IPv4 and IPv6 takes one TCPDIAG_GETSOCK walk of the established
hash, where the proc source's tcp and tcp6 files take two, and nothing is formatted as text.

The dumps are the only I/O here; requests and replies are nsnet.sockdiag's (pure). I/O errors
(send/recv, the receive timeout) are reported per namespace, never raised past the source.
Namespaces known only by their stand-in key (no inode: no CAP_SYS_PTRACE) cannot be entered and
are read from /proc (proc source). In agent mode the sockets are kept between snapshots
(DiagSockets), so each namespace is entered once.
"""
from __future__ import annotations

import errno as _errno
import itertools
import os
import resource
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import field
from functools import partial

from ..errors import EnterError, ProcError, fd_shortage
from ..model import (
    MEMORY,
    QUEUES,
    SHOWN_DETAILS,
    TCP_INFO,
    TRAFFIC,
    Namespace,
    Socket,
    key_inode,
)
from ..netparse import ADDRESS_FILES, PROTOCOL_NAMES, kinds_in_use, name_interfaces
from ..records import record
from ..setns import run_in_namespace
from ..sockdiag import (
    ALL,
    ANY_STATE,
    EXT_INFO,
    EXT_MEMORY,
    EXT_TCP_INFO,
    IPPROTO_MPTCP,
    IPPROTO_UDPLITE,
    NETLINK_SOCK_DIAG,
    PROTOS,
    UDIAG_SHOW_MEMINFO,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_RQLEN,
    WANT_DETAIL,
    WANT_LINKS,
    WANT_TRAFFIC,
    ParsedDump,
    build_inet_request,
    build_netlink_request,
    build_packet_request,
    build_tcp_legacy_request,
    build_unix_request,
    drop_multicast_repeats,
    parse_into,
)
from ..walk import Pin
from . import proc as proc_source
from .base import Pending, ReadContext, TableRead, TableSource
from .proc import PROTOCOLS_FILE

RECV_BUFFER = 1 << 20           # the kernel sends at most ~32 KiB per datagram of a dump
RECV_TIMEOUT = 5.0              # seconds; SO_RCVTIMEO, so blocking recv() without Python's poll

_seq = itertools.count(1)
_local = threading.local()
# Protocols this kernel's sock_diag has no handler for (it answered ENOENT once): not asked
# again, read from the /proc tables from then on (a diag module loaded later is not seen
# until restart). Set.add is atomic under the GIL: reader threads share it.
_no_diag: set[str] = set()


class NetlinkSource(TableSource):
    """tcp_states/protos narrow the dump (the pidfd source asks only for unheld TCP states).
    cache: keep each namespace's sock_diag socket across snapshots (agent mode); None: close
    it after its dump."""

    name = "netlink"

    def __init__(self, cache: DiagSockets | None = None, *, tcp_states: int = ALL,
                 protos: tuple[str, ...] = PROTOS, details: frozenset[str] = frozenset()):
        self.cache = cache
        self.tcp_states = tcp_states
        self.protos = protos
        self.details = details    # model.DETAILS asked for

    def read_via_task(self, ctx: ReadContext, key: str, task: str) -> Pending:
        inode = key_inode(key)
        if inode is None:   # a stand-in key: no ns/net to enter, only its /proc tables
            return ctx.run(proc_source.read_via_task, ctx.proc, key, task,
                           proc_source.ALL_FILES, QUEUES in self.details)
        sock, _, kept = self._diag_socket(ctx, f"{ctx.proc}/{task}/ns/net", inode)
        if sock is None:
            return TableRead(None, retries=1)
        return ctx.run(self._dump_with_addresses, sock, kept, f"pid {task}", ctx.proc, key,
                       task)

    def read_pinned(self, ctx: ReadContext, ns: Namespace, pins: list[Pin]) -> TableRead:
        assert ns.inode is not None   # pins are found by inode
        error = None
        for pin in pins:
            sock, error, kept = self._diag_socket(ctx, pin.opener, ns.inode)
            if sock is None:
                continue
            asked = sorted(_no_diag & set(self.protos))
            try:    # what this kernel's sock_diag cannot list, and which kinds are there
                tables = proc_source.read_pinned(
                    pin, ns.inode,
                    (PROTOCOLS_FILE,) + proc_source.files_of(asked) + ADDRESS_FILES,
                    QUEUES in self.details)
            except (EnterError, ProcError) as exc:
                error = str(exc)
                tables, asked = TableRead([]), []
            read = self._dump(sock, kept, f"setns {pin.shown}", kinds_in_use(tables.in_use),
                              asked)
            if read.sockets is None:
                return read
            new = [p for p in read.from_proc if p not in asked]
            _no_diag.update(new)
            if new:
                try:
                    more = proc_source.read_pinned(pin, ns.inode, proc_source.files_of(new),
                                                   QUEUES in self.details)
                except (EnterError, ProcError) as exc:
                    error = str(exc)
                    continue
                tables.sockets = (tables.sockets or []) + (more.sockets or [])
            return _merged(read, tables)
        ns.error = error   # this namespace's own failure, not the latest logged
        return TableRead(None)

    def forget(self, live: set[int]) -> None:
        if self.cache is not None:   # do not keep namespaces alive that are gone
            self.cache.prune(live)

    def kept(self) -> DiagSockets | None:
        return self.cache

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def _diag_socket(self, ctx: ReadContext, path: str, inode: int
                     ) -> tuple[socket.socket | None, str | None, bool]:
        """The namespace's sock_diag socket: the kept one, or one made inside it now (main
        thread). Returns (socket, None, kept) or (None, why not, False)."""
        if self.cache is not None:
            kept = self.cache.get(inode)
            if kept is not None:
                return kept, None, True
        try:
            sock = run_in_namespace(path, inode, open_diag_socket)
        except OSError as exc:   # socket(): our own fd table, most likely
            why = fd_shortage(exc) or f"sock_diag socket: {exc.strerror or exc}"
            ctx.note_error(why)
            return None, why, False
        except EnterError as exc:
            ctx.note_error(str(exc))
            return None, str(exc), False
        return sock, None, self.cache is not None and self.cache.put(inode, sock)

    def _dump_with_addresses(self, sock: socket.socket, kept: bool, via: str, proc: str,
                             key: str, task: str) -> TableRead:
        """In a reader thread: through the task, the namespace's addresses, its protocols'
        socket counts (kinds with none are not dumped: an mptcp_diag dump walks the node's
        whole TCP hashes, ~0.9 ms, in every namespace) and the tables of protocols this
        kernel's sock_diag cannot dump (no diag module: raw_diag is often not built; ping
        sockets have none), so that nothing /proc lists is missing here; then the dump."""
        queues = QUEUES in self.details
        asked = sorted(_no_diag & set(self.protos))     # read from /proc: no handler
        tables = proc_source.read_via_task(
            proc, key, task, (PROTOCOLS_FILE,) + proc_source.files_of(asked) + ADDRESS_FILES,
            queues)
        if tables.sockets is None:
            if not kept:
                sock.close()
            return TableRead(None, retries=1)   # the task left: the next member is asked
        read = self._dump(sock, kept, via, kinds_in_use(tables.in_use), asked)
        if read.sockets is None:
            return read
        # (not "not in _no_diag": another reader thread may have added it meanwhile)
        new = [p for p in read.from_proc if p not in asked]
        _no_diag.update(new)
        if new:     # the first namespace to meet a missing handler reads its tables too
            more = proc_source.read_via_task(proc, key, task, proc_source.files_of(new),
                                             queues)
            if more.sockets is None:
                return TableRead(None, retries=1)
            tables.sockets = (tables.sockets or []) + more.sockets
            tables.malformed += more.malformed
        return _merged(read, tables)

    def _dump(self, sock: socket.socket, kept: bool, via: str,
              in_use: set[str] | None = None, from_proc: list[str] | None = None
              ) -> TableRead:
        """Runs in a reader thread: one namespace's sockets through its sock_diag socket
        (closed after the dump unless it is kept). in_use: the kinds with sockets in use
        there (netparse.kinds_in_use; None: unknown, every kind is asked); from_proc: kinds
        read from its /proc tables instead (no sock_diag handler)."""
        skip = set(from_proc or ())
        protos = [p for p in self.protos if p not in skip
                  and (in_use is None or p not in PROTOCOL_NAMES or p in in_use)]
        try:
            # MPTCP lives here (or nothing says it does not): its TCP subflows' tokens link
            # them to their connections (the attributes of every TCP socket are read)
            links = in_use is None or "mptcp" in in_use
            result = dump_namespace(sock, tcp_states=self.tcp_states, protos=protos,
                                    details=self.details, mptcp_links=links)
        except OSError as exc:
            return TableRead(None, errors=[f"sock_diag: {exc}"])
        finally:
            if not kept:
                sock.close()
        for s in result.sockets:
            s.source = "netlink"
        return TableRead(result.sockets, result.malformed, via, errors=result.errors,
                         from_proc=sorted(result.missing | skip))


def _merged(read: TableRead, tables: TableRead) -> TableRead:
    """A dump and what /proc gave besides it (its sockets keep source "proc")."""
    assert read.sockets is not None
    read.sockets.extend(tables.sockets or ())
    read.malformed += tables.malformed
    read.addresses = tables.addresses
    read.interfaces = tables.interfaces
    if tables.interfaces is not None:
        name_interfaces(read.sockets, tables.interfaces)
    return read


@record(slots=True)
class DiagResult:
    sockets: list[Socket] = field(default_factory=list)
    malformed: int = 0
    errors: list[str] = field(default_factory=list)
    # protocols the kernel has no sock_diag handler for (ENOENT: the diag module is not
    # built, as raw_diag often is not): the namespace's /proc tables list them instead
    missing: set[str] = field(default_factory=set)

    def take(self, label: str, parsed: ParsedDump, proto: str) -> int:
        """One dump's sockets and troubles; returns the errno the kernel answered (0)."""
        self.sockets.extend(parsed.sockets)
        self.malformed += parsed.malformed
        if parsed.interrupted:
            self.errors.append(f"{label}: the kernel flagged the dump as interrupted")
        if parsed.error == _errno.ENOENT and not parsed.sockets:
            self.missing.add(proto)
        elif parsed.error:
            self.errors.append(_describe(label, parsed.error))
        return parsed.error



def _next_seq() -> int:
    return next(_seq) % 0xFFFFFFFF + 1      # 1 .. 2**32-1



def open_diag_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the calling thread's network namespace (it keeps
    answering for that namespace whichever thread or namespace uses it later)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_SOCK_DIAG)
    try:
        seconds = int(RECV_TIMEOUT)
        micros = int((RECV_TIMEOUT - seconds) * 1e6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros))
    except BaseException:
        sock.close()
        raise
    return sock


def _buffer() -> tuple[bytearray, memoryview]:
    pair = getattr(_local, "buf", None)
    if pair is None:
        buf = bytearray(RECV_BUFFER)
        pair = _local.buf = (buf, memoryview(buf))
    return pair


def run_dump(sock: socket.socket, request: bytes, seq: int, proto: str,
             want: int = 0) -> ParsedDump:
    """Send one dump request and read its replies to the end.

    If an earlier dump on this socket was abandoned half way (an exception between recv
    calls), the kernel refuses a new one with EBUSY until the old one is read out: its
    messages are skipped (stale) and the request is sent again once.
    """
    buf, view = _buffer()
    size = len(buf)
    res = ParsedDump()
    sock.send(request)
    retried = False
    while True:
        n = sock.recv_into(buf, size, socket.MSG_TRUNC)
        if n > size:            # cannot happen with 1 MiB buffers; never parse a cut datagram
            res.malformed += 1
            continue
        parse_into(view, n, proto, seq, res, want)
        if res.done:
            if res.error == _errno.EBUSY and not retried:
                retried = True
                res.busy_retries += 1
                res.done, res.error = False, 0
                while not res.stale_done:
                    n = sock.recv_into(buf, size, socket.MSG_TRUNC)
                    parse_into(view, min(n, size), proto, seq, res, want)
                sock.send(request)
                continue
            return res


def _describe(label: str, code: int) -> str:
    name = _errno.errorcode.get(code, str(code))
    return f"{label}: sock_diag answered {name} ({os.strerror(code)})"


# False once the kernel refused TCPDIAG_GETSOCK (kernels that dropped it answer
# EINVAL/ENOENT/EOPNOTSUPP): from then on one inet_diag_req_v2 per family.
_legacy_tcp: bool | None = None
_NO_LEGACY = (_errno.EINVAL, _errno.ENOENT, _errno.EOPNOTSUPP)


def dump_namespace(sock: socket.socket, *, tcp_states: int = ALL,
                   protos: Iterable[str] = PROTOS, legacy_tcp: bool | None = None,
                   details: frozenset[str] = frozenset(),
                   mptcp_links: bool = False) -> DiagResult:
    """Every socket of the namespace `sock` was created in, as netparse would list them.

    tcp_states: a TCPF bitmask (ALL, UNHELD, or e.g. TCPF["TIME_WAIT"] | ...). protos: any of
    sockdiag.PROTOS. legacy_tcp: True forces one TCPDIAG_GETSOCK request for TCP over
    both families, False one inet_diag_req_v2 per family; None (the default) uses
    TCPDIAG_GETSOCK while the kernel accepts it: each TCP request walks the whole
    established hash (shared by every namespace unless tcp_child_ehash_entries is set), so
    one request instead of two saves one full walk, ~40% of an empty namespace's cost here.
    mptcp_links: read each TCP socket's MPTCP token (a subflow's connection).
    """
    protos = set(protos)
    result = DiagResult()
    detail = WANT_DETAIL if details & SHOWN_DETAILS else 0
    ext = (EXT_TCP_INFO if TCP_INFO in details else EXT_INFO if TRAFFIC in details else 0) \
        | (EXT_MEMORY if MEMORY in details else 0)
    if "tcp" in protos and tcp_states:
        _dump_tcp(sock, result, tcp_states, legacy_tcp, ext, detail
                  | (WANT_TRAFFIC if TRAFFIC in details else 0)
                  | (WANT_LINKS if mptcp_links else 0))
    memory = EXT_MEMORY if MEMORY in details else 0     # tcp_info is TCP's alone
    if "udp" in protos:
        for family, label in ((socket.AF_INET, "udp"), (socket.AF_INET6, "udp6")):
            _ask(sock, result, label, "udp",
                 partial(build_inet_request, family, socket.IPPROTO_UDP, ANY_STATE,
                         ext=memory), detail)
    for proto, number in (("udplite", IPPROTO_UDPLITE), ("icmp", socket.IPPROTO_ICMP),
                          ("raw", socket.IPPROTO_RAW), ("mptcp", IPPROTO_MPTCP)):
        if proto not in protos:
            continue
        for family, label in ((socket.AF_INET, proto), (socket.AF_INET6, proto + "6")):
            states = ALL if proto == "mptcp" else ANY_STATE
            error = _ask(sock, result, label, proto,
                         partial(build_inet_request, family, number, states,
                                 raw_protocol=number if proto == "raw" else 0,
                                 # mptcp_info: the connection's token
                                 ext=ext | EXT_INFO if proto == "mptcp" else memory), detail)
            if error == _errno.ENOENT and family == socket.AF_INET:
                break   # no handler (the kernel looks it up by protocol): not for IPv6 either
    if "unix" in protos:
        show = UDIAG_SHOW_NAME | (UDIAG_SHOW_RQLEN if detail else 0) | \
            (UDIAG_SHOW_MEMINFO if MEMORY in details else 0)
        _ask(sock, result, "unix", "unix", partial(build_unix_request, ANY_STATE, show=show),
             detail)
    if "packet" in protos:
        _ask(sock, result, "packet", "packet", build_packet_request)
    if "netlink" in protos:
        seq = _next_seq()
        parsed = run_dump(sock, build_netlink_request(seq=seq), seq, "netlink")
        drop_multicast_repeats(parsed)
        result.take("netlink", parsed, "netlink")
    return result


def _ask(sock: socket.socket, result: DiagResult, label: str, proto: str,
         build: Callable[..., bytes], want: int = 0) -> int:
    """One dump request (build(seq=...) makes it), its replies taken into result (want:
    sockdiag.WANT_* bits); the errno the kernel answered."""
    seq = _next_seq()
    return result.take(label, run_dump(sock, build(seq=seq), seq, proto, want), proto)


def _dump_tcp(sock: socket.socket, result: DiagResult, tcp_states: int,
              legacy_tcp: bool | None, ext: int = 0, want: int = 0) -> None:
    global _legacy_tcp
    if want & WANT_LINKS:   # tcp_diag sends a subflow's INET_DIAG_ULP_INFO only with INFO
        ext |= EXT_INFO
    per_family = legacy_tcp is False or (legacy_tcp is None and _legacy_tcp is False)
    if not per_family:
        seq = _next_seq()
        parsed = run_dump(sock, build_tcp_legacy_request(tcp_states, seq=seq, ext=ext), seq,
                          "tcp", want)
        if legacy_tcp is None and parsed.error in _NO_LEGACY and not parsed.sockets:
            _legacy_tcp, per_family = False, True
        else:
            result.take("tcp", parsed, "tcp")
    if per_family:
        for family, label in ((socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")):
            _ask(sock, result, label, "tcp",
                 partial(build_inet_request, family, socket.IPPROTO_TCP, tcp_states, ext=ext),
                 want)


def kept_socket_limit() -> int:
    """How many per-namespace sockets one keeper (these sock_diag sockets; the agent's
    destroy-event subscriptions) may keep open: half the fd limit above a reserve for
    everything else (the walk's dirs, the tables, the HTTP side). 2,000 namespaces on a node
    with the usual soft limit of 1,024 then cost setns calls, not EMFILE."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, (soft - 512) // 2) if soft != resource.RLIM_INFINITY else 1 << 20


class DiagSockets:
    """sock_diag sockets kept open across snapshots, one per namespace (agent mode).

    A netlink socket stays bound to the namespace it was created in, so a sampler needs to
    setns only once per namespace. A held socket also keeps its namespace alive (and its
    inode from being reused): `prune` closes the sockets of namespaces a snapshot no longer
    found, so a namespace that is gone is not kept alive by us.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._socks: dict[int, socket.socket] = {}
        self.created = 0     # sockets opened (setns calls), for tests and metrics
        self._limit = limit  # None: half of what RLIMIT_NOFILE leaves, asked at each put

    def get(self, inode: int) -> socket.socket | None:
        return self._socks.get(inode)

    def limit(self) -> int:
        return self._limit if self._limit is not None else kept_socket_limit()

    def put(self, inode: int, sock: socket.socket) -> bool:
        """Keep `sock` for its namespace; False (not kept: the caller closes it after use)
        when the limit is reached."""
        old = self._socks.pop(inode, None)
        if old is not None and old is not sock:
            old.close()
        self.created += 1
        if len(self._socks) >= self.limit():
            return False
        self._socks[inode] = sock
        return True

    def drop(self, inode: int) -> None:
        sock = self._socks.pop(inode, None)
        if sock is not None:
            sock.close()

    def prune(self, live: set[int]) -> None:
        for inode in [i for i in self._socks if i not in live]:
            self.drop(inode)

    def inodes(self) -> list[int]:
        return list(self._socks)

    def fileno(self, inode: int) -> int:
        return self._socks[inode].fileno()

    def adopt(self, inode: int, fd: int) -> None:
        """Keep the socket another process opened in that namespace and passed us (an fd
        received with SCM_RIGHTS: the agent's sampling child, see agent/isolate.py)."""
        sock = socket.socket(fileno=fd)
        if not self.put(inode, sock):
            sock.close()

    def __len__(self) -> int:
        return len(self._socks)

    def close(self) -> None:
        self.prune(set())
