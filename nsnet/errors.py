"""Every error nsnet raises, and the one translation of OSError (after psutil's
wrap_exceptions).

Two families:

* NsnetError and its subclasses reach the user, as one line on stderr and a non-zero exit
  (cli.py maps `exit_code`); nothing below the CLI prints them.
* ProcError (ProcessGone, AccessDenied), EnterError and SubscribeError are what a walker
  expects on a live machine: a process exits, a namespace refuses setns. They are caught
  where they happen, counted, and never end a snapshot.

OSError is translated once, at the OS boundary (procfs.py, setns.py), always with
`raise translate(exc) from exc` so that NSNET_DEBUG=1 shows the original.
"""
from __future__ import annotations

import errno

_GONE = frozenset({errno.ENOENT, errno.ESRCH})
_DENIED = frozenset({errno.EACCES, errno.EPERM})


class NsnetError(Exception):
    """An error the user must see, as one line."""

    exit_code = 1


class UsageError(NsnetError):
    """A bad command line or option value (exit status 2)."""

    exit_code = 2


class NotProcfs(NsnetError):
    """--proc is not a procfs root: nothing it shows could be trusted."""


class SourceUnavailable(NsnetError):
    """An explicitly requested socket source cannot work with our privileges or kernel."""


class LostNamespace(NsnetError):
    """We could not get back to our own namespace: nothing read afterwards could be trusted."""


class StoreError(NsnetError):
    """The agent's history database cannot be opened, read or written."""


class CorruptStore(StoreError):
    """The history file is not a usable SQLite database (damaged, or not one at all)."""


class ServiceConfigError(NsnetError):
    """A bad services file: the message is one line naming the file and the entry."""


class AuthConfigError(NsnetError):
    """An unusable --auth-token-file: one line naming the file and what is wrong with it,
    never its content (it is a secret)."""


class ProcError(Exception):
    """A read of /proc failed for a reason other than the two below (EIO, ELOOP ...)."""


class ProcessGone(ProcError):
    """The process exited (ENOENT/ESRCH): the walk counts it and goes on."""


class AccessDenied(ProcError):
    """Not allowed (EACCES/EPERM): the walk counts it and says which capability is missing."""


class EnterError(Exception):
    """A namespace could not be entered or read; the snapshot goes on without it."""


class SubscribeError(Exception):
    """A namespace was entered, but the destroy-event subscription was refused."""


def translate(exc: OSError) -> ProcError:
    """What an OSError from a /proc read means for a walker."""
    if exc.errno in _GONE:
        return ProcessGone(str(exc))
    if exc.errno in _DENIED:
        return AccessDenied(str(exc))
    return ProcError(str(exc))


def is_gone(exc: OSError) -> bool:
    return exc.errno in _GONE


def is_denied(exc: OSError) -> bool:
    return exc.errno in _DENIED


def fd_shortage(exc: OSError) -> str | None:
    """The one way to say that our own fd table is full (EMFILE) or the system's (ENFILE):
    not a permission problem, not a bad path -- a limit to raise. None for other errors."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"out of file descriptors ({exc.strerror}): raise RLIMIT_NOFILE (ulimit -n)"
    return None
