"""The interface every socket source implements, and the machinery the table sources share.

A source turns what the walk discovered into the node's sockets (netns and netns_key set,
no holders yet: the join does that). It is told when the walk meets a namespace's first
member (`met`), so that a source reading namespace by namespace can start at once and overlap
the kernel's table walks with ours, and then asked to `collect` everything, handing each
namespace's sockets to `on_batch` as they come in (the snapshot joins and classifies them
while the reader threads still read the others). A source may keep things across snapshots
(the agent's sock_diag sockets): `forget` drops what it keeps for namespaces that are gone,
`close` all of it.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import field
from typing import TYPE_CHECKING, Any, Protocol, Union

from ..model import Namespace, Socket, Stats
from ..netparse import Address
from ..records import record
from ..walk import Discovery, Pin

if TYPE_CHECKING:   # netlink.py builds on this module
    from .netlink import DiagSockets

Batch = Callable[[list[Socket]], None]
MAX_SOURCE_ERRORS = 3   # stats.source_errors keeps the first few


@record
class TableRead:
    """One namespace's sockets as one read gave them (None: it could not be read)."""
    sockets: list[Socket] | None
    malformed: int = 0
    via: str | None = None        # "pid 123", "task 5 of pid 4", "setns /run/netns/x"
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    # the namespace's own addresses, read with its tables (None: not read)
    addresses: list[Address] | None = None
    # protocols sock_diag could not dump (no diag module), read from /proc instead
    from_proc: list[str] = field(default_factory=list)
    # ifindex -> name of the namespace's interfaces that /proc/net/if_inet6 lists (None: not
    # read), to name packet sockets' interfaces
    interfaces: dict[int, str] | None = None
    # /proc/net/protocols: sockets in use per protocol (None: not read)
    in_use: dict[str, int] | None = None


Pending = Union["Future[TableRead]", TableRead]


@record
class ReadContext:
    """What one snapshot gives its source: where to read, its stats, its reader threads."""
    proc: str
    stats: Stats
    pool: ThreadPoolExecutor | None
    enter_pinned: bool
    # reads started when the walk met a namespace: key -> (the task read through, its read)
    early: dict[str, tuple[str, Pending]] = field(default_factory=dict)

    def run(self, fn: Callable[..., TableRead], *args: Any) -> Pending:
        """In a reader thread when there are some, else now."""
        return self.pool.submit(fn, *args) if self.pool is not None else fn(*args)

    def note_error(self, text: str) -> None:
        if len(self.stats.source_errors) < MAX_SOURCE_ERRORS:
            self.stats.source_errors.append(text)


class Source(Protocol):
    name: str   # proc | netlink | pidfd: what each Socket.source says

    def met(self, ctx: ReadContext, key: str, pid: int) -> None:
        """The walk met the first member of namespace `key` (an inode key)."""

    def collect(self, ctx: ReadContext, found: Discovery, on_batch: Batch) -> list[Socket]:
        """Every socket of the node; each namespace's also given to on_batch, once."""

    def forget(self, live: set[int]) -> None:
        """Drop what is kept across snapshots for namespaces not in `live` (inodes)."""

    def kept(self) -> DiagSockets | None:
        """The per-namespace sockets kept across snapshots, if any (the agent hands those
        a sampling child opened back to its parent)."""

    def close(self) -> None:
        """Drop everything kept across snapshots."""


def _result(pending: Pending) -> TableRead:
    return pending.result() if isinstance(pending, Future) else pending


class TableSource:
    """A source that reads each namespace's whole socket list at once, through one of its
    member tasks, or -- for a namespace only a bind mount keeps -- by entering it: the proc
    and netlink sources. Subclasses say how one read is done (read_via_task, read_pinned);
    the order, the retries through other members and the bookkeeping are here."""

    name = "tables"

    def read_via_task(self, ctx: ReadContext, key: str, task: str) -> Pending:
        """Begin reading namespace `key` through one task (a pid, or "pid/task/tid")."""
        raise NotImplementedError

    def read_pinned(self, ctx: ReadContext, ns: Namespace, pins: list[Pin]) -> TableRead:
        """Read a namespace that no task of ours sees, through its pins (main thread)."""
        raise NotImplementedError

    def met(self, ctx: ReadContext, key: str, pid: int) -> None:
        # Reading a namespace's tables is mostly the kernel walking its socket hashes, with
        # the GIL released: with reader threads, start as soon as the walk meets it.
        if ctx.pool is not None and key not in ctx.early:
            ctx.early[key] = (str(pid), self.read_via_task(ctx, key, str(pid)))

    def collect(self, ctx: ReadContext, found: Discovery, on_batch: Batch) -> list[Socket]:
        return self.read_namespaces(ctx, found, found.namespaces, on_batch)

    def forget(self, live: set[int]) -> None:
        pass

    def kept(self) -> DiagSockets | None:
        return None

    def close(self) -> None:
        pass

    def read_namespaces(self, ctx: ReadContext, found: Discovery,
                        namespaces: dict[str, Namespace],
                        on_batch: Batch | None = None) -> list[Socket]:
        """Each of `namespaces` once, from a member task or its pin, in key order; each
        namespace's sockets go to on_batch as soon as they are in."""
        pending: dict[str, tuple[list[str], Pending]] = {}
        for key, ns in sorted(namespaces.items()):
            tasks = found.tasks(ns)
            if not tasks:
                continue
            if key in ctx.early:
                tried, first = ctx.early[key]
                pending[key] = ([t for t in tasks if t != tried], first)
            else:
                pending[key] = (tasks[1:], self.read_via_task(ctx, key, tasks[0]))
        sockets: list[Socket] = []
        for key, ns in sorted(namespaces.items()):
            read = self._finish(ctx, key, *pending[key]) if key in pending else None
            if read is not None:
                ctx.stats.namespace_read_retries += read.retries
            if (read is None or read.sockets is None) and ns.inode in found.pins:
                read = self._pinned(ctx, ns, found.pins[ns.inode])
            batch = _accept(ctx, ns, read)
            if on_batch is not None:
                on_batch(batch)
            sockets.extend(batch)
        return sockets

    def _finish(self, ctx: ReadContext, key: str, others: list[str], first: Pending
                ) -> TableRead:
        """The first read's result, or -- when that member had exited or moved -- the next
        member's, in order. A failed read counts itself in `retries` (once)."""
        read = _result(first)
        for task in others if read.sockets is None else ():
            retry = _result(self.read_via_task(ctx, key, task))
            retry.retries += read.retries
            read = retry
            if read.sockets is not None:
                break
        return read

    def _pinned(self, ctx: ReadContext, ns: Namespace, pins: list[Pin]) -> TableRead:
        if not ctx.enter_pinned:
            ns.error = "pinned by a bind mount only: not entered (--no-enter)"
            ctx.stats.pinned_unreadable += 1
            return TableRead(None)
        read = self.read_pinned(ctx, ns, pins)
        if read.sockets is None:
            ctx.stats.pinned_unreadable += 1
        return read


def _accept(ctx: ReadContext, ns: Namespace, read: TableRead | None) -> list[Socket]:
    """File a read under its namespace (or say why there is none)."""
    stats = ctx.stats
    if read is None or read.sockets is None:
        stats.namespaces_unread += 1
        if ns.error is None:
            ns.error = "no task of it could be read (all exited or moved)"
        return []
    ns.tables_read = True
    ns.read_via = read.via
    if read.addresses is not None:
        ns.addresses = read.addresses
    if read.interfaces is not None:
        ns.interfaces = read.interfaces
    ns.error = None
    stats.malformed_lines += read.malformed
    for proto in read.from_proc:
        if proto not in stats.tables_from_proc:
            stats.tables_from_proc.append(proto)
    for err in read.errors:
        ctx.note_error(f"netns {ns.inode}: {err}")
    sockets, repeated = _once_each(read.sockets)
    stats.sockets_listed_twice += repeated
    inode, key = ns.inode, ns.key
    for sock in sockets:
        sock.netns = inode
        sock.netns_key = key
    return sockets


def _once_each(sockets: list[Socket]) -> tuple[list[Socket], int]:
    """A table read is no atomic snapshot: /proc/net/tcp is walked in read()-sized pieces and
    a sock_diag dump in messages, each resuming at a position in the hash, so a socket that
    moves meanwhile can be listed twice (measured under churn: ~1 in 10 snapshots of a busy
    namespace). Keep the first of each socket: by inode, or -- for sockets without one
    (TIME_WAIT, orphans) -- by what the line says. A unix socket's second line is kept when
    it differs: that is for the unix line check to settle (unixcheck), not to be guessed
    here."""
    seen: set[object] = set()
    kept: list[Socket] = []
    for sock in sockets:
        if sock.proto == "unix":
            key: object = (sock.inode, sock.state, sock.local_addr, sock.unix_type,
                           sock.unconfirmed)
        elif sock.inode:
            # with its kind and, for TCP, its ends: an MPTCP socket and every one of its TCP
            # subflows share an inode (the kernel grafts each subflow onto the MPTCP socket:
            # mptcp_sock_graft), and all are listed
            key = (sock.proto, sock.inode, sock.local_addr, sock.local_port, sock.remote_addr,
                   sock.remote_port) if sock.proto == "tcp" else (sock.proto, sock.inode)
        else:
            key = (sock.proto, sock.family, sock.state, sock.local_addr, sock.local_port,
                   sock.remote_addr, sock.remote_port)
        if key in seen:
            continue
        seen.add(key)
        kept.append(sock)
    return kept, len(sockets) - len(kept)
