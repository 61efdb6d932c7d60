"""Run something inside another network namespace, from the main thread, and come back.

What the action opens there (net files, a netlink socket) stays bound to that namespace after
we leave: the proc source opens a pinned namespace's net files this way, the netlink source
creates each namespace's sock_diag socket, the agent subscribes to destroy events.

setns goes through the `nsenter` package (a dependency named by the design card; used here
and nowhere else). The package has a pitfall: on exit it returns to the namespace of
/proc/self, which is the *main thread's*. Entered from any other thread it would move that
thread into the main thread's namespace, so we enter only from the main thread, and check
that we really came back before going on.

The path may lead through a tenant's mount namespace (/proc/<pid>/root/<pin>), where the
tenant can put anything over it after the kernel listed the pin: a FIFO (an open() that never
returns), a device, another kind of namespace (setns with type 0 would enter it). So the
path is first opened O_PATH (no open side effect, no blocking), and only a file of the nsfs
filesystem with the expected inode is entered -- through our own descriptor
(/proc/self/fd/N reopens exactly that file, whatever the path points to by then).
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

from . import _stdlib_guard

_stdlib_guard.ensure_stdlib()
from nsenter import Namespace  # noqa: E402  (after the guard: nsenter imports pathlib)

from .errors import EnterError, LostNamespace, fd_shortage  # noqa: E402

OWN_PROC = "/proc"
T = TypeVar("T")

__all__ = ["OWN_PROC", "EnterError", "LostNamespace", "run_in_namespace"]


def _own_netns(which: str = "thread-self") -> int:
    return os.stat(f"{OWN_PROC}/{which}/ns/net").st_ino


_nsfs_dev: int | None = None


def _nsfs_device() -> int:
    """The device of the nsfs filesystem (every namespace file lives on it)."""
    global _nsfs_dev
    if _nsfs_dev is None:
        _nsfs_dev = os.stat(f"{OWN_PROC}/self/ns/net").st_dev
    return _nsfs_dev


def _open_namespace_file(path: str, expected_inode: int) -> int:
    """An O_PATH descriptor of the network namespace file at `path`, checked to be the
    namespace expected; EnterError for anything else (never blocks, opens nothing)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise EnterError(fd_shortage(exc) or f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_dev != _nsfs_device() or st.st_ino != expected_inode:
            kind = "another namespace" if st.st_dev == _nsfs_device() else \
                f"not a namespace file ({_file_kind(st.st_mode)})"
            raise EnterError(f"{path} is {kind}, not the pinned namespace {expected_inode}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "a file"


def run_in_namespace(path: str, expected_inode: int, action: Callable[[], T]) -> T:
    """Enter the network namespace at `path` (a bind mount, or /proc/<pid>/ns/net), run
    `action` there, come back. Raises EnterError when the namespace cannot be entered or is
    not the one expected (an OSError of `action` is reported as such), LostNamespace when we
    could not come back."""
    if threading.current_thread() is not threading.main_thread():
        raise EnterError("namespaces are entered only from the main thread "
                         "(the nsenter package returns to the main thread's namespace)")
    home = _own_netns()
    if home != _own_netns("self"):
        raise EnterError("this thread is not in the main thread's namespace")
    checked = _open_namespace_file(path, expected_inode)
    try:
        try:
            # reopens the file our O_PATH descriptor holds, not whatever `path` is by now
            ns = Namespace(f"{OWN_PROC}/self/fd/{checked}", "net", proc=OWN_PROC)
        except OSError as exc:
            raise EnterError(fd_shortage(exc) or f"cannot open {path}: {exc.strerror}") from exc
        finally:
            os.close(checked)
        try:
            with ns:
                inside = _own_netns()
                if inside != expected_inode:
                    raise EnterError(f"{path} now pins namespace {inside}, not {expected_inode}")
                return action()
        except OSError as exc:
            raise EnterError(fd_shortage(exc) or (
                f"setns into {path}: {exc.strerror or exc}"
                + (" (needs CAP_SYS_ADMIN)" if exc.errno == errno.EPERM else ""))) from exc
    finally:
        _check_home(home)


def _check_home(home: int) -> None:
    if _own_netns() != home:
        raise LostNamespace("left a pinned namespace but did not return to our own network "
                            "namespace; stopping rather than report sockets under the wrong one")
