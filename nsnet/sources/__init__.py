"""Where a snapshot's sockets come from (one module per source), and which source the
privileges allow.

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

Every source implements base.Source; the snapshot (nsnet.snapshot) never asks which one runs.
"""
from __future__ import annotations

from ..caps import CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_PTRACE, has_capability, own_capabilities
from ..errors import SourceUnavailable
from ..options import SOURCES
from ..records import record
from .base import ReadContext, Source, TableRead
from .netlink import DiagSockets, NetlinkSource
from .proc import ProcSource

__all__ = ["SOURCES", "Choice", "ReadContext", "Source", "SourceUnavailable", "TableRead",
           "choose", "create"]


@record(frozen=True)
class Choice:
    source: str          # proc | netlink | pidfd
    reason: str
    unheld_via: str | None = None   # pidfd only: netlink | proc


def choose(requested: str, caps: int | None = None) -> Choice:
    """The source to use; SourceUnavailable when an explicit one cannot work at all."""
    if requested not in SOURCES:
        raise SourceUnavailable(f"unknown source {requested!r}; one of {', '.join(SOURCES)}")
    caps = own_capabilities() if caps is None else caps
    admin = has_capability(caps, CAP_SYS_ADMIN)
    if requested == "proc":
        return Choice("proc", "requested")
    if requested == "netlink":
        if not admin:
            raise SourceUnavailable("--source netlink needs CAP_SYS_ADMIN (setns into each "
                                    "namespace to open its sock_diag socket)")
        return Choice("netlink", "requested")
    if requested == "pidfd":
        from .pidfd import pidfd_getfd_works  # only when asked for: its imports cost start-up

        if not (has_capability(caps, CAP_SYS_PTRACE) and has_capability(caps, CAP_NET_ADMIN)
                and pidfd_getfd_works()):
            raise SourceUnavailable("--source pidfd needs pidfd_getfd (Linux >= 5.6) with "
                                    "CAP_SYS_PTRACE, and CAP_NET_ADMIN for SIOCGSKNS (each "
                                    "socket's namespace)")
        return Choice("pidfd", "requested", "netlink" if admin else "proc")
    if admin:
        return Choice("netlink", "auto: CAP_SYS_ADMIN allows sock_diag in each namespace "
                                 "(the fastest source measured)")
    return Choice("proc", "auto: no CAP_SYS_ADMIN for sock_diag (pidfd would still need the "
                          "/proc tables for sockets nobody holds)")


def create(choice: Choice, keep: bool = False, details: frozenset[str] = frozenset()
           ) -> Source:
    """The source a choice names. keep: keep what can be kept across snapshots (the
    agent's sock_diag sockets, one per namespace) until forget()/close(). details: the
    model.DETAILS to read besides the sockets."""
    if choice.source == "netlink":
        return NetlinkSource(DiagSockets() if keep else None, details=details)
    if choice.source == "pidfd":
        from .pidfd import PidfdSource

        return PidfdSource(choice.unheld_via or "proc", DiagSockets() if keep else None,
                           details)
    return ProcSource(details)
