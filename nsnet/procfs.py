"""The I/O boundary over procfs.

OS errors are translated here, once, into what they mean for a walker (after psutil's
wrap_exceptions): ENOENT/ESRCH -> the process is gone, EACCES/EPERM -> not allowed.
Everything is read relative to a directory fd of /proc/<pid>, which stays bound to that
process: if the pid is reused meanwhile, reads through the old fd fail instead of
silently describing the new process.
"""
from __future__ import annotations

import errno
import os
from typing import Optional

_GONE = {errno.ENOENT, errno.ESRCH}
_DENIED = {errno.EACCES, errno.EPERM}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_CHUNK = 1 << 16   # below malloc's mmap threshold: no mmap/munmap per read

PF_KTHREAD = 0x00200000


class NsnetError(Exception):
    """An error the user must see, as one line."""


class NotProcfs(NsnetError):
    pass


class ProcError(Exception):
    pass


class ProcessGone(ProcError):
    pass


class AccessDenied(ProcError):
    pass


def translate(exc: OSError) -> ProcError:
    if exc.errno in _GONE:
        return ProcessGone(str(exc))
    if exc.errno in _DENIED:
        return AccessDenied(str(exc))
    return ProcError(str(exc))   # EIO, ELOOP ...: treated like a failed read by callers



def check_procfs(proc: str) -> None:
    """Refuse anything that is not a procfs root, before walking it."""
    try:
        root = os.stat(proc)
    except OSError as exc:
        raise NotProcfs(f"--proc {proc}: {exc.strerror}") from None
    # The procfs root is always inode 1 (PROC_ROOT_INO) and has a 'stat' starting "cpu".
    head = b""
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            head = f.read(4)
    except OSError:
        pass
    if root.st_ino != 1 or head != b"cpu ":
        raise NotProcfs(f"--proc {proc} is not a procfs mount (no {proc}/stat with cpu counters)")


def list_pids(proc: str) -> list[int]:
    try:
        names = os.listdir(proc)
    except OSError as exc:
        raise NotProcfs(f"cannot list {proc}: {exc.strerror}") from None
    return sorted(int(n) for n in names if n.isdigit())


def read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def read_at(dirfd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def open_dir(path: str, dir_fd: Optional[int] = None) -> int:
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def ns_inode(dirfd: int, kind: str = "net") -> int:
    """The nsfs inode of a task's namespace (stat follows the ns link; needs ptrace-read)."""
    return os.stat(f"ns/{kind}", dir_fd=dirfd).st_ino


def procnet_id(dirfd: int) -> int:
    """An unprivileged stand-in for the namespace identity.

    /proc/<pid>/net/* entries are the namespace's own proc entries, so their inode numbers
    are per namespace and readable by anyone, where ns/net needs CAP_SYS_PTRACE.
    """
    return os.stat("net/dev", dir_fd=dirfd).st_ino


def socket_fds(dirfd: int) -> tuple[dict[int, int], int]:
    """fd -> socket inode for one task dir, and the count of fds that closed meanwhile.

    Raises OSError for the fd directory itself (translated by the caller).
    """
    fddir = os.open("fd", _DIR_FLAGS, dir_fd=dirfd)
    found: dict[int, int] = {}
    vanished = 0
    try:
        readlink = os.readlink
        for name in os.listdir(fddir):
            try:
                target = readlink(name, dir_fd=fddir)
            except OSError as exc:
                if exc.errno in _GONE:
                    vanished += 1
                    continue
                raise
            if target.startswith("socket:["):
                found[int(name)] = int(target[8:-1])
    finally:
        os.close(fddir)
    return found, vanished


def parse_stat(data: bytes) -> tuple[str, int, int, int, int]:
    """comm, ppid, flags, num_threads, starttime (clock ticks after boot) from /proc/<pid>/stat.

    comm may itself contain ') ', so the fields start after the last ')'.
    """
    open_ = data.index(b"(")
    close = data.rindex(b")")
    comm = data[open_ + 1:close].decode("utf-8", "surrogateescape")
    fields = data[close + 2:].split()
    return comm, int(fields[1]), int(fields[6]), int(fields[17]), int(fields[19])


def parse_status_euid(data: bytes) -> int:
    start = data.index(b"\nUid:")
    return int(data[start + 5:data.index(b"\n", start + 5)].split()[1])


CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 2, 12, 19, 21
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def boot_time(proc: str) -> Optional[float]:
    """When the machine whose procfs this is booted (epoch seconds), through psutil, which
    reads it from that procfs' stat; None when it cannot."""
    import psutil   # off the hot path: once per snapshot

    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = proc
    try:
        return psutil.boot_time()
    except (OSError, RuntimeError, ValueError):
        return None
    finally:
        psutil.PROCFS_PATH = saved


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


def parse_cmdline(data: bytes) -> list[str]:
    if not data:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in data.rstrip(b"\0").split(b"\0")]
