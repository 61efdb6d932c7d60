"""Check the /proc/net/unix lines a bound name could have forged (join stage).

unix_seq_show (net/unix/af_unix.c) prints a socket's bound name raw after its inode, so a
tenant can bind an abstract name holding a newline and then text shaped like an entry: the
file then shows one more line, as the kernel's own, claiming any inode, state and name it
likes -- a listener that does not exist, or a victim's TCP socket (whose holder would then
be joined to it). netparse.parse_unix marks `unconfirmed` every entry that starts where a
name could still reach (UNIX_NAME_MAX bytes from a name's start); here each is checked
against what the kernel says of the inode it names:

- held: the holder's fd is borrowed (pidfd_getfd) and the socket asked itself (family, type,
  name, listening, and its namespace where SIOCGSKNS answers). Not a unix socket, or one of
  another namespace: the line is dropped. A unix socket of this namespace: the line is
  confirmed, with the socket's own state and name. Where borrowing is not allowed, the fd's
  sockfs protocol name (getxattr via /proc/<pid>/fd/<n>, the access readlink needs) says
  at least whether it is a unix socket: if not, the line is dropped; if so, it is confirmed
  in finish() unless another line claims the same inode.
- claimed twice: a socket is listed once, in its own namespace's table, so when a line the
  kernel surely printed (or a confirmed one) names the same inode, the unconfirmed claims
  are dropped.
- anything else (nobody holds it, nothing could be asked) stays, flagged unconfirmed: shown
  as such, never as a fact.
Dropped lines are counted in stats.unix_lines_dropped, the flagged ones in
stats.unix_unconfirmed. The netlink source reads names from UNIX_DIAG_NAME and the pidfd
source from each socket, so neither makes such lines (the pidfd source's unheld sockets can
come from the /proc tables, and are checked here too).
"""
from __future__ import annotations

import os
from collections import defaultdict

from .model import Socket, Stats
from .procfs import socket_protocol


class UnixLineCheck:
    """Fed each namespace's sockets after the holder join (check), then all of them
    (finish). Keeps, across namespaces, the lines only the fd's kind vouched for."""

    def __init__(self, proc: str, stats: Stats):
        self.proc = proc
        self.stats = stats
        # Lines are told apart by identity; the dicts hold them, so an id is never reused.
        self.kind_only: dict[int, Socket] = {}   # lines whose fd said "a unix socket"
        self.dropped: dict[int, Socket] = {}
        # pidfd_open takes a pid of our own pid namespace: borrow only when the procfs read
        # is ours (a --proc of another pid namespace names other processes by those numbers)
        self.can_borrow = _own_pid_namespace(proc)

    def check(self, batch: list[Socket]) -> None:
        """Confirm, correct or drop (in place) the batch's unconfirmed held lines."""
        dropped = [sock for sock in batch
                   if sock.unconfirmed and sock.pids and not self._holds_up(sock)]
        if dropped:
            self.dropped.update((id(s), s) for s in dropped)
            batch[:] = [s for s in batch if id(s) not in self.dropped]

    def _holds_up(self, line: Socket) -> bool:
        """False when the socket the line names says otherwise; True when it agrees (the
        line then takes its state and name) or cannot be asked (the line stays unconfirmed)."""
        # only the /proc tables make unconfirmed lines: the netlink source's commands do not
        # pay the pidfd source's import at start
        from .sources.pidfd import describe_process_sockets

        pid = line.pids[0]
        fd = line.fds[pid][0]
        asked = describe_process_sockets(pid, {fd: line.inode}, seen=set()) \
            if self.can_borrow else None
        if asked is not None and asked.sockets:
            truth = asked.sockets[0]
            if truth.proto != "unix":
                return False
            same_netns = None if truth.netns is None or line.netns is None \
                else truth.netns == line.netns
            if same_netns is False:
                return False
            line.state, line.local_addr = truth.state, truth.local_addr
            line.unix_type = truth.unix_type
            if same_netns:
                line.unconfirmed = False
            else:   # a unix socket, but of which namespace only finish() can tell
                self.kind_only[id(line)] = line
            return True
        if asked is not None and (asked.skipped_family or asked.skipped_protocol):
            return False    # borrowed and asked: another family or protocol
        kind = socket_protocol(self.proc, pid, fd, line.inode)
        if kind is None:
            return True     # the fd is gone or may not be asked: stays unconfirmed
        if not kind.startswith("UNIX"):
            return False
        self.kind_only[id(line)] = line
        return True

    def finish(self, sockets: list[Socket]) -> None:
        """Settle what needs every namespace's lines: drop unconfirmed claims on an inode
        another line holds for sure; confirm lines the fd vouched for that no other line
        disputes; count what was dropped and what stays unconfirmed."""
        claims: dict[int, list[Socket]] = defaultdict(list)
        for sock in sockets:
            if sock.inode and id(sock) not in self.dropped:
                claims[sock.inode].append(sock)
        for sock in sockets:
            if not sock.unconfirmed or id(sock) in self.dropped:
                continue
            others = [o for o in claims[sock.inode] if o is not sock] if sock.inode else []
            if any(not o.unconfirmed for o in others):
                self.dropped[id(sock)] = sock
            elif id(sock) in self.kind_only and not others:
                sock.unconfirmed = False
        if self.dropped:
            sockets[:] = [s for s in sockets if id(s) not in self.dropped]
        self.stats.unix_lines_dropped = len(self.dropped)
        self.stats.unix_unconfirmed = sum(1 for s in sockets if s.unconfirmed)


def _own_pid_namespace(proc: str) -> bool:
    try:
        return (os.readlink(f"{proc}/self") == str(os.getpid())
                and os.stat(f"{proc}/self/ns/pid").st_ino == os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return False
