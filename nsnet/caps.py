"""Our own capabilities, and what their absence costs a snapshot, said in one line each.

The only reads here are of our own /proc/self/status (CapEff), never of --proc: the question is
what *this* process may do.
"""
from __future__ import annotations

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
        return (f"denied even with {' and '.join(names)} (such processes hold capabilities "
                "nsnet lacks, or a security module forbids it)")
    held = [name for name in names if name not in missing]
    return "needs " + " and ".join(missing) + (f" ({' and '.join(held)} held)" if held else "")


def privilege_notes(stats: Stats, caps: int) -> list[str]:
    """One line per thing a snapshot could not see for lack of privilege."""
    notes = []
    total = stats.processes
    if stats.processes_fd_denied:
        notes.append(
            f"pid attribution unavailable for {stats.processes_fd_denied} of {total} processes: "
            + _missing(caps, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH))
    if stats.processes_ns_denied:
        notes.append(
            f"namespace inode unreadable for {stats.processes_ns_denied} of {total} processes "
            "(grouped by their /proc/<pid>/net identity instead): "
            + _missing(caps, CAP_SYS_PTRACE))
    if stats.pinned_unreadable:
        notes.append(
            f"{stats.pinned_unreadable} namespace(s) pinned only by a bind mount not read: "
            + ("entering them needs CAP_SYS_ADMIN" if not has_capability(caps, CAP_SYS_ADMIN)
               else "see each namespace's error"))
    return notes
