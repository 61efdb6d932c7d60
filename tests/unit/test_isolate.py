"""nsnet.agent.isolate: work run in a forked child process, its result and fds sent back.
Real forks, real signals, real file descriptors (no root needed)."""
from __future__ import annotations

import os
import resource
import socket
import threading
import time

import pytest

from nsnet.agent.isolate import ChildFailed, run_forked
from nsnet.errors import NsnetError


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def test_the_value_comes_back_with_what_the_child_cost():
    def work(hurry):
        block = bytearray(48 << 20)          # touched: the child's own memory
        for i in range(0, len(block), 4096):
            block[i] = 1
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        return {"pid": os.getpid(), "big": b"x" * (3 << 20)}, []

    rss_before = rss()
    done = run_forked(work, what="test")
    assert done.value["pid"] != os.getpid()
    assert done.value["big"] == b"x" * (3 << 20)      # larger than the socket's buffer
    assert done.cpu >= 0.2
    assert done.peak_rss >= 48 << 20
    assert done.fds == ()
    # the parent did not grow by what the child allocated
    assert rss() < rss_before + (16 << 20)


def test_file_descriptors_the_child_opened_are_handed_over():
    """What the agent does with each namespace's sock_diag socket: the child opens it, the
    parent keeps it (SCM_RIGHTS), the next child inherits it -- more than one message's
    worth (SCM_MAX_FD is 253)."""
    def work(hurry):
        pairs = [socket.socketpair() for _ in range(300)]
        for i, (_, far) in enumerate(pairs):
            far.sendall(f"{i}".encode())     # the far end closes when the child exits
        # a payload larger than the socketpair's buffer before them
        return (len(pairs), b"y" * (5 << 20)), [near.detach() for near, _ in pairs]

    before = len(os.listdir("/proc/self/fd"))
    done = run_forked(work)
    assert done.value == (300, b"y" * (5 << 20)) and len(done.fds) == 300
    for i, fd in enumerate(done.fds):       # the very sockets, in order
        with socket.socket(fileno=fd) as s:
            assert s.recv(16) == f"{i}".encode() and s.recv(16) == b""
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_nsnet_error_keeps_its_message():
    def work(hurry):
        raise NsnetError("no procfs at /nowhere")

    with pytest.raises(ChildFailed, match=r"^no procfs at /nowhere$"):
        run_forked(work)


def test_a_bug_in_the_child_is_said_whole_and_is_a_failure(capfd):
    def work(hurry):
        return {}["missing"], []

    with pytest.raises(ChildFailed, match=r"KeyError: 'missing'"):
        run_forked(work)
    assert "Traceback" in capfd.readouterr().err


def test_a_child_killed_by_the_kernel_is_a_failure_that_says_so():
    def work(hurry):
        os.kill(os.getpid(), 9)
        time.sleep(5)
        return None, []

    with pytest.raises(ChildFailed, match=r"killed by SIGKILL \(out of memory\?\)"):
        run_forked(work, what="sampling")


def test_a_child_past_its_deadline_is_killed():
    def work(hurry):
        time.sleep(60)
        return None, []

    started = time.monotonic()
    with pytest.raises(ChildFailed, match=r"ran past its 0.5 s and was stopped"):
        run_forked(work, deadline=0.5)
    assert time.monotonic() - started < 5


def test_stop_tells_the_child_to_hurry():
    """SIGTERM to the agent: the sample being taken finishes unpaced (the child's `hurry`)."""
    stop = threading.Event()

    def work(hurry):
        return hurry.wait(30), []

    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    done = run_forked(work, stop=stop)
    assert done.value is True and time.monotonic() - started < 10


def test_fds_of_a_failed_child_are_not_leaked():
    def work(hurry):
        raise NsnetError("failed after opening")

    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ChildFailed):
        run_forked(work)
    assert len(os.listdir("/proc/self/fd")) == before


def lowered_fd_limit(room: int):
    """RLIMIT_NOFILE's soft limit set to what is open now + room (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + room, hard))
    return soft, hard


def test_fds_that_do_not_fit_in_a_full_fd_table_are_counted_not_fatal():
    """The kernel drops the fds a receiver has no room for (MSG_CTRUNC): the result stands,
    with the fds that came."""
    def work(hurry):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the child's own room
        pairs = [socket.socketpair() for _ in range(60)]
        return "the result", [a.detach() for a, _ in pairs]

    before = len(os.listdir("/proc/self/fd"))
    soft, hard = lowered_fd_limit(20)
    try:
        done = run_forked(work)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert done.value == "the result" and 0 < len(done.fds) < 60
    for fd in done.fds:
        os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_parent_holding_more_than_1024_fds_still_reads_its_child():
    """The agent keeps a sock_diag socket per namespace: past ~1,000 namespaces its
    socketpair with the child is numbered above select()'s FD_SETSIZE (1024), which ended
    the agent on a 1,000-namespace node ("filedescriptor out of range in select()")."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), max(hard, 2048)))
    except (ValueError, OSError):
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} < 2048 and cannot be raised (not root)")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) > 1024
        done = run_forked(lambda hurry: ("the result", []))
        assert done.value == "the result"
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
