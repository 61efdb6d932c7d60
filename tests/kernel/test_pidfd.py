"""The pidfd source (nsnet.sources.pidfd) against real processes in scratch namespaces, and proofs that it is harmless.

Every socket here is created by a real process (the holder script below, started with
`ip netns exec`), described by borrowing its fds, and compared with what the kernel's own
tables (/proc/<pid>/net/*, parsed by netparse) say about the same inode. The documented
differences (see nsnet/sources/pidfd.py) are asserted as such, so a change in either side shows.

Safety: after nsnet borrowed them, a listener still accepts, connections still carry data
both ways with no EOF seen by either end, and the holders' fd tables and file flags
(/proc/<pid>/fdinfo: pos, flags incl. O_NONBLOCK) are unchanged -- even with
socket.setdefaulttimeout() set in the describing process, the trap that makes
socket.socket(fileno=...) flip O_NONBLOCK on the shared file description.
"""
from __future__ import annotations

import json
import ipaddress
import os
import struct
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from conftest import require_root
from nsnet.sources import pidfd as borrow
from nsnet.model import TRAFFIC
from nsnet.sources.pidfd import describe_process_sockets
from nsnet.netparse import NET_FILES, parse_net_file

REPO = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 20.0
TENANT_UID = 10000 + secrets.randbelow(50000)      # a uid no one else uses, no passwd entry
# canonical text (RFC 5952: no leading zeros), as the kernel's address comes back
V6 = str(ipaddress.IPv6Address("fd7b:" + secrets.token_hex(2) + "::1"))
SYSTEM_PYTHON = "/usr/bin/python3"                  # runnable by any uid (unlike pyenv's)

# The holder: creates sockets on request, uses them on request, reports fds and inodes
# itself (os.fstat). Standard library only: it also runs as an unprivileged uid under the
# system interpreter. One JSON command per stdin line, one JSON reply per stdout line.
HOLDER_SRC = r'''
import ctypes, json, os, select, signal, socket, sys

CLONE_NEWNET, PR_SET_PDEATHSIG = 0x40000000, 1
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)     # never outlive the test
FAM = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
UTYPE = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
         "seqpacket": socket.SOCK_SEQPACKET}
socks = {}
own_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def reply(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def setns(fd):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def uaddr(text):          # "@name" -> abstract (NULs allowed inside), else a path
    return b"\0" + text[1:].encode() if text.startswith("@") else text


def endpoint(a):
    if isinstance(a, tuple):
        return [a[0], a[1]]
    if isinstance(a, bytes):
        return "@" + a[1:].decode("utf-8", "surrogateescape")
    return a


def info(s):
    return {"fd": s.fileno(), "inode": os.fstat(s.fileno()).st_ino,
            "local": endpoint(s.getsockname())}


def make_one(spec):
    kind, name = spec["kind"], spec["name"]
    if kind == "tcp-listen":
        s = socket.socket(FAM[spec["family"]], socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec["family"] == "inet6":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(spec.get("v6only", 0)))
        s.bind((spec["addr"], spec.get("port", 0)))
        s.listen(spec.get("backlog", 16))
    elif kind == "tcp-connect":
        s = socket.socket(FAM[spec["family"]], socket.SOCK_STREAM)
        if spec.get("nonblock"):
            s.setblocking(False)
            s.connect_ex((spec["addr"], spec["port"]))
        else:
            s.settimeout(10)
            s.connect((spec["addr"], spec["port"]))
            s.settimeout(None)
    elif kind == "udp":
        s = socket.socket(FAM[spec["family"]], socket.SOCK_DGRAM)
        if "addr" in spec:
            s.bind((spec["addr"], spec.get("port", 0)))
        if "connect" in spec:
            s.connect(tuple(spec["connect"]))
    elif kind == "raw":
        s = socket.socket(FAM[spec["family"]], socket.SOCK_RAW, spec["proto"])
        if "connect" in spec:
            s.connect((spec["connect"], 0))
    elif kind == "ping":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    elif kind == "netlink":
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    elif kind == "packet":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing
    elif kind == "unix":
        s = socket.socket(socket.AF_UNIX, UTYPE[spec.get("type", "stream")])
        if "bind" in spec:
            s.bind(uaddr(spec["bind"]))
            if not spec["bind"].startswith("@"):
                os.chmod(spec["bind"], 0o777)
        if spec.get("listen"):
            s.listen(16)
        if "connect" in spec:
            s.connect(uaddr(spec["connect"]))
    elif kind == "unix-pair":
        a, b = socket.socketpair(socket.AF_UNIX, UTYPE[spec.get("type", "stream")])
        return {name + ".a": a, name + ".b": b}
    else:
        raise ValueError(kind)
    return {name: s}


def make(spec):
    if "netns" not in spec:
        return make_one(spec)
    fd = os.open(spec["netns"], os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            return make_one(spec)
        finally:
            setns(own_ns)
    finally:
        os.close(fd)


def readable(s, timeout):
    if not select.select([s], [], [], timeout)[0]:
        raise TimeoutError("nothing to read")


def handle(cmd):
    op = cmd["op"]
    if op == "make":
        made = {}
        for spec in cmd["specs"]:
            for _ in range(spec.get("count", 1)):
                suffix = f".{len(made)}" if "count" in spec else ""
                made.update(make(dict(spec, name=spec["name"] + suffix)))
        socks.update(made)
        return {"sockets": {n: info(s) for n, s in made.items()}}
    if op == "accept":
        readable(socks[cmd["name"]], cmd.get("timeout", 10))
        conn, _ = socks[cmd["name"]].accept()
        socks[cmd["as"]] = conn
        return {"sockets": {cmd["as"]: info(conn)}}
    if op == "send":
        socks[cmd["name"]].sendall(cmd["data"].encode())
        return {}
    if op == "recv":
        readable(socks[cmd["name"]], cmd.get("timeout", 10))
        return {"data": socks[cmd["name"]].recv(65536).decode()}
    if op == "peek":
        try:
            data = socks[cmd["name"]].recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return {"peek": "eagain"}
        return {"peek": data.decode() if data else "eof"}
    if op == "fork":
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(0)
            while True:
                signal.pause()
        return {"child": pid}
    raise ValueError(op)


reply(ok=True, pid=os.getpid(), euid=os.geteuid(), netns=os.fstat(own_ns).st_ino)
for line in sys.stdin:
    try:
        reply(ok=True, **handle(json.loads(line)))
    except Exception as exc:
        reply(ok=False, error=f"{type(exc).__name__}: {exc}")
'''

# The describer run in a subprocess (to drop capabilities or lower RLIMIT_NOFILE for it only):
# argv: pid, JSON {fd: inode}, free fd slots (0: leave RLIMIT_NOFILE alone). Prints the result.
DESCRIBER_SRC = r'''
import json, os, resource, sys
sys.path.insert(0, os.getcwd())
from nsnet.sources.pidfd import describe_process_sockets

pid, free = int(sys.argv[1]), int(sys.argv[3])
fds = {int(k): v for k, v in json.loads(sys.argv[2]).items()}
limit = None
if free:
    # the smallest limit leaving exactly `free` unused descriptor numbers below it
    used = set()
    for name in os.listdir("/proc/self/fd"):    # the listing's own fds are closed by now
        try:
            os.fstat(int(name))
            used.add(int(name))
        except OSError:
            pass
    limit = max(used) + 1
    while limit - len([u for u in used if u < limit]) < free:
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
r = describe_process_sockets(pid, fds, seen=set())
print(json.dumps({"limit": limit, "borrowed": r.borrowed, "vanished": r.vanished,
                  "denied": r.denied, "failed": r.failed, "netns_unknown": r.netns_unknown,
                  "process_denied": r.process_denied, "process_gone": r.process_gone,
                  "errors": r.errors, "netns": sorted({s.netns or 0 for s in r.sockets}),
                  "inodes": sorted(s.inode for s in r.sockets)}))
'''


# --------------------------------------------------------------------------- plumbing

def run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


class Holder:
    """One holder process, started inside a namespace (optionally as another uid)."""

    def __init__(self, scratch: "Scratch", ns: Optional[str], uid: Optional[int] = None) -> None:
        argv = ["ip", "netns", "exec", ns] if ns else []     # None: our own namespace
        if uid is None:
            argv += [sys.executable, scratch.holder_path]
        else:
            argv += ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                     SYSTEM_PYTHON, scratch.holder_path]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=scratch.dir)
        scratch.holders.append(self)
        self._buf = b""
        hello = self._reply()
        self.pid: int = hello["pid"]
        self.euid: int = hello["euid"]
        self.netns: int = hello["netns"]
        assert self.pid == self.proc.pid       # ip netns exec and setpriv exec, no fork
        self.sockets: dict[str, dict] = {}    # name -> {"fd", "inode", "local"}
        self.children: list[int] = []

    def _reply(self) -> dict:
        deadline = time.monotonic() + REPLY_TIMEOUT
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"holder {self.proc.pid}: no reply")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"holder {self.proc.pid} exited: {self.proc.wait()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"holder {self.proc.pid}: {answer['error']}")
        return answer

    def call(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self._reply()
        self.sockets.update(answer.get("sockets", {}))
        return answer

    def make(self, *specs: dict) -> dict:
        return self.call("make", specs=list(specs))["sockets"]

    def fork(self) -> int:
        child = self.call("fork")["child"]
        self.children.append(child)
        return child

    def inode(self, name: str) -> int:
        return self.sockets[name]["inode"]

    def port(self, name: str) -> int:
        return self.sockets[name]["local"][1]

    def kill(self) -> None:
        for child in self.children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class Scratch:
    """Two scratch namespaces A and B (lo up, an IPv6 address, ping sockets allowed for
    root), a private world-readable directory for the holder script and unix paths."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.a, self.b = f"nsnt-borrow-{suffix}-a", f"nsnt-borrow-{suffix}-b"
        self.holders: list[Holder] = []
        self.namespaces: list[str] = []
        self.dir = tempfile.mkdtemp(prefix="nsnt-borrow-")
        os.chmod(self.dir, 0o755)          # the tenant uid reads the holder script here
        self.holder_path = os.path.join(self.dir, "holder.py")
        Path(self.holder_path).write_text(HOLDER_SRC)
        os.chmod(self.holder_path, 0o644)
        self.describer_path = os.path.join(self.dir, "describer.py")
        Path(self.describer_path).write_text(DESCRIBER_SRC)
        for ns in (self.a, self.b):
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "-6", "addr", "add", f"{V6}/64", "dev", "lo", "nodad")
            run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0")

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def inode(self, ns: str) -> int:
        return os.stat(self.path(ns)).st_ino

    def close(self) -> None:
        for holder in self.holders:
            holder.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def scratch():
    require_root("ip", "setpriv")
    made = Scratch()
    try:
        yield made
    finally:
        made.close()


def held_sockets(pid: int) -> dict[int, int]:
    """fd -> socket inode, read here (not with nsnet) from /proc/<pid>/fd."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            found[int(name)] = int(target[8:-1])
    return found


def fd_table(pid: int) -> dict[int, tuple[str, str]]:
    """Every fd of a process: (link target, fdinfo text: pos, flags incl. O_NONBLOCK, ...)."""
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        table[int(name)] = (os.readlink(f"/proc/{pid}/fd/{name}"),
                            Path(f"/proc/{pid}/fdinfo/{name}").read_text())
    return table


def proc_tables(pid: int) -> dict[int, object]:
    """Socket inode -> netparse Socket, from the tables of the namespace pid lives in."""
    found = {}
    for name in NET_FILES:
        data = Path(f"/proc/{pid}/net/{name}").read_bytes()
        result = parse_net_file(name, data)
        assert result.malformed == 0, result.examples
        for sock in result.sockets:
            if sock.inode:
                found[sock.inode] = sock
    return found


FIELDS = ("proto", "family", "state", "local_addr", "local_port", "remote_addr", "remote_port",
          "uid", "unix_type")


def fields(sock) -> dict:
    return {f: getattr(sock, f) for f in FIELDS}


def describe_in_subprocess(scratch: Scratch, pid: int, fds: dict[int, int], *,
                           caps: Optional[str] = None, free_fds: int = 0) -> dict:
    argv = [sys.executable, scratch.describer_path, str(pid), json.dumps(fds), str(free_fds)]
    if caps is not None:
        argv = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={caps}",
                "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- the zoo

def build_zoo(scratch: Scratch) -> tuple[Holder, Holder, Holder]:
    """Holder A (root, in A), tenant T (TENANT_UID, in A), holder B (root, in B)."""
    a = Holder(scratch, scratch.a)
    b = Holder(scratch, scratch.b)
    t = Holder(scratch, scratch.a, uid=TENANT_UID)
    upath = os.path.join(scratch.dir, "listen.sock")
    dpath = os.path.join(scratch.dir, "dgram.sock")
    abstract = "@nsnt-borrow-" + secrets.token_hex(3) + "\0tail"
    a.make({"kind": "tcp-listen", "name": "l4", "family": "inet", "addr": "127.0.0.1"},
           {"kind": "tcp-listen", "name": "l6", "family": "inet6", "addr": "::"},  # dual stack
           {"kind": "tcp-listen", "name": "full", "family": "inet", "addr": "127.0.0.1",
            "backlog": 0},
           {"kind": "udp", "name": "ub4", "family": "inet", "addr": "0.0.0.0"},
           {"kind": "udp", "name": "ub6", "family": "inet6", "addr": "::"},
           {"kind": "unix", "name": "ul", "bind": upath, "listen": True},
           {"kind": "unix", "name": "uabs", "bind": abstract, "listen": True},
           {"kind": "unix", "name": "dg", "type": "dgram", "bind": dpath},
           {"kind": "unix", "name": "dgu", "type": "dgram"},
           {"kind": "unix-pair", "name": "sp"},
           {"kind": "unix-pair", "name": "dp", "type": "dgram"},
           {"kind": "unix-pair", "name": "qp", "type": "seqpacket"},
           {"kind": "raw", "name": "r4", "family": "inet", "proto": socket.IPPROTO_ICMP},
           {"kind": "raw", "name": "r6", "family": "inet6", "proto": socket.IPPROTO_ICMPV6},
           {"kind": "raw", "name": "rc", "family": "inet", "proto": 253, "connect": "127.0.0.1"},
           {"kind": "netlink", "name": "nl"},
           {"kind": "packet", "name": "pk"},
           {"kind": "ping", "name": "ping"},
           # created in B by a process of A: its namespace must come from the socket
           {"kind": "tcp-listen", "name": "fl", "family": "inet", "addr": "127.0.0.1",
            "netns": scratch.path(scratch.b)},
           {"kind": "udp", "name": "fu", "family": "inet6", "addr": "::1",
            "netns": scratch.path(scratch.b)})
    l4, l6, full = a.port("l4"), a.port("l6"), a.port("full")
    a.make({"kind": "tcp-connect", "name": "c4", "family": "inet", "addr": "127.0.0.1",
            "port": l4},
           {"kind": "tcp-connect", "name": "c6", "family": "inet6", "addr": V6, "port": l6},
           {"kind": "tcp-connect", "name": "cm", "family": "inet", "addr": "127.0.0.1",
            "port": l6},
           {"kind": "udp", "name": "uc4", "family": "inet", "addr": "127.0.0.1",
            "connect": ["127.0.0.1", a.port("ub4")]},
           {"kind": "udp", "name": "uc6", "family": "inet6", "addr": V6,
            "connect": [V6, a.port("ub6")]},
           {"kind": "unix", "name": "uc", "connect": upath},
           {"kind": "unix", "name": "uac", "connect": abstract},
           {"kind": "unix", "name": "dgc", "type": "dgram", "connect": dpath},
           # the first fills `full`'s accept queue (backlog 0); the second stays in SYN_SENT
           {"kind": "tcp-connect", "name": "q1", "family": "inet", "addr": "127.0.0.1",
            "port": full, "nonblock": True})
    time.sleep(0.2)
    a.make({"kind": "tcp-connect", "name": "syn", "family": "inet", "addr": "127.0.0.1",
            "port": full, "nonblock": True})
    a.call("accept", name="l4", **{"as": "a4"})
    a.call("accept", name="l6", **{"as": "a6"})
    a.call("accept", name="l6", **{"as": "am"})       # an IPv4 client on [::]: mapped
    a.call("accept", name="ul", **{"as": "uacc"})
    a.call("accept", name="uabs", **{"as": "uaacc"})
    # the tenant: its own uid on inet sockets, and ends of connections with A
    t.make({"kind": "tcp-connect", "name": "tc", "family": "inet", "addr": "127.0.0.1",
            "port": l4},
           {"kind": "udp", "name": "tu", "family": "inet", "addr": "127.0.0.1",
            "connect": ["127.0.0.1", a.port("ub4")]},
           {"kind": "unix", "name": "tx", "connect": upath})
    a.call("accept", name="l4", **{"as": "ta"})
    a.call("accept", name="ul", **{"as": "txa"})
    b.make({"kind": "tcp-listen", "name": "bl", "family": "inet6", "addr": "::1"},
           {"kind": "udp", "name": "bu", "family": "inet", "addr": "127.0.0.1"})
    return a, t, b


# (name in holder A) -> {field: (borrowed, /proc)}: the documented differences
def documented_differences(a: Holder) -> dict[str, dict[str, tuple]]:
    return {
        # unix_dgram_connect marks the target of a connect() ESTABLISHED in /proc/net/unix
        "dg": {"state": ("UNCONN", "ESTABLISHED")},
        # getpeername refuses in SYN_SENT; /proc shows the destination
        "syn": {"remote_addr": ("0.0.0.0", "127.0.0.1"),
                "remote_port": (0, a.port("full"))},
        # raw sockets never answer getpeername; /proc/net/raw shows the connected socket
        "rc": {"state": ("UNCONN", "ESTABLISHED"), "remote_addr": ("0.0.0.0", "127.0.0.1")},
    }


# Sockets in no table, that only a per-fd source sees (the zoo's unbound ones)
NO_TABLE = {"nl": ("netlink", "netlink", "UNCONN", "route", 0, "", None),
            "ping": ("icmp", "inet", "UNCONN", "0.0.0.0", 0, "0.0.0.0", 0)}


def row_of(s) -> tuple:
    return (s.proto, s.family, s.state, s.local_addr, s.local_port, s.remote_addr,
            s.remote_port)


# --------------------------------------------------------------------------- tests

def test_sockets_match_the_kernel_tables(scratch):
    a, t, b = build_zoo(scratch)
    a.call("send", name="c4", data="x" * 100)
    assert a.call("recv", name="a4")["data"] == "x" * 100
    ns_a, ns_b = scratch.inode(scratch.a), scratch.inode(scratch.b)
    assert a.netns == t.netns == ns_a and b.netns == ns_b

    tables = {ns_a: proc_tables(a.pid), ns_b: proc_tables(b.pid)}
    seen: set[int] = set()
    results = {h: describe_process_sockets(h.pid, held_sockets(h.pid), seen=seen,
                                           details=frozenset({TRAFFIC}))
               for h in (a, t, b)}
    described = {s.inode: s for r in results.values() for s in r.sockets}

    names = {h.inode(n): (h, n) for h in (a, t, b) for n in h.sockets}
    diffs = documented_differences(a)
    for inode, (holder, name) in names.items():
        got = described[inode]
        where = ns_b if name in ("fl", "fu") or holder is b else ns_a
        assert got.netns == where and got.netns_key == f"net:[{where}]", name
        if name in NO_TABLE:
            # never bound: the kernel hashes a netlink or ping socket at bind (or its first
            # send), and every table and dump walks those hashes
            assert inode not in tables[where], name
            assert row_of(got) == NO_TABLE[name], name
            continue
        want = fields(tables[where][inode])
        for field, (ours, theirs) in diffs.get(name, {}).items():
            assert want[field] == theirs, (name, field, want)
            want[field] = ours
        assert fields(got) == want, name
        assert not got.pids and not got.fds       # holders are joined by the caller

    ra, rt, rb = results[a], results[t], results[b]
    assert (ra.skipped_family, ra.skipped_protocol) == (0, 0)   # netlink, packet, ping: told
    assert ra.borrowed == len(a.sockets)
    assert described[a.inode("nl")].proto == "netlink"
    assert described[a.inode("pk")].proto == "packet"
    assert described[a.inode("ping")].proto == "icmp"
    assert rt.borrowed == len(t.sockets) and rb.borrowed == len(b.sockets)
    for r in results.values():
        assert (r.vanished, r.denied, r.failed, r.netns_unknown) == (0, 0, 0, 0), r.errors
    # spot checks that the comparison is not vacuous
    assert described[a.inode("am")].family == "inet6"
    assert described[a.inode("am")].local_addr == "127.0.0.1"
    assert described[a.inode("c6")].remote_addr == V6
    assert described[a.inode("uabs")].local_addr.endswith("@tail")
    assert described[a.inode("r6")].local_port == socket.IPPROTO_ICMPV6
    assert described[a.inode("syn")].state == "SYN_SENT"
    assert described[t.inode("tc")].uid == TENANT_UID
    assert described[a.inode("ta")].uid == 0        # accepted: the accepting process's uid
    assert described[a.inode("sp.a")].unix_type == "stream"
    assert described[a.inode("qp.b")].unix_type == "seqpacket"
    # the edges' traffic (TRAFFIC), from the TCP_INFO the state is read with:
    # (bytes_acked, bytes_received, total_retrans, rtt_us); no SocketDetail for it
    assert described[a.inode("a4")].traffic[1] == 100
    assert described[a.inode("c4")].traffic[3] > 0
    assert described[a.inode("a4")].detail is None


def test_a_shared_socket_is_borrowed_once(scratch):
    a = Holder(scratch, scratch.a)
    a.make({"kind": "tcp-listen", "name": "l", "family": "inet", "addr": "127.0.0.1"},
           {"kind": "unix-pair", "name": "p"})
    child = a.fork()
    parent_fds, child_fds = held_sockets(a.pid), held_sockets(child)
    assert parent_fds == child_fds and len(parent_fds) == 3
    seen: set[int] = set()
    first = describe_process_sockets(a.pid, parent_fds, seen=seen)
    second = describe_process_sockets(child, child_fds, seen=seen)
    assert first.borrowed == 3 and seen == set(parent_fds.values())
    assert second.borrowed == 0 and second.already_seen == 3 and not second.sockets


def test_borrowing_leaves_every_socket_working(scratch):
    a, t, b = build_zoo(scratch)
    before = {h.pid: fd_table(h.pid) for h in (a, t, b)}
    # both ends of a TCP, a unix stream and a UDP conversation between two processes
    pairs = [(t, "tc", a, "ta"), (t, "tx", a, "txa")]
    for one, x, other, y in pairs:
        assert one.call("peek", name=x)["peek"] == "eagain"
        assert other.call("peek", name=y)["peek"] == "eagain"

    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.0)   # the trap for socket.socket(fileno=): O_NONBLOCK
    try:
        for _ in range(3):
            for h in (a, t, b):
                r = describe_process_sockets(h.pid, held_sockets(h.pid), seen=set())
                assert r.failed == 0 and r.vanished == 0, r.errors
    finally:
        socket.setdefaulttimeout(saved)

    # nothing added, removed or changed in any fd table, flags (O_NONBLOCK) and pos included
    assert {h.pid: fd_table(h.pid) for h in (a, t, b)} == before
    # no EOF, no data appeared, on either end
    for one, x, other, y in pairs:
        assert one.call("peek", name=x)["peek"] == "eagain"
        assert other.call("peek", name=y)["peek"] == "eagain"
        one.call("send", name=x, data="ping")
        assert other.call("recv", name=y)["data"] == "ping"
        other.call("send", name=y, data="pong")
        assert one.call("recv", name=x)["data"] == "pong"
    t.call("send", name="tu", data="datagram")
    assert a.call("recv", name="ub4")["data"] == "datagram"
    # the borrowed listeners still accept new connections (a blocking accept in the holder)
    t.make({"kind": "tcp-connect", "name": "late", "family": "inet", "addr": "127.0.0.1",
            "port": a.port("l4")},
           {"kind": "tcp-connect", "name": "late6", "family": "inet", "addr": "127.0.0.1",
            "port": a.port("l6")},
           {"kind": "unix", "name": "latex", "connect": os.path.join(scratch.dir, "listen.sock")})
    a.call("accept", name="l4", **{"as": "late.a"})
    a.call("accept", name="l6", **{"as": "late6.a"})
    a.call("accept", name="ul", **{"as": "latex.a"})
    t.call("send", name="late", data="hello")
    assert a.call("recv", name="late.a")["data"] == "hello"


def test_two_hundred_sockets_with_three_free_descriptors(scratch):
    a = Holder(scratch, scratch.a)
    a.make({"kind": "unix-pair", "name": "p", "count": 50},
           {"kind": "udp", "name": "u", "family": "inet", "addr": "127.0.0.1", "count": 50},
           {"kind": "tcp-listen", "name": "l", "family": "inet6", "addr": "::1", "count": 50})
    fds = held_sockets(a.pid)
    assert len(fds) == 200
    out = describe_in_subprocess(scratch, a.pid, fds, free_fds=3)
    assert out["limit"] is not None and out["limit"] < 64
    assert out["borrowed"] == 200 and out["failed"] == 0, out["errors"]
    assert out["inodes"] == sorted(fds.values())
    assert out["netns"] == [scratch.inode(scratch.a)]
    # control: the limit binds -- with two free slots the namespace lookup (a third fd) fails
    tight = describe_in_subprocess(scratch, a.pid, fds, free_fds=2)
    assert tight["failed"] > 0 and any("EMFILE" in e for e in tight["errors"]), tight


def test_processes_that_exit_are_counted(scratch):
    # reaped: pidfd_open says ESRCH
    gone = Holder(scratch, scratch.a)
    gone.make({"kind": "unix-pair", "name": "p", "count": 5})
    fds = held_sockets(gone.pid)
    gone.kill()
    r = describe_process_sockets(gone.pid, fds, seen=set())
    assert (r.borrowed, r.vanished, r.process_gone) == (0, 10, True)

    # a zombie: killed, not yet reaped; its fd table is gone
    zombie = Holder(scratch, scratch.a)
    zombie.make({"kind": "unix-pair", "name": "p", "count": 5})
    fds = held_sockets(zombie.pid)
    os.kill(zombie.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{zombie.pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = describe_process_sockets(zombie.pid, fds, seen=set())
    assert (r.borrowed, r.vanished, r.process_gone) == (0, 10, True)

    # an fd closed meanwhile, and an fd now holding another socket: that fd only
    alive = Holder(scratch, scratch.a)
    alive.make({"kind": "unix-pair", "name": "p"})
    fds = held_sockets(alive.pid)
    fd_a, fd_b = sorted(fds)
    r = describe_process_sockets(alive.pid, {fd_a: fds[fd_a], 999: 12345, fd_b: 777777},
                                 seen=set())
    assert (r.borrowed, r.vanished, r.process_gone) == (1, 2, False)
    # two fds of one socket (the walk saw a dup): described once
    r = describe_process_sockets(alive.pid, {fd_a: fds[fd_a], fd_b: fds[fd_a]}, seen=set())
    assert (r.borrowed, r.already_seen, r.vanished) == (1, 1, 0)

    # exiting while being described: whatever was not described yet is counted
    hits, delay = 0, 0.01
    for _ in range(10):
        dying = Holder(scratch, scratch.a)
        dying.make({"kind": "unix-pair", "name": "p", "count": 3000})
        fds = held_sockets(dying.pid)
        box: dict = {}
        worker = threading.Thread(
            target=lambda: box.setdefault("r", describe_process_sockets(dying.pid, fds,
                                                                        seen=set())))
        worker.start()
        time.sleep(delay)
        os.kill(dying.pid, signal.SIGKILL)
        worker.join(60)
        dying.kill()
        r = box["r"]
        assert r.borrowed + r.vanished == len(fds) == 6000
        assert r.failed == 0 and r.denied == 0, r.errors
        if 0 < r.borrowed < len(fds):
            assert r.process_gone
            hits += 1
            break
        delay = delay * 2 if r.borrowed == 0 else delay / 2    # too early / too late
    assert hits, "the process never exited while being described"


def test_denied_and_partial_privileges_are_counted(scratch):
    t = Holder(scratch, scratch.a, uid=TENANT_UID)
    t.make({"kind": "unix-pair", "name": "p", "count": 3},
           {"kind": "udp", "name": "u", "family": "inet", "addr": "127.0.0.1"})
    fds = held_sockets(t.pid)
    assert len(fds) == 7
    # uid 0 without CAP_SYS_PTRACE: pidfd_getfd on another uid's process is refused
    none = describe_in_subprocess(scratch, t.pid, fds, caps="-all")
    assert (none["borrowed"], none["denied"], none["process_denied"]) == (0, 7, True)
    # CAP_SYS_PTRACE alone: described, but SIOCGSKNS (CAP_NET_ADMIN) refused
    ptrace = describe_in_subprocess(scratch, t.pid, fds, caps="-all,+sys_ptrace")
    assert (ptrace["borrowed"], ptrace["denied"], ptrace["netns_unknown"]) == (7, 0, 7)
    assert ptrace["netns"] == [0]
    both = describe_in_subprocess(scratch, t.pid, fds, caps="-all,+sys_ptrace,+net_admin")
    assert (both["borrowed"], both["netns_unknown"]) == (7, 0)
    assert both["netns"] == [scratch.inode(scratch.a)]
    # and a root process with every capability, to uid 0 without CAP_SYS_PTRACE
    a = Holder(scratch, scratch.a)
    a.make({"kind": "unix-pair", "name": "p"})
    root = describe_in_subprocess(scratch, a.pid, held_sockets(a.pid), caps="-all")
    assert (root["borrowed"], root["denied"]) == (0, 2)


def test_socket_socket_fileno_would_have_changed_the_process(scratch):
    """Why the pidfd source does not use socket.socket(fileno=...): the trap, shown on a holder."""
    a = Holder(scratch, scratch.a)
    a.make({"kind": "udp", "name": "u", "family": "inet", "addr": "127.0.0.1"})
    fd = a.sockets["u"]["fd"]
    flags = lambda: Path(f"/proc/{a.pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
    before = flags()
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.0)
    try:
        r = describe_process_sockets(a.pid, held_sockets(a.pid), seen=set())
        assert r.borrowed == 1 and flags() == before
        pidfd = os.pidfd_open(a.pid)
        try:
            dup = borrow._syscall(borrow.SYS_pidfd_getfd, pidfd, fd, 0)
            assert dup >= 0
            socket.socket(fileno=dup).close()
        finally:
            os.close(pidfd)
    finally:
        socket.setdefaulttimeout(saved)
    assert int(flags(), 8) & os.O_NONBLOCK and not int(before, 8) & os.O_NONBLOCK


# --------------------------------------------------------------------------- cgroup v1 guard


def classid_of(port: int) -> Optional[int]:
    """A TCP listener's net_cls classid, from sock_diag (INET_DIAG_CLASS_ID, sent along with
    INET_DIAG_TCLASS) in our own namespace. 0 reads back as sk_priority, 0 here."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)       # NETLINK_SOCK_DIAG
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (6 - 1), 0,
                      1 << 10) + bytes(48)                           # LISTEN, any address
    nl.send(struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req)
    found = None
    try:
        while True:
            data = nl.recv(1 << 16)
            off = 0
            while off < len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == 3:              # NLMSG_DONE
                    return found
                msg = data[off + 16:off + length]
                if struct.unpack_from(">H", msg, 4)[0] == port:
                    at = 72                # after struct inet_diag_msg
                    while at + 4 <= len(msg):
                        alen, atype = struct.unpack_from("=HH", msg, at)
                        if atype == 17:    # INET_DIAG_CLASS_ID
                            found = struct.unpack_from("=I", msg, at + 4)[0]
                        at += (alen + 3) & ~3
                off += (length + 3) & ~3
    finally:
        nl.close()


def _net_cls_hierarchy() -> int:
    for line in Path("/proc/cgroups").read_text().splitlines():
        if line.startswith("net_cls\t"):
            return int(line.split()[1])
    return -1


def _unmount_net_cls(mount: str, child: str) -> None:
    """Leave no v1 hierarchy behind: a hierarchy unmounted while a (dying) child cgroup
    exists outlives its mount, so wait for the child to go before the last umount."""
    deadline = time.monotonic() + 20
    if os.path.isdir(child):
        while True:
            try:
                os.rmdir(child)
                break
            except OSError:
                assert time.monotonic() < deadline, "cgroup child not removable"
                time.sleep(0.05)
    while True:
        count = next(int(line.split()[2]) for line in Path("/proc/cgroups").read_text()
                     .splitlines() if line.startswith("net_cls\t"))
        if count == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for attempt in range(2):
        subprocess.run(["umount", mount], capture_output=True)
        # the hierarchy is destroyed asynchronously (~0.1 s here) once unmounted childless
        settle = time.monotonic() + 10
        while _net_cls_hierarchy() != 0 and time.monotonic() < settle:
            time.sleep(0.05)
        if _net_cls_hierarchy() == 0 or attempt:
            break
        # still bound (a child was dying at umount time): a childless mount+umount ends it
        subprocess.run(["mount", "-t", "cgroup", "-o", "net_cls", "nsnt-borrow-netcls", mount],
                       capture_output=True)
    os.rmdir(mount)


@pytest.fixture
def net_cls_v1(scratch):
    """A cgroup v1 net_cls hierarchy with one child cgroup (classid 0x100001). Machine-wide
    while it lasts (every process gains an 'N:net_cls:/' line), so opt-in outside CI."""
    if os.environ.get("CI") != "true" and os.environ.get("NSNT_TEST_CGROUP_V1") != "1":
        pytest.skip("mounts a machine-wide cgroup v1 net_cls hierarchy for a second: "
                    "set NSNT_TEST_CGROUP_V1=1 (runs by default under CI=true)")
    if _net_cls_hierarchy() != 0:
        pytest.skip("net_cls is already bound to a v1 hierarchy on this host")
    mount = os.path.join(scratch.dir, "net_cls")
    child = os.path.join(mount, "nsnt-borrow-tenant")
    os.mkdir(mount)
    run("mount", "-t", "cgroup", "-o", "net_cls", "nsnt-borrow-netcls", mount)
    borrow._cgroup_view = (-1e9, frozenset(), {})      # forget the cached host view
    try:
        os.mkdir(child)
        Path(child, "net_cls.classid").write_text("0x100001")
        yield child
    finally:
        for holder in scratch.holders:      # their tasks keep the child cgroup busy
            holder.kill()
        _unmount_net_cls(mount, child)
        borrow._cgroup_view = (-1e9, frozenset(), {})
    assert _net_cls_hierarchy() == 0


def test_no_borrowing_where_it_would_retag_sockets(scratch, net_cls_v1):
    tenant = Holder(scratch, None)
    Path(net_cls_v1, "cgroup.procs").write_text(str(tenant.pid))
    tenant.make({"kind": "tcp-listen", "name": "l", "family": "inet", "addr": "127.0.0.1"})
    port, fds = tenant.port("l"), held_sockets(tenant.pid)
    # set by the kernel when the task joined the cgroup, or at creation: the tenant's tag
    assert classid_of(port) == 0x100001

    r = describe_process_sockets(tenant.pid, fds, seen=set())
    assert (r.borrowed, r.unsafe) == (0, 1) and "net_cls" in r.unsafe_reason
    assert classid_of(port) == 0x100001                 # untouched

    # a process in our own net_cls cgroup (the root one) is borrowed as usual
    same = Holder(scratch, None)
    same.make({"kind": "tcp-listen", "name": "l", "family": "inet", "addr": "127.0.0.1"})
    assert describe_process_sockets(same.pid, held_sockets(same.pid), seen=set()).borrowed == 1

    # the hazard itself, on the scratch tenant: one borrow re-tags its listener
    forced = describe_process_sockets(tenant.pid, fds, seen=set(), allow_cgroup_retag=True)
    assert forced.borrowed == 1
    assert classid_of(port) == 0
