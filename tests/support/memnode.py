"""An in-memory node: namespaces, processes, sockets and their holders, built in a few lines
and turned into a real Snapshot by nsnet.snapshot.snapshot_from (the same join,
classification, pods and owners as a live snapshot), for the unit tier: no root, no /proc.

    node = MemNode()
    a = node.netns(4026532300)
    server = node.process(200, uid=10001, netns=a, cmdline=["/srv/api"])
    node.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=a, holders=[server])
    snap = node.build()

`socket()` and `connection()` return the Socket objects that end up in the snapshot, so a
test can look at what the join and classification did to them after build(). A MemNode
builds one snapshot (build() mutates the objects it holds): make a new one per snapshot.

FixedScanner and FixedWatcher stand in for the Snapshotter and the destroy-event reader in
the agent's tests (as Weave Scope's procspy has a fixed scanner).
"""
from __future__ import annotations

import itertools
import mmap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nsnet.agent.events import Closed
from nsnet.kubelet import ContainerName, KubeletLogs, PodRef
from nsnet.model import ContainerIdentity, Process, Snapshot, Socket, Stats, netns_key
from nsnet.options import SnapshotOptions
from nsnet.snapshot import snapshot_from
from nsnet.walk import Discovery

HOST_INODE = 4026531840
NO_UID_STATES = ("TIME_WAIT", "NEW_SYN_RECV")   # the kernel prints uid 0 for these
Holder = int | Process | tuple[int, int]   # a pid, a process, or (pid, fd)


def split_endpoint(text: str) -> tuple[str, int]:
    """'10.0.0.1:80' -> ('10.0.0.1', 80); '[::1]:80' -> ('::1', 80)."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port)


def identity(*, container: str | None = None, pod: str | None = None,
             qos: str | None = "burstable", runtime: str | None = "containerd"
             ) -> ContainerIdentity:
    """What /proc/<pid>/cgroup would say of a process of that container and pod."""
    path = "/kubepods" + (f"/{qos}" if qos and pod else "") + (f"/pod{pod}" if pod else "") \
        + (f"/{container}" if container else "")
    return ContainerIdentity(runtime, container, pod, qos if pod else None, path)


@dataclass
class MemNode:
    """Builder of one in-memory snapshot. Namespaces are named by their nsfs inode; the
    host's (HOST_INODE) always exists and is the default of every process and socket."""
    proc: str = "/memnode/proc"
    host: int = HOST_INODE
    stats: Stats = field(default_factory=Stats)
    options: SnapshotOptions = field(default_factory=SnapshotOptions)
    processes: dict[int, Process] = field(default_factory=dict)
    sockets: list[Socket] = field(default_factory=list)
    logs: KubeletLogs | None = None
    # the host's NAT translations (what conntrack.read_translations would give): the
    # connection as its client sent it -> the backend (nat())
    translations: dict[tuple[str, str, int, str, int], tuple[str, int]] = \
        field(default_factory=dict)
    _pins: dict[int, list[str]] = field(default_factory=dict)
    _threads: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    _holders: list[tuple[int, int, int]] = field(default_factory=list)   # (inode, pid, fd)
    _inodes: itertools.count = field(default_factory=lambda: itertools.count(700001))
    _built: bool = False

    # ------------------------------------------------------------------ namespaces
    def netns(self, inode: int, *, pinned: Iterable[str] = ()) -> int:
        """Declare a namespace (it also exists when only a process or socket names it);
        `pinned`: bind mounts that pin it. Returns the inode, for netns= arguments."""
        self._pins.setdefault(inode, []).extend(pinned)
        return inode

    def visit(self, pid: int, tid: int, netns: int) -> None:
        """Thread `tid` of process `pid` lives in `netns` (not its process's namespace)."""
        self._threads.setdefault(netns, []).append((pid, tid))

    # ------------------------------------------------------------------- processes
    def process(  # noqa: PLR0913 (a builder: keyword-only options, each with a default)
            self, pid: int, uid: int, netns: int | None = None, *,
            cmdline: Sequence[str] | None = None, comm: str | None = None, ppid: int = 1,
            container: str | None = None, pod: str | None = None,
            qos: str | None = "burstable", runtime: str | None = "containerd",
            fds_readable: bool = True) -> Process:
        """A process with effective uid `uid` in `netns` (default: the host's). `container`
        (64 hex) and/or `pod` (its uid) put it in a container/pod through its cgroup
        identity. cmdline defaults to /usr/bin/proc<pid> (give [] for an empty one, as a
        zombie has); comm to argv[0]'s basename, cut at 15 bytes as the kernel does."""
        cmdline = [f"/usr/bin/proc{pid}"] if cmdline is None else list(cmdline)
        if comm is None:
            comm = cmdline[0].rsplit("/", 1)[-1][:15] if cmdline else f"proc{pid}"
        ns = self.host if netns is None else netns
        p = Process(pid, ppid, comm, cmdline, uid, netns_key(ns), ns,
                    fds_readable=fds_readable)
        if container is not None or pod is not None:
            p.identity = identity(container=container, pod=pod, qos=qos, runtime=runtime)
        self.processes[pid] = p
        return p

    def kubelet(self, pod_uid: str, namespace: str, name: str,
                containers: dict[str, str] | None = None) -> None:
        """What the kubelet's log tree says of a pod: its namespace/name, and its (app)
        containers' names by id. The sandbox has no log: leave it out."""
        logs = self.logs = self.logs or KubeletLogs()
        logs.pods[pod_uid] = PodRef(pod_uid, namespace, name)
        names = logs.container_names_by_pod.setdefault(pod_uid, set())
        for cname, cid in (containers or {}).items():
            logs.containers[cid] = ContainerName(cname, pod_uid, namespace, name)
            names.add(cname)

    # --------------------------------------------------------------------- sockets
    def hold(self, inode: int, holder: Holder) -> None:
        """A process holds socket `inode` (one more fd; the same pid may hold it twice)."""
        pid, fd = self._pid_fd(holder)
        self.processes[pid].socket_fds[fd] = inode
        self._holders.append((inode, pid, fd))

    def _pid_fd(self, holder: Holder) -> tuple[int, int]:
        if isinstance(holder, tuple):
            return holder
        pid = holder.pid if isinstance(holder, Process) else holder
        fds = self.processes[pid].socket_fds
        return pid, max(fds, default=2) + 1

    def socket(  # noqa: PLR0913 (a builder: keyword-only options, each with a default)
            self, proto: str, state: str, local: str, remote: str | None = None, *,
            netns: int | None = None, holders: Iterable[Holder] = (),
            inode: int | None = None, uid: int | None = None,
            unix_type: str | None = None) -> Socket:
        """One table line. `local`/`remote` are 'addr:port' ('[v6]:port'); for unix, `local`
        is the path and remote is unused. Defaults as the kernel has them: inode 0 for
        TIME_WAIT/NEW_SYN_RECV, else a fresh one; remote the wildcard with port 0; the uid
        column 0 for mini-sockets, the first holder's uid for a held socket, 0 otherwise
        (None for unix, whose table has no uid column)."""
        ns = self.host if netns is None else netns
        holders = list(holders)
        if inode is None:
            inode = 0 if state in NO_UID_STATES else next(self._inodes)
        if proto == "unix":
            sock = Socket("unix", "unix", state, local, None, "", None, inode, uid,
                          unix_type=unix_type or "stream")
        else:
            laddr, lport = split_endpoint(local)
            family = "inet6" if ":" in laddr else "inet"
            wildcard = "[::]:0" if family == "inet6" else "0.0.0.0:0"
            raddr, rport = split_endpoint(remote or wildcard)
            if uid is None:
                uid = self._pid_process(holders[0]).uid \
                    if holders and state not in NO_UID_STATES else 0
            sock = Socket(proto, family, state, laddr, lport, raddr, rport, inode, uid)
        sock.netns, sock.netns_key = ns, netns_key(ns)
        for holder in holders:
            self.hold(inode, holder)
        self.sockets.append(sock)
        return sock

    def _pid_process(self, holder: Holder) -> Process:
        pid = holder[0] if isinstance(holder, tuple) else \
            holder.pid if isinstance(holder, Process) else holder
        return self.processes[pid]

    def connection(  # noqa: PLR0913 (a builder: keyword-only options, each with a default)
            self, client: str, server: str, *, client_netns: int | None = None,
            server_netns: int | None = None, client_holders: Iterable[Holder] = (),
            server_holders: Iterable[Holder] = (), proto: str = "tcp",
            state: str = "ESTABLISHED") -> tuple[Socket, Socket]:
        """Both ends of one connection: the client's socket (client -> server) in
        client_netns, and the accepted one (server -> client) in server_netns (default: the
        client's). Returns (client end, server end)."""
        c = self.socket(proto, state, client, server, netns=client_netns,
                        holders=client_holders)
        s = self.socket(proto, state, server, client,
                        netns=client_netns if server_netns is None else server_netns,
                        holders=server_holders)
        return c, s

    # ----------------------------------------------------------------------- build
    def discovery(self) -> Discovery:
        """What the walk would have found: processes grouped by namespace, holders by inode,
        the pins and the threads, the host's namespace named."""
        found = Discovery(self.proc)
        found.processes = self.processes
        found.host_key = netns_key(self.host)
        found.namespace(found.host_key).host = True
        for inode, pins in self._pins.items():
            found.namespace(netns_key(inode)).pinned = sorted(set(pins))
        for p in sorted(self.processes.values(), key=lambda p: p.pid):
            found.namespace(p.netns_key).pids.append(p.pid)
        for inode, threads in self._threads.items():
            found.namespace(netns_key(inode)).threads = sorted(threads)
        for sock in self.sockets:
            found.namespace(sock.netns_key)
        for inode, pid, fd in self._holders:
            found.holders[inode].append((pid, fd))
        return found

    def build(self, options: SnapshotOptions | None = None) -> Snapshot:
        """The snapshot, through nsnet's real join (snapshot_from). Once per MemNode."""
        if self._built:
            raise RuntimeError("a MemNode builds one snapshot (build() changes its objects)")
        self._built = True
        return snapshot_from(self.discovery(), self.sockets, options or self.options,
                             logs=self.logs, stats=self.stats,
                             translations=self.translations)

    def nat(self, client: str, vip: str, backend: str, proto: str = "tcp") -> None:
        """The host's netfilter sent client -> vip to backend (a DNAT conntrack entry)."""
        self.translations[(proto, *split_endpoint(client), *split_endpoint(vip))] = \
            split_endpoint(backend)


class FixedScanner:
    """A Scanner (nsnet.agent.sampler.Scanner) that hands out the given snapshots, one per
    take(). An exception in the sequence is raised by its take() instead (a failing
    sample). With cycle=True the sequence repeats; otherwise taking past its end is an
    AssertionError (a test that samples more than it meant to)."""

    def __init__(self, items: Iterable[Snapshot | BaseException], *, cycle: bool = False):
        self.items = list(items)
        self.cycle = cycle
        self.paces: list[object] = []   # the pace argument of each take() in this process
        self.closed = False
        # how many were taken, in memory shared with the processes forked from this one: the
        # agent takes each sample in a child (nsnet.agent.isolate), whose take() must count
        self._taken = mmap.mmap(-1, 8)

    @property
    def takes(self) -> int:
        return int.from_bytes(self._taken[:8], "little")

    def paces_callable(self) -> bool:
        return all(callable(p) for p in self.paces)

    def kept(self) -> None:
        return None

    def take(self, pace=None) -> Snapshot:
        index = self.takes
        self._taken[:8] = (index + 1).to_bytes(8, "little")
        self.paces.append(pace)
        if self.cycle:
            index %= len(self.items)
        elif index >= len(self.items):
            raise AssertionError(f"FixedScanner: take() #{index + 1} of {len(self.items)}")
        item = self.items[index]
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


class FixedWatcher:
    """A stand-in for events.DestroyWatcher: drain() hands out the given batches of Closed
    events, one batch per sample; subscriptions always succeed and are recorded."""

    def __init__(self, batches: Iterable[Iterable[Closed]] = ()):
        self.batches = [list(b) for b in batches]
        self.subscribed: dict[int, str] = {}   # inode -> path it was subscribed through
        self.received = 0
        self.failure_said = False
        self.closed = False

    def cpu_seconds(self) -> float:
        return 0.0      # no reader thread

    def drain(self) -> list[Closed]:
        events = self.batches.pop(0) if self.batches else []
        self.received += len(events)
        return events

    def watch(self, path: str, inode: int) -> str | None:
        self.subscribed[inode] = path
        return None

    def watched(self) -> set[int]:
        return set(self.subscribed)

    def forget(self, live: set[int]) -> None:
        for inode in [i for i in self.subscribed if i not in live]:
            del self.subscribed[inode]

    def counts(self) -> tuple[int, int, int]:
        return self.received, 0, len(self.subscribed)

    def close(self) -> None:
        self.closed = True


def closed(netns: int, local: str, remote: str, state: str = "CLOSE") -> Closed:
    """A destroy event as the kernel sends it: the 4-tuple, no uid, no inode."""
    laddr, lport = split_endpoint(local)
    raddr, rport = split_endpoint(remote)
    family = "inet6" if ":" in laddr else "inet"
    return Closed(netns, Socket("tcp", family, state, laddr, lport, raddr, rport, 0, None,
                                netns=netns, netns_key=netns_key(netns), source="netlink"))


def observed(counts: dict, evidence: str | None = "holder", **more: int) -> dict:
    """Edge observations as a sample makes them (agent.edges.Observed): {EdgeKey: open
    connections}, each with the same evidence; `more` sets closed/opened/ended on all."""
    from nsnet.agent.edges import Seen

    return {key: Seen(open=n, evidence=evidence, **more) for key, n in counts.items()}
