"""Pure parsers of the per-process files the walk reads: /proc/<pid>/stat, status, cmdline.

No I/O here (procfs.py reads, these parse), so they are tested on captured text. Each raises
ValueError on text that does not have the kernel's layout; the walk counts such a process as
unreadable instead of guessing.
"""
from __future__ import annotations


def parse_stat(data: bytes) -> tuple[str, int, int, int, int]:
    """comm, ppid, flags, num_threads, starttime (clock ticks after boot) from /proc/<pid>/stat.

    comm may itself contain ') ' (a process chooses its name), so the fields start after the
    last ')' (fs/proc/array.c prints comm between the first '(' and that one).
    """
    try:
        open_ = data.index(b"(")
        close = data.rindex(b")")
        comm = data[open_ + 1:close].decode("utf-8", "surrogateescape")
        fields = data[close + 2:].split()
        return comm, int(fields[1]), int(fields[6]), int(fields[17]), int(fields[19])
    except IndexError:
        raise ValueError(f"not a /proc/<pid>/stat line: {data[:80]!r}") from None


def parse_status_euid(data: bytes) -> int:
    """The effective uid: the second number of status's `Uid:` line (real, effective, ...)."""
    try:
        start = data.index(b"\nUid:")
        return int(data[start + 5:data.index(b"\n", start + 5)].split()[1])
    except IndexError:
        raise ValueError("no effective uid in /proc/<pid>/status") from None


def parse_cmdline(data: bytes) -> list[str]:
    """argv from /proc/<pid>/cmdline (NUL-separated; empty for kernel threads and zombies)."""
    if not data:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0")]
