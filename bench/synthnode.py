#!/usr/bin/env python3
"""synthnode.py: build a busy synthetic node (many network namespaces, processes and sockets).

Python 3 stdlib only. Run as root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SETUID).

    python3 bench/synthnode.py up [--namespaces 100] [--procs-per-ns 5] [--conns-per-proc 10]
                                  [--pin-every 5] [--child-ehash ENTRIES] [--dir /tmp/nsnt-bench]
    python3 bench/synthnode.py status [--dir ...]
    python3 bench/synthnode.py down   [--dir ...]     # idempotent; always run it

Topology (every address lives on a veth, the bridge or lo of a namespace this script created):

  services netns   pinned at /run/netns/nsnt-bench-<fid>-svc; a "/pause" holder (uid 65535)
    br0  10.200.0.1/16 fd00:200::1/64        one veth port per pod
         10.200.0.10 fd00:200::10  mysqld        tcp/3306  uid 999, forked workers share the listeners
         10.200.0.11 fd00:200::11  redis-server  tcp/6379  uid 998, forked workers share the listeners
         10.200.0.1                dnsmasq       udp/53    uid 997
  pod netns i (0 <= i < N)   every --pin-every'th one also pinned at /run/netns/nsnt-bench-<fid>-pod-<i>
    eth0 10.200.<1+i//250>.<1+i%250>/16, fd00:200::1:<i>/64
    "/pause" holder, uid 65535, no sockets (argv[0] is /pause: an exec'd `sleep`)
    app master, uid 10001+i: shared listeners 0.0.0.0:8080, [::]:8081 (dual stack), udp 0.0.0.0:5353,
      a unix listener (path) and an abstract one; forks P-1 workers that share them (nginx-style).
      Each of the P processes: admin listener 127.0.0.1:20000+k, a unix socketpair, a udp6 socket and
      C connections cycling through loopback v4/v6 (accepted by some process of the pod), unix,
      mysql/redis over the bridge (v4 and v6) and connected UDP to the dns server.
      The master also leaves one connection in a listener's accept queue (server side: inode 0).

One Python process per namespace: the supervisor forks it, it unshare()s its netns and then forks
its pause holder and its workers, so building 100 x 5 x 10 (~12k sockets) takes a few seconds.

Everything is tracked: every process carries NSNT_BENCH_NODE=<fid>:<run> in its environment, pins
are named nsnt-bench-<fid>-*, <fid> derives from --dir, so `down` removes exactly what `up` made (also
after a crash) and several nodes with different --dir never collide.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import gc
import hashlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback

DEFAULT_DIR = "/tmp/nsnt-bench"
PIN_DIR = "/run/netns"
PIN_BASE = "nsnt-bench-"
ENV_MARK = "NSNT_BENCH_NODE"

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

PAUSE_UID = 65535
TENANT_UID0 = 10001
SVC_UID = {"mysqld": 999, "redis-server": 998, "dnsmasq": 997}
DB = [("10.200.0.10", 3306), ("fd00:200::10", 3306)]
REDIS = [("10.200.0.11", 6379), ("fd00:200::11", 6379)]
DNS = ("10.200.0.1", 53)
# connection kinds cycled through by every pod process (process k starts at offset k)
MIX = ["lo4", "db4", "lo4", "redis4", "lo6", "unix", "redis6", "lo4", "db6", "dns"]
MAX_PODS = 250 * 250

_libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------------------------- helpers
def loadavg() -> list[str]:
    """The machine's 1, 5 and 15 minute load averages (every bench prints them: a busy VM
    shows in every wall time)."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _chk(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare_net() -> None:
    _chk(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def setns_fd(fd: int) -> None:
    _chk(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def setns_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd)
    finally:
        os.close(fd)


def bind_mount(src: str, dst: str) -> None:
    _chk(_libc.mount(src.encode(), dst.encode(), None, MS_BIND, None), f"mount --bind {src} {dst}")


def umount_detach(path: str) -> None:
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"umount2({path}): {os.strerror(e)}")


def set_comm(name: str) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def set_title(title: str) -> None:
    """Rewrite our argv area (like setproctitle / nginx) so /proc/<pid>/cmdline shows `title`.

    The last byte of the area is made non-NUL: the kernel then returns the area up to the first
    NUL, i.e. exactly the title (one argument). Our own memory, written through /proc/self/mem,
    needs no capability. Best effort: on any failure the old command line stays.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            rest = f.read().rsplit(b")", 1)[1].split()
        start, end = int(rest[45]), int(rest[46])       # fields 48, 49: arg_start, arg_end
        size = end - start
        data = title.encode()[: size - 2]
        data = data + b"\0" * (size - len(data) - 1) + b" "
        with open("/proc/self/mem", "r+b", buffering=0) as m:
            m.seek(start)
            m.write(data)
    except (OSError, ValueError, IndexError):
        pass


def set_pdeathsig(expected_ppid: int) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_ppid:
        os._exit(1)


def link_up(ifname: str = "lo") -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH22x", ifname.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", ifname.encode(), flags | IFF_UP))
    finally:
        s.close()


def drop_privs(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    # a uid change makes the process non-dumpable (its /proc files then belong to root); a process
    # exec'd by its user would be dumpable, so restore that (it also lets set_title write our argv)
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def write_sysctl(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def ip_batch(cmds: list[str], what: str) -> None:
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(cmds) + "\n", text=True,
                       capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip -batch ({what}): {r.stderr.strip()[:1000]}")


def fixture_id(base: str) -> str:
    return hashlib.sha1(os.path.realpath(base).encode()).hexdigest()[:6]


def pin_prefix(base: str) -> str:
    return f"{PIN_BASE}{fixture_id(base)}-"


def pod_addrs(i: int) -> tuple[str, str]:
    return f"10.200.{1 + i // 250}.{1 + i % 250}", f"fd00:200::1:{i:x}"


def proc_starttime(pid: int):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def environ_mark(pid: int):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = ENV_MARK.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def marked_pids(fid: str) -> list[int]:
    """every live process of fixture `fid` (any run), found by the environment marker."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            m = environ_mark(int(name))
            if m is not None and m.startswith(fid + ":"):
                out.append(int(name))
    return out


def list_pins(prefix: str) -> list[str]:
    try:
        return sorted(os.path.join(PIN_DIR, n) for n in os.listdir(PIN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def raise_nofile() -> int:
    """soft RLIMIT_NOFILE up to the hard limit (raising the hard one needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 20, 262144, 65536):
        if want > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                return want
            except (ValueError, OSError):
                continue
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ------------------------------------------------------------------------------------- children
REPORT = {"fd": -1}


def report(msg: str) -> None:
    """one line to the supervisor; lines are < PIPE_BUF, so concurrent writers never interleave."""
    os.write(REPORT["fd"], (msg.replace("\n", " ")[:500] + "\n").encode())


def close_fds_except(keep: set[int]) -> None:
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def child_reset() -> None:
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def fork_child(fn, *args, keep: tuple[int, ...] = ()) -> int:
    """fork; the child keeps only stdio, the report pipe and `keep`, runs fn, never returns."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        child_reset()
        close_fds_except({REPORT["fd"], *keep})
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - report every failure to the supervisor, then exit
        code = 1
        try:
            tb = traceback.format_exc().strip().splitlines()
            report(f"err {os.getpid()} {fn.__name__}: {e!r} at {' | '.join(tb[-3:])}")
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


def sleep_forever() -> None:
    while True:
        signal.pause()


def exec_pause(ppid: int) -> None:
    """become the sandbox holder: uid 65535, argv[0] /pause, no sockets (fds are CLOEXEC)."""
    drop_privs(PAUSE_UID)
    set_pdeathsig(ppid)
    sleep = shutil.which("sleep") or "/bin/sleep"
    os.execv(sleep, ["/pause", "infinity"])


# how long a pod process keeps retrying a connect; a 1,000-namespace node on 2 cores needs
# minutes (the services accept ~115k connections), hence the variable
CONNECT_TOTAL = float(os.environ.get("NSNT_BENCH_CONNECT_TOTAL", "60"))


# what a service writes on each connection it accepts (svc_accept_loop), and how long a client
# waits for it before it makes the connection again (if the server accepts the first one after
# all, it holds one more connection, in CLOSE_WAIT: the supervisor counts what was accepted)
ACCEPTED = b"!"
CONFIRM_WAIT = 120.0


def connect_retry(fam: int, typ: int, addr, total: float | None = None,
                  confirmed: bool = False) -> socket.socket:
    """blocking connect; retried because ARP/ND or accept queues can lag under a fork storm.
    confirmed: also wait until the server has accepted it (it writes ACCEPTED). Under a
    load of 100+ a connect succeeded on our side and never reached the server's accept
    queue (most likely its final ACK dropped, with no request of it left on the server to
    retransmit: a SYN cookie's), and the build waited for that connection until its
    deadline; such a one is now dropped and made again."""
    deadline = time.monotonic() + (CONNECT_TOTAL if total is None else total)
    delay = 0.02
    while True:
        s = socket.socket(fam, typ)
        s.settimeout(10.0)
        confirming = False
        try:
            s.connect(addr)
            if confirmed:
                confirming = True
                s.settimeout(CONFIRM_WAIT)   # a busy server's accept: not the connect's deadline
                if s.recv(1) != ACCEPTED:
                    raise ConnectionResetError(errno.ECONNRESET, "closed before it was accepted")
            s.settimeout(None)
            return s
        except OSError as e:
            s.close()
            transient = isinstance(e, TimeoutError) or e.errno in (
                errno.ECONNREFUSED, errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH,
                errno.ETIMEDOUT, errno.ECONNRESET, errno.EADDRNOTAVAIL)
            lost = confirming and isinstance(e, TimeoutError)   # made again, whatever the time
            if not transient or (time.monotonic() > deadline and not lost):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def svc_accept_loop(name: str, listeners: list[socket.socket]) -> None:
    """accept forever, keep every connection open, report each batch's count to the supervisor."""
    conns = []
    for l in listeners:
        l.setblocking(False)
    while True:
        ready, _, _ = select.select(listeners, [], [], 5.0)
        n = 0
        for l in ready:
            while True:
                try:
                    c, _ = l.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE):
                        raise RuntimeError(f"{name}: out of file descriptors ({len(conns)} open)")
                    raise
                try:
                    c.send(ACCEPTED)   # the client waits for it (connect_retry(confirmed=True))
                except OSError:
                    c.close()          # gone already: its client makes another
                    continue
                conns.append(c)
                n += 1
        if n:
            report(f"acc {name} {n}")


def svc_service(ppid: int, name: str, binds, workers: int) -> None:
    set_comm(name)
    set_title({"mysqld": "/usr/sbin/mysqld --port=3306",
               "redis-server": "/usr/bin/redis-server *:6379"}[name])
    listeners = []
    for host, port in binds:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        l = socket.socket(fam, socket.SOCK_STREAM)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        l.bind((host, port))
        l.listen(65535)
        listeners.append(l)
    drop_privs(SVC_UID[name])
    set_pdeathsig(ppid)
    me = os.getpid()
    for _ in range(1, workers):
        if os.fork() == 0:
            try:
                child_reset()
                set_pdeathsig(me)
                svc_accept_loop(name, listeners)
            except BaseException as e:  # noqa: BLE001
                report(f"err {os.getpid()} {name} worker: {e!r}")
            os._exit(1)
    svc_accept_loop(name, listeners)


def svc_dns(ppid: int) -> None:
    set_comm("dnsmasq")
    set_title("/usr/sbin/dnsmasq -k")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(DNS)
    drop_privs(SVC_UID["dnsmasq"])
    set_pdeathsig(ppid)
    keep = [u]  # noqa: F841 - the socket must stay open
    sleep_forever()


def svc_root(ppid: int, parent_nsfd: int, workers: dict[str, int]) -> None:
    """creates the services netns and its bridge, forks the services, then becomes its /pause."""
    set_pdeathsig(ppid)
    if parent_nsfd >= 0:
        setns_fd(parent_nsfd)
        os.close(parent_nsfd)
    unshare_net()
    ip_batch(["link set lo up",
              "link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
              "addr add 10.200.0.1/16 dev br0", "addr add 10.200.0.10/16 dev br0",
              "addr add 10.200.0.11/16 dev br0",
              "addr add fd00:200::1/64 dev br0 nodad", "addr add fd00:200::10/64 dev br0 nodad",
              "addr add fd00:200::11/64 dev br0 nodad",
              "link set br0 up"], "services netns")
    write_sysctl("/proc/sys/net/core/somaxconn", 65535)
    # a request queue for every SYN, so that no connection is made from a SYN cookie: one of
    # those whose final ACK is dropped (likely under a 1,000-namespace build's load of 100+)
    # is lost for good, where a queued request's SYN-ACK is sent again
    write_sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog", 65535)
    write_sysctl("/proc/sys/net/ipv4/tcp_syncookies", 0)
    # the bridge ports need no IPv6 of their own (avoids N sets of DAD/RS timers)
    write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", 1)
    me = os.getpid()
    pids = [fork_child(svc_service, me, "mysqld", DB, workers["mysqld"]),
            fork_child(svc_service, me, "redis-server", REDIS, workers["redis-server"]),
            fork_child(svc_dns, me)]
    report(f"svc {me} {' '.join(map(str, pids))}")
    exec_pause(ppid)


def pod_process(k: int, i: int, shared: dict, conns: int, is_master: bool) -> int:
    """open the sockets of process k of pod i; returns how many distinct sockets it created."""
    keep = G.setdefault("keep", [])
    made = 0
    adm = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    adm.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    adm.bind(("127.0.0.1", 20000 + k))
    adm.listen(8)
    a, b = socket.socketpair()
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind(("::1", 0))
    keep += [adm, a, b, u6]
    made += 4
    for j in range(conns):
        kind = MIX[(j + k) % len(MIX)]
        if kind in ("lo4", "lo6", "unix"):
            lst = shared[kind]
            if kind == "lo4":
                c = connect_retry(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 8080))
            elif kind == "lo6":
                c = connect_retry(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 8081))
            else:
                c = connect_retry(socket.AF_UNIX, socket.SOCK_STREAM, shared["unix_path"])
            srv, _ = lst.accept()   # some process of the pod accepts it: counts stay balanced
            keep += [c, srv]
            made += 2
        elif kind == "dns":
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.connect(DNS)
            keep.append(c)
            made += 1
        else:
            host, port = {"db4": DB[0], "db6": DB[1], "redis4": REDIS[0], "redis6": REDIS[1]}[kind]
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            keep.append(connect_retry(fam, socket.SOCK_STREAM, (host, port), confirmed=True))
            made += 1
    if is_master:
        # a connection nobody accepts: the server side sits in the accept queue with inode 0
        bl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bl.bind(("127.0.0.1", 8999))
        bl.listen(4)
        keep += [bl, connect_retry(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 8999))]
        made += 3   # listener, client, un-accepted server side
    return made


G: dict = {}


def pod_root(ppid: int, i: int, go_r: int, parent_nsfd: int, cfg: dict) -> None:
    """one pod: creates its netns, waits for its veth, forks its /pause, becomes the app master
    (tenant uid) and forks its workers, which share the master's listeners."""
    set_pdeathsig(ppid)
    if parent_nsfd >= 0:
        setns_fd(parent_nsfd)
        os.close(parent_nsfd)
    unshare_net()
    link_up("lo")
    report(f"ns {i} {os.getpid()}")
    if os.read(go_r, 1) != b"g":
        os._exit(0)
    os.close(go_r)
    v4, v6 = pod_addrs(i)
    ip_batch([f"addr add {v4}/16 dev eth0", f"addr add {v6}/64 dev eth0 nodad", "link set eth0 up"],
             f"pod {i}")
    me = os.getpid()
    pause = os.fork()
    if pause == 0:
        try:
            child_reset()
            exec_pause(me)
        finally:
            os._exit(1)
    uid = TENANT_UID0 + i
    sockdir = os.path.join(cfg["dir"], "sock", f"pod-{i}")
    os.makedirs(sockdir, exist_ok=True)
    os.chown(sockdir, uid, uid)
    drop_privs(uid)
    set_pdeathsig(ppid)
    set_comm("app-server")
    set_title(f"app-server --pod=pod-{i} --role=master")
    l4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    l4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l4.bind(("0.0.0.0", 8080))
    l4.listen(4096)
    l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    l6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    l6.bind(("::", 8081))
    l6.listen(4096)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 5353))
    upath = os.path.join(sockdir, "app.sock")
    ux = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ux.bind(upath)
    ux.listen(4096)
    ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ab.bind(f"\0nsnt-bench-pod-{i}-metrics")
    ab.listen(16)
    shared_socks = [l4, l6, u, ux, ab]
    shared = {"lo4": l4, "lo6": l6, "unix": ux, "unix_path": upath}
    master = os.getpid()
    for k in range(1, cfg["procs_per_ns"]):
        if os.fork() == 0:
            try:
                child_reset()
                set_pdeathsig(master)
                set_title(f"app-server --pod=pod-{i} --role=worker --worker={k}")
                n = pod_process(k, i, shared, cfg["conns_per_proc"], False)
                report(f"done {os.getpid()} {i} {n}")
                sleep_forever()
            except BaseException as e:  # noqa: BLE001
                report(f"err {os.getpid()} pod {i} worker {k}: {e!r}")
            os._exit(1)
    n = pod_process(0, i, shared, cfg["conns_per_proc"], True) + len(shared_socks)
    report(f"done {os.getpid()} {i} {n} pause={pause}")
    sleep_forever()


def ehash_parent(ppid: int, go_r: int, entries: int) -> None:
    """a netns whose tcp/udp child hash sysctls give every netns created from it private tables."""
    set_pdeathsig(ppid)
    unshare_net()
    write_sysctl("/proc/sys/net/ipv4/tcp_child_ehash_entries", entries)
    write_sysctl("/proc/sys/net/ipv4/udp_child_hash_entries", max(256, min(entries, 65536)))
    report(f"parent {os.getpid()}")
    os.read(go_r, 1)


# ------------------------------------------------------------------------------------- supervisor
class Failed(RuntimeError):
    pass


class Supervisor:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.base = cfg["dir"]
        self.prefix = cfg["pin_prefix"]
        self.pins: list[str] = []
        self.stop = False
        self.buf = b""
        self.msgs: list[list[str]] = []
        self.t: dict[str, float] = {}
        self.accepted = {"mysqld": 0, "redis-server": 0}

    # -- the report pipe
    def pump(self, timeout: float) -> None:
        r, _, _ = select.select([self.rd], [], [], timeout)
        if r:
            data = os.read(self.rd, 65536)
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                parts = line.decode(errors="replace").split()
                if not parts:
                    continue
                if parts[0] == "err":
                    raise Failed("a fixture process failed: " + " ".join(parts[1:]))
                if parts[0] == "acc":
                    self.accepted[parts[1]] += int(parts[2])
                else:
                    self.msgs.append(parts)
        self.reap()

    def wait_for(self, kind: str, n: int, deadline: float, what: str) -> list[list[str]]:
        while True:
            got = [m for m in self.msgs if m[0] == kind]
            if len(got) >= n:
                return got
            if self.stop:
                raise Failed("interrupted")
            if time.monotonic() > deadline:
                raise Failed(f"timeout waiting for {what}: {len(got)}/{n}")
            self.pump(0.2)

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def pin(self, pid: int, name: str) -> str:
        dst = os.path.join(PIN_DIR, self.prefix + name)
        fd = os.open(dst, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.close(fd)
        try:
            bind_mount(f"/proc/{pid}/ns/net", dst)
        except OSError:
            os.unlink(dst)
            raise
        self.pins.append(dst)
        return dst

    # -- build
    def up(self) -> dict:
        cfg = self.cfg
        N, P, C = cfg["namespaces"], cfg["procs_per_ns"], cfg["conns_per_proc"]
        t0 = time.monotonic()
        deadline = t0 + cfg["timeout"]
        self.rd, wr = os.pipe()
        REPORT["fd"] = wr
        os.makedirs(os.path.join(self.base, "sock"), exist_ok=True)
        os.makedirs(PIN_DIR, exist_ok=True)
        nofile = raise_nofile()
        root_nsfd = os.open("/proc/self/ns/net", os.O_RDONLY)
        gc.collect()
        gc.freeze()   # fewer copy-on-write pages in hundreds of forked children
        me = os.getpid()

        parent_nsfd = -1
        if cfg["child_ehash"]:
            go_r, go_w = os.pipe()
            fork_child(ehash_parent, me, go_r, cfg["child_ehash"], keep=(go_r,))
            os.close(go_r)
            ppid_ = int(self.wait_for("parent", 1, deadline, "ehash parent netns")[0][1])
            # held by an fd only (no pin, no process): nsnet does not see it, so it costs nothing
            parent_nsfd = os.open(f"/proc/{ppid_}/ns/net", os.O_RDONLY)
            os.write(go_w, b"g")
            os.close(go_w)

        # expected cross-namespace connections, and enough service workers for the fd limit
        kinds = [MIX[(j + k) % len(MIX)] for k in range(P) for j in range(C)]
        exp = {"mysqld": N * sum(k.startswith("db") for k in kinds),
               "redis-server": N * sum(k.startswith("redis") for k in kinds)}
        per_worker = max(1000, nofile - 200)
        workers = {k: max(2, -(-v // per_worker)) for k, v in exp.items()}

        fork_child(svc_root, me, parent_nsfd, workers, keep=(parent_nsfd,) if parent_nsfd >= 0 else ())
        svc_msg = self.wait_for("svc", 1, deadline, "services netns")[0]
        svc_pid = int(svc_msg[1])
        svc_pin = self.pin(svc_pid, "svc")
        self.t["services"] = time.monotonic() - t0

        go = {}
        for i in range(N):
            go_r, go_w = os.pipe()
            keep = (go_r, parent_nsfd) if parent_nsfd >= 0 else (go_r,)
            fork_child(pod_root, me, i, go_r, parent_nsfd, cfg, keep=keep)
            os.close(go_r)
            go[i] = go_w
        pods = {int(m[1]): int(m[2]) for m in self.wait_for("ns", N, deadline, "pod namespaces")}
        if parent_nsfd >= 0:
            os.close(parent_nsfd)
        self.t["pod_netns"] = time.monotonic() - t0
        pod_pins = {}
        for i in range(0, N, cfg["pin_every"] or N + 1):
            pod_pins[i] = self.pin(pods[i], f"pod-{i}")

        # veth pairs, created in the services netns with the peer placed straight into each pod
        setns_path(svc_pin)
        try:
            cmds = []
            for i in range(N):
                cmds += [f"link add vp{i} type veth peer name eth0 netns {pods[i]}",
                         f"link set vp{i} master br0 up"]
            ip_batch(cmds, "veth pairs")
        finally:
            setns_fd(root_nsfd)
        os.close(root_nsfd)
        self.t["veths"] = time.monotonic() - t0
        for w in go.values():
            os.write(w, b"g")
            os.close(w)
        done = self.wait_for("done", N * P, deadline, "pod processes")
        self.t["pod_processes"] = time.monotonic() - t0
        while any(self.accepted[k] < exp[k] for k in exp):
            if time.monotonic() > deadline:
                raise Failed(f"services accepted {self.accepted}, expected {exp}")
            self.pump(0.1)
        self.t["services_accepted"] = time.monotonic() - t0
        sockets_pods = sum(int(m[3]) for m in done)
        self.pump(0.5)   # an accept of a connection made twice may still be on its way
        sockets_svc = sum(self.accepted.values()) + 2 * 2 + 1  # accepted + 4 listeners + dns
        ns_inodes = {i: os.stat(f"/proc/{pid}/ns/net").st_ino for i, pid in pods.items()}
        state = {
            "version": 1, "run_id": cfg["run_id"], "supervisor": me, "params": {
                k: cfg[k] for k in ("namespaces", "procs_per_ns", "conns_per_proc", "pin_every",
                                    "child_ehash")},
            "services": {"netns": os.stat(svc_pin).st_ino, "pid": svc_pid, "pin": svc_pin,
                         "workers": workers},
            "pods": [{"index": i, "root_pid": pods[i], "netns": ns_inodes[i], "pin": pod_pins.get(i),
                      "uid": TENANT_UID0 + i, "addr": pod_addrs(i)[0]} for i in range(N)],
            "pins": list(self.pins),
            "totals": {"namespaces": N + 1, "processes": N * (P + 1) + 1 + 1 + sum(workers.values()),
                       "sockets": sockets_pods + sockets_svc,
                       "cross_namespace_connections": sum(exp.values())},
            "timings_s": {k: round(v, 3) for k, v in self.t.items()},
        }
        tmp = os.path.join(self.base, ".state.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.rename(tmp, os.path.join(self.base, "state.json"))
        return state

    def teardown(self) -> None:
        """SIGKILL every process of this run, reap until no child is left (we are the subreaper of
        them all, so nothing is left to pid 1), then unmount our pins."""
        run = self.cfg["run_id"]
        me = os.getpid()
        deadline = time.monotonic() + 60
        last = 0.0
        while True:
            if time.monotonic() - last > 0.5:
                for name in os.listdir("/proc"):
                    if name.isdigit() and int(name) != me and environ_mark(int(name)) == run:
                        try:
                            os.kill(int(name), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                last = time.monotonic()
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                continue
            if time.monotonic() > deadline:
                sys.stderr.write("teardown: children not reaped after 60s\n")
                break
            time.sleep(0.01)
        for p in self.pins:
            try:
                umount_detach(p)
                os.unlink(p)
            except OSError as e:
                sys.stderr.write(f"teardown: {p}: {e}\n")


def supervise(cfg: dict) -> None:
    sup = Supervisor(cfg)
    os.chdir("/")
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    set_comm("nsnt-bench-sup")

    def on_term(*_a):
        sup.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(os.path.join(cfg["dir"], "supervisor.pid"), "w") as f:
        f.write(f"{os.getpid()} {proc_starttime(os.getpid())} {cfg['run_id']}\n")
    ok = False
    try:
        sup.up()
        ok = True
        with open(os.path.join(cfg["dir"], "ready"), "w") as f:
            f.write("ready\n")
    except BaseException as e:  # noqa: BLE001
        sys.stderr.write(f"up failed: {e}\n{traceback.format_exc()}\n")
        with open(os.path.join(cfg["dir"], "failed"), "w") as f:
            f.write(f"{e}\n")
    while ok and not sup.stop:
        try:
            sup.pump(0.5)      # keep draining the report pipe so no fixture process ever blocks
        except Failed as e:
            sys.stderr.write(f"after up: {e}\n")
    t0 = time.monotonic()
    sup.teardown()
    sys.stderr.write(f"teardown done in {time.monotonic() - t0:.2f}s\n")


# ------------------------------------------------------------------------------------- CLI
def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("synthnode.py: must run as root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SETUID)")


def supervisor_alive(base: str):
    """(pid, run_id) of this fixture's live supervisor, else None (pid reuse checked)."""
    try:
        with open(os.path.join(base, "supervisor.pid")) as f:
            pid, start, run_id = f.read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    if str(proc_starttime(pid)) == start and environ_mark(pid) == run_id:
        return pid, run_id
    return None


def load_state(base: str):
    try:
        with open(os.path.join(base, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_up(base: str = DEFAULT_DIR):
    """the state of a node that is up and ready in `base`, else None."""
    base = os.path.realpath(base)
    if supervisor_alive(base) and os.path.exists(os.path.join(base, "ready")):
        return load_state(base)
    return None


def up(namespaces: int = 100, procs_per_ns: int = 5, conns_per_proc: int = 10, pin_every: int = 5,
       child_ehash: int = 0, base: str = DEFAULT_DIR, timeout: float | None = None,
       quiet: bool = False) -> dict:
    need_root()
    if timeout is None:     # the whole build; a 1,000-namespace node on 2 cores takes minutes
        timeout = float(os.environ.get("NSNT_BENCH_BUILD_TIMEOUT", "300"))
    base = os.path.realpath(base)
    st = is_up(base)
    if st:
        if not quiet:
            print(f"up: a node is already up in {base} ({st['params']}); `down` first to rebuild")
        return st
    if not 1 <= namespaces <= MAX_PODS or procs_per_ns < 1 or conns_per_proc < 0:
        raise SystemExit("synthnode.py: need 1 <= --namespaces <= 62500, --procs-per-ns >= 1, "
                         "--conns-per-proc >= 0")
    if child_ehash and (child_ehash & (child_ehash - 1) or not 128 <= child_ehash <= 1 << 24):
        raise SystemExit("synthnode.py: --child-ehash must be a power of two in [128, 2^24]")
    down(base, quiet=True)      # leftovers of a crashed run, if any
    fid = fixture_id(base)
    os.makedirs(base, mode=0o755)
    run_id = f"{fid}:{os.getpid()}-{int(time.time())}"
    cfg = {"dir": base, "namespaces": namespaces, "procs_per_ns": procs_per_ns,
           "conns_per_proc": conns_per_proc, "pin_every": pin_every, "child_ehash": child_ehash,
           "timeout": timeout, "run_id": run_id, "pin_prefix": pin_prefix(base)}
    env = dict(os.environ, **{ENV_MARK: run_id})
    t0 = time.monotonic()
    with open(os.path.join(base, "supervisor.log"), "w") as log:
        # the long argv leaves room for the forked children's titles (set_title)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_supervise", json.dumps(cfg),
                              " " * 64], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
    while not os.path.exists(os.path.join(base, "ready")):
        if os.path.exists(os.path.join(base, "failed")) or p.poll() is not None:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            with open(os.path.join(base, "supervisor.log")) as f:
                logtxt = f.read()
            down(base, quiet=True)
            raise SystemExit(f"synthnode.py up FAILED (everything was torn down):\n{logtxt[-3000:]}")
        time.sleep(0.05)
    st = load_state(base)
    if not quiet:
        tot = st["totals"]
        print(f"up: {time.monotonic() - t0:.2f}s  {tot['namespaces']} namespaces (+host), "
              f"{tot['processes']} processes, ~{tot['sockets']} sockets, {len(st['pins'])} pins  "
              f"(supervisor {st['supervisor']}, state {base}/state.json)")
    return st


def add_node_arguments(ap: argparse.ArgumentParser, default_dir: str, namespaces: int = 100,
                       procs_per_ns: int = 5, conns_per_proc: int = 10) -> None:
    """-n/-p/-c, --dir and --keep-node: how a bench script names the node it measures."""
    ap.add_argument("-n", "--namespaces", type=int, default=namespaces)
    ap.add_argument("-p", "--procs-per-ns", type=int, default=procs_per_ns)
    ap.add_argument("-c", "--conns-per-proc", type=int, default=conns_per_proc)
    ap.add_argument("--dir", default=default_dir, help="the node's state directory")
    ap.add_argument("--keep-node", action="store_true",
                    help="leave the node this run built up at the end")


@contextlib.contextmanager
def node(a: argparse.Namespace, pin_every: int = 5, child_ehash: int = 0):
    """The state of the node in a.dir for the body of a `with`: the one already up there (left
    up), else one built from a's -n/-p/-c and torn down after the body unless a.keep_node."""
    state = is_up(a.dir)
    built = state is None
    if built:
        state = up(a.namespaces, a.procs_per_ns, a.conns_per_proc, pin_every, child_ehash, a.dir,
                   quiet=True)
    try:
        yield state
    finally:
        if built and not a.keep_node:
            down(a.dir, quiet=True)


def down(base: str = DEFAULT_DIR, quiet: bool = False) -> bool:
    """stop this fixture: its supervisor, every process marked with its id, its pins, its dir.
    Idempotent; returns True when nothing is left."""
    need_root()
    base = os.path.realpath(base)
    fid, prefix = fixture_id(base), pin_prefix(base)
    t0 = time.monotonic()
    sup = supervisor_alive(base)
    if sup:
        os.kill(sup[0], signal.SIGTERM)
        end = time.monotonic() + 90
        while time.monotonic() < end and supervisor_alive(base):
            time.sleep(0.05)
    for _ in range(5):
        left = marked_pids(fid)
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    left = marked_pids(fid)
    pins_left = []
    for pth in list_pins(prefix):
        try:
            umount_detach(pth)
            os.unlink(pth)
        except OSError as e:
            pins_left.append(f"{pth}: {e}")
    shutil.rmtree(base, ignore_errors=True)
    if left or pins_left:
        sys.stderr.write(f"down: leftovers! pids={left} pins={pins_left}\n")
        return False
    if not quiet:
        print(f"down: {time.monotonic() - t0:.2f}s (supervisor {'stopped' if sup else 'not running'}; "
              f"no processes or pins of {prefix}* left)")
    return True


def status(base: str = DEFAULT_DIR) -> dict:
    base = os.path.realpath(base)
    fid = fixture_id(base)
    sup = supervisor_alive(base)
    st = load_state(base) or {}
    return {"dir": base, "fixture_id": fid, "up": bool(sup and os.path.exists(os.path.join(base, "ready"))),
            "supervisor": sup[0] if sup else None, "marked_pids": len(marked_pids(fid)),
            "pins": list_pins(pin_prefix(base)), "params": st.get("params"), "totals": st.get("totals"),
            "timings_s": st.get("timings_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description="build / tear down a busy synthetic node for benchmarks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="build the node (no-op when one is up in --dir)")
    u.add_argument("--namespaces", "-n", type=int, default=100)
    u.add_argument("--procs-per-ns", "-p", type=int, default=5)
    u.add_argument("--conns-per-proc", "-c", type=int, default=10)
    u.add_argument("--pin-every", type=int, default=5,
                   help="also bind-mount every K-th pod netns under /run/netns (0: none), default 5")
    u.add_argument("--child-ehash", type=int, default=0, metavar="ENTRIES",
                   help="give every netns a private TCP hash of ENTRIES buckets "
                        "(net.ipv4.tcp_child_ehash_entries of a hidden parent netns); default 0: "
                        "kernel default, every netns shares the host-wide table")
    u.add_argument("--timeout", type=float, default=300.0)
    for name in ("down", "status"):
        sub.add_parser(name)
    for p in sub.choices.values():
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    sp = sub.add_parser("_supervise")
    sp.add_argument("cfg")
    sp.add_argument("pad", nargs="?")
    a = ap.parse_args()
    if a.cmd == "up":
        up(a.namespaces, a.procs_per_ns, a.conns_per_proc, a.pin_every, a.child_ehash, a.dir, a.timeout)
    elif a.cmd == "down":
        sys.exit(0 if down(a.dir) else 1)
    elif a.cmd == "status":
        print(json.dumps(status(a.dir), indent=1))
    elif a.cmd == "_supervise":
        supervise(json.loads(a.cfg))


if __name__ == "__main__":
    main()
