"""The proc source: /proc/<pid>/net/{tcp,udp,udplite,icmp,raw}{,6}, unix, packet and netlink
once per namespace.

Needs no privilege for the tables. Costs namespaces x host size: each tcp/tcp6 read walks the
host-wide TCP established hash, whatever the namespace holds. The reference the other sources
are checked against.

A namespace's files are opened through one of its member tasks, between two checks that the
task is (still) in that namespace: a net file stays bound to the namespace it was opened in,
so a task that exits, moves or whose pid is reused between the checks cannot file its tables
under the wrong namespace (the next member is tried). A namespace only a bind mount keeps is
entered (setns, main thread), its files opened through /proc/thread-self/net/, and left
before reading.
"""
from __future__ import annotations

import os
from functools import partial

from ..errors import EnterError, ProcError
from ..model import QUEUES, Namespace, Stats
from ..netparse import (
    ADDRESS_FILES,
    NET_FILES,
    Address,
    interface_names,
    name_interfaces,
    parse_fib_trie_local,
    parse_if_inet6,
    parse_net_file,
    parse_protocols,
)
from ..procfs import close_all, open_dir, open_files_at, read_fd
from ..setns import OWN_PROC, run_in_namespace
from ..walk import Pin, namespace_key
from .base import Pending, ReadContext, TableRead, TableSource

# A kernel without IPv6 has no tcp6, udp6, raw6, if_inet6; without CONFIG_IP_FIB_TRIE-style
# procfs (or IPv4) no fib_trie; UDP-Lite, ping sockets, packet sockets are options too (and
# UDP-Lite is on its way out of the kernel). Only tcp, udp, raw and unix must be there.
PROTOCOLS_FILE = "protocols"     # sockets in use per protocol: which kinds to dump at all
_OPTIONAL = frozenset(NET_FILES) - {"tcp", "udp", "raw", "unix"} | frozenset(ADDRESS_FILES) \
    | {PROTOCOLS_FILE}
_FILES = ALL_FILES = NET_FILES + ADDRESS_FILES


def files_of(protos: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The /proc/<pid>/net tables that list these protocols (tcp -> tcp, tcp6; unix -> unix)."""
    return tuple(name for name in NET_FILES if name.removesuffix("6") in protos)


class ProcSource(TableSource):
    """details: model.DETAILS asked for; the tables give the queues and timers (QUEUES)."""
    name = "proc"

    def __init__(self, details: frozenset[str] = frozenset()):
        self.queues = QUEUES in details

    def read_via_task(self, ctx: ReadContext, key: str, task: str) -> Pending:
        return ctx.run(read_via_task, ctx.proc, key, task, _FILES, self.queues)

    def read_pinned(self, ctx: ReadContext, ns: Namespace, pins: list[Pin]) -> TableRead:
        assert ns.inode is not None   # pins are found by inode
        for pin in pins:
            try:
                return read_pinned(pin, ns.inode, _FILES, self.queues)
            except (EnterError, ProcError) as exc:
                ns.error = str(exc)
        return TableRead(None)


def read_pinned(pin: Pin, inode: int, names: tuple[str, ...] = _FILES,
                queues: bool = False) -> TableRead:
    """A namespace only a bind mount keeps, entered through `pin` (main thread): the tables
    `names` (queues: with the queues and timers). EnterError or ProcError when it cannot be
    entered or read."""
    tables = _read_all(run_in_namespace(pin.opener, inode, partial(_open_own_tables, names)))
    return _parse(tables, f"setns {pin.shown}", queues)


def read_via_task(proc: str, key: str, task: str, names: tuple[str, ...] = _FILES,
                  queues: bool = False) -> TableRead:
    """Runs in a reader thread: touches nothing shared, returns what it found (the tables
    `names`: all of them unless told; queues: with the queues and timers)."""
    try:
        fds = _open_tables(f"{proc}/{task}", key, names)
    except ProcError:
        fds = None
    if fds is None:
        return TableRead(None, retries=1)
    try:
        tables = _read_all(fds)
    except ProcError:
        return TableRead(None, retries=1)
    pid, _, tid = task.partition("/task/")
    return _parse(tables, f"task {tid} of pid {pid}" if tid else f"pid {pid}", queues)


def _open_tables(path: str, expected_key: str, names: tuple[str, ...] = _FILES
                 ) -> dict[str, int] | None:
    """A task's net files, if it is (still) in the expected namespace before and after they
    are opened; None otherwise."""
    dirfd = open_dir(path)
    fds: dict[str, int] = {}
    try:
        if namespace_key(dirfd, Stats())[0] != expected_key:
            return None
        fds = open_files_at(dirfd, "net/", names, _OPTIONAL)
        if namespace_key(dirfd, Stats())[0] != expected_key:
            return None
        opened, fds = fds, {}
        return opened
    finally:
        close_all(fds)
        os.close(dirfd)


def _open_own_tables(names: tuple[str, ...] = _FILES) -> dict[str, int]:
    """Our own thread's net files: run inside a namespace by run_in_namespace."""
    own = open_dir(f"{OWN_PROC}/thread-self")
    try:
        return open_files_at(own, "net/", names, _OPTIONAL)
    finally:
        os.close(own)


def _read_all(fds: dict[str, int]) -> dict[str, bytes]:
    try:
        return {name: read_fd(fd) for name, fd in fds.items()}
    finally:
        close_all(fds)


def _parse(tables: dict[str, bytes], via: str, queues: bool = False) -> TableRead:
    read = TableRead([], via=via)
    assert read.sockets is not None
    for name in NET_FILES:
        if name in tables:
            parsed = parse_net_file(name, tables[name], queues)
            read.sockets.extend(parsed.sockets)
            read.malformed += parsed.malformed
    read.addresses, malformed = _addresses(tables)
    read.malformed += malformed
    if "if_inet6" in tables:
        read.interfaces = interface_names(tables["if_inet6"])
        name_interfaces(read.sockets, read.interfaces)
    if PROTOCOLS_FILE in tables:
        read.in_use = parse_protocols(tables[PROTOCOLS_FILE])
    return read


def _addresses(files: dict[str, bytes]) -> tuple[list[Address] | None, int]:
    if "fib_trie" not in files and "if_inet6" not in files:
        return None, 0
    v4, bad4 = parse_fib_trie_local(files.get("fib_trie", b""))
    v6, bad6 = parse_if_inet6(files.get("if_inet6", b""))
    return v4 + v6, bad4 + bad6
