"""Where a snapshot's sockets come from, and which source the privileges allow.

proc     /proc/<pid>/net/* once per namespace: needs nothing, costs namespaces x host size
         (each tcp/tcp6 read walks the host-wide hash). The reference.
netlink  NETLINK_SOCK_DIAG dumps from a socket created inside each namespace (setns:
         CAP_SYS_ADMIN, and CAP_SYS_PTRACE to open another user's /proc/<pid>/ns/net).
pidfd    each held socket asked itself (pidfd_getfd: CAP_SYS_PTRACE; its namespace through
         SIOCGSKNS: CAP_NET_ADMIN), no table walked; what no process holds (TIME_WAIT,
         SYN_RECV) comes from a sock_diag dump restricted to those states, when CAP_SYS_ADMIN
         allows, else from the /proc tables (filtered to unheld sockets).
auto     netlink when CAP_SYS_ADMIN allows, else proc. Measured here (bench/), netlink is the
         fastest wherever it is allowed (400 namespaces, 87k sockets: netlink 3.3 s, pidfd
         4.3 s, proc 11.6 s); pidfd needs a table pass for unheld sockets anyway, which without
         CAP_SYS_ADMIN is the whole /proc cost again, so auto never picks it.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Optional

from .procfs import (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE, NsnetError,
                     has_capability, own_capabilities)

SOURCES = ("proc", "netlink", "pidfd", "auto")
SYS_pidfd_getfd = 438


class SourceUnavailable(NsnetError):
    pass


@dataclass(frozen=True)
class Choice:
    source: str          # proc | netlink | pidfd
    reason: str
    unheld_via: Optional[str] = None   # pidfd only: netlink | proc


def _pidfd_getfd_works() -> bool:
    """Borrow our own stdin-less fd 0 equivalent: a pipe end, from ourselves."""
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    try:
        pidfd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        os.close(read_end)
        os.close(write_end)
        return False
    try:
        dup = libc.syscall(SYS_pidfd_getfd, pidfd, read_end, 0)
        if dup >= 0:
            os.close(dup)
            return True
        return False   # ENOSYS (kernel < 5.6) or refused
    finally:
        os.close(pidfd)
        os.close(read_end)
        os.close(write_end)


def choose(requested: str, caps: Optional[int] = None) -> Choice:
    """The source to use; SourceUnavailable when an explicit one cannot work at all."""
    if requested not in SOURCES:
        raise SourceUnavailable(f"unknown source {requested!r}; one of {', '.join(SOURCES)}")
    caps = own_capabilities() if caps is None else caps
    ptrace, admin, netadmin = (has_capability(caps, c)
                               for c in (CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_NET_ADMIN))
    pidfd_ok = ptrace and netadmin and _pidfd_getfd_works()
    unheld = "netlink" if admin else "proc"
    if requested == "proc":
        return Choice("proc", "requested")
    if requested == "netlink":
        if not admin:
            raise SourceUnavailable("--source netlink needs CAP_SYS_ADMIN (setns into each "
                                    "namespace to open its sock_diag socket)")
        return Choice("netlink", "requested")
    if requested == "pidfd":
        if not pidfd_ok:
            raise SourceUnavailable("--source pidfd needs pidfd_getfd (Linux >= 5.6) with "
                                    "CAP_SYS_PTRACE, and CAP_NET_ADMIN for SIOCGSKNS (each "
                                    "socket's namespace)")
        return Choice("pidfd", "requested", unheld)
    if admin:
        return Choice("netlink", "auto: CAP_SYS_ADMIN allows sock_diag in each namespace "
                                 "(the fastest source measured)")
    return Choice("proc", "auto: no CAP_SYS_ADMIN for sock_diag (pidfd would still need the "
                          "/proc tables for sockets nobody holds)")
