#!/usr/bin/env python3
"""Soak: N in-process snapshots while ~50 processes a second start and die around them.

    .venv/bin/python bench/soak_snapshots.py                       # 1000 snapshots per source
    .venv/bin/python bench/soak_snapshots.py --snapshots 100 --sources proc
    .venv/bin/python bench/soak_snapshots.py --rate 100 --keep-node --json

Run as root. The node is bench/synthnode.py's (a few namespaces: -n 4 -p 3 -c 6 by default,
in its own --dir, so it never collides with a bench node), built unless one is up there.

Ground truth of the fixture, taken before the first snapshot and again after the last, never
from /proc/net: every process of the node is opened with pidfd_open, each of its socket fds is
borrowed with pidfd_getfd and asked itself for its inode (fstat), its own namespace (SIOCGSKNS),
family and whether it listens (SO_ACCEPTCONN) -- as tests/support/realnode.py does.

The churn driver is a separate process (this script, `_churn`): it forks --rate children a
second on a fixed schedule and reaps them. Each child, chosen at random:
  bare     exits at once
  host     opens sockets in the host namespace
  ns       setns() into a node namespace k, opens sockets there
  foreign  setns() into k, opens sockets, setns() back to the host: lives in the host, holds k's
  exec     as ns, then exec()s /bin/sleep holding the sockets (comm and cmdline change)
and lives 0-0.6 s (so many exit mid-walk). Its sockets encode k: a TCP listener on
127.77.k.1, a connected pair to it from 127.77.k.2 (both ends held), UDP on 127.77.k.3 and an
abstract unix listener @nsnt-soak-k-i. The driver reports "pid kind k" for every child.

Each snapshot is `take_snapshot(SnapshotOptions(source=S))` (nsnet.snapshot), S taken in turn
from --sources; N snapshots per source. Checked on every one (a failure is printed and counted):
  - no exception;
  - every fixture socket is listed, exactly once, under its own namespace, held by exactly the
    pids that hold it; every fixture listener is there, listening;
  - every fixture process is in the namespace it is in;
  - every churn socket is filed under namespace k its address names; each of its holders is a
    churn child that made sockets in k, and is recorded in k (in k or the host for `foreign`);
  - no socket inode is listed in two namespaces; every holder pid is a walked process;
  - races are counted in the stats (processes/fds vanished, namespace changes), never raised.
Printed: snapshots done, failures (must be 0), the achieved fork rate, snapshot time
p50/p95/max per source, the walker's RSS at start/after warm-up/end/max (must not grow), its open
fds and threads at start and end. Exit status 1 on any failure or growth.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-soak-snap"
CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C
SYS_pidfd_getfd = 438
SO_DOMAIN = getattr(socket, "SO_DOMAIN", 39)
KINDS = (("bare", 0.15), ("host", 0.15), ("ns", 0.45), ("foreign", 0.10), ("exec", 0.15))
CHURN_NET = "127.77."
CHURN_UNIX = "@nsnt-soak-"
WARMUP = 20                      # snapshots before the RSS reference is taken
RSS_SLACK_KIB = 8 * 1024         # growth allowed past the warm-up maximum (allocator noise)
KEEP_CHILDREN = 5000             # churn children remembered (100 s at 50/s; each lives < 1 s)
KEEP_FAILURES = 200              # failure lines kept (all are counted)

_libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------------------ the churn driver
def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _child_sockets(k: int, i: int) -> list[socket.socket]:
    port = 47000 + i % 50      # few service ports: an agent on the machine keeps few edges
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((f"127.77.{k}.1", port))
    lst.listen(4)
    cli = socket.socket()
    cli.bind((f"127.77.{k}.2", 0))
    cli.connect((f"127.77.{k}.1", port))
    srv, _ = lst.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((f"127.77.{k}.3", port))
    ux = socket.socket(socket.AF_UNIX)
    ux.bind(f"\0nsnt-soak-{k}-{i}")
    ux.listen(1)
    return [lst, cli, srv, udp, ux]


def _child(kind: str, k: int, i: int, life: float, nsfds: list[int], hostfd: int) -> None:
    """The body of one churn child; never returns."""
    code = 0
    try:
        if kind != "bare":
            if kind != "host":
                _setns(nsfds[k])
            socks = _child_sockets(k, i)
            if kind == "foreign":
                _setns(hostfd)
            if kind == "exec":
                for s in socks:
                    s.set_inheritable(True)
                os.execv("/bin/sleep", ["sleep", f"{life:.3f}"])
            time.sleep(life)
    except BaseException:   # a child says what went wrong by its exit status
        code = 3
    os._exit(code)


def churn_main(cfg: dict) -> None:
    """`_churn CFG`: fork cfg["rate"] children a second until stdin closes or SIGTERM."""
    nsfds = [os.open(p, os.O_RDONLY) for p in cfg["ns_paths"]]
    hostfd = os.open("/proc/self/ns/net", os.O_RDONLY)
    nsfds.append(hostfd)             # k = len(ns_paths) is the host namespace
    rng = random.Random(cfg["seed"])
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    names, weights = zip(*KINDS, strict=True)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    period = 1.0 / cfg["rate"]
    t0 = next_t = time.monotonic()
    forked, statuses = 0, {}
    while not stop["now"]:
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
        next_t += period
        kind = rng.choices(names, weights)[0]
        k = len(nsfds) - 1 if kind == "host" else rng.randrange(len(nsfds) - 1)
        life = rng.uniform(0.0, 0.6)
        pid = os.fork()
        if pid == 0:
            _child(kind, k, forked, life, nsfds, hostfd)
        forked += 1
        out.write(f"{pid} {kind} {k}\n")
        out.flush()
        _reap(statuses, block=False)
    elapsed = time.monotonic() - t0
    _reap(statuses, block=True)
    out.write("done " + json.dumps({"forked": forked, "seconds": elapsed,
                                    "exit_statuses": statuses}) + "\n")
    out.flush()


def _reap(statuses: dict, block: bool) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = str(os.waitstatus_to_exitcode(status))
        statuses[code] = statuses.get(code, 0) + 1


class Churn:
    """The driver as seen from the walker: its log of children, read without blocking."""

    def __init__(self, ns_paths: list[str], rate: float, seed: int):
        cfg = json.dumps({"ns_paths": ns_paths, "rate": rate, "seed": seed})
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_churn", cfg],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.children: dict[int, tuple[str, int]] = {}
        self.done: dict | None = None
        first = self.proc.stdout.readline()
        if first != b"ready\n":
            raise SystemExit(f"soak_snapshots: the churn driver did not start: {first!r}")
        os.set_blocking(self.fd, False)

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            self.buf += data
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                if line.startswith(b"done "):
                    self.done = json.loads(line[5:])
                    continue
                pid, kind, k = line.decode().split()
                self.children[int(pid)] = (kind, int(k))
                if len(self.children) > KEEP_CHILDREN:   # the oldest are long gone
                    del self.children[next(iter(self.children))]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        os.set_blocking(self.fd, True)
        self.proc.wait(timeout=60)
        self.drain()
        if self.done is None:
            raise SystemExit("soak_snapshots: the churn driver gave no count")
        return self.done


# ------------------------------------------------------------------------------ fixture truth
@dataclass
class SockTruth:
    netns: int
    family: int
    listening: bool
    holders: set[int] = field(default_factory=set)


def _borrow(pidfd: int, fd: int) -> tuple[int, int, int, bool] | None:
    """(inode, netns, family, listening) of another process's socket fd, asked of the socket."""
    newfd = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
    if newfd < 0:
        raise OSError(ctypes.get_errno(), f"pidfd_getfd(fd {fd})")
    try:
        inode = os.fstat(newfd).st_ino
        nsfd = fcntl.ioctl(newfd, SIOCGSKNS)
        try:
            netns = os.fstat(nsfd).st_ino
        finally:
            os.close(nsfd)
        sock = socket.socket(fileno=os.dup(newfd))
        try:
            family = sock.getsockopt(socket.SOL_SOCKET, SO_DOMAIN)
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        finally:
            sock.close()
    finally:
        os.close(newfd)
    if family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    return inode, netns, family, listening


def fixture_truth(pids: list[int]) -> tuple[dict[int, SockTruth], dict[int, int]]:
    """Every socket the fixture's processes hold (inode -> truth), and each process's netns."""
    sockets: dict[int, SockTruth] = {}
    netns_of: dict[int, int] = {}
    for pid in pids:
        pidfd = os.pidfd_open(pid)
        try:
            netns_of[pid] = os.stat(f"/proc/{pid}/ns/net").st_ino
            for name in os.listdir(f"/proc/{pid}/fd"):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                facts = _borrow(pidfd, int(name))
                if facts is None:
                    continue
                inode, netns, family, listening = facts
                truth = sockets.setdefault(inode, SockTruth(netns, family, listening))
                truth.holders.add(pid)
        finally:
            os.close(pidfd)
    return sockets, netns_of


# ------------------------------------------------------------------------------ the checks
class Checker:
    """The invariants of one snapshot; failures are kept as lines (the first few printed)."""

    def __init__(self, truth: dict[int, SockTruth], netns_of: dict[int, int],
                 ns_inodes: list[int], churn: Churn):
        self.truth = truth
        self.netns_of = netns_of
        self.ns_inodes = ns_inodes           # k -> netns inode; the last one is the host's
        self.churn = churn
        self.failures: list[str] = []
        self.failed = 0
        self.failed_snapshots: set[int] = set()
        self.by_kind: dict[tuple[str, str], int] = {}     # (kind, source) -> failures
        self.source = ""
        self.churn_sockets = 0
        self.churn_holders = 0
        self.counts: dict[str, int] = {}

    def fail(self, n: int, kind: str, what: str) -> None:
        self.failed += 1
        self.failed_snapshots.add(n)
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append(f"snapshot {n} ({self.source}) {kind}: {what}")
        self.by_kind[kind, self.source] = self.by_kind.get((kind, self.source), 0) + 1

    def check(self, n: int, source: str, snap) -> None:
        self.source = source
        seen: dict[int, object] = {}
        for s in snap.sockets:
            if s.inode:
                first = seen.setdefault(s.inode, s)
                if first is not s:
                    kind = "inode in two netns" if first.netns != s.netns else "socket listed twice"
                    self.fail(n, kind, f"inode {s.inode}: {describe(first)}; {describe(s)}")
            for pid in s.pids:
                if pid not in snap.processes:
                    self.fail(n, "holder not walked", f"holder {pid} of inode {s.inode}")
            k = churn_k(s)
            if k is not None:
                self._churn_socket(n, snap, s, k)
        self._fixture(n, snap, seen)
        for name in ("processes_vanished", "fds_vanished", "processes_ns_changed",
                     "namespace_read_retries", "pidfd_vanished", "processes_unreadable"):
            self.counts[name] = self.counts.get(name, 0) + getattr(snap.stats, name)

    def _fixture(self, n: int, snap, seen: dict) -> None:
        for inode, truth in self.truth.items():
            s = seen.get(inode)
            if s is None:
                self.fail(n, "fixture socket missing", f"fixture socket {inode} (netns {truth.netns})")
                continue
            if s.netns != truth.netns:
                self.fail(n, "fixture socket misfiled",
                          f"fixture socket {inode} filed under netns {s.netns}, is in {truth.netns}")
            if set(s.pids) != truth.holders:
                self.fail(n, "fixture holders wrong", f"fixture socket {inode}: holders "
                                                      f"{sorted(s.pids)}, truth {sorted(truth.holders)}")
            if truth.listening and s.state != "LISTEN":
                self.fail(n, "fixture listener not listening", f"fixture listener {describe(s)}")
        for pid, netns in self.netns_of.items():
            p = snap.processes.get(pid)
            if p is None or p.netns != netns:
                self.fail(n, "fixture process misplaced",
                          f"fixture process {pid}: {'missing' if p is None else p.netns}, is in {netns}")

    def _churn_socket(self, n: int, snap, s, k: int) -> None:
        self.churn_sockets += 1
        if k >= len(self.ns_inodes) or s.netns != self.ns_inodes[k]:
            self.fail(n, "churn socket misfiled", f"churn socket (k={k}) {describe(s)}")
            return
        for pid in s.pids:
            self.churn_holders += 1
            child = self.churn.children.get(pid)
            if child is None:
                time.sleep(0.2)      # the driver logs a child right after fork(): let it
                self.churn.drain()
                child = self.churn.children.get(pid)
            if child is None or child[0] == "bare" or child[1] != k:
                self.fail(n, "churn holder unknown",
                          f"churn socket in k={k} held by pid {pid}, which the driver says is {child}")
                continue
            p = snap.processes[pid]
            allowed = {self.ns_inodes[k]}
            if child[0] == "foreign":
                allowed.add(self.ns_inodes[-1])
            if p.netns not in allowed:
                self.fail(n, "churn holder misplaced",
                          f"churn holder {pid} ({child[0]}, k={k}) recorded in netns {p.netns}, "
                          f"not in {sorted(allowed)}")


def describe(s) -> str:
    return (f"{s.source} {s.proto} {s.state} {s.local_addr}:{s.local_port} -> "
            f"{s.remote_addr}:{s.remote_port} netns {s.netns} pids {s.pids}")


def churn_k(s) -> int | None:
    """The namespace index a churn socket's address names (None: not a churn socket)."""
    for addr in (s.local_addr, s.remote_addr):
        if addr and addr.startswith(CHURN_NET):
            return int(addr.split(".")[2])
    if s.family == "unix" and s.local_addr and s.local_addr.startswith(CHURN_UNIX):
        return int(s.local_addr[len(CHURN_UNIX):].split("-")[0])
    return None


# ------------------------------------------------------------------------------ the walker's cost
def self_usage() -> dict[str, int]:
    out = {"fds": len(os.listdir("/proc/self/fd"))}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------------ the run
def node_namespaces(state: dict) -> tuple[list[str], list[int], list[int]]:
    """Paths to enter each node namespace (k order: pods, then services), their inodes with
    the host's last, and the fixture's pids."""
    paths = [f"/proc/{p['root_pid']}/ns/net" for p in state["pods"]] + [state["services"]["pin"]]
    inodes = [os.stat(p).st_ino for p in paths] + [os.stat("/proc/self/ns/net").st_ino]
    fid = synthnode.fixture_id(os.path.realpath(state["dir"]))
    sup = state["supervisor"]
    pids = sorted(p for p in synthnode.marked_pids(fid) if p != sup)
    return paths, inodes, pids


def soak(a: argparse.Namespace, state: dict) -> dict:
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    paths, inodes, pids = node_namespaces(state)
    truth, netns_of = fixture_truth(pids)
    churn = Churn(paths, a.rate, a.seed)
    checker = Checker(truth, netns_of, inodes, churn)
    sources = a.sources.split(",")
    times: dict[str, list[float]] = {s: [] for s in sources}
    errors: list[str] = []
    usage0 = self_usage()
    rss: list[int] = []
    t0 = time.monotonic()
    try:
        for n in range(a.snapshots * len(sources)):
            source = sources[n % len(sources)]
            w0 = time.perf_counter()
            try:
                snap = take_snapshot(SnapshotOptions(source=source))
            except Exception as exc:     # the soak counts it
                errors.append(f"snapshot {n} ({source}): {exc!r}")
                continue
            times[source].append(time.perf_counter() - w0)
            churn.drain()
            checker.check(n, source, snap)
            del snap
            rss.append(self_usage()["rss_kib"])
            if a.progress and (n + 1) % a.progress == 0:
                print(f"  {n + 1} snapshots, {time.monotonic() - t0:.0f} s, "
                      f"{len(checker.failures) + len(errors)} failures, RSS {rss[-1] / 1024:.1f} MiB",
                      file=sys.stderr, flush=True)
    finally:
        churned = churn.stop()
    elapsed = time.monotonic() - t0
    usage1 = self_usage()
    truth_after, netns_after = fixture_truth(pids)
    if {i: (t.netns, t.holders) for i, t in truth_after.items()} != \
            {i: (t.netns, t.holders) for i, t in truth.items()} or netns_after != netns_of:
        errors.append("the fixture changed during the soak (its truth before and after differ)")
    return {"snapshots": sum(len(v) for v in times.values()), "seconds": elapsed,
            "errors": errors, "checker": checker, "times": times, "rss": rss,
            "usage": (usage0, usage1), "churn": churned, "truth": truth,
            "processes": len(pids), "namespaces": len(inodes) - 1}


def report(r: dict, a: argparse.Namespace) -> tuple[dict, list[str]]:
    checker: Checker = r["checker"]
    u0, u1 = r["usage"]
    rss = r["rss"]
    warm = max(rss[:WARMUP]) if rss else 0
    churn = r["churn"]
    doc = {
        "node": {"namespaces": r["namespaces"], "fixture_processes": r["processes"],
                 "fixture_sockets": len(r["truth"]),
                 "fixture_listeners": sum(t.listening for t in r["truth"].values())},
        "snapshots": r["snapshots"], "seconds": round(r["seconds"], 1),
        "failures": checker.failed + len(r["errors"]),
        "failures_by_kind": {f"{kind} [{source}]": v
                             for (kind, source), v in sorted(checker.by_kind.items())},
        "snapshots_with_failures": len(checker.failed_snapshots),
        "churn": {"forked": churn["forked"], "rate_per_s": round(churn["forked"] / churn["seconds"], 1),
                  "exit_statuses": churn["exit_statuses"],
                  "churn_sockets_checked": checker.churn_sockets,
                  "churn_holders_checked": checker.churn_holders},
        "races_counted": checker.counts,
        "snapshot_seconds": {s: {"n": len(v), "p50": round(pct(v, 0.5), 4),
                                 "p95": round(pct(v, 0.95), 4), "max": round(max(v), 4)}
                             for s, v in r["times"].items() if v},
        "rss_mib": {"start": round(u0["rss_kib"] / 1024, 1),
                    "after_warmup_max": round(warm / 1024, 1),
                    "end": round(u1["rss_kib"] / 1024, 1), "max": round(max(rss, default=0) / 1024, 1)},
        "fds": {"start": u0["fds"], "end": u1["fds"]},
        "threads": {"start": u0["threads"], "end": u1["threads"]},
    }
    problems = list(r["errors"]) + checker.failures
    if max(rss[WARMUP:], default=0) > warm + RSS_SLACK_KIB:
        problems.append(f"RSS grew: max {max(rss) / 1024:.1f} MiB after the warm-up, "
                        f"{warm / 1024:.1f} MiB during it (+{RSS_SLACK_KIB // 1024} MiB allowed)")
    if u1["fds"] > u0["fds"] or u1["threads"] > u0["threads"]:
        problems.append(f"fds {u0['fds']} -> {u1['fds']}, threads {u0['threads']} -> {u1['threads']}")
    if churn["forked"] / churn["seconds"] < 0.9 * a.rate:
        problems.append(f"the churn reached {doc['churn']['rate_per_s']}/s, asked {a.rate}/s")
    return doc, problems


def print_table(doc: dict) -> None:
    node, ch = doc["node"], doc["churn"]
    print(f"node: {node['namespaces']} namespaces (+host), {node['fixture_processes']} fixture "
          f"processes, {node['fixture_sockets']} fixture sockets ({node['fixture_listeners']} listeners)")
    print(f"snapshots done: {doc['snapshots']} in {doc['seconds']} s; failures: {doc['failures']} "
          f"(in {doc['snapshots_with_failures']} snapshots)")
    for kind, count in doc["failures_by_kind"].items():
        print(f"  failures: {kind}: {count}")
    print(f"churn: {ch['forked']} processes forked, {ch['rate_per_s']}/s; child exit statuses "
          f"{ch['exit_statuses']}; {ch['churn_sockets_checked']} churn sockets and "
          f"{ch['churn_holders_checked']} churn holders checked")
    print("races counted in stats (summed over all snapshots): " +
          ", ".join(f"{k} {v}" for k, v in doc["races_counted"].items()))
    for source, t in doc["snapshot_seconds"].items():
        print(f"snapshot time, {source:8s} (n={t['n']}): p50 {t['p50'] * 1000:.1f} ms, "
              f"p95 {t['p95'] * 1000:.1f} ms, max {t['max'] * 1000:.1f} ms")
    m = doc["rss_mib"]
    print(f"walker RSS: start {m['start']} MiB, max during the first {WARMUP} snapshots "
          f"{m['after_warmup_max']} MiB, end {m['end']} MiB, max {m['max']} MiB")
    print(f"walker fds: start {doc['fds']['start']}, end {doc['fds']['end']}; threads: start "
          f"{doc['threads']['start']}, end {doc['threads']['end']}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_churn":
        churn_main(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=1000, help="per source (default 1000)")
    ap.add_argument("--sources", default="proc,netlink,pidfd",
                    help="comma list, taken in turn (default proc,netlink,pidfd)")
    ap.add_argument("--rate", type=float, default=50.0, help="churn processes a second")
    ap.add_argument("-n", "--namespaces", type=int, default=4)
    ap.add_argument("-p", "--procs-per-ns", type=int, default=3)
    ap.add_argument("-c", "--conns-per-proc", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--progress", type=int, default=100, help="a line every K snapshots (0: none)")
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--keep-node", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak_snapshots.py: run as root")
    state = synthnode.is_up(a.dir) or synthnode.up(a.namespaces, a.procs_per_ns,
                                                  a.conns_per_proc, 0, 0, a.dir, quiet=True)
    state["dir"] = a.dir
    try:
        doc, problems = report(soak(a, state), a)
    finally:
        if not a.keep_node:
            synthnode.down(a.dir, quiet=True)
    doc["problems"] = problems
    if a.json:
        print(json.dumps(doc, indent=1))
    else:
        print_table(doc)
        for line in problems[:20]:
            print(f"FAIL: {line}")
        if len(problems) > 20:
            print(f"... and {len(problems) - 20} more")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
