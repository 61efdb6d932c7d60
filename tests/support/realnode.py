"""Build a small, real node of network namespaces, processes and sockets, with ground truth.

    with RealNode.build() as node:
        node.truth.ns["A"].inode, node.truth.sockets_in("A"), node.make_time_wait() ...

Everything is real: `ip netns add`, a veth pair, `unshare --net=FILE` for a namespace pinned only
by a bind mount, processes started with `nsenter --net=PATH setpriv --reuid U ...` (argv lists,
util-linux binaries found by version, since the `nsenter` PyPI package installs a console script
of the same name), and sockets created by those processes (tests/support/sockproc.py).

The truth never comes from /proc/net: each process reports its own sockets (fd, fstat inode,
getsockname/getpeername), and the builder borrows every reported fd with pidfd_getfd to ask the
socket itself its inode and namespace (SIOCGSKNS needs CAP_NET_ADMIN, which the tenants do not
have). It derives what a correct tool must say (holders, users, direction, peer) from the
scenario it built, and checks the reports against each other before handing the node out.
Readiness comes from those reports (and, for `/pause`, from EOF on a close-on-exec pipe), never
from sleeping.

Teardown kills every process (by pidfd), and removes every namespace, veth, bind mount and file
it made, even when the build fails half way; SIGTERM is turned into SystemExit while a node
lives so that `timeout`/CI kills still tear down. One node per machine at a time (an flock on
LOCK_PATH: the addresses and uids are fixed); a node left by a process killed with SIGKILL is
removed by the next build. Only one per process: share the session fixture `node` (conftest).

Processes run sys.executable when the target uid can run it, else the system python3 of the
same version (interpreter_for); sockproc.py is copied to the node's private directory so any
uid can read it wherever the checkout lives.

The scenario (issue 2, section 3):
  A  (`ip netns add`, so pinned at /run/netns/NAME): `/pause` holder as 65535; tenant 10001:
     a pre-fork server (listeners 10.77.0.1:8080 and dual-stack [::]:9090, two workers holding
     them: one socket, three pids) that accepts B's connections; a loopback ESTABLISHED pair on
     127.0.0.1:8081 (and, on demand, TIME_WAIT sockets); UDP 0.0.0.0:5353; unix listeners at a
     path and at an abstract name; a process with one thread living in B (holding a UDP socket
     in B: a socket of B held by a process of A).
  B  (`ip netns add`): `/pause` holder as 65535; tenant 10002 connects over the veth to
     10.77.0.1:8080, [fd77::1]:9090, 10.77.0.1:9090 (accepted by the dual-stack listener: A
     sees IPv4-mapped addresses) and a connected UDP socket to 10.77.0.1:5353.
  C  (bind mount only, under the node's private dir): no process; a listener on
     127.0.0.1:7070 held by a process of the host namespace (uid 10003) that setns()ed into C
     to create it and came back.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import machinelock

HERE = os.path.dirname(os.path.abspath(__file__))
SOCKPROC = os.path.join(HERE, "sockproc.py")

UID_PAUSE = 65535
UID_A = 10001
UID_B = 10002
UID_FOREIGN = 10003

V4_A, V4_B = "10.77.0.1", "10.77.0.2"
V6_A, V6_B = "fd77::1", "fd77::2"
PORT_WEB, PORT_WEB6, PORT_LOOP, PORT_UDP, PORT_THREAD_UDP, PORT_C = 8080, 9090, 8081, 5353, 5454, 7070

READY_TIMEOUT = 30.0
# One RealNode at a time per machine: the scenario's addresses and uids are fixed, and two
# nodes would merge in nsnet's per-user connection groups.
LOCK_PATH = "/run/nsnt-realnode.lock"
LOCK_TIMEOUT = 600.0
# TIME_WAIT lasts TCP_TIMEWAIT_LEN = 60 s; the timer wheel may fire a little early or late.
TIME_WAIT_SURE = 50.0
TIME_WAIT_MAYBE = 75.0


SIOCGSKNS = 0x894C
SYS_pidfd_getfd = 438          # the same number on every architecture (Linux >= 5.6)
_libc = ctypes.CDLL(None, use_errno=True)


class BuildError(RuntimeError):
    pass


def borrowed_socket_facts(pidfd: int, fd: int) -> dict:
    """Ask a socket held by another process about itself: duplicate it with pidfd_getfd,
    then fstat (inode), SIOCGSKNS (its namespace) and getsockname. No /proc/net involved."""
    newfd = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
    if newfd < 0:
        err = ctypes.get_errno()
        raise BuildError(f"pidfd_getfd(fd {fd}): {os.strerror(err)}")
    sock = None
    try:
        inode = os.fstat(newfd).st_ino
        nsfd = fcntl.ioctl(newfd, SIOCGSKNS)
        try:
            netns = os.fstat(nsfd).st_ino
        finally:
            os.close(nsfd)
        sock = socket.socket(fileno=newfd)
        local = sock.getsockname()
    finally:
        if sock is not None:
            sock.close()            # closes our duplicate only
        else:
            os.close(newfd)
    if isinstance(local, tuple):
        local = [local[0], local[1]]
    return {"inode": inode, "netns": netns, "local": local}


# --------------------------------------------------------------------------- tools

_tool_cache: dict[str, str] = {}


def util_linux(name: str) -> str:
    """The util-linux binary `name` on PATH (skipping same-named impostors, e.g. PyPI nsenter)."""
    if name in _tool_cache:
        return _tool_cache[name]
    seen = []
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/bin", "/usr/sbin"]:
        cand = os.path.join(d, name)
        if not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
            continue
        real = os.path.realpath(cand)
        if real in seen:
            continue
        seen.append(real)
        try:
            out = subprocess.run([cand, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "util-linux" in out.stdout + out.stderr:
            _tool_cache[name] = cand
            return cand
    raise BuildError(f"no util-linux {name} on PATH (looked at {seen})")


def ip_tool() -> str:
    path = shutil.which("ip") or "/usr/sbin/ip"
    return path


def run(argv: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"timed out: {argv}") from e
    if out.returncode != 0:
        raise BuildError(f"{argv} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def remove_cgroups(cgroups: list) -> None:
    """rmdir a fixture's cgroups, innermost first (a list of Paths, outermost first): each is
    empty once its killed processes are reaped; the shared kubepods/burstable levels are left
    when busy (someone else's pods may live there)."""
    for cg in reversed(cgroups):
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:   # busy: its processes are still exiting
                if cg.name in ("kubepods", "burstable"):
                    break
                time.sleep(0.1)


_interp_cache: dict[int, str] = {}


def interpreter_for(uid: int) -> str:
    """An interpreter `uid` can run: sys.executable if it can (a pyenv build under a 0700
    /root cannot be run by other uids), else the system's python3 of the same minor version.
    Decided by trying, not by guessing permissions."""
    if uid in _interp_cache:
        return _interp_cache[uid]
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/{minor}", f"/usr/local/bin/{minor}", "/usr/bin/python3"]
    probe = "import ctypes, fcntl, json, select, socket, threading, argparse"
    for cand in candidates:
        if not os.path.exists(cand):
            continue
        argv = [util_linux("setpriv"), "--reuid", str(uid), "--regid", str(uid),
                "--clear-groups", "--", cand, "-c", probe]
        if subprocess.run(argv, capture_output=True, cwd="/", timeout=30).returncode == 0:
            _interp_cache[uid] = cand
            return cand
    raise BuildError(f"no python interpreter runnable as uid {uid} among {candidates}")


def normalize_addr(addr: str) -> str:
    """IPv4-mapped IPv6 shown as IPv4 (the contract); drop any %scope."""
    addr = addr.split("%", 1)[0]
    if addr.lower().startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr


# --------------------------------------------------------------------------- truth

@dataclass
class ProcTruth:
    pid: int
    role: str
    ns: str                     # "A", "B", "C" or "host"
    netns: int
    uid: int
    ppid: int
    cmdline: list[str]
    sandbox: bool
    socket_fds: dict[int, int] = field(default_factory=dict)   # fd -> socket inode


@dataclass
class SockTruth:
    name: str
    ns: str
    netns: int
    inode: int
    proto: str
    family: str
    state: str
    local_addr: str
    local_port: Optional[int]
    remote_addr: str
    remote_port: Optional[int]
    uid: Optional[int]          # the kernel's sk_uid (creator's fsuid); None for unix tables
    unix_type: Optional[str] = None
    holders: dict[int, list[int]] = field(default_factory=dict)    # pid -> fds
    holder_uids: dict[int, int] = field(default_factory=dict)      # pid -> euid
    direction: Optional[str] = None
    peer: Optional[str] = None
    peer_netns: Optional[int] = None
    peer_pids: list[int] = field(default_factory=list)
    created: float = 0.0       # time.monotonic() at creation (TIME_WAIT ageing)
    origin_uid: Optional[int] = None   # who made a socket nobody holds any more (TIME_WAIT)

    @property
    def pids(self) -> list[int]:
        return sorted(self.holders)

    @property
    def users(self) -> list[int]:
        """The users the socket belongs to: its holders' uids; for a TIME_WAIT left behind,
        the uid of the process that made it (the kernel's uid column says 0 there)."""
        if self.holders:
            return sorted(set(self.holder_uids.values()))
        if self.origin_uid is not None:
            return [self.origin_uid]
        return [] if self.uid is None else [self.uid]

    @property
    def key(self) -> tuple[int, int, str, str, int, str, int]:
        """Identity that also works for inode-0 sockets (TIME_WAIT)."""
        return (self.netns, self.inode, self.proto, self.local_addr, self.local_port or 0,
                self.remote_addr, self.remote_port or 0)


@dataclass
class NsTruth:
    name: str
    inode: int
    pinned: list[str]
    pids_by_role: dict[str, list[int]] = field(default_factory=dict)
    uids: dict[int, int] = field(default_factory=dict)     # pid -> euid
    threads: list[tuple[int, int]] = field(default_factory=list)   # (pid, tid) of other ns living here
    sandbox_pids: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return sorted(p for ps in self.pids_by_role.values() for p in ps)

    @property
    def owners(self) -> list[int]:
        return sorted({u for p, u in self.uids.items() if p not in self.sandbox_pids})

    @property
    def found_by(self) -> list[str]:
        how = []
        if self.pids:
            how.append("processes")
        if self.threads:
            how.append("threads")
        if self.pinned:
            how.append("bind-mount")
        return how


@dataclass
class Truth:
    host_netns: int
    ns: dict[str, NsTruth]
    processes: dict[int, ProcTruth]
    sockets: list[SockTruth]
    roles: dict[str, int]              # role name -> pid ("A.web", "A.web.worker1", ...)
    paths: dict[str, str]              # "unix_path", "unix_abstract", "c_pin", "dir"

    def sockets_in(self, ns: str, now: Optional[float] = None) -> list[SockTruth]:
        return [s for s in self.sockets if s.ns == ns and self.sure(s, now)]

    def sure(self, s: SockTruth, now: Optional[float] = None) -> bool:
        """False for TIME_WAIT sockets that may have expired by `now`."""
        if s.state != "TIME_WAIT":
            return True
        now = time.monotonic() if now is None else now
        return now - s.created < TIME_WAIT_SURE

    def sock(self, name: str) -> SockTruth:
        for s in self.sockets:
            if s.name == name:
                return s
        raise KeyError(name)

    def netns_inodes(self) -> set[int]:
        return {n.inode for n in self.ns.values()}


# --------------------------------------------------------------------------- processes

class FixtureProcess:
    """One started sockproc (or a worker it forked: then popen is None)."""

    def __init__(self, role: str, popen: Optional[subprocess.Popen], report_fd: Optional[int],
                 pid: int, log: str) -> None:
        self.role = role
        self.popen = popen
        self.report_fd = report_fd
        self.pid = pid
        self.log = log
        self.pidfd: Optional[int] = None
        self._buf = b""
        self._events: list[dict] = []
        self._eof = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildError(f"{self.role} (pid {self.pid}): no report in time{self._stderr()}")
        r, _, _ = select.select([self.report_fd], [], [], remaining)
        if not r:
            raise BuildError(f"{self.role} (pid {self.pid}): no report in time{self._stderr()}")
        chunk = os.read(self.report_fd, 65536)
        if not chunk:
            self._eof = True
            return
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self._events.append(json.loads(line))

    def event(self, kind: str, timeout: float = READY_TIMEOUT, pid: Optional[int] = None) -> dict:
        """The next reported event of that kind (other kinds stay queued); errors raise."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["event"] == "error":
                    raise BuildError(f"{self.role} (pid {ev['pid']}): {ev['error']}{self._stderr()}")
                if ev["event"] == kind and (pid is None or ev["pid"] == pid):
                    return self._events.pop(i)
            if self._eof:
                raise BuildError(f"{self.role} (pid {self.pid}): report closed before "
                                 f"{kind!r}{self._stderr()}")
            self._fill(deadline)

    def wait_eof(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._eof:
            self._fill(deadline)
        for ev in self._events:
            if ev["event"] == "error":
                raise BuildError(f"{self.role}: {ev['error']}{self._stderr()}")

    def command(self, **cmd) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.popen.stdin.flush()

    def _stderr(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                text = f.read().strip()
        except OSError:
            return ""
        return f"\n--- stderr of {self.role}:\n{text[-3000:]}" if text else ""

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif self.popen is not None:
            self.popen.kill()

    def wait_gone(self, timeout: float = 10.0) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
        elif self.pidfd is not None:
            # A pidfd turns readable when the process exits (its reaper is its own parent/init).
            r, _, _ = select.select([self.pidfd], [], [], timeout)
            if not r:
                return False
        return True

    def close(self) -> None:
        for fd in (self.pidfd, self.report_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = self.report_fd = None
        if self.popen is not None and self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- the node

_LIVE: list["RealNode"] = []      # nodes of this process (at most one)
_STALE_DIR = re.compile(r"nsnt-[0-9a-f]{6}\Z")


def _sigterm_to_exit(signum, frame):
    # `timeout`, CI runners and pytest-timeout send SIGTERM; without a handler Python dies
    # without running finally blocks, and the node's namespaces and mounts would leak.
    raise SystemExit(128 + signum)


class RealNode:
    """A built node. Use `with RealNode.build() as node:`; `node.truth` is the ground truth."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.prefix = f"nsnt-{self.suffix}"
        self.dir = ""
        self.netns_names: list[str] = []        # `ip netns` names we added
        self.bind_mounts: list[str] = []        # bind-mount pins we made ourselves
        self.procs: list[FixtureProcess] = []
        self.truth: Optional[Truth] = None
        self._torn_down = False
        self.script = SOCKPROC
        self._lock_fd: Optional[int] = None
        self._old_sigterm = None

    # ------------------------------------------------------------------ public API

    @classmethod
    def build(cls) -> "RealNode":
        if _LIVE:
            # The flock would wait for ourselves: say so at once instead.
            raise BuildError("a RealNode already exists in this process (pid "
                             f"{os.getpid()}): share it (the session fixture `node`) "
                             "instead of building a second one")
        node = cls()
        _LIVE.append(node)
        try:
            node._build()
        except BaseException:
            node.teardown()
            raise
        return node

    def __enter__(self) -> "RealNode":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def make_time_wait(self) -> SockTruth:
        """A fresh TIME_WAIT socket in A (127.0.0.1:EPHEMERAL -> 127.0.0.1:8081), recorded."""
        assert self.truth is not None
        proc = self._proc("A.loop")
        proc.command(cmd="timewait", listener="A.loop.listen")
        ev = proc.event("timewait")
        nsA = self.truth.ns["A"]
        if ev["netns"] != nsA.inode or ev["state_before_close"] != "CLOSE":
            raise BuildError(f"TIME_WAIT not made as planned: {ev}")
        s = SockTruth(
            name=f"A.timewait{sum(1 for x in self.truth.sockets if x.state == 'TIME_WAIT') + 1}",
            ns="A", netns=nsA.inode, inode=0, proto="tcp", family="inet", state="TIME_WAIT",
            local_addr=ev["local"]["addr"], local_port=ev["local"]["port"],
            remote_addr=ev["remote"]["addr"], remote_port=ev["remote"]["port"],
            uid=0,                      # timewait mini-sockets print uid 0 and inode 0
            origin_uid=self.truth.processes[proc.pid].uid,
            direction="outbound", peer="local", peer_pids=[], created=time.monotonic())
        self.truth.sockets.append(s)
        return s

    def teardown(self) -> None:
        """Kill every process, delete every namespace, mount and file made. Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        problems = []
        for p in self.procs:
            p.kill()
        for p in self.procs:
            if not p.wait_gone():
                problems.append(f"{p.role} (pid {p.pid}) did not exit")
            p.close()
        self.procs = []
        for path in self.bind_mounts:
            try:
                run(["umount", path])
            except BuildError as e:
                problems.append(str(e))
        for name in self.netns_names:
            try:
                run([ip_tool(), "netns", "del", name])   # its veth end goes with it
            except BuildError as e:
                problems.append(str(e))
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)          # releases the flock
            self._lock_fd = None
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        if self in _LIVE:
            _LIVE.remove(self)
        if problems:
            raise BuildError("teardown: " + "; ".join(problems))

    # ------------------------------------------------------------------ building

    def _proc(self, role: str) -> FixtureProcess:
        for p in self.procs:
            if p.role == role:
                return p
        raise KeyError(role)

    def _spawn(self, role: str, netns_path: Optional[str], uid: int, proc_role: str,
               spec: tuple[dict, ...] | list[dict] = (), caps: bool = False,
               pass_fds: tuple[int, ...] = (), extra: tuple[str, ...] | list[str] = (),
               ) -> tuple[FixtureProcess, list[str]]:
        r, w = os.pipe()
        interp = interpreter_for(uid)
        tail = [interp, self.script, proc_role, "--report-fd", str(w),
                "--spec", json.dumps(list(spec))] + list(extra)
        argv = []
        if netns_path:
            argv += [util_linux("nsenter"), f"--net={netns_path}"]
        argv += [util_linux("setpriv"), "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
        if caps:   # setns() needs CAP_SYS_ADMIN; ambient so it survives the uid change
            argv += ["--inh-caps", "+sys_admin", "--ambient-caps", "+sys_admin"]
        argv += ["--"] + tail
        log = os.path.join(self.dir, f"{role}.stderr")
        with open(log, "wb") as errf:
            popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=errf, pass_fds=(w, *pass_fds), cwd=self.dir,
                                     close_fds=True)
        os.close(w)
        proc = FixtureProcess(role, popen, r, popen.pid, log)
        self.procs.append(proc)
        return proc, tail

    def _build(self) -> None:
        if os.geteuid() != 0:
            raise BuildError("RealNode needs root")
        ip = ip_tool()
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            try:
                signal.signal(signal.SIGTERM, _sigterm_to_exit)
                self._old_sigterm = signal.SIG_DFL
            except ValueError:          # not the main thread: leave signals alone
                pass
        self._lock()
        self._remove_stale()
        self.dir = f"/run/{self.prefix}"
        os.mkdir(self.dir, 0o755)
        os.chmod(self.dir, 0o755)
        # A copy every uid can read, wherever the checkout lives.
        self.script = os.path.join(self.dir, "sockproc.py")
        shutil.copyfile(SOCKPROC, self.script)
        os.chmod(self.script, 0o644)
        sockdir = os.path.join(self.dir, "sock")
        os.mkdir(sockdir, 0o755)
        os.chown(sockdir, UID_A, UID_A)

        host_netns = os.stat("/proc/self/ns/net").st_ino

        # -- namespaces A and B (ip netns: pinned under /run/netns), C (our own bind mount)
        name_a, name_b = f"{self.prefix}-a", f"{self.prefix}-b"
        for name in (name_a, name_b):
            run([ip, "netns", "add", name])
            self.netns_names.append(name)
            run([ip, "-n", name, "link", "set", "lo", "up"])
        pin_a, pin_b = f"/run/netns/{name_a}", f"/run/netns/{name_b}"
        pin_c = os.path.join(self.dir, "netns-c")
        open(pin_c, "w").close()
        run([util_linux("unshare"), f"--net={pin_c}", "--", "true"])
        self.bind_mounts.append(pin_c)
        run([util_linux("nsenter"), f"--net={pin_c}", "--", ip, "link", "set", "lo", "up"])

        ns = {n: NsTruth(n, os.stat(p).st_ino, [p])
              for n, p in (("A", pin_a), ("B", pin_b), ("C", pin_c))}
        inodes = [n.inode for n in ns.values()] + [host_netns]
        if len(set(inodes)) != 4:
            raise BuildError(f"namespace inodes not distinct: {inodes}")

        # -- veth A <-> B, IPv4 and IPv6 (nodad: usable at once)
        va, vb = f"{self.prefix}a", f"{self.prefix}b"
        run([ip, "link", "add", va, "netns", name_a, "type", "veth", "peer", "name", vb,
             "netns", name_b])
        for name, dev, v4, v6 in ((name_a, va, V4_A, V6_A), (name_b, vb, V4_B, V6_B)):
            run([ip, "-n", name, "addr", "add", f"{v4}/24", "dev", dev])
            run([ip, "-n", name, "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            run([ip, "-n", name, "link", "set", dev, "up"])
        for name, dev in ((name_a, va), (name_b, vb)):
            self._wait_link_up(name, dev)

        truth = Truth(host_netns=host_netns, ns=ns, processes={}, sockets=[], roles={},
                      paths={"dir": self.dir, "c_pin": pin_c,
                             "unix_path": os.path.join(sockdir, "app.sock"),
                             "unix_abstract": f"@{self.prefix}-abstract"})
        self.truth = truth
        reports: dict[str, dict] = {}

        def started(role: str, nsname: str, proc: FixtureProcess, tail: list[str], uid: int,
                    sandbox: bool = False) -> dict:
            # nsenter and setpriv exec without forking: the started pid is the process.
            ev = proc.event("ready", pid=proc.pid)
            self._check_proc(role, ev, uid, ns[nsname].inode if nsname in ns else host_netns)
            cmdline = ["/pause", "infinity"] if sandbox else tail
            self._record_proc(role, nsname, ev, cmdline, sandbox, os.getpid())
            reports[role] = ev
            return ev

        # 1. the sandbox holder of A, first
        p, tail = self._spawn("A.pause", pin_a, UID_PAUSE, "pause")
        started("A.pause", "A", p, tail, UID_PAUSE, sandbox=True)
        p.wait_eof()                                       # exec'ed: argv is now /pause
        self._check_cmdline(p.pid, ["/pause", "infinity"])

        # 2. the pre-fork server: one listener socket per port, three pids
        p, tail = self._spawn("A.web", pin_a, UID_A, "serve", spec=[
            {"kind": "tcp-listen", "name": "A.web.listen4", "family": "inet", "addr": V4_A,
             "port": PORT_WEB, "accept": True},
            {"kind": "tcp-listen", "name": "A.web.listen6", "family": "inet6", "addr": "::",
             "port": PORT_WEB6, "v6only": False, "accept": True},
        ], extra=["--workers", "2"])
        master = started("A.web", "A", p, tail, UID_A)
        workers = sorted((p.event("ready") for _ in range(2)),   # on the master's pipe
                         key=lambda e: e.get("worker", -1))
        for i, ev in enumerate(workers, 1):
            if ev.get("role") != "worker" or ev["ppid"] != p.pid or ev.get("worker") != i - 1:
                raise BuildError(f"A.web worker: unexpected report {ev}")
            role = f"A.web.worker{i}"
            self._check_proc(role, ev, UID_A, ns["A"].inode)
            worker = FixtureProcess(role, None, None, ev["pid"], p.log)
            self.procs.append(worker)
            self._record_proc(role, "A", ev, tail, False, p.pid)
            reports[role] = ev
            mine = {(s["fd"], s["inode"]) for s in ev["sockets"]}
            theirs = {(s["fd"], s["inode"]) for s in master["sockets"]}
            if mine != theirs:
                raise BuildError(f"{role} does not hold the master's listeners: {mine} {theirs}")

        # 3. loopback pair (and TIME_WAITs on demand)
        p, tail = self._spawn("A.loop", pin_a, UID_A, "hold", spec=[
            {"kind": "loop-pair", "name": "A.loop", "family": "inet", "addr": "127.0.0.1",
             "port": PORT_LOOP}])
        started("A.loop", "A", p, tail, UID_A)

        # 4. UDP and unix listeners
        p, tail = self._spawn("A.misc", pin_a, UID_A, "hold", spec=[
            {"kind": "udp-bind", "name": "A.udp", "family": "inet", "addr": "0.0.0.0",
             "port": PORT_UDP},
            {"kind": "unix-listen", "name": "A.unix.path", "path": truth.paths["unix_path"]},
            {"kind": "unix-listen", "name": "A.unix.abstract",
             "path": truth.paths["unix_abstract"]},
        ])
        started("A.misc", "A", p, tail, UID_A)

        # 5. the sandbox holder of B
        p, tail = self._spawn("B.pause", pin_b, UID_PAUSE, "pause")
        started("B.pause", "B", p, tail, UID_PAUSE, sandbox=True)
        p.wait_eof()
        self._check_cmdline(p.pid, ["/pause", "infinity"])

        # 6. a process of A with one thread in B (holding a UDP socket of B)
        fd_b = os.open(pin_b, os.O_RDONLY)
        try:
            p, tail = self._spawn("A.thread", pin_a, UID_A, "thread", caps=True,
                                  pass_fds=(fd_b,), extra=[
                                      "--thread-netns-fd", str(fd_b), "--thread-spec", json.dumps([
                                          {"kind": "udp-bind", "name": "B.thread.udp",
                                           "family": "inet", "addr": "0.0.0.0",
                                           "port": PORT_THREAD_UDP}])])
        finally:
            os.close(fd_b)
        ev = started("A.thread", "A", p, tail, UID_A)
        th = ev["thread"]
        if th["netns"] != ns["B"].inode:
            raise BuildError(f"thread not in B: {th}")
        tid_ns = os.stat(f"/proc/{p.pid}/task/{th['tid']}/ns/net").st_ino
        if tid_ns != ns["B"].inode:
            raise BuildError(f"/proc/{p.pid}/task/{th['tid']}/ns/net is {tid_ns}, not B")
        ns["B"].threads.append((p.pid, th["tid"]))

        # 7. B's tenant: connects to A over the veth, IPv4, IPv6 and v4-to-dual-stack; UDP
        p, tail = self._spawn("B.client", pin_b, UID_B, "hold", spec=[
            {"kind": "tcp-connect", "name": "B.to_web4", "family": "inet", "addr": V4_A,
             "port": PORT_WEB},
            {"kind": "tcp-connect", "name": "B.to_web6", "family": "inet6", "addr": V6_A,
             "port": PORT_WEB6},
            {"kind": "tcp-connect", "name": "B.to_web6_v4", "family": "inet", "addr": V4_A,
             "port": PORT_WEB6},
            {"kind": "udp-connect", "name": "B.to_udp", "family": "inet", "addr": V4_A,
             "port": PORT_UDP},
        ])
        started("B.client", "B", p, tail, UID_B)
        web = self._proc("A.web")
        accepted = [web.event("accepted") for _ in range(3)]

        # 8. C's listener, held by a host-namespace process
        fd_c = os.open(pin_c, os.O_RDONLY)
        try:
            p, tail = self._spawn("host.foreign", None, UID_FOREIGN, "foreign", caps=True,
                                  pass_fds=(fd_c,), spec=[
                                      {"kind": "tcp-listen", "name": "C.listen", "family": "inet",
                                       "addr": "127.0.0.1", "port": PORT_C}],
                                  extra=["--foreign-netns-fd", str(fd_c)])
        finally:
            os.close(fd_c)
        started("host.foreign", "host", p, tail, UID_FOREIGN)

        self._derive_sockets(reports, accepted)
        self._check_truth()

    # ------------------------------------------------------------------ helpers

    def _lock(self) -> None:
        try:
            self._lock_fd = machinelock.take(LOCK_PATH, LOCK_TIMEOUT, "RealNode")
        except RuntimeError as exc:
            raise BuildError(str(exc)) from None

    def _remove_stale(self) -> None:
        """Remove what an earlier RealNode left when its process was killed outright.

        Called with the lock held, so no other RealNode is alive on this machine: every
        /run/nsnt-XXXXXX directory of our layout (sockproc.py + netns-c) and its
        /run/netns/nsnt-XXXXXX-{a,b} are leftovers. Processes still in those namespaces, or
        still running that directory's sockproc.py, are killed first.
        """
        ip = ip_tool()
        for entry in os.listdir("/run"):
            d = os.path.join("/run", entry)
            if not (_STALE_DIR.match(entry) and os.path.isfile(os.path.join(d, "sockproc.py"))
                    and os.path.exists(os.path.join(d, "netns-c"))):
                continue
            pins = [os.path.join(d, "netns-c")] + [f"/run/netns/{entry}-{x}" for x in "ab"]
            inodes = set()
            for pin in pins:
                try:
                    inodes.add(os.stat(pin).st_ino)
                except OSError:
                    pass
            script = os.path.join(d, "sockproc.py")
            for pid in (int(x) for x in os.listdir("/proc") if x.isdigit()):
                try:
                    ns = os.stat(f"/proc/{pid}/ns/net").st_ino
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")
                except OSError:
                    continue
                if ns in inodes - {os.stat("/proc/self/ns/net").st_ino} \
                        or script.encode() in argv:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            subprocess.run(["umount", pins[0]], capture_output=True)
            for x in "ab":
                if os.path.exists(f"/run/netns/{entry}-{x}"):
                    subprocess.run([ip, "netns", "del", f"{entry}-{x}"], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)

    def _wait_link_up(self, netns: str, dev: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = json.loads(run([ip_tool(), "-n", netns, "-j", "link", "show", "dev", dev]))
            if out and out[0].get("operstate") == "UP":
                return
            if time.monotonic() > deadline:
                raise BuildError(f"{dev} in {netns} not UP: {out}")
            time.sleep(0.02)    # polling a condition, with a deadline

    def _check_proc(self, role: str, ev: dict, uid: int, netns: int) -> None:
        if ev["euid"] != uid or ev["uid"] != uid:
            raise BuildError(f"{role}: runs as uid {ev['uid']}/{ev['euid']}, wanted {uid}")
        if ev["netns"] != netns:
            raise BuildError(f"{role}: in netns {ev['netns']}, wanted {netns}")

    def _check_cmdline(self, pid: int, want: list[str]) -> None:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            got = [a.decode() for a in f.read().split(b"\0")[:-1]]
        if got != want:
            raise BuildError(f"pid {pid}: cmdline {got}, wanted {want}")

    def _record_proc(self, role: str, nsname: str, ev: dict, cmdline: list[str], sandbox: bool,
                     ppid: int) -> None:
        truth = self.truth
        assert truth is not None
        if ev["ppid"] != ppid:
            raise BuildError(f"{role}: ppid {ev['ppid']}, wanted {ppid}")
        pid = ev["pid"]
        netns = truth.ns[nsname].inode if nsname in truth.ns else truth.host_netns
        truth.processes[pid] = ProcTruth(pid, role, nsname, netns, ev["euid"], ppid,
                                         list(cmdline), sandbox,
                                         {s["fd"]: s["inode"] for s in ev["sockets"]})
        truth.roles[role] = pid
        if nsname in truth.ns:
            nt = truth.ns[nsname]
            nt.pids_by_role.setdefault(role, []).append(pid)
            nt.uids[pid] = ev["euid"]
            if sandbox:
                nt.sandbox_pids.append(pid)

    def _ns_of_inode(self, inode: int) -> str:
        assert self.truth is not None
        for n in self.truth.ns.values():
            if n.inode == inode:
                return n.name
        raise BuildError(f"socket in unexpected namespace {inode}")

    def _derive_sockets(self, reports: dict[str, dict], accepted: list[dict]) -> None:
        """Turn the processes' own reports into SockTruth records, then fill in holders,
        users, direction and peers from what the scenario built."""
        truth = self.truth
        assert truth is not None
        by_inode: dict[int, SockTruth] = {}
        now = time.monotonic()

        pidfds = {p.pid: p.pidfd for p in self.procs}

        def verify(pid: int, info: dict) -> None:
            """Cross-check a report against the socket itself; fill in its namespace."""
            facts = borrowed_socket_facts(pidfds[pid], info["fd"])
            if facts["inode"] != info["inode"]:
                raise BuildError(f"{info['name']}: pid {pid} fd {info['fd']} is inode "
                                 f"{facts['inode']}, reported {info['inode']}")
            if info["netns"] not in (None, facts["netns"]):
                raise BuildError(f"{info['name']}: SIOCGSKNS disagrees: {info} {facts}")
            local = info["local"]
            want = [local["addr"], local["port"]] if local["port"] is not None else None
            if want is not None and facts["local"] != want:
                raise BuildError(f"{info['name']}: getsockname {facts['local']} != {want}")
            info["netns"] = facts["netns"]

        def add(info: dict, owner_uid: int) -> SockTruth:
            if info["inode"] in by_inode:
                return by_inode[info["inode"]]
            proto = ("unix" if info["family"] == "unix"
                     else "tcp" if info["type"] == "stream" else "udp")
            if info["family"] == "unix":
                local, lport, remote, rport = info["local"]["addr"], None, "", None
                state = ("LISTEN" if info["listening"]
                         else "ESTABLISHED" if info["remote"] else "UNCONN")
            else:
                local, lport = normalize_addr(info["local"]["addr"]), info["local"]["port"]
                if info["remote"]:
                    remote, rport = normalize_addr(info["remote"]["addr"]), info["remote"]["port"]
                else:
                    remote, rport = ("::" if info["family"] == "inet6" else "0.0.0.0"), 0
                if proto == "tcp":
                    state = info["tcp_state"]
                else:
                    state = "ESTABLISHED" if info["remote"] else "UNCONN"
            s = SockTruth(name=info["name"], ns=self._ns_of_inode(info["netns"]),
                          netns=info["netns"], inode=info["inode"], proto=proto,
                          family=info["family"], state=state, local_addr=local, local_port=lport,
                          remote_addr=remote, remote_port=rport,
                          uid=None if proto == "unix" else owner_uid,
                          unix_type=info["type"] if proto == "unix" else None, created=now)
            by_inode[s.inode] = s
            truth.sockets.append(s)
            return s

        for role, ev in reports.items():
            pid, uid = ev["pid"], ev["euid"]
            infos = list(ev["sockets"])
            if "thread" in ev:
                infos += ev["thread"]["sockets"]
            for info in infos:
                verify(pid, info)
                s = add(info, uid if not role.startswith("A.web.worker") else
                        reports["A.web"]["euid"])
                s.holders.setdefault(pid, []).append(info["fd"])
                s.holder_uids[pid] = uid
        web_pid = reports["A.web"]["pid"]
        for ev in accepted:
            info = ev["socket"]
            verify(web_pid, info)
            s = add(info, reports["A.web"]["euid"])     # an accepted socket inherits sk_uid
            s.holders.setdefault(web_pid, []).append(info["fd"])
            s.holder_uids[web_pid] = reports["A.web"]["euid"]
        for s in truth.sockets:
            for fds in s.holders.values():
                fds.sort()

        # direction and peers: from the scenario, not from any table
        for s in truth.sockets:
            if s.proto == "unix":
                s.direction = "listening" if s.state == "LISTEN" else None
            elif s.state in ("LISTEN", "UNCONN"):
                s.direction = "listening"
            elif s.proto == "udp":
                s.direction = "outbound"
        pairs = [("A.loop.client", "A.loop.server", "local")]
        for ev in accepted:
            a = by_inode[ev["socket"]["inode"]]
            match = [b for b in truth.sockets
                     if b.ns == "B" and b.proto == "tcp" and b.state == "ESTABLISHED"
                     and (b.local_addr, b.local_port, b.remote_addr, b.remote_port)
                     == (a.remote_addr, a.remote_port, a.local_addr, a.local_port)]
            if len(match) != 1:
                raise BuildError(f"accepted {a} has {len(match)} client ends in B")
            pairs.append((match[0].name, a.name, "node"))
        for client_name, server_name, kind in pairs:
            c, sv = truth.sock(client_name), truth.sock(server_name)
            c.direction, sv.direction = "outbound", "inbound"
            c.peer = sv.peer = kind
            c.peer_pids, sv.peer_pids = sv.pids, c.pids
            if kind == "node":
                c.peer_netns, sv.peer_netns = sv.netns, c.netns
        # B's connected UDP socket talks to A's 0.0.0.0:5353 socket: a peer on this node.
        udp_b, udp_a = truth.sock("B.to_udp"), truth.sock("A.udp")
        udp_b.peer, udp_b.peer_netns, udp_b.peer_pids = "node", udp_a.netns, udp_a.pids

    def _check_truth(self) -> None:
        """The reports must agree with each other and with the plan."""
        truth = self.truth
        assert truth is not None
        names = [s.name for s in truth.sockets]
        if len(names) != len(set(names)):
            raise BuildError(f"duplicate socket names: {names}")
        where = {s.name: s.ns for s in truth.sockets}
        want_ns = {"A.web.listen4": "A", "A.web.listen6": "A", "A.loop.listen": "A",
                   "A.loop.client": "A", "A.loop.server": "A", "A.udp": "A", "A.unix.path": "A",
                   "A.unix.abstract": "A", "B.thread.udp": "B", "B.to_web4": "B",
                   "B.to_web6": "B", "B.to_web6_v4": "B", "B.to_udp": "B", "C.listen": "C"}
        for name, nsname in want_ns.items():
            if where.get(name) != nsname:
                raise BuildError(f"{name}: in {where.get(name)}, wanted {nsname}")
        accepted = [s for s in truth.sockets if ".accepted" in s.name]
        if len(accepted) != 3 or any(s.ns != "A" for s in accepted):
            raise BuildError(f"accepted sockets: {accepted}")
        web = truth.roles["A.web"]
        w1, w2 = truth.roles["A.web.worker1"], truth.roles["A.web.worker2"]
        for name in ("A.web.listen4", "A.web.listen6"):
            s = truth.sock(name)
            if s.pids != sorted([web, w1, w2]) or len({tuple(f) for f in s.holders.values()}) != 1:
                raise BuildError(f"{name}: holders {s.holders}")
        mapped = [s for s in accepted if s.family == "inet6" and "." in s.local_addr]
        if len(mapped) != 1 or mapped[0].local_addr != V4_A:
            raise BuildError(f"expected one IPv4-mapped accepted socket: {accepted}")
        for s in truth.sockets:
            if s.proto == "tcp" and s.state not in ("LISTEN", "ESTABLISHED"):
                raise BuildError(f"{s.name}: state {s.state}")
            if s.inode == 0 or not s.holders:
                raise BuildError(f"{s.name}: no inode or holder")
        c = truth.sock("C.listen")
        if c.pids != [truth.roles["host.foreign"]] or truth.processes[c.pids[0]].ns != "host":
            raise BuildError(f"C.listen holders {c.holders}")
        thread_udp = truth.sock("B.thread.udp")
        if thread_udp.pids != [truth.roles["A.thread"]]:
            raise BuildError(f"B.thread.udp holders {thread_udp.holders}")
        if truth.ns["A"].owners != [UID_A] or truth.ns["B"].owners != [UID_B] \
                or truth.ns["C"].owners != [] or truth.ns["C"].pids:
            raise BuildError("owners not as planned")


if __name__ == "__main__":      # python tests/support/realnode.py: build, print the truth, tear down
    with RealNode.build() as n:
        n.make_time_wait()
        t = n.truth
        assert t is not None
        for nt in t.ns.values():
            print(nt.name, nt.inode, nt.pinned, nt.pids_by_role, "owners", nt.owners,
                  "threads", nt.threads)
        for s in t.sockets:
            print(f"{s.ns} {s.name:18} {s.proto}/{s.family:5} {s.state:11} "
                  f"{s.local_addr}:{s.local_port} -> {s.remote_addr}:{s.remote_port} "
                  f"ino={s.inode} holders={s.holders} users={s.users} dir={s.direction} "
                  f"peer={s.peer}/{s.peer_netns}/{s.peer_pids}")
        if "--hold" in sys.argv:
            input("built; press enter to tear down ")
