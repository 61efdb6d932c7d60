"""One fixture of a kind per machine: an flock with a deadline (their addresses, uids and
names are fixed, so two test runs on one machine must take turns)."""
from __future__ import annotations

import fcntl
import os
import time


def take(path: str, timeout: float, holder: str) -> int:
    """Block until we hold the lock at path; returns its fd (close it to release)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RuntimeError(f"another {holder} holds {path} for {timeout:.0f}s")
            time.sleep(0.5)   # another test run on this machine: wait for it
