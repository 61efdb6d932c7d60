"""The C allocator of a long-lived, many-threaded agent: told to give memory back.

Each sample builds a snapshot (hundreds of thousands of objects on a busy node) and drops the
previous one; HTTP clients are answered on threads of their own. CPython's small objects live
in its own arenas, returned to the system when empty; everything larger (the lists and dicts
of a snapshot, encoded answers) comes from glibc's malloc, which by default
  - gives each thread that allocates concurrently its own arena (up to 8 per core), and a
    freed block in one arena serves only that arena;
  - raises its mmap threshold to the size of any mmapped block freed (up to 32 MiB), after
    which blocks that size come from an arena's heap, where freed space is kept, not unmapped
    (malloc(3), M_MMAP_THRESHOLD: "dynamic mmap threshold").
Both make the resident size of such a process creep up by the size of its largest transient
buffers in every arena its threads touched. So the agent asks for two arenas and a fixed mmap
threshold (which also turns off the dynamic one), and trims the heaps after each sample
(malloc_trim(0): whatever is free at the top of each heap and whole free pages inside it go
back to the system).

glibc only: elsewhere (musl) these functions are missing and nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
MMAP_THRESHOLD = 256 << 10     # blocks this size and larger: their own mapping, unmapped on free


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def tune() -> bool:
    """At start, before the threads: fewer arenas, a fixed mmap threshold. False: not glibc."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(M_ARENA_MAX, ARENAS) == 1
    return _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok


def trim() -> None:
    """Give the free memory of every arena back to the system (after a sample)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
