"""Our own capabilities, and what their absence costs a snapshot, said in one line each.

The only reads here are of our own /proc/self/status (CapEff), never of --proc: the question is
what *this* process may do.
"""
from __future__ import annotations

from collections.abc import Sequence

from .model import Stats

CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 2, 12, 19, 21
NAMES = {CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH", CAP_NET_ADMIN: "CAP_NET_ADMIN",
         CAP_SYS_PTRACE: "CAP_SYS_PTRACE", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}


def own_capabilities() -> int:
    """Our effective capability mask (CapEff), 0 when unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has_capability(mask: int, cap: int) -> bool:
    return bool(mask >> cap & 1)


def lacking(mask: int, *caps: int) -> list[str]:
    """The names of those of `caps` that `mask` does not hold, in the order given."""
    return [NAMES[cap] for cap in caps if not has_capability(mask, cap)]


def _missing(caps: int, *needed: int) -> str:
    """'needs X and Y', or, when we hold them all, why the kernel may still say no."""
    names = [NAMES[cap] for cap in needed]
    missing = lacking(caps, *needed)
    if not missing:
        return (f"denied even with {' and '.join(names)} (it holds capabilities nsnet lacks, "
                "or a security module forbids it)")
    held = [name for name in names if name not in missing]
    return "needs " + " and ".join(missing) + (f" ({' and '.join(held)} held)" if held else "")


def named(processes: Sequence[tuple[int, str]], limit: int = 3) -> str:
    """'pid 1 (init), pid 7 (sshd), +3 more': the processes a note is about, by name."""
    shown = ", ".join(f"pid {pid} ({comm})" for pid, comm in processes[:limit])
    return shown + (f", +{len(processes) - limit} more" if len(processes) > limit else "")


def _who(count: int, total: int, processes: Sequence[tuple[int, str]]) -> str:
    """'pid 1 (init)' for one process, else '12 of 40 processes: pid 1 (init), ...'."""
    if count == 1 and len(processes) == 1:
        return named(processes)
    return f"{count} of {total} processes" + (f" ({named(processes)})" if processes else "")


def privilege_notes(stats: Stats, caps: int,
                    fd_denied: Sequence[tuple[int, str]] | None = None,
                    ns_unknown: Sequence[tuple[int, str]] | None = None) -> list[str]:
    """One line per thing a snapshot could not see for lack of privilege, naming the
    processes concerned: fd_denied, those whose fds could not be read; ns_unknown, those
    whose namespace inode is still unknown at the end (a pin entered with setns may have
    told it), as (pid, comm). Without the lists, the counts of ``stats``."""
    notes = []
    total = stats.processes
    fd_count = stats.processes_fd_denied if fd_denied is None else len(fd_denied)
    if fd_count:
        notes.append(f"no pid attribution for {_who(fd_count, total, fd_denied or ())}: /proc/<pid>/fd "
                     + _missing(caps, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH))
    ns_count = stats.processes_ns_denied if ns_unknown is None else len(ns_unknown)
    if ns_count:
        notes.append(
            f"netns inode unreadable for {_who(ns_count, total, ns_unknown or ())} "
            "(grouped by /proc/<pid>/net instead): " + _missing(caps, CAP_SYS_PTRACE))
    if stats.pinned_unreadable:
        notes.append(
            f"{stats.pinned_unreadable} namespace(s) pinned only by a bind mount not read: "
            + ("entering them needs CAP_SYS_ADMIN" if not has_capability(caps, CAP_SYS_ADMIN)
               else "see each namespace's error"))
    return notes
