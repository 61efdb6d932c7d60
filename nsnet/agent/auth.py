"""Optional bearer-token authentication of the agent's HTTP side (`nsnet serve
--auth-token-file PATH`).

Every path but the kubelet's probes (/healthz, /readyz: a probe carries no token) then needs
`Authorization: Bearer <the file's content>`. The file is typically a mounted Kubernetes
Secret: a symbolic link (`token -> ..data/token`) that the kubelet swaps atomically when the
Secret changes. So it is followed (O_NOFOLLOW would refuse every Secret volume), and what it
leads to is checked instead: opened non-blocking (a FIFO there cannot hang the agent), a
regular file only (not /dev/zero), at most MAX_TOKEN_FILE bytes. It is read at start -- a bad
file is a one-line error before anything listens -- and again when it changes (checked at
most every RECHECK_SECONDS, on a request); a failed re-read keeps the token in force and is
said once. The token is never written anywhere: messages name the file, never its content.
"""
from __future__ import annotations

import hmac
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ..errors import AuthConfigError
from ..records import record
from ..sanitize import printable

MAX_TOKEN_FILE = 4096        # a token is tens to hundreds of bytes (a JWT: ~1 KiB)
RECHECK_SECONDS = 5.0        # a rotated Secret reaches the pod within a minute or so anyway
OPEN_PATHS = frozenset({"/healthz", "/readyz"})   # the kubelet's probes carry no token

# Why a request was refused: the label values of nsnet_http_unauthorized_total.
MISSING, INVALID = "missing", "invalid"
REASONS = (MISSING, INVALID)


@record(frozen=True)
class FileIdentity:
    """What changes when the file is replaced (a Secret's atomic swap: another inode) or
    rewritten in place (size, modification and change times)."""
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def parse_token(data: bytes, path: str) -> bytes:
    """The token a file's bytes hold: surrounding whitespace (a trailing newline) stripped;
    one word of visible ASCII, as an HTTP header carries it. What is refused is said
    without quoting the content."""
    if len(data) > MAX_TOKEN_FILE:
        raise AuthConfigError(f"auth token file {path}: larger than {MAX_TOKEN_FILE} bytes")
    token = data.strip()
    if not token:
        raise AuthConfigError(f"auth token file {path}: empty (no token in it)")
    if not all(0x21 <= byte <= 0x7E for byte in token):
        raise AuthConfigError(f"auth token file {path}: the token must be one word of visible "
                              "ASCII (it holds a space, a line break, a control character or "
                              "a non-ASCII byte)")
    return token


def read_token(path: str) -> tuple[bytes, FileIdentity]:
    """The token in `path` and the identity of the file it came from, read with bounds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise AuthConfigError(f"cannot read auth token file {path}: {_reason(exc)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuthConfigError(f"auth token file {path}: not a regular file "
                                  f"({_kind(st.st_mode)})")
        chunks, total = [], 0
        while total <= MAX_TOKEN_FILE:      # one byte past the limit tells it is too large
            chunk = os.read(fd, MAX_TOKEN_FILE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise AuthConfigError(f"cannot read auth token file {path}: {_reason(exc)}") from exc
    finally:
        os.close(fd)
    return parse_token(b"".join(chunks), path), FileIdentity.of(st)


def presented_token(authorization: list[str]) -> bytes | None:
    """The token of a request's `Authorization: Bearer <token>` header (the scheme's case
    does not matter, RFC 7235); None for another scheme, no token, or several headers (which
    one a proxy on the way would honour is anyone's guess)."""
    if len(authorization) != 1:
        return None
    scheme, _, credentials = authorization[0].strip().partition(" ")
    token = credentials.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # http.server decodes header bytes as Latin-1: this gives back the bytes sent
    return token.encode("latin-1", "replace")


def challenge(reason: str) -> str:
    """The WWW-Authenticate header of a 401 (RFC 6750, section 3)."""
    if reason == MISSING:
        return 'Bearer realm="nsnet"'
    return 'Bearer realm="nsnet", error="invalid_token"'


class TokenAuth:
    """The token in force, re-read when its file changes. Used by the HTTP threads at once:
    at most one of them re-checks the file (the others go on with the token in force)."""

    def __init__(self, path: str, err: TextIO, *, recheck: float = RECHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.err = err
        self.recheck = recheck
        self._clock = clock
        self._token, self._identity = read_token(path)   # a bad file: AuthConfigError
        self._checked = clock()
        self._refreshing = threading.Lock()
        self._failing = False     # a failed re-read was said: silent until one succeeds

    def verdict(self, authorization: list[str]) -> str | None:
        """None when the request's Authorization headers carry the token in force, else why
        not (MISSING, INVALID). Compared in constant time (hmac.compare_digest): how long a
        refusal takes says nothing of how much of the token was right."""
        if not authorization:
            return MISSING
        presented = presented_token(authorization)
        if presented is None or not hmac.compare_digest(presented, self.token()):
            return INVALID
        return None

    def token(self) -> bytes:
        """The token in force, after a re-check of the file when one is due."""
        if self._clock() - self._checked >= self.recheck \
                and self._refreshing.acquire(blocking=False):
            try:
                now = self._clock()
                if now - self._checked >= self.recheck:    # not done meanwhile
                    self._checked = now
                    self._refresh()
            finally:
                self._refreshing.release()
        return self._token

    def _refresh(self) -> None:
        try:
            identity = FileIdentity.of(os.stat(self.path))
        except OSError as exc:   # a Secret deleted, a mount gone: keep what we have
            self._fail(f"cannot read auth token file {self.path}: {_reason(exc)}")
            return
        if identity != self._identity:
            try:
                token, identity = read_token(self.path)
            except AuthConfigError as exc:
                # self._identity stays the old one: the next check tries this file again
                self._fail(str(exc))
                return
            changed = not hmac.compare_digest(token, self._token)
            self._token, self._identity = token, identity
            if changed:
                self._failing = False
                self._say(f"auth token file {self.path} changed: the new token is in force",
                          warning=False)
        if self._failing:
            self._failing = False
            self._say(f"auth token file {self.path} is readable again (the same token)",
                      warning=False)

    def _fail(self, message: str) -> None:
        if not self._failing:
            self._failing = True
            self._say(f"{message}; keeping the token read before")

    def _say(self, line: str, warning: bool = True) -> None:
        self.err.write(f"nsnet: {'warning: ' if warning else ''}{printable(line)}\n")
        self.err.flush()
