"""The node's connection-tracking table, read for its NAT translations: which backend a
connection to a Service VIP reaches. The I/O; the parsing is nsnet.ctparse's (pure).

Why the host namespace's table. A pod reaches a Service through its ClusterIP: the pod's
socket is connected to the VIP, and stays so. kube-proxy in iptables (or nftables) mode
rewrites the destination with a DNAT rule in the nat table of the node's network namespace:
in PREROUTING for traffic from pods (it enters the node's namespace through the pod's veth),
in OUTPUT for the node's own processes (hostNetwork pods included). NAT works on
connection-tracking entries (nf_nat_setup_info alters the entry's reply tuple at the first
packet), so the entry that records the rewrite lives in the node's (the host's) namespace's
table, keyed by the original tuple, which is the client socket's own view of its connection.
kube-proxy in IPVS mode sets net.ipv4.vs.conntrack=1, so that IPVS also records each
connection it balances in conntrack with the real server as the reply's source (not tested
here: this kernel has no CONFIG_IP_VS). eBPF socket-level load balancing (Cilium's
kube-proxy replacement) rewrites the socket's own destination at connect(): the socket
already names the backend, and there is no translation to find.

How it is read, in this order:
  1. a ctnetlink dump (NETLINK_NETFILTER), when our own network namespace is the host's:
     the table of the namespace the netlink socket is made in (no setns here). The kernel
     answers EPERM without CAP_NET_ADMIN over that namespace (nfnetlink_rcv).
  2. <proc>/1/net/nf_conntrack: the table of pid 1's namespace, from any namespace. The
     file exists with CONFIG_NF_CONNTRACK_PROCFS only (ENOENT otherwise: normal, said as
     missing, no trace), mode 0440 for the namespace's root; /proc/<pid>/net needs ptrace
     read access to the pid (measured: uid 0 with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH
     reads it from another network namespace, the DaemonSet's case).
  3. else a one-line error saying what is missing.
The kernel tracks connections only once some netfilter rule needs conntrack (a nat rule
does): an empty table is normal, not an error. OSError is turned into words once, here
(read_translations); nothing is raised for a missing or refused table.
"""
from __future__ import annotations

import errno as _errno
import itertools
import os
import socket
import struct

from .ctparse import (
    NETLINK_NETFILTER,
    CtDump,
    Translations,
    build_ctnetlink_dump_request,
    describe_error,
    parse_ctnetlink_into,
    parse_proc_conntrack,
)
from .errors import fd_shortage, is_denied, is_gone
from .records import record
from .sources.netlink import RECV_BUFFER, RECV_TIMEOUT

CTNETLINK = "ctnetlink"
OWN_NETNS = "/proc/thread-self/ns/net"   # the calling thread's: the one a socket is made in
_READ_SIZE = 1 << 20                     # seq_file fills what a read asks, record by record
_seq = itertools.count(1)


@record(frozen=True, slots=True)
class ConntrackRead:
    """What read_translations found: the translations and where they were read (CTNETLINK
    or the proc file's path), or None and one line saying what is missing."""
    translations: Translations | None
    via: str
    error: str | None = None


def proc_table_path(proc: str) -> str:
    return f"{proc.rstrip('/')}/1/net/nf_conntrack"


def read_translations(proc: str, host_inode: int | None) -> ConntrackRead:
    """The host namespace's destination translations. host_inode: the inode of pid 1's
    network namespace in `proc` (None: unknown, ctnetlink is not tried)."""
    path = proc_table_path(proc)
    why: list[str] = []
    own = own_netns_inode()
    if host_inode is not None and own == host_inode:
        try:
            return ConntrackRead(dump_ctnetlink(), CTNETLINK)
        except OSError as exc:        # EPERM without CAP_NET_ADMIN: the file may still do
            lacking = " without CAP_NET_ADMIN" if is_denied(exc) else ""
            why.append(f"ctnetlink: {_reason(exc)}{lacking}")
    else:
        why.append("ctnetlink: not in the host's network namespace")
    try:
        data = read_proc_table(path)
    except OSError as exc:
        if is_gone(exc) and not conntrack_in_kernel():
            # no connection tracking at all: nothing is translated, nothing to say
            return ConntrackRead(None, "")
        # ENOENT: no CONFIG_NF_CONNTRACK_PROCFS (or no pid 1 there): said, never traced
        why.append(f"{path}: {'not there' if is_gone(exc) else _reason(exc)}")
        return ConntrackRead(None, path, _missing(path, why))
    return ConntrackRead(parse_proc_conntrack(data), path)


def conntrack_in_kernel(sysfs: str = "/sys") -> bool:
    """Whether this kernel tracks connections at all: nf_conntrack, built in or loaded, is
    listed under /sys/module (it has parameters: hashsize). Without it no address is
    translated, and a missing table is no loss worth a warning."""
    return os.path.exists(f"{sysfs}/module/nf_conntrack")


def _missing(path: str, why: list[str]) -> str:
    return ("Service VIPs not resolved: no connection-tracking table readable (needs "
            f"{path} (CONFIG_NF_CONNTRACK_PROCFS) or CAP_NET_ADMIN in the host's network "
            f"namespace; {'; '.join(why)})")


def _reason(exc: OSError) -> str:
    """An OSError in a few words (its errno's name and text)."""
    shortage = fd_shortage(exc)
    if shortage is not None:
        return shortage
    if exc.errno == _errno.EAGAIN:      # SO_RCVTIMEO ran out
        return f"no answer within {RECV_TIMEOUT:g}s"
    name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name} ({os.strerror(exc.errno) if exc.errno else exc})"


def own_netns_inode() -> int | None:
    try:
        return os.stat(OWN_NETNS).st_ino
    except OSError:
        return None         # no /proc of our own: we cannot tell, ctnetlink is not tried


def read_proc_table(path: str) -> bytes:
    """The whole file, read to its end (raises OSError)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def dump_ctnetlink() -> Translations:
    """A ctnetlink dump of the calling thread's network namespace's table (seen counts what
    the kernel sent). Raises OSError, the kernel's
    NLMSG_ERROR answer as one (EPERM: no CAP_NET_ADMIN over the namespace)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)
    with sock:
        seconds = int(RECV_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("@ll", seconds, int((RECV_TIMEOUT - seconds) * 1e6)))
        seq = next(_seq) % 0xFFFFFFFF + 1
        buf = bytearray(RECV_BUFFER)
        dump = CtDump()
        # Every entry, not only those with IPS_DST_NAT (the kernel could filter on it): IPVS
        # rewrites an entry's reply tuple to the real server (ip_vs_update_conntrack ->
        # nf_conntrack_alter_reply) without setting that bit, and kube-proxy's IPVS mode
        # is a Service VIP too. The parser compares the tuples itself.
        sock.send(build_ctnetlink_dump_request(seq))
        with memoryview(buf) as view:
            while not dump.done:
                n = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
                if n > len(buf):    # a datagram larger than 1 MiB: never parse a cut one
                    dump.translations.malformed += 1
                    continue
                parse_ctnetlink_into(view, n, seq, dump)
    code = dump.translations.error
    if code:
        raise OSError(code, describe_error(code))
    return dump.translations
