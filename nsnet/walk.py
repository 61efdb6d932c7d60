"""Discovery: every process, the network namespace it lives in, and every namespace pinned by
a bind mount -- before any socket table is read.

Order of work (after Weave Scope's procspy walker): each /proc/<pid> once (its namespace, its
identity, its socket fds), then processes grouped by namespace, pins found in each mount
namespace's mountinfo, and the host's namespace named. The walk never raises for a process
that vanished or that we may not read: it counts it in Stats and goes on.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import field
from functools import lru_cache

from . import cgroup, mountinfo
from .errors import AccessDenied, EnterError, ProcError, ProcessGone
from .model import (
    ContainerIdentity,
    Namespace,
    Process,
    Stats,
    is_stand_in,
    key_inode,
    netns_key,
    procnet_key,
)
from .procfs import (
    MAX_MOUNTINFO,
    PF_KTHREAD,
    list_pids,
    listdir_at,
    ns_inode,
    open_dir,
    procnet_id,
    read_at,
    read_text,
    socket_fds,
)
from .procparse import parse_cmdline, parse_stat, parse_status_euid
from .records import record
from .setns import OWN_PROC, run_in_namespace

# The walk calls this every PACE_EVERY processes (the agent's CPU budget may sleep there).
PACE_EVERY = 32


@record(frozen=True, slots=True)
class Pin:
    """A bind mount that pins a network namespace (ip netns add, docker, CNI)."""
    shown: str      # the mount point, as the mount namespace that has it sees it
    opener: str     # the path to open it by from here (through /proc/<pid>/root when remote)


@record
class Discovery:
    """What the walk found: the input of every socket source and of the join."""
    proc: str
    processes: dict[int, Process] = field(default_factory=dict)
    # socket inode -> every (pid, fd) holding it, across all namespaces
    holders: dict[int, list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    pins: dict[int, list[Pin]] = field(default_factory=dict)   # netns inode -> its pins
    host_key: str | None = None

    def namespace(self, key: str) -> Namespace:
        """The namespace of that key, made on first use (a source may find one the walk did
        not: the pidfd source, a namespace only a held socket keeps alive)."""
        ns = self.namespaces.get(key)
        if ns is None:
            ns = self.namespaces[key] = Namespace(key, key_inode(key))
        return ns

    def tasks(self, ns: Namespace) -> list[str]:
        """The tasks whose /proc entries see this namespace: its member pids, then the
        threads of other processes that live here ("pid/task/tid")."""
        return [str(p) for p in ns.pids] + [f"{p}/task/{t}" for p, t in ns.threads]


@record
class _Walk:
    """What the process walk learns, before the namespaces are assembled."""
    found: Discovery
    members: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    threads: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    mount_ns_reader: dict[int, int] = field(default_factory=dict)   # mnt ns inode -> a pid in it
    # The work budget: fd links read per uid, at most max_fds_per_user in one walk. A
    # tenant's own processes (e.g. 50 forks sharing 20k sockets: a million fd links) then
    # cost the walk at most that, whatever it does; what is left unread is counted.
    max_fds_per_user: int | None = None
    fds_read: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    fds_cut: list[tuple[int, str, int]] = field(default_factory=list)   # (pid, comm, uid)

    def fd_allowance(self, uid: int) -> int | None:
        if self.max_fds_per_user is None:
            return None
        return max(0, self.max_fds_per_user - self.fds_read[uid])


class _Clock:
    """The walk's pace (the agent's CPU budget sleeps there) and its deadline, which counts
    the walk's own time only, not those sleeps."""

    def __init__(self, pace: Callable[[], None] | None, deadline: float | None) -> None:
        self.pace, self.deadline = pace, deadline
        self.started, self.paced = time.monotonic(), 0.0

    def tick(self) -> bool:
        """Pace; False once the deadline has passed."""
        if self.pace is not None:
            before = time.monotonic()
            self.pace()
            self.paced += time.monotonic() - before
        return self.deadline is None or \
            time.monotonic() - self.started - self.paced <= self.deadline


def discover(proc: str, stats: Stats, *, pace: Callable[[], None] | None = None,
             met: Callable[[str, int], None] | None = None, enter: bool = True,
             max_fds_per_user: int | None = None, deadline: float | None = None
             ) -> Discovery:
    """Walk every process of `proc`. met(key, pid) is called when the walk meets the first
    member of a namespace whose inode it could read (a table source may start reading that
    namespace at once, overlapping the rest of the walk); pace() every PACE_EVERY processes.
    enter: processes grouped by their stand-in identity (no CAP_SYS_PTRACE) may be matched
    to a pinned namespace by entering the pin (setns, CAP_SYS_ADMIN).
    max_fds_per_user: fd links read at most per uid (None: all); the rest are counted in
    stats.fds_skipped and the processes concerned named in stats.fds_cut.
    deadline: seconds the walk may take, pace()'s sleeps not counted; the processes left
    then are counted in stats.processes_skipped (and said), not walked."""
    walk = _Walk(Discovery(proc), max_fds_per_user=max_fds_per_user)
    processes = walk.found.processes
    pids = list_pids(proc)
    clock = _Clock(pace, deadline)
    for index, pid in enumerate(pids):
        if index % PACE_EVERY == 0 and not clock.tick():
            stats.processes_skipped = len(pids) - index
            stats.privileges.append(
                f"the walk's deadline ({deadline:g} s) passed after {index} of {len(pids)} "
                f"processes: {len(pids) - index} not walked (--deadline)")
            break
        try:
            _walk_process(proc, pid, walk, stats)
        except ProcessGone:
            stats.processes_vanished += 1
            continue
        except (ProcError, ValueError):   # hidepid, an I/O error, text not the kernel's
            stats.processes_unreadable += 1
            continue
        process = processes.get(pid)
        if met is not None and process is not None and process.netns is not None:
            met(process.netns_key, pid)
    stand_ins = _merge_procnet_groups(proc, walk)
    found = walk.found
    found.pins = _find_pins(proc, walk, stats)
    if enter and any(is_stand_in(k) for k in walk.members):
        stand_ins.update(_match_pins(walk, found.pins, stats))
    if walk.fds_cut:
        stats.privileges.append(_fds_cut_note(walk))
    for key, pids in walk.members.items():
        found.namespace(key).pids = sorted(pids)
    for key, visitors in walk.threads.items():
        found.namespace(key).threads = sorted(visitors)
    for inode, pins in found.pins.items():
        found.namespace(netns_key(inode)).pinned = sorted({pin.shown for pin in pins})
    found.host_key = _host_key(proc, stand_ins)
    if found.host_key is not None:
        found.namespace(found.host_key).host = True
    return found


def namespace_key(dirfd: int, stats: Stats) -> tuple[str, int | None]:
    """The key and inode of a task's namespace; without ptrace rights over it, the stand-in
    key and no inode (counted in processes_ns_denied)."""
    try:
        inode = ns_inode(dirfd)
        return netns_key(inode), inode
    except AccessDenied:
        stats.processes_ns_denied += 1
    return procnet_key(procnet_id(dirfd)), None


@lru_cache(maxsize=16384)
def _identity(cgroup_text: bytes) -> ContainerIdentity | None:
    # The processes of a container share one cgroup text: parse each text once.
    return cgroup.identity_from_cgroup(cgroup_text.decode("utf-8", "surrogateescape"))


def _walk_process(proc: str, pid: int, walk: _Walk, stats: Stats) -> None:
    dirfd = open_dir(f"{proc}/{pid}")
    try:
        comm, ppid, flags, nthreads, start_ticks = parse_stat(read_at(dirfd, "stat"))
        if flags & PF_KTHREAD:
            return   # kernel threads hold no sockets and all live in the host namespace
        try:
            key, inode = namespace_key(dirfd, stats)
        except ProcessGone:
            return   # a zombie: no namespace, no fds
        process = Process(pid, ppid, comm, parse_cmdline(read_at(dirfd, "cmdline")),
                          parse_status_euid(read_at(dirfd, "status")), key, inode,
                          start_ticks=start_ticks)
        try:
            process.identity = _identity(read_at(dirfd, "cgroup"))
        except ProcessGone:
            raise
        except ProcError:
            pass   # e.g. a security module hiding it: the process stays, without its container
        try:
            walk.mount_ns_reader.setdefault(ns_inode(dirfd, "mnt"), pid)
        except ProcError:
            pass   # without ptrace we still scan our own mountinfo
        if nthreads > 1:
            _walk_threads(dirfd, pid, key, walk, stats)
        try:
            scan = socket_fds(dirfd, walk.fd_allowance(process.uid))
            process.socket_fds = scan.sockets
            stats.fds_vanished += scan.vanished
            walk.fds_read[process.uid] += scan.read
            if scan.skipped:
                stats.fds_skipped += scan.skipped
                process.fds_complete = False
                walk.fds_cut.append((pid, comm, process.uid))
        except ProcessGone:
            raise
        except ProcError:
            process.fds_readable = False
            stats.processes_fd_denied += 1
        # The process may have moved namespace while we walked it (setns, unshare).
        if inode is not None and ns_inode(dirfd) != inode:
            stats.processes_ns_changed += 1
            return
    finally:
        os.close(dirfd)
    walk.found.processes[pid] = process
    walk.members[key].append(pid)
    holders = walk.found.holders
    for fd, sock in process.socket_fds.items():
        holders[sock].append((pid, fd))


def _walk_threads(dirfd: int, pid: int, key: str, walk: _Walk, stats: Stats) -> None:
    """Record threads whose network namespace differs from their process's."""
    try:
        tids = [int(t) for t in listdir_at(dirfd, "task") if t.isdigit()]
    except ProcError:
        return
    for tid in tids:
        if tid == pid:
            continue
        try:
            taskfd = open_dir(f"task/{tid}", dirfd)
        except ProcError:
            continue
        try:
            tkey, _ = namespace_key(taskfd, Stats())
        except ProcError:
            continue
        finally:
            os.close(taskfd)
        if tkey != key:
            walk.threads[tkey].append((pid, tid))
            stats.threads_elsewhere += 1


def _host_key(proc: str, stand_ins: dict[str, str]) -> str | None:
    # pid 1 is not always inspectable (on some VMs it holds capabilities we lack);
    # kthreadd (pid 2), like every kernel thread, always lives in the initial namespace.
    fallback = None
    for pid in (1, 2):
        try:
            dirfd = open_dir(f"{proc}/{pid}")
        except ProcError:
            continue
        try:
            key = namespace_key(dirfd, Stats())[0]
        except ProcError:
            continue
        finally:
            os.close(dirfd)
        if not is_stand_in(key):
            return key
        fallback = fallback or stand_ins.get(key, key)
    return fallback


def _find_pins(proc: str, walk: _Walk, stats: Stats) -> dict[int, list[Pin]]:
    """nsfs bind mounts of network namespaces: netns inode -> its pins.

    Each mount namespace has its own mount table, so one mountinfo is read per mount
    namespace, through one of its processes; a mount seen from another mount namespace is
    opened through that process's root (/proc/<pid>/root/<mount point>).
    """
    pins: dict[int, list[Pin]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()   # a path may pin different namespaces in two mount ns
    try:
        own_mnt: int | None = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        own_mnt = None
    readers = ["/proc/self"] + [f"{proc}/{pid}" for mnt, pid in walk.mount_ns_reader.items()
                                if mnt != own_mnt]
    for base in readers:
        try:
            text = read_text(f"{base}/mountinfo", MAX_MOUNTINFO + 1)
        except ProcError:
            stats.mountinfo_unread += 1
            continue
        if len(text) > MAX_MOUNTINFO:   # a tenant's own mount table: cut at a line's end
            text = text[:text.rfind(b"\n", 0, MAX_MOUNTINFO) + 1]
            stats.mountinfo_cut += 1
        mounts, bad = mountinfo.parse_mountinfo(text)
        stats.malformed_lines += bad
        for m in mounts:
            if (m.mount_point, m.netns_inode) in seen:
                continue
            seen.add((m.mount_point, m.netns_inode))
            opener = m.mount_point if base == "/proc/self" else f"{base}/root{m.mount_point}"
            pins[m.netns_inode].append(Pin(m.mount_point, opener))
    return dict(pins)


def _merge_procnet_groups(proc: str, walk: _Walk) -> dict[str, str]:
    """Fold groups keyed by the unprivileged stand-in into the real namespace they belong to.

    Only needed when some processes' ns/net was unreadable: one readable member of each
    real namespace tells which stand-in identity it has. Returns stand-in -> real key.
    """
    stand_ins = [k for k in walk.members if is_stand_in(k)]
    real: dict[str, str] = {}
    if not stand_ins:
        return real
    for key, pids in list(walk.members.items()):
        if is_stand_in(key):
            continue
        for pid in pids:
            try:
                dirfd = open_dir(f"{proc}/{pid}")
            except ProcError:
                continue
            try:
                real[procnet_key(procnet_id(dirfd))] = key
                break
            except ProcError:
                continue
            finally:
                os.close(dirfd)
    for stand_in in stand_ins:
        target = real.get(stand_in)
        if target is not None:
            _move_members(walk, stand_in, target)
    return real


def _move_members(walk: _Walk, stand_in: str, target: str) -> None:
    """The processes grouped under a stand-in key live in the namespace `target`."""
    moved = walk.members.pop(stand_in)
    walk.members[target].extend(moved)
    inode = key_inode(target)
    for pid in moved:
        walk.found.processes[pid].netns_key = target
        walk.found.processes[pid].netns = inode


def _own_procnet_id() -> int:
    return os.stat(f"{OWN_PROC}/thread-self/net/dev").st_ino


def _match_pins(walk: _Walk, pins: dict[int, list[Pin]], stats: Stats) -> dict[str, str]:
    """Without CAP_SYS_PTRACE, processes are grouped by a stand-in identity (their
    /proc/<pid>/net entries' inode) and pinned namespaces are known by their nsfs inode: the
    two cannot be compared. Entering a pin (setns: CAP_SYS_ADMIN) shows its stand-in identity
    from inside; a group with that identity lives there. Returns stand-in -> real key."""
    real: dict[str, str] = {}
    for inode, where in pins.items():
        key = netns_key(inode)
        if key in walk.members:
            continue
        for pin in where:
            try:
                stand_in = procnet_key(run_in_namespace(pin.opener, inode, _own_procnet_id))
            except EnterError:
                continue   # no CAP_SYS_ADMIN, or a pin we cannot open: it stays unmatched
            if stand_in in walk.members:
                _move_members(walk, stand_in, key)
                real[stand_in] = key
                stats.namespaces_matched_by_setns += 1
            break
    return real


def explain_unmatched(namespaces: dict[str, Namespace], stats: Stats) -> None:
    """Say what entries are when pins and process groups could not be matched (no
    CAP_SYS_PTRACE to read a process's namespace inode, no CAP_SYS_ADMIN to enter a pin): a
    pin that could not be read is not an empty namespace, and a group is not a namespace
    whose identity is known. Call once the tables were read."""
    groups = [ns for ns in namespaces.values() if is_stand_in(ns.key)]
    for ns in groups:
        ns.note = ("processes whose namespace inode needs CAP_SYS_PTRACE (grouped by their "
                   "/proc/<pid>/net identity)")
    pins = [ns for ns in namespaces.values()
            if ns.pinned and not ns.pids and not ns.threads and not ns.tables_read]
    if not groups or not pins:
        return
    for ns in pins:
        ns.note = (f"pinned at {', '.join(ns.pinned)}, not readable without CAP_SYS_ADMIN; "
                   "it may be the namespace of one of the process groups whose namespace "
                   "inode needs CAP_SYS_PTRACE")
    stats.namespaces_unmatched = len(groups) + len(pins)
    stats.privileges.append(
        f"{len(pins)} pinned namespace(s) and {len(groups)} process group(s) could not be "
        "matched (needs CAP_SYS_PTRACE, or CAP_SYS_ADMIN to enter the pins): each is shown as "
        "what it is, the pins unread, not as empty namespaces")


def _fds_cut_note(walk: _Walk) -> str:
    """One line: whose fds were not all read, and why."""
    uids = sorted({uid for _, _, uid in walk.fds_cut})
    shown = ", ".join(f"pid {pid} ({comm})" for pid, comm, _ in walk.fds_cut[:3])
    more = f", +{len(walk.fds_cut) - 3} more" if len(walk.fds_cut) > 3 else ""
    return (f"fds not all read for {len(walk.fds_cut)} process(es) ({shown}{more}): uid "
            f"{', '.join(map(str, uids))} holds more than {walk.max_fds_per_user} fds in all "
            "(--max-fds-per-user); sockets behind the unread fds lack those holders")
