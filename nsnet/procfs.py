"""The I/O boundary over procfs.

OS errors are translated here, once, into what they mean for a walker (after psutil's
wrap_exceptions): ENOENT/ESRCH -> ProcessGone, EACCES/EPERM -> AccessDenied, anything else
-> ProcError; every function below raises only those (with the OSError chained), so callers
never look at an errno. Everything is read relative to a directory fd of /proc/<pid>, which
stays bound to that process: if the pid is reused meanwhile, reads through the old fd fail
instead of silently describing the new process.

psutil (a dependency named by the design card) is used here and nowhere else: once per
snapshot, for the boot time of the procfs being read.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from .errors import NotProcfs, NsnetError, fd_shortage, translate

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_READ_CHUNK = 1 << 16   # below malloc's mmap threshold: no mmap/munmap per read

PF_KTHREAD = 0x00200000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def check_procfs(proc: str) -> None:
    """Refuse anything that is not a procfs root, before walking it."""
    try:
        root = os.stat(proc)
    except OSError as exc:
        raise NotProcfs(f"--proc {proc}: {exc.strerror}") from exc
    # The procfs root is always inode 1 (PROC_ROOT_INO) and has a 'stat' starting "cpu".
    head = b""
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            head = f.read(4)
    except OSError as exc:
        shortage = fd_shortage(exc)
        if shortage is not None:   # not a /proc problem: say what it is
            raise NsnetError(shortage) from exc
    if root.st_ino != 1 or head != b"cpu ":
        raise NotProcfs(f"--proc {proc} is not a procfs mount (no {proc}/stat with cpu counters)")


def list_pids(proc: str) -> list[int]:
    try:
        names = os.listdir(proc)
    except OSError as exc:
        raise NotProcfs(f"cannot list {proc}: {exc.strerror}") from exc
    return sorted(int(n) for n in names if n.isdigit())


# What a tenant's own text may cost us at most: its command line (the kernel allows up to a
# quarter of the stack limit, megabytes) and its mount table (one line per mount, up to
# fs.mount-max = 100,000 of them). Anything longer is cut there; a cut command line only
# loses its tail, a cut mount table is counted (stats.mountinfo_cut).
MAX_TASK_TEXT = 1 << 16
MAX_MOUNTINFO = 32 << 20


def read_fd(fd: int, limit: int | None = None) -> bytes:
    """Everything an open /proc file has to say, or its first `limit` bytes. A seq_file
    answers in pieces, so read to EOF (or the limit)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while limit is None or size < limit:
            chunk = os.read(fd, _READ_CHUNK if limit is None else min(_READ_CHUNK,
                                                                    limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise translate(exc) from exc
    return b"".join(chunks)


def read_at(dirfd: int, name: str, limit: int | None = MAX_TASK_TEXT) -> bytes:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dirfd)
    except OSError as exc:
        raise translate(exc) from exc
    try:
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def open_dir(path: str, dir_fd: int | None = None) -> int:
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise translate(exc) from exc


def close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def open_files_at(dirfd: int, prefix: str, names: tuple[str, ...],
                  optional: frozenset[str] = frozenset()) -> dict[str, int]:
    """Open several files under one directory fd: name -> fd. A missing file whose name is in
    `optional` is skipped (e.g. net/tcp6 on a kernel without IPv6); any other failure closes
    what was opened and raises."""
    fds: dict[str, int] = {}
    try:
        for name in names:
            try:
                fds[name] = os.open(f"{prefix}{name}", _FILE_FLAGS, dir_fd=dirfd)
            except FileNotFoundError:
                if name not in optional:
                    raise
    except OSError as exc:
        close_all(fds)
        raise translate(exc) from exc
    return fds


def ns_inode(dirfd: int, kind: str = "net") -> int:
    """The nsfs inode of a task's namespace (stat follows the ns link; needs ptrace-read)."""
    try:
        return os.stat(f"ns/{kind}", dir_fd=dirfd).st_ino
    except OSError as exc:
        raise translate(exc) from exc


def procnet_id(dirfd: int) -> int:
    """An unprivileged stand-in for the namespace identity.

    /proc/<pid>/net/* entries are the namespace's own proc entries, so their inode numbers
    are per namespace and readable by anyone, where ns/net needs CAP_SYS_PTRACE.
    """
    try:
        return os.stat("net/dev", dir_fd=dirfd).st_ino
    except OSError as exc:
        raise translate(exc) from exc


def listdir_at(dirfd: int, name: str) -> list[str]:
    fd = open_dir(name, dirfd)
    try:
        return os.listdir(fd)
    except OSError as exc:
        raise translate(exc) from exc
    finally:
        os.close(fd)


class FdScan(NamedTuple):
    sockets: dict[int, int]    # fd -> socket inode
    vanished: int              # closed between the listing and their readlink
    skipped: int               # listed beyond the limit, not read
    read: int                  # fd links read (the work done)


def socket_fds(dirfd: int, limit: int | None = None) -> FdScan:
    """The socket fds of one task dir, reading at most `limit` fd links (None: all).

    Raises ProcessGone / AccessDenied / ProcError for the fd directory itself.
    """
    fddir = open_dir("fd", dirfd)
    found: dict[int, int] = {}
    vanished = skipped = 0
    try:
        if limit == 0:
            # Nothing may be read: count without listing. Since Linux 6.2 the size of a
            # /proc/<pid>/fd directory is its number of open fds (proc_fd_getattr); before,
            # it is 0 and the listing below counts them.
            size = os.fstat(fddir).st_size
            if size > 0:
                return FdScan({}, 0, size, 0)
        readlink = os.readlink
        names = os.listdir(fddir)
        if limit is not None and len(names) > limit:
            skipped = len(names) - limit
            del names[limit:]
        # The hot loop of the walk (one readlink per fd of every process): no call per fd
        # but the syscall itself.
        for name in names:
            try:
                target = readlink(name, dir_fd=fddir)
            except (FileNotFoundError, ProcessLookupError):   # closed since the listing
                vanished += 1
                continue
            if target.startswith("socket:["):
                found[int(name)] = int(target[8:-1])
    except OSError as exc:
        raise translate(exc) from exc
    finally:
        os.close(fddir)
    return FdScan(found, vanished, skipped, len(names))


def read_text(path: str, limit: int | None = None) -> bytes:
    """A whole file by path (mountinfo, cgroup of our own process ...), or its first
    `limit` bytes."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as exc:
        raise translate(exc) from exc
    try:   # in pieces: f.read(limit) would allocate the whole limit (32 MiB) up front
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def boot_time(proc: str) -> float | None:
    """When the machine whose procfs this is booted (epoch seconds), through psutil, which
    reads it from that procfs' stat; None when it cannot."""
    import psutil  # off the hot path: once per snapshot

    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = proc
    try:
        return float(psutil.boot_time())
    except (OSError, RuntimeError, ValueError):
        return None
    finally:
        psutil.PROCFS_PATH = saved


def socket_protocol(proc: str, pid: int, fd: int, inode: int) -> str | None:
    """The sockfs protocol name ("UNIX-STREAM", "TCP", "NETLINK", ...) of the socket a
    process holds at fd, if that fd still holds socket `inode`; None when it does not or
    cannot be asked. sockfs answers getxattr("system.sockprotoname") for every socket, and
    through /proc/<pid>/fd/<n> it needs only the access readlink needs (ptrace read)."""
    path = f"{proc}/{pid}/fd/{fd}"
    try:
        if os.stat(path).st_ino != inode:
            return None
        name = os.getxattr(path, "system.sockprotoname")
    except OSError:
        return None
    return name.rstrip(b"\0").decode("ascii", "replace")
