"""Take one snapshot of every network namespace on the machine.

Order of work (after Weave Scope's procspy): walk the processes once (namespace, identity,
socket fds), group them by namespace, then read each namespace's net tables once, from one
of its members, then join sockets to their holders by socket inode.
"""
from __future__ import annotations

import gc
import os
import time
from functools import lru_cache
from concurrent.futures import Future, ThreadPoolExecutor
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from . import borrow, cgroup, classify, kubelet, mountinfo, pinned, pods, sockdiag, sources
from .model import Namespace, Process, Snapshot, Socket, Stats
from .netparse import NET_FILES, ParseResult, parse_net_file
from .procfs import (CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CLOCK_TICKS, PF_KTHREAD,
                     AccessDenied, ProcError, ProcessGone, boot_time, check_procfs,
                     has_capability, list_pids, ns_inode, open_dir, own_capabilities,
                     parse_cmdline, parse_stat, parse_status_euid, procnet_id, read_at, read_fd,
                     socket_fds, translate)

DEFAULT_SANDBOX_COMMANDS = ("pause",)


def ns_key(inode: int) -> str:
    return f"net:[{inode}]"


def procnet_key(ident: int) -> str:
    return f"procnet:{ident}"


@dataclass
class _Walk:
    """What the process walk learns, before any table is read."""
    processes: dict[int, Process] = field(default_factory=dict)
    members: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    threads: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    holders: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    mount_ns_reader: dict[int, int] = field(default_factory=dict)   # mnt ns inode -> a pid in it


def _namespace_key(dirfd: int, stats: Stats) -> tuple[str, Optional[int]]:
    try:
        inode = ns_inode(dirfd)
        return ns_key(inode), inode
    except OSError as exc:
        err = translate(exc)
        if not isinstance(err, AccessDenied):
            raise
    stats.processes_ns_denied += 1
    return procnet_key(procnet_id(dirfd)), None


@lru_cache(maxsize=16384)
def _identity(cgroup_text: bytes) -> Optional[cgroup.ContainerIdentity]:
    # The processes of a container share one cgroup text: parse each text once.
    return cgroup.identity_from_cgroup(cgroup_text.decode("utf-8", "surrogateescape"))


def _walk_process(proc: str, pid: int, walk: _Walk, stats: Stats) -> None:
    dirfd = open_dir(f"{proc}/{pid}")
    try:
        comm, ppid, flags, nthreads, start_ticks = parse_stat(read_at(dirfd, "stat"))
        if flags & PF_KTHREAD:
            return   # kernel threads hold no sockets and all live in the host namespace
        try:
            key, inode = _namespace_key(dirfd, stats)
        except ProcessGone:
            return   # a zombie: no namespace, no fds
        process = Process(pid, ppid, comm, parse_cmdline(read_at(dirfd, "cmdline")),
                          parse_status_euid(read_at(dirfd, "status")), key, inode,
                          start_ticks=start_ticks)
        try:
            process.identity = _identity(read_at(dirfd, "cgroup"))
        except OSError as exc:
            if isinstance(translate(exc), ProcessGone):
                raise
            # e.g. a security module hiding it: the process stays, without container identity
        try:
            mnt = ns_inode(dirfd, "mnt")
            walk.mount_ns_reader.setdefault(mnt, pid)
        except OSError:
            pass   # without ptrace we still scan our own mountinfo
        if nthreads > 1:
            _walk_threads(dirfd, pid, key, walk, stats)
        try:
            process.socket_fds, vanished = socket_fds(dirfd)
            stats.fds_vanished += vanished
        except OSError as exc:
            err = translate(exc)
            if isinstance(err, ProcessGone):
                raise err
            process.fds_readable = False
            stats.processes_fd_denied += 1
        # The process may have moved namespace while we walked it (setns, unshare).
        if inode is not None and ns_inode(dirfd) != inode:
            stats.processes_ns_changed += 1
            return
    finally:
        os.close(dirfd)
    walk.processes[pid] = process
    walk.members[key].append(pid)
    for fd, sock in process.socket_fds.items():
        walk.holders[sock].append((pid, fd))


def _walk_threads(dirfd: int, pid: int, key: str, walk: _Walk, stats: Stats) -> None:
    """Record threads whose network namespace differs from their process's."""
    try:
        tids = [int(t) for t in _listdir_at(dirfd, "task") if t.isdigit()]
    except OSError:
        return
    for tid in tids:
        if tid == pid:
            continue
        try:
            taskfd = open_dir(f"task/{tid}", dirfd)
        except OSError:
            continue
        try:
            tkey, _ = _namespace_key(taskfd, Stats())
        except (OSError, ProcError):
            continue
        finally:
            os.close(taskfd)
        if tkey != key:
            walk.threads[tkey].append((pid, tid))
            stats.threads_elsewhere += 1


def _listdir_at(dirfd: int, name: str) -> list[str]:
    fd = open_dir(name, dirfd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _host_key(proc: str, stand_ins: dict[str, str]) -> Optional[str]:
    # pid 1 is not always inspectable (on some VMs it holds capabilities we lack);
    # kthreadd (pid 2), like every kernel thread, always lives in the initial namespace.
    fallback = None
    for pid in (1, 2):
        try:
            dirfd = open_dir(f"{proc}/{pid}")
        except OSError:
            continue
        try:
            key = _namespace_key(dirfd, Stats())[0]
        except (OSError, ProcError):
            continue
        finally:
            os.close(dirfd)
        if key.startswith("net:["):
            return key
        fallback = fallback or stand_ins.get(key, key)
    return fallback


def _open_tables(path: str, expected_key: str) -> Optional[dict[str, int]]:
    """Open a task's net files if it is (still) in the expected namespace.

    The namespace is checked before and after opening: the files are bound to the namespace
    at open time, so a task that exits, moves or whose pid is reused between the two checks
    cannot make us file its tables under the wrong namespace.
    """
    dirfd = open_dir(path)
    fds: dict[str, int] = {}
    try:
        key_before = _namespace_key(dirfd, Stats())[0]
        if key_before != expected_key:
            return None
        for name in NET_FILES:
            try:
                fds[name] = os.open(f"net/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                if name.endswith("6"):
                    continue   # kernel without IPv6
                raise
        if _namespace_key(dirfd, Stats())[0] != expected_key:
            return None
        opened, fds = fds, {}
        return opened
    finally:
        for fd in fds.values():
            os.close(fd)
        os.close(dirfd)


def _read_tables_via_tasks(proc: str, key: str, candidates: Iterable[str],
                           stats: Stats) -> tuple[Optional[dict[str, bytes]], Optional[str]]:
    """Read the namespace's tables from the first candidate task that is still in it."""
    for path in candidates:
        try:
            fds = _open_tables(f"{proc}/{path}", key)
        except (OSError, ProcError):
            fds = None
        if fds is None:
            stats.namespace_read_retries += 1
            continue
        try:
            return {name: read_fd(fd) for name, fd in fds.items()}, path
        except OSError:
            stats.namespace_read_retries += 1
        finally:
            for fd in fds.values():
                os.close(fd)
    return None, None


@dataclass
class _TableRead:
    parsed: Optional[list[ParseResult]]   # None: the tables could not be read
    via: Optional[str] = None
    retries: int = 0
    errors: list[str] = field(default_factory=list)


def _parse_tables(tables: dict[str, bytes]) -> list[ParseResult]:
    return [parse_net_file(name, tables[name]) for name in NET_FILES if name in tables]


def _load_via_tasks(proc: str, key: str, candidates: list[str]) -> _TableRead:
    """Runs in a reader thread: touches nothing shared, returns what it found."""
    local = Stats()
    tables, path = _read_tables_via_tasks(proc, key, candidates, local)
    if tables is None or path is None:
        return _TableRead(None, retries=local.namespace_read_retries)
    pid, _, tid = path.partition("/task/")
    via = f"task {tid} of pid {pid}" if tid else f"pid {pid}"
    return _TableRead(_parse_tables(tables), via, local.namespace_read_retries)


def _load_pinned(ns: Namespace, paths: list[tuple[str, str]], stats: Stats) -> _TableRead:
    for shown, opener in paths:
        try:
            tables = pinned.read_tables_in(opener, ns.inode)
        except pinned.EnterError as exc:
            ns.error = str(exc)
            continue
        return _TableRead(_parse_tables(tables), f"setns {shown}")
    stats.pinned_unreadable += 1
    return _TableRead(None)


def _find_pins(proc: str, walk: _Walk, stats: Stats) -> dict[int, list[tuple[str, str]]]:
    """nsfs bind mounts of network namespaces: netns inode -> [(shown path, path to open)].

    Each mount namespace has its own mount table, so one mountinfo is read per mount
    namespace, through one of its processes; a mount seen from another mount namespace is
    opened through that process's root (/proc/<pid>/root/<mount point>).
    """
    pins: dict[int, list[tuple[str, str]]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()   # a path may pin different namespaces in two mount ns
    try:
        own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        own_mnt = None
    readers: list[tuple[str, Optional[int]]] = [("/proc/self", own_mnt)]
    readers += [(f"{proc}/{pid}", mnt) for mnt, pid in walk.mount_ns_reader.items()
                if mnt != own_mnt]
    for base, _ in readers:
        try:
            with open(f"{base}/mountinfo", "rb") as f:
                mounts, bad = mountinfo.parse_mountinfo(f.read())
        except OSError:
            stats.mountinfo_unread += 1
            continue
        stats.malformed_lines += bad
        for m in mounts:
            if (m.mount_point, m.netns_inode) in seen:
                continue
            seen.add((m.mount_point, m.netns_inode))
            opener = m.mount_point if base == "/proc/self" else f"{base}/root{m.mount_point}"
            pins[m.netns_inode].append((m.mount_point, opener))
    return pins


class _TableLoader:
    """Reads one namespace's sockets through the chosen table source.

    proc: the net files of a member task (opened between two namespace checks). netlink: a
    sock_diag socket created inside the namespace -- setns happens on the main thread only,
    the dump (which needs no setns: the socket stays bound) in a reader thread.
    Namespaces known only by their procnet stand-in (no inode) are always read from /proc.
    """

    def __init__(self, proc: str, source: str, pool: Optional[ThreadPoolExecutor],
                 enter_pinned: bool, stats: Stats, tcp_states: Optional[int] = None,
                 cache: Optional[sockdiag.DiagSockets] = None):
        self.proc, self.source, self.pool = proc, source, pool
        self.enter_pinned, self.stats = enter_pinned, stats
        self.tcp_states = tcp_states
        self.cache = cache
        self.last_error: Optional[str] = None
        self.pipelined = pool is not None and source in ("proc", "netlink")

    def _run(self, fn, *args) -> "Future | _TableRead":
        return self.pool.submit(fn, *args) if self.pool is not None else fn(*args)

    def start(self, key: str, task: str) -> "Future | _TableRead":
        """Begin reading namespace `key` through one task (a pid, or "pid/task/tid")."""
        if self.source == "netlink" and key.startswith("net:["):
            inode = int(key[5:-1])
            sock = self._diag_socket(f"{self.proc}/{task}/ns/net", inode)
            if sock is None:
                return _TableRead(None, retries=1)
            return self._run(_dump_netlink, sock, f"pid {task}", self.tcp_states,
                             self.cache is None)
        return self._run(_load_via_tasks, self.proc, key, [task])

    def finish(self, key: str, tasks: list[str], outcome) -> _TableRead:
        read = outcome.result() if isinstance(outcome, Future) else outcome
        for task in tasks if read.parsed is None else ():
            retry = self.start(key, task)
            retry = retry.result() if isinstance(retry, Future) else retry
            retry.retries += read.retries + 1
            read = retry
            if read.parsed is not None:
                break
        return read

    def _diag_socket(self, path: str, inode: int):
        """The namespace's sock_diag socket: the cached one, or one made inside it now."""
        if self.cache is not None:
            cached = self.cache.get(inode)
            if cached is not None:
                return cached
        try:
            sock = pinned.run_in_namespace(path, inode, sockdiag.open_diag_socket)
        except (pinned.EnterError, OSError) as exc:
            self.last_error = str(exc)
            if len(self.stats.source_errors) < 3:
                self.stats.source_errors.append(self.last_error)
            return None
        if self.cache is not None:
            self.cache.put(inode, sock)
        return sock

    def pinned(self, ns: Namespace, paths: list[tuple[str, str]]) -> _TableRead:
        if not self.enter_pinned:
            ns.error = "pinned by a bind mount only: not entered (--no-enter)"
            self.stats.pinned_unreadable += 1
            return _TableRead(None)
        if self.source == "netlink":
            self.last_error = None
            for shown, opener in paths:
                sock = self._diag_socket(opener, ns.inode)
                if sock is not None:
                    return _dump_netlink(sock, f"setns {shown}", self.tcp_states,
                                         self.cache is None)
            ns.error = self.last_error   # this namespace's own failure, not the latest logged
            self.stats.pinned_unreadable += 1
            return _TableRead(None)
        return _load_pinned(ns, paths, self.stats)


def _dump_netlink(sock, via: str, tcp_states: Optional[int] = None,
                  close: bool = True) -> _TableRead:
    """Runs in a reader thread: one namespace's sockets through its sock_diag socket."""
    try:
        if tcp_states is None:
            result = sockdiag.dump_namespace(sock)
        else:
            result = sockdiag.dump_namespace(sock, tcp_states=tcp_states, protos=("tcp",))
    except OSError as exc:
        return _TableRead(None, errors=[f"sock_diag: {exc}"])
    finally:
        if close:
            sock.close()
    for s in result.sockets:
        s.source = "netlink"
    parsed = ParseResult(result.sockets, result.malformed)
    return _TableRead([parsed], via, errors=result.errors)


def _sockets_by_tables(namespaces: dict[str, Namespace], pins, early, loader: _TableLoader,
                       stats: Stats, on_batch=None) -> list[Socket]:
    """proc and netlink: every namespace's tables, once, from a member task or its pin.
    on_batch(sockets) is called with each namespace's sockets as they come in, in order,
    so the main thread's work on them overlaps the reader threads' reads of the others."""
    pending = {}
    for key, ns in sorted(namespaces.items()):
        tasks = [str(p) for p in ns.pids] + [f"{p}/task/{t}" for p, t in ns.threads]
        if not tasks:
            continue
        if key in early:
            tried, outcome = early[key]
            pending[key] = ([t for t in tasks if t != tried], outcome)
        else:
            pending[key] = (tasks[1:], loader.start(key, tasks[0]))
    sockets: list[Socket] = []
    for key, ns in sorted(namespaces.items()):
        read = loader.finish(key, *pending[key]) if key in pending else None
        if read is not None:
            stats.namespace_read_retries += read.retries
        if (read is None or read.parsed is None) and ns.inode is not None and ns.inode in pins:
            read = loader.pinned(ns, pins[ns.inode])
        batch = _accept_read(ns, read, stats)
        if on_batch is not None:
            on_batch(batch)
        sockets.extend(batch)
    return sockets


def _accept_read(ns: Namespace, read: Optional[_TableRead], stats: Stats) -> list[Socket]:
    if read is None or read.parsed is None:
        stats.namespaces_unread += 1
        if ns.error is None:
            ns.error = "no task of it could be read (all exited or moved)"
        return []
    ns.tables_read = True
    ns.read_via = read.via
    ns.error = None
    for err in read.errors:
        if len(stats.source_errors) < 3:
            stats.source_errors.append(f"netns {ns.inode}: {err}")
    out: list[Socket] = []
    for parsed in read.parsed:
        stats.malformed_lines += parsed.malformed
        for sock in parsed.sockets:
            sock.netns = ns.inode
            sock.netns_key = ns.key
        out.extend(parsed.sockets)
    return out


def _sockets_by_pidfd(walk: _Walk, namespace, pins, loader: _TableLoader,
                      choice: sources.Choice, stats: Stats) -> list[Socket]:
    """Ask every held socket itself (its namespace by SIOCGSKNS), then add what no process
    holds -- TIME_WAIT and request sockets -- from a table pass restricted to those."""
    seen: set[int] = set()
    sockets: list[Socket] = []
    blind = {p.netns_key for p in walk.processes.values() if not p.fds_readable}
    for pid, process in walk.processes.items():
        if not process.socket_fds:
            continue
        result = borrow.describe_process_sockets(pid, process.socket_fds, seen=seen,
                                                 tcp_info=False)
        stats.pidfd_borrowed += result.borrowed
        stats.pidfd_vanished += result.vanished
        stats.pidfd_denied += result.denied
        stats.pidfd_netns_unknown += result.netns_unknown
        stats.pidfd_unsafe += result.unsafe
        if result.denied or result.unsafe or result.failed or result.netns_unknown:
            blind.add(process.netns_key)   # what it holds comes from that namespace's tables
        for err in result.errors:
            if len(stats.source_errors) < 3:
                stats.source_errors.append(f"pid {pid}: {err}")
        for sock in result.sockets:
            sock.source = "pidfd"
            if sock.netns is None:
                continue   # counted in pidfd_netns_unknown: never guess the namespace
            ns = namespace(ns_key(sock.netns))
            ns.held_sockets = True
            sock.netns_key = ns.key
            sockets.append(sock)
    # What pidfd cannot see: sockets no process holds (TIME_WAIT, request sockets) in every
    # namespace, and -- where a member's fds were unreadable -- everything its holders hold.
    held = {s.inode for s in sockets}
    netlink = choice.unheld_via == "netlink"
    cheap = _TableLoader(loader.proc, choice.unheld_via or "proc", loader.pool,
                         loader.enter_pinned, stats, sockdiag.UNHELD if netlink else None,
                         cache=loader.cache)
    full = _TableLoader(loader.proc, choice.unheld_via or "proc", loader.pool,
                        loader.enter_pinned, stats, cache=loader.cache)
    keys = set(walk.members) | set(walk.threads) | {ns_key(i) for i in pins} \
        | {s.netns_key for s in sockets}
    for key in keys:
        ns = namespace(key)
        if not ns.pids and not ns.threads and not (ns.inode in pins):
            # kept alive by a held socket only: nothing to read its tables through
            ns.read_via = "pidfd (its held sockets only)"
            keys = keys - {key}
    for loader_, chosen in ((cheap, keys - blind), (full, keys & blind)):
        if not chosen:
            continue
        for sock in _sockets_by_tables({k: namespace(k) for k in sorted(chosen)}, pins, {},
                                       loader_, stats):
            if sock.inode == 0 or sock.inode not in held:
                sockets.append(sock)
    return sockets


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def take_snapshot(proc: str = "/proc", *, sandbox_commands: Iterable[str] = DEFAULT_SANDBOX_COMMANDS,
                  enter_pinned: bool = True, threads: Optional[int] = None,
                  source: str = "proc",
                  diag_sockets: Optional[sockdiag.DiagSockets] = None,
                  host_root: Optional[str] = "/",
                  pace: Optional[Callable[[], None]] = None) -> Snapshot:
    """One snapshot of the machine. source: proc | netlink | pidfd | auto (see sources.py);
    an explicit source the privileges do not allow raises SourceUnavailable. diag_sockets:
    keep the sock_diag sockets open between snapshots (a sampler passes the same one).
    host_root: where the node's /var/log/pods and /var/log/containers are (pod and container
    names); None: do not look.
    pace: called every few processes of the walk; it may sleep to spread the walk over time
    (the agent's CPU budget)."""
    started = time.perf_counter()
    workers = default_threads() if threads is None else max(1, threads)
    proc = proc.rstrip("/") or "/"
    check_procfs(proc)
    choice = sources.choose(source)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nsnet-read") \
        if workers > 1 else None
    # A snapshot makes ~5 tracked objects per socket and no reference cycles; at 87k sockets
    # the collector's repeated passes over them cost ~20% of the CPU. Refcounting frees all.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _take(proc, frozenset(sandbox_commands), enter_pinned, pool, started, choice,
                     diag_sockets, host_root, pace)
    finally:
        if paused:
            _resume_gc()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _resume_gc() -> None:
    """Re-enable the collector without its first young collection walking the snapshot.

    Everything the snapshot made is still in the youngest generation, and the first
    allocation after gc.enable() would traverse all of it (~0.1 s at 87k sockets) to find no
    garbage. freeze() + unfreeze() moves every tracked object to the oldest generation at
    once; the only other effect is that cyclic garbage made before the snapshot waits for the
    next full collection. Skipped when someone froze objects on purpose (gc.freeze before a
    fork): unfreeze() would undo that.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
    gc.enable()


def _take(proc: str, sandbox: frozenset[str], enter_pinned: bool,
          pool: Optional[ThreadPoolExecutor], started: float,
          choice: sources.Choice, cache: Optional[sockdiag.DiagSockets],
          host_root: Optional[str], pace: Optional[Callable[[], None]] = None) -> Snapshot:
    stats = Stats(source=choice.source, source_reason=choice.reason)
    walk = _Walk()
    loader = _TableLoader(proc, choice.source, pool, enter_pinned, stats, cache=cache)
    # Reading a namespace's tables is mostly the kernel walking its socket hashes, with the
    # GIL released. So a namespace's tables are handed to a reader thread as soon as the walk
    # meets its first member, and the kernel's walks overlap ours.
    early: dict[str, tuple[str, Future]] = {}
    for index, pid in enumerate(list_pids(proc)):
        if pace is not None and index % 32 == 0:
            pace()
        try:
            _walk_process(proc, pid, walk, stats)
        except (OSError, ProcError) as exc:
            err = translate(exc) if isinstance(exc, OSError) else exc
            if isinstance(err, ProcessGone):
                stats.processes_vanished += 1
            else:   # e.g. hidepid, or an I/O error: skipped, and counted
                stats.processes_unreadable += 1
            continue
        process = walk.processes.get(pid)
        if process is not None and process.netns is not None \
                and process.netns_key not in early and loader.pipelined:
            early[process.netns_key] = (str(pid), loader.start(process.netns_key, str(pid)))
    stand_ins = _merge_procnet_groups(proc, walk)
    stats.processes = len(walk.processes)

    namespaces: dict[str, Namespace] = {}

    def namespace(key: str) -> Namespace:
        ns = namespaces.get(key)
        if ns is None:
            inode = int(key[5:-1]) if key.startswith("net:[") else None
            ns = namespaces[key] = Namespace(key, inode)
        return ns

    for key, pids in walk.members.items():
        namespace(key).pids = sorted(pids)
    for key, visitors in walk.threads.items():
        namespace(key).threads = sorted(visitors)
    pins = _find_pins(proc, walk, stats)
    for inode, paths in pins.items():
        namespace(ns_key(inode)).pinned = sorted({shown for shown, _ in paths})

    host_key = _host_key(proc, stand_ins)
    if host_key is not None:
        namespace(host_key).host = True

    # Holders are joined and sockets classified namespace by namespace as the tables come
    # in, while the reader threads still read the others; finish() is left what needs them all.
    holders = _Holders(walk.holders)
    classifier = classify.Classifier()
    if choice.source == "pidfd":
        sockets = _sockets_by_pidfd(walk, namespace, pins, loader, choice, stats)
        holders.attach(sockets)
        classifier.add(sockets)
    else:
        def on_batch(batch: list[Socket]) -> None:
            holders.attach(batch)
            classifier.add(batch)
            classifier.settle(batch)
        sockets = _sockets_by_tables(namespaces, pins, early, loader, stats, on_batch)
    stats.socket_fds_not_in_tables = holders.not_listed()
    for sock in sockets:
        stats.sockets_by_source[sock.source] = stats.sockets_by_source.get(sock.source, 0) + 1

    if cache is not None:   # do not keep namespaces alive that this snapshot no longer found
        cache.prune({ns.inode for ns in namespaces.values() if ns.inode is not None})
    booted = boot_time(proc)
    if booted is not None:
        for process in walk.processes.values():
            process.started = round(booted + process.start_ticks / CLOCK_TICKS, 2)
    logs = kubelet.load_kubelet_logs(host_root) if host_root is not None else None
    if logs is not None:
        stats.kubelet_errors.extend(logs.errors)
    containers, pod_map, pods_of_netns = pods.assemble(walk.processes, logs, sandbox, host_key)
    stats.pods, stats.containers = len(pod_map), len(containers)
    for ns in namespaces.values():
        ns.owners = sorted({walk.processes[p].uid for p in ns.pids
                            if not walk.processes[p].sandbox})
    classifier.finish(sockets if choice.source == "pidfd" else None)

    stats.namespaces = len(namespaces)
    stats.sockets = len(sockets)
    stats.sockets_without_pid = sum(1 for s in sockets if not s.pids)
    _privilege_notes(stats)
    stats.elapsed_seconds = round(time.perf_counter() - started, 6)
    return Snapshot(proc, namespaces, walk.processes, sockets, stats, host_key,
                    pod_map, containers, pods_of_netns)


def _merge_procnet_groups(proc: str, walk: _Walk) -> dict[str, str]:
    """Fold groups keyed by the unprivileged stand-in into the real namespace they belong to.

    Only needed when some processes' ns/net was unreadable: one readable member of each
    real namespace tells which stand-in identity it has. Returns stand-in -> real key.
    """
    stand_ins = [k for k in walk.members if k.startswith("procnet:")]
    real: dict[str, str] = {}
    if not stand_ins:
        return real
    for key, pids in list(walk.members.items()):
        if not key.startswith("net:["):
            continue
        for pid in pids:
            try:
                dirfd = open_dir(f"{proc}/{pid}")
            except OSError:
                continue
            try:
                real[procnet_key(procnet_id(dirfd))] = key
                break
            except OSError:
                continue
            finally:
                os.close(dirfd)
    for stand_in in stand_ins:
        target = real.get(stand_in)
        if target is None:
            continue
        moved = walk.members.pop(stand_in)
        walk.members[target].extend(moved)
        inode = int(target[5:-1])
        for pid in moved:
            walk.processes[pid].netns_key = target
            walk.processes[pid].netns = inode
    return real


class _Holders:
    """Joins sockets to the (pid, fd)s that hold them, by socket inode, batch by batch."""

    def __init__(self, holders: dict[int, list[tuple[int, int]]]):
        self.holders = holders
        self.listed: set[int] = set()

    def attach(self, sockets: list[Socket]) -> None:
        get = self.holders.get
        listed = self.listed.add
        for sock in sockets:
            held = get(sock.inode) if sock.inode else None
            if not held:
                continue
            listed(sock.inode)
            if len(held) == 1:   # the common case: one process, one fd
                pid, fd = held[0]
                sock.pids = [pid]
                sock.fds = {pid: [fd]}
                continue
            fds: dict[int, list[int]] = defaultdict(list)
            for pid, fd in held:
                fds[pid].append(fd)
            sock.pids = sorted(fds)
            sock.fds = {pid: sorted(fds[pid]) for pid in sock.pids}

    def not_listed(self) -> int:
        """Socket fds whose socket no table of ours listed."""
        return len(self.holders) - len(self.listed)


def _missing(caps: int, *needed: tuple[int, str]) -> str:
    """'needs X and Y', or, when we hold them all, why the kernel may still say no."""
    names = [name for _, name in needed]
    lacking = [name for cap, name in needed if not has_capability(caps, cap)]
    if not lacking:
        return (f"denied even with {' and '.join(names)} (such processes hold capabilities "
                "nsnet lacks, or a security module forbids it)")
    held = [name for name in names if name not in lacking]
    return "needs " + " and ".join(lacking) + (f" ({' and '.join(held)} held)" if held else "")


def _privilege_notes(stats: Stats) -> None:
    caps = own_capabilities()
    total = stats.processes
    ptrace = (CAP_SYS_PTRACE, "CAP_SYS_PTRACE")
    if stats.processes_fd_denied:
        stats.privileges.append(
            f"pid attribution unavailable for {stats.processes_fd_denied} of {total} processes: "
            + _missing(caps, ptrace, (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH")))
    if stats.processes_ns_denied:
        stats.privileges.append(
            f"namespace inode unreadable for {stats.processes_ns_denied} of {total} processes "
            "(grouped by their /proc/<pid>/net identity instead): " + _missing(caps, ptrace))
    if stats.pinned_unreadable:
        stats.privileges.append(
            f"{stats.pinned_unreadable} namespace(s) pinned only by a bind mount not read: "
            + ("entering them needs CAP_SYS_ADMIN" if not has_capability(caps, CAP_SYS_ADMIN)
               else "see each namespace's error"))
