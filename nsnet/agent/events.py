"""TCP connections that close between samples, from the kernel's sock_diag destroy events.

A NETLINK_SOCK_DIAG socket bound to the SKNLGRP_INET{,6}_TCP_DESTROY groups receives one
inet_diag_msg per TCP socket the kernel frees, in the namespace the netlink socket was created
in (as `ss -E` does for one namespace). So the agent creates one such socket inside each
namespace (setns, on the main thread: setns.run_in_namespace) and one reader thread waits on
all of them. Subscribing needs CAP_NET_ADMIN (a multicast group of sock_diag) and entering the
namespaces CAP_SYS_ADMIN; without them the agent falls back to sampling and says so once.

The message carries the namespace (the subscribing socket's) and the 4-tuple, but no uid and
no inode (the kernel zeroes them in destroy messages; tests/kernel/test_events.py shows it). So a
connection is attributed through what earlier samples remembered of the same 4-tuple, else to
the owners of its namespace (edges.closed_edges).
"""
from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import cast

from .. import sockdiag
from ..errors import EnterError, SubscribeError
from ..model import Socket
from ..records import record
from ..setns import run_in_namespace
from ..sources.netlink import kept_socket_limit

# enum sknetlink_groups (linux/sock_diag.h): bit (group - 1) of the bind mask
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
DESTROY_GROUPS = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))
RECV_BUFFER = 4 << 20        # bursts of closes (a load balancer draining) must not overflow
MAX_PENDING = 100_000        # events kept between two samples; beyond, counted as dropped


@record(frozen=True, slots=True)
class Closed:
    netns: int
    sock: Socket             # proto, state and addresses as the kernel sent them


def open_destroy_socket() -> socket.socket:
    """Subscribe, in the calling thread's namespace, to TCP destroy events."""
    sock = socket.socket(socket.AF_NETLINK,
                         socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                         sockdiag.NETLINK_SOCK_DIAG)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((0, DESTROY_GROUPS))
    except BaseException:
        sock.close()
        raise
    return sock


def _subscribe(opener: Callable[[], socket.socket]) -> socket.socket:
    try:
        return opener()
    except OSError as exc:   # not an OSError any more: run_in_namespace would call it setns's
        hint = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
        raise SubscribeError(f"subscribing to TCP destroy events: "
                             f"{exc.strerror or exc}{hint}") from exc


def parse_events(data: bytes) -> tuple[list[Socket], int]:
    """The sockets one datagram of events describes, and how many messages were malformed.
    Each socket's traffic is from the tcp_info the kernel put in the message
    (INET_DIAG_INFO: inet_diag_handler_get_info fills it for destroy broadcasts): what the
    connection moved in all."""
    parsed = sockdiag.parse_dump(data, "tcp", want=sockdiag.WANT_TRAFFIC)
    return parsed.sockets, parsed.malformed


class DestroyWatcher:
    """One subscribed socket per namespace, read by one thread; `drain` hands the events
    gathered since the last call to the sampler."""

    def __init__(self, opener: Callable[[], socket.socket] = open_destroy_socket):
        self._opener = opener
        self._selector = selectors.DefaultSelector()
        self._socks: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self._pending: list[Closed] = []
        self.received = 0
        self.dropped = 0           # events lost: kernel buffer overflow (ENOBUFS) or our cap
        self.malformed = 0
        self.failure_said = False   # the sampler said once that some subscriptions failed
        self._stop = threading.Event()
        self._cpu_at_exit = 0.0
        self._thread = threading.Thread(target=self._run, name="nsnet-events", daemon=True)
        self._thread.start()

    def watched(self) -> set[int]:
        with self._lock:
            return set(self._socks)

    def watch(self, path: str, inode: int) -> str | None:
        """Subscribe inside the namespace at path (main thread only). Returns why not."""
        with self._lock:
            if inode not in self._socks and len(self._socks) >= kept_socket_limit():
                return ("not subscribed: as many namespaces are watched as the fd limit "
                        "allows (raise RLIMIT_NOFILE)")
        try:
            sock = run_in_namespace(path, inode, lambda: _subscribe(self._opener))
        except (EnterError, SubscribeError, OSError) as exc:
            return str(exc)
        with self._lock:
            self._socks[inode] = sock
            self._selector.register(sock, selectors.EVENT_READ, inode)
        return None

    def forget(self, live: set[int]) -> None:
        """Close the sockets of namespaces that are gone (a socket would keep one alive)."""
        with self._lock:
            for inode in [i for i in self._socks if i not in live]:
                sock = self._socks.pop(inode)
                self._selector.unregister(sock)
                sock.close()

    def cpu_seconds(self) -> float:
        """CPU time its reader thread has used (not the sampler's: kept out of the budget)."""
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return self._cpu_at_exit
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(ident))
        except (OSError, ProcessLookupError):
            return self._cpu_at_exit

    def counts(self) -> tuple[int, int, int]:
        """received, dropped, namespaces watched: read under the lock the reader writes in."""
        with self._lock:
            return self.received, self.dropped, len(self._socks)

    def drain(self) -> list[Closed]:
        with self._lock:
            events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.forget(set())
        self._selector.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    ready = self._selector.select(timeout=0.5)
                except (OSError, ValueError):   # a socket closed under us: select again
                    continue
                for key, _ in ready:
                    self._read(cast(socket.socket, key.fileobj), key.data)
        finally:
            self._cpu_at_exit = time.thread_time()

    def _read(self, sock: socket.socket, inode: int) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:   # the kernel dropped events: say how often
                    with self._lock:
                        self.dropped += 1
                    continue
                return   # closed by forget() meanwhile
            sockets, bad = parse_events(data)
            self.malformed += bad
            with self._lock:
                self.received += len(sockets)
                room = MAX_PENDING - len(self._pending)
                self._pending.extend(Closed(inode, s) for s in sockets[:max(room, 0)])
                self.dropped += max(0, len(sockets) - max(room, 0))
