"""Read the tables of a namespace that no process holds, only a bind mount (ip netns add).

We enter it with setns through the `nsenter` package, open the net files of our own thread
(/proc/thread-self/net/*: the files stay bound to the namespace they were opened in), and
leave before reading. The package has a pitfall: on exit it returns to the namespace of
/proc/self, which is the *main thread's*. Entered from any other thread it would move that
thread into the main thread's namespace, so we enter only from the main thread, and check
that we really came back before going on.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, TypeVar

from . import _stdlib_guard

_stdlib_guard.ensure_stdlib()
from nsenter import Namespace  # noqa: E402  (after the guard: nsenter imports pathlib)

from .netparse import NET_FILES  # noqa: E402
from .procfs import NsnetError, read_fd  # noqa: E402

OWN_PROC = "/proc"
T = TypeVar("T")


class EnterError(Exception):
    """The namespace could not be entered or read; the snapshot goes on without it."""


class LostNamespace(NsnetError):
    """We could not get back to our own namespace: nothing read afterwards could be trusted."""


def _own_netns(which: str = "thread-self") -> int:
    return os.stat(f"{OWN_PROC}/{which}/ns/net").st_ino


def run_in_namespace(path: str, expected_inode: int, action: Callable[[], T]) -> T:
    """Enter the network namespace at `path` (a bind mount, or /proc/<pid>/ns/net), run
    `action` there, come back. What `action` opens there (net files, a netlink socket) stays
    bound to that namespace after we leave."""
    if threading.current_thread() is not threading.main_thread():
        raise EnterError("namespaces are entered only from the main thread "
                         "(the nsenter package returns to the main thread's namespace)")
    home = _own_netns()
    if home != _own_netns("self"):
        raise EnterError("this thread is not in the main thread's namespace")
    try:
        try:
            ns = Namespace(path, "net", proc=OWN_PROC)
        except OSError as exc:
            raise EnterError(f"cannot open {path}: {exc.strerror}") from None
        try:
            with ns:
                inside = _own_netns()
                if inside != expected_inode:
                    raise EnterError(f"{path} now pins namespace {inside}, not {expected_inode}")
                return action()
        except OSError as exc:
            raise EnterError(f"setns into {path}: {exc.strerror or exc}"
                             + (" (needs CAP_SYS_ADMIN)" if exc.errno == 1 else "")) from None
    finally:
        _check_home(home)


def _open_own_tables() -> dict[str, int]:
    opened: dict[str, int] = {}
    try:
        for name in NET_FILES:
            try:
                opened[name] = os.open(f"{OWN_PROC}/thread-self/net/{name}",
                                       os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                pass   # e.g. no IPv6 in this kernel
    except BaseException:
        for fd in opened.values():
            os.close(fd)
        raise
    return opened


def open_tables_in(path: str, expected_inode: int) -> dict[str, int]:
    """Enter the namespace pinned at `path`, open its net files, come back. Returns name -> fd."""
    return run_in_namespace(path, expected_inode, _open_own_tables)


def _check_home(home: int) -> None:
    if _own_netns() != home:
        raise LostNamespace("left a pinned namespace but did not return to our own network "
                            "namespace; stopping rather than report sockets under the wrong one")


def read_tables_in(path: str, expected_inode: int) -> dict[str, bytes]:
    fds = open_tables_in(path, expected_inode)
    try:
        return {name: read_fd(fd) for name, fd in fds.items()}
    finally:
        for fd in fds.values():
            os.close(fd)
