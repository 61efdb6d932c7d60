"""Take one snapshot of every network namespace on the machine: the stages, in order.

1. walk      every process: its namespace, identity and socket fds; pins; the host (walk.py)
2. sources   each namespace's sockets, once, from the chosen source (sources/); reads start
             while the walk goes on, in reader threads
3. join      sockets to every holder pid, and direction/peer, namespace by namespace as the
             reads come in (ownership.HolderJoin, classify.Classifier); connections to
             an address the host's netfilter translates (a Service VIP) resolved to their
             backend from its connection-tracking table (conntrack.py)
4. pods      containers and pods from cgroups and the kubelet's log tree, sandboxes, owners,
             names, and each socket's users and pods with the evidence for them (pods.py,
             ownership.assign_owners, ownership.name_namespaces, ownership.attribute)
5. notes     what the privileges hid, one line each (caps.py)

A Snapshotter keeps what a source can keep between snapshots (the agent's sock_diag sockets);
take_snapshot() is one snapshot with nothing kept.
"""
from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from . import classify, kubelet, pods, procfs, sources, walk
from .caps import own_capabilities, privilege_notes
from .cpus import CpuBudget, available_cpus
from .model import BORROWABLE_KINDS, OPTIONS, Snapshot, Socket, Stats, unlisted_line
from .options import SnapshotOptions
from .ownership import HolderJoin, assign_owners, attribute, link_subflows, name_namespaces
from .procfs import CLOCK_TICKS, boot_time, check_procfs
from .unixcheck import UnixLineCheck

Pace = Callable[[], None]
DEFAULTS = SnapshotOptions()


# Reader threads at most. A read is mostly the kernel walking its socket hashes with the GIL
# released, but each namespace's parse holds it: past a few readers the parse is the
# bottleneck (bench/bench_threads.py measures the gain per reader and fits the serial part).
MAX_READERS = 8


def default_threads(budget: CpuBudget | None = None) -> int:
    """One reader per CPU this process may use (affinity and cgroup quota), at most
    MAX_READERS."""
    return max(1, min(MAX_READERS, (budget or available_cpus()).cpus))


class Snapshotter:
    """Takes snapshots with one set of options. The source is chosen once (SourceUnavailable
    when an explicit one cannot work); with keep=True it keeps what it can between snapshots
    (one sock_diag socket per namespace) until close()."""

    def __init__(self, options: SnapshotOptions, *, keep: bool = False):
        self.options = options
        self.keep = keep
        self.proc = options.proc.rstrip("/") or "/"
        self._chosen: tuple[sources.Choice, sources.Source] | None = None
        self._readers: tuple[int, str] | None = None   # (threads, why), asked once

    def _source(self) -> tuple[sources.Choice, sources.Source]:
        """Chosen at the first snapshot (the privileges do not change while we run); an
        explicit source they do not allow fails that snapshot, and the next ones."""
        if self._chosen is None:
            choice = sources.choose(self.options.source)
            self._chosen = (choice, sources.create(choice, keep=self.keep,
                                                   details=self.options.details))
        return self._chosen

    def take(self, pace: Pace | None = None) -> Snapshot:
        """One snapshot. pace() is called every few processes of the walk; it may sleep to
        spread the walk over time (the agent's CPU budget)."""
        started = time.perf_counter()
        check_procfs(self.proc)
        choice, source = self._source()
        workers, _ = self._reader_threads()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nsnet-read") \
            if workers > 1 else None
        # A snapshot makes ~5 tracked objects per socket and no reference cycles; at 87k
        # sockets the collector's repeated passes over them cost ~20% of the CPU.
        # Refcounting frees all of it.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._take(choice, source, pool, started, pace)
        finally:
            if paused:
                _resume_gc()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _reader_threads(self) -> tuple[int, str]:
        if self._readers is None:
            if self.options.threads is not None:
                self._readers = (max(1, self.options.threads), "requested")
            else:
                budget = available_cpus()
                self._readers = (default_threads(budget), budget.describe()
                                 + f", at most {MAX_READERS}")
        return self._readers

    @property
    def source(self) -> sources.Source | None:
        """The source chosen at the first snapshot (None before it)."""
        return self._chosen[1] if self._chosen is not None else None

    def kept(self) -> sources.DiagSockets | None:
        """What the source keeps between snapshots (with keep=True), the source chosen now
        if it was not yet (the agent's sampling children must inherit one choice)."""
        return self._source()[1].kept()

    def close(self) -> None:
        if self._chosen is not None:
            self._chosen[1].close()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, choice: sources.Choice, source: sources.Source,
              pool: ThreadPoolExecutor | None, started: float,
              pace: Pace | None) -> Snapshot:
        options = self.options
        stats = Stats(source=choice.source, source_reason=choice.reason)
        stats.reader_threads, stats.reader_threads_reason = self._reader_threads()
        ctx = sources.ReadContext(self.proc, stats, pool, options.enter_pinned)
        # first in a reader thread, idle until the walk meets a namespace: the boot time
        # (psutil's import, ~10 ms, overlaps the walk's first reads)
        booting = pool.submit(boot_time, self.proc) if pool is not None else None
        found = walk.discover(self.proc, stats, pace=pace, met=partial(source.met, ctx),
                              enter=options.enter_pinned,
                              max_fds_per_user=options.max_fds_per_user,
                              deadline=options.deadline)
        joined = Joined(found, stats)
        sockets = source.collect(ctx, found, joined.add)
        # what sockfs says each unlisted socket is, asked once for the borrowing and the
        # explaining (a getxattr per socket, bounded)
        kinds = UnlistedKinds(self.proc)
        if choice.source == "netlink":
            extra = borrow_unlisted(found, joined.join.unlisted(), kinds, stats)
            if extra:
                joined.add(extra)
                sockets.extend(extra)
        source.forget({ns.inode for ns in found.namespaces.values() if ns.inode is not None})
        if options.translations:
            resolve_translations(self.proc, found, joined.classifier, stats)
        booted = booting.result() if booting is not None else boot_time(self.proc)
        if booted is not None:
            for process in found.processes.values():
                process.started = round(booted + process.start_ticks / CLOCK_TICKS, 2)
        logs = kubelet.load_kubelet_logs(options.host_root) \
            if options.host_root is not None else None
        snap = assemble(found, sockets, stats, joined, options, logs=logs)
        explain_unlisted(found, joined.join.unlisted(), kinds, stats)
        if OPTIONS in options.details:
            # options come from the socket itself, whatever listed it: borrowed from a holder
            # (the pidfd source has read those it borrowed already)
            from .sources.pidfd import read_options

            rest = [s for s in sockets if s.detail is None or s.detail.options is None]
            stats.options_read += len(sockets) - len(rest)
            read_options(rest, stats)
        stats.elapsed_seconds = round(time.perf_counter() - started, 6)
        return snap


class Joined:
    """The join stage, fed namespace by namespace: holders are joined and sockets classified
    as each namespace's sockets come in, while the reader threads still read the others;
    finish() is left what needs them all (peers in other namespaces)."""

    def __init__(self, found: walk.Discovery, stats: Stats):
        self.found = found
        self.join = HolderJoin(found.holders)
        self.unix_lines = UnixLineCheck(found.proc, stats)
        self.classifier = classify.Classifier()

    def add(self, batch: list[Socket]) -> None:
        self.join.attach(batch)
        self.unix_lines.check(batch)    # drops forged lines before they are classified
        self.classifier.add(batch)
        self.classifier.settle(batch)

    def finish(self, sockets: list[Socket]) -> None:
        self.unix_lines.finish(sockets)
        if self.unix_lines.dropped:   # a dropped line's inode was never listed after all
            self.join.listed = {s.inode for s in sockets if s.pids}
        self.classifier.own_addresses(self.found.namespaces.values())
        self.classifier.finish()


def resolve_translations(proc: str, found: walk.Discovery, classifier: classify.Classifier,
                         stats: Stats) -> None:
    """Give the classifier the host's NAT translations, read only when some connection's
    other end is not in its own namespace (only those can be to a Service VIP). What
    cannot be read is said once, as a privilege note."""
    if not classifier.kept:
        return
    from .conntrack import read_translations  # only when there is something to resolve

    host = found.namespaces.get(found.host_key) if found.host_key is not None else None
    read = read_translations(proc, host.inode if host is not None else None)
    if read.translations is not None:
        stats.conntrack = read.via
        classifier.translate(read.translations)
    elif read.error:
        stats.privileges.append(read.error)


def assemble(found: walk.Discovery, sockets: list[Socket], stats: Stats, joined: Joined,
             options: SnapshotOptions, *, logs: kubelet.KubeletLogs | None = None) -> Snapshot:
    """The stages after the sources: the rest of the join, pods and owners, the counts and
    the privilege notes. Pure but for our own capabilities: a test gives it a Discovery and
    sockets built in memory (snapshot_from)."""
    joined.finish(sockets)
    stats.connections_translated = joined.classifier.translated
    link_subflows(sockets)
    stats.socket_fds_not_in_tables = joined.join.not_listed()
    by_source, by_kind = stats.sockets_by_source, stats.sockets_by_kind
    for sock in sockets:
        by_source[sock.source] = by_source.get(sock.source, 0) + 1
        by_kind[sock.proto] = by_kind.get(sock.proto, 0) + 1
    if logs is not None:
        stats.kubelet_errors.extend(logs.errors)
    containers, pod_map, pods_of_netns, misfits = pods.assemble(
        found.processes, logs, options.sandbox_commands, found.host_key)
    if misfits:
        stats.pod_claims_rejected = len(misfits)
        shown = ", ".join(f"pid {m.pid} ({m.comm}) claims {m.pod}" for m in misfits[:3])
        more = f", +{len(misfits) - 3} more" if len(misfits) > 3 else ""
        stats.pod_claims.append(
            f"{len(misfits)} process(es) named in a pod's cgroup but outside its network "
            f"namespace ({shown}{more}): not counted as the pod's (a cgroup name is no proof)")
    stats.pods, stats.containers = len(pod_map), len(containers)
    assign_owners(found.namespaces, found.processes)
    stats.processes = len(found.processes)
    stats.namespaces = len(found.namespaces)
    stats.sockets = len(sockets)
    stats.sockets_without_pid = sum(1 for s in sockets if not s.pids)
    fd_denied = [(p.pid, p.comm) for p in found.processes.values() if not p.fds_readable]
    ns_unknown = [(p.pid, p.comm) for p in found.processes.values() if p.netns is None]
    stats.privileges.extend(privilege_notes(stats, own_capabilities(), fd_denied, ns_unknown))
    walk.explain_unmatched(found.namespaces, stats)
    snap = Snapshot(found.proc, found.namespaces, found.processes, sockets, stats,
                    found.host_key, pod_map, containers, pods_of_netns, options.services)
    name_namespaces(snap)
    attribute(snap)
    return snap


MAX_UNLISTED_ASKED = 4096   # sockfs lookups per snapshot (~5 us each): a bound, not a goal


class UnlistedKinds:
    """The kind sockfs says a held socket is (system.sockprotoname through one holder's
    /proc/<pid>/fd), asked once per socket and at most MAX_UNLISTED_ASKED times per
    snapshot; None: not asked (past the bound) or not said."""

    def __init__(self, proc: str):
        self.proc = proc
        self.kinds: dict[int, str | None] = {}
        self.asked = 0

    def of(self, inode: int, pid: int, fd: int) -> str | None:
        if inode in self.kinds:
            return self.kinds[inode]
        if self.asked >= MAX_UNLISTED_ASKED:
            return None
        self.asked += 1
        kind = self.kinds[inode] = procfs.socket_protocol(self.proc, pid, fd, inode)
        return kind


def borrow_unlisted(found: walk.Discovery, unlisted: dict[int, list[tuple[int, int]]],
                    kinds: UnlistedKinds, stats: Stats) -> list[Socket]:
    """Held sockets of kinds no table lists (vsock; MPTCP without mptcp_diag; netlink and
    ping sockets never bound), asked themselves through one holder's fd, as the pidfd
    source asks (model.BORROWABLE_KINDS): so that `auto` lists what a process holds."""
    by_pid: dict[int, dict[int, int]] = {}
    ours = os.getpid()
    for inode, held in sorted(unlisted.items()):
        # not our own: a sock_diag socket we keep for a namespace that is gone would keep
        # that namespace in the snapshot, and so itself open (DiagSockets.prune)
        held = [(pid, fd) for pid, fd in held if pid != ours]
        if not held:
            continue
        pid, fd = held[0]
        if kinds.of(inode, pid, fd) in BORROWABLE_KINDS:
            by_pid.setdefault(pid, {})[fd] = inode
    if not by_pid:
        return []
    from .sources.pidfd import describe_process_sockets

    extra: list[Socket] = []
    seen: set[int] = set()
    for pid, fds in sorted(by_pid.items()):
        result = describe_process_sockets(pid, fds, seen=seen)
        for sock in result.sockets:
            if sock.netns_key not in found.namespaces:
                continue     # SIOCGSKNS refused (never guess), or a namespace the walk and
                             # the tables did not see: the pidfd source's business
            sock.source = "pidfd"
            extra.append(sock)
    stats.pidfd_borrowed += len(extra)
    return extra


def explain_unlisted(found: walk.Discovery, unlisted: dict[int, list[tuple[int, int]]],
                     kinds: UnlistedKinds, stats: Stats) -> None:
    """The held sockets no table listed, by the kind sockfs says they are and the holder's
    namespace: stats.not_in_tables, and one warning line saying which and why."""
    counts: dict[tuple[str, str], int] = {}
    for inode, held in sorted(unlisted.items()):
        pid, fd = held[0]
        kind = kinds.of(inode, pid, fd)
        process = found.processes.get(pid)
        key = (kind or "unknown", process.netns_key if process else "")
        counts[key] = counts.get(key, 0) + 1
    stats.not_in_tables = [{"kind": kind, "netns_key": netns, "count": count}
                           for (kind, netns), count in sorted(counts.items())]
    line = unlisted_line(stats.not_in_tables)
    if line is not None:
        stats.privileges.append(line)


def snapshot_from(found: walk.Discovery, sockets: list[Socket],
                  options: SnapshotOptions = DEFAULTS, *,
                  logs: kubelet.KubeletLogs | None = None,
                  stats: Stats | None = None,
                  translations: classify.Translations | None = None) -> Snapshot:
    """A snapshot of what a walk and a source would have found (a fixed scanner's input):
    the same join, classification, pods and owners as take_snapshot, on data given in
    memory. Each socket needs its netns/netns_key; holders come from found.holders."""
    stats = stats or Stats()
    joined = Joined(found, stats)
    by_namespace: dict[str, list[Socket]] = {}
    for sock in sockets:
        by_namespace.setdefault(sock.netns_key, []).append(sock)
    for key in sorted(by_namespace):
        joined.add(by_namespace[key])
    if translations and options.translations:
        joined.classifier.translate(translations)
    return assemble(found, sockets, stats, joined, options, logs=logs)


def take_snapshot(options: SnapshotOptions = DEFAULTS, *,
                  pace: Pace | None = None) -> Snapshot:
    """One snapshot of the machine, keeping nothing afterwards."""
    with Snapshotter(options) as snapshotter:
        return snapshotter.take(pace)


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
