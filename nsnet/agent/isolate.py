"""Work done in a child process that exits when it is done: the agent's samples and the
answers its API builds from a snapshot.

Why: a long-lived CPython process does not give back what a big transient build used. A
snapshot of a busy node is hundreds of thousands of small objects; they live in CPython's
arenas (and glibc's heaps), and an arena goes back to the system only when every object in
it is gone. Objects that outlive the sample (the edges, the previous snapshot kept for the
API) are allocated in between, so the agent's resident size stays at the peak of its largest
sample, plus fragmentation, and two snapshots coexist while the next one is built. Measured
in the agent before this module: 71 MiB at 100 namespaces, ~255 MiB at 400. A forked child
starts with the parent's pages shared (copy-on-write), builds, sends back what the parent
keeps (small: the edges and the snapshot pickled and compressed), and exits -- the kernel
takes all of its memory back at once.

What the parent gives the child is inherited through fork(2); what the child gives back
is pickled on a socketpair, with the file descriptors it opened for the parent to keep
(SCM_RIGHTS: the per-namespace sock_diag sockets, so the next sample does not setns again).
The child runs only the work it was forked for, on the thread that forked it (the only one it
has), touches none of the locks the parent's other threads may hold, writes to stderr only
with os.write, and ends with os._exit (no atexit handlers, no finalizers of the parent's
objects: its sqlite connection, its HTTP server).
"""
from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import NsnetError
from ..records import record

_HEADER = struct.Struct("!QI")      # payload bytes, file descriptors to follow
_FDS_PER_MESSAGE = 250              # SCM_MAX_FD is 253 (include/net/scm.h)
_POLL = 0.25                        # seconds between two looks at `stop` and the deadline


class ChildFailed(NsnetError):
    """The child did not send back a result: it failed, was killed, or ran past its time."""


@record(frozen=True)
class Finished:
    """What a child sent back, and what it cost (wait4's rusage, so everything the child
    did: its pickling and compression included)."""
    value: Any
    fds: tuple[int, ...]     # file descriptors the child handed over, now the caller's
    #                          (fewer than it sent when our fd table was full)
    cpu: float               # seconds of CPU, user and system
    peak_rss: int            # bytes: the child's peak resident size (pages shared with the
    #                          parent that it touched included)
    wall: float


Work = Callable[[threading.Event], tuple[Any, list[int]]]


def run_forked(work: Work, *, stop: threading.Event | None = None,
               deadline: float | None = None, what: str = "work") -> Finished:
    """Run `work(hurry)` in a forked child; return what it returned. `hurry` is set in the
    child when `stop` is set in the parent (SIGTERM is sent to the child): it should finish
    what it is doing without pacing. A child still running `deadline` seconds after the fork
    is killed. Whatever goes wrong (the work raised, the child was killed by the kernel's
    OOM killer, ran out of time) is a ChildFailed; an NsnetError the work raised keeps its
    message."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    started = time.monotonic()
    try:
        pid = os.fork()
    except OSError as exc:
        parent_end.close()
        child_end.close()
        raise ChildFailed(f"cannot fork the {what} process: {exc.strerror or exc}") from exc
    if pid == 0:                                     # the child: never returns
        parent_end.close()
        _child(work, child_end, what)
    child_end.close()
    broken: OSError | None = None
    try:
        data, fds, late = _receive(parent_end, pid, stop, started, deadline)
    except OSError as exc:     # our side of the socketpair failed: the child cannot finish
        _signal(pid, signal.SIGKILL)
        data, fds, late, broken = bytearray(), [], False, exc
    finally:
        parent_end.close()
    _, status, usage = os.wait4(pid, 0)    # always reaped: no zombie per failed sample
    if broken is not None:
        raise ChildFailed(f"cannot read what the {what} process sent: "
                          f"{broken.strerror or broken}") from broken
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    if late:
        _close_all(fds)
        raise ChildFailed(f"the {what} process ran past its {deadline:g} s and was stopped")
    if os.WIFSIGNALED(status):
        _close_all(fds)
        name = signal.Signals(os.WTERMSIG(status)).name
        hint = " (out of memory?)" if os.WTERMSIG(status) == signal.SIGKILL else ""
        raise ChildFailed(f"the {what} process was killed by {name}{hint}")
    try:
        ok, value = pickle.loads(data)
    except Exception as exc:   # a truncated answer: the child died while sending
        _close_all(fds)
        raise ChildFailed(f"the {what} process sent no result "
                          f"(exit status {os.waitstatus_to_exitcode(status)})") from exc
    if not ok:
        _close_all(fds)
        raise ChildFailed(value)
    return Finished(value, tuple(fds), cpu, usage.ru_maxrss * 1024, wall)


class _Answer:
    """What the child sends, as it comes in: the header (payload size, fds to follow), the
    payload into one buffer of its size (pickle reads it in place: no second copy of
    megabytes), then the fds."""

    def __init__(self) -> None:
        self.header = bytearray()
        self.payload: bytearray | None = None
        self.got = 0                 # payload bytes in
        self.fds: list[int] = []
        self.nfds = 0
        self.truncated = False       # fds dropped by the kernel: our fd table is full

    def complete(self) -> bool:
        return self.payload is not None and self.got == len(self.payload) and \
            (len(self.fds) >= self.nfds or self.truncated)

    def read(self, sock: socket.socket) -> bool:
        """One read from a readable socket; False: the child closed it early."""
        if self.payload is None:
            # never past what is asked: a read that reached the next message would take its
            # fds with it, and a recv() without room for them closes them (unix(7))
            chunk = sock.recv(_HEADER.size - len(self.header))
            self.header += chunk
            if len(self.header) == _HEADER.size:
                size, self.nfds = _HEADER.unpack(self.header)
                self.payload = bytearray(size)
            return bool(chunk)
        if self.got < len(self.payload):
            n = sock.recv_into(memoryview(self.payload)[self.got:],
                               min(1 << 20, len(self.payload) - self.got))
            self.got += n
            return bool(n)
        _, more, flags, _ = socket.recv_fds(sock, 1, _FDS_PER_MESSAGE)
        self.fds.extend(more)
        # a full fd table: the kernel dropped the fds that did not fit (unix(7), MSG_CTRUNC);
        # the result stands with those that came (the caller counts them)
        self.truncated = bool(flags & socket.MSG_CTRUNC)
        return bool(more) or self.truncated


def _receive(sock: socket.socket, pid: int, stop: threading.Event | None, started: float,
             deadline: float | None) -> tuple[bytearray, list[int], bool]:
    """The child's payload and fds, read as they come (a payload larger than the socket's
    buffer would block a child writing it if we waited for its exit first). Returns
    (payload, fds, killed for its deadline); an empty payload: the child did not finish
    sending it."""
    answer = _Answer()
    hurried = False
    # poll, not select: the agent keeps a sock_diag socket per namespace, so past ~1,000
    # namespaces this socket's number is above select's FD_SETSIZE (1024)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while not answer.complete():
        if stop is not None and stop.is_set() and not hurried:
            hurried = True
            _signal(pid, signal.SIGTERM)
        if deadline is not None and time.monotonic() - started > deadline:
            _signal(pid, signal.SIGKILL)
            return bytearray(), answer.fds, True
        ready = poller.poll(_POLL * 1000)
        if ready and not answer.read(sock):
            return bytearray(), answer.fds, False
    assert answer.payload is not None
    return answer.payload, answer.fds, False


def _child(work: Work, sock: socket.socket, what: str) -> None:
    code = 0
    try:
        # what the child inherited is never garbage here: out of the collector's sight, so
        # that its passes do not write to (and so copy) every page of the parent's objects
        gc.freeze()
        hurry = threading.Event()
        # the parent's handlers act on the parent's objects; here SIGTERM means: hurry
        signal.signal(signal.SIGTERM, lambda *_: hurry.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # ^C reaches the whole group: the parent decides
        try:
            value, fds = work(hurry)
            payload = pickle.dumps((True, value), protocol=pickle.HIGHEST_PROTOCOL)
        except NsnetError as exc:
            payload, fds = pickle.dumps((False, str(exc))), []
        except BaseException as exc:   # a bug: said whole on stderr, and a failed sample
            code = 1
            os.write(2, "".join(traceback.format_exception(exc)).encode(errors="replace"))
            payload, fds = pickle.dumps((False, f"{type(exc).__name__}: {exc}")), []
        sock.sendall(_HEADER.pack(len(payload), len(fds)) + payload)
        for i in range(0, len(fds), _FDS_PER_MESSAGE):
            socket.send_fds(sock, [b"F"], fds[i:i + _FDS_PER_MESSAGE])
    except (BrokenPipeError, ConnectionResetError):
        code = 2   # the parent stopped reading (it ends, or gave up on us): it says what it must
    except BaseException as exc:   # the answer cannot be sent
        code = 2
        try:
            os.write(2, f"nsnet: the {what} process could not hand back its result: "
                        f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
        except OSError:
            pass
    finally:
        os._exit(code)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
