"""One sample of the node for the agent and the live view: a snapshot, the dependency edges it
shows, the connections that closed since the last one (destroy events), and the CPU it cost.

Snapshots and subscriptions run on the caller's thread, which must be the main thread (setns).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import field, replace
from typing import Protocol, cast

from .. import views
from ..caps import CAP_NET_ADMIN, CAP_SYS_ADMIN, lacking, own_capabilities
from ..model import TRAFFIC, PackedSockets, Snapshot, Socket, Stats, pack, unpack
from ..options import SamplingOptions, SnapshotOptions
from ..records import record
from ..snapshot import Pace, Snapshotter
from ..sources import DiagSockets
from . import edges
from .events import MAX_PENDING, Closed, DestroyWatcher
from .isolate import run_forked

Say = Callable[[str], None]
NO_TRAFFIC = ("edge traffic (bytes, retransmits, rtt): the proc source has no TCP_INFO, so the "
              "edges carry none (--source auto or netlink reads it)")


class Scanner(Protocol):
    """What takes the snapshots: a Snapshotter on a real node, a fixed one in tests (as
    Weave Scope's procspy has a fixed scanner)."""

    def take(self, pace: Pace | None = None) -> Snapshot: ...

    def kept(self) -> DiagSockets | None:
        """What it keeps open between snapshots (chosen now if not yet), or None."""

    def close(self) -> None: ...


AddressRow = tuple[str, ...]


@record(frozen=True)
class Published:
    """The latest sample as the agent's API and metrics read it: its counts, each
    namespace's own addresses and whose they are (nsnet_address_info), and the snapshot --
    the object itself (in-process samples) or packed (samples taken in a child process):
    all but the sockets in one piece, the sockets in chunks in the sockets view's order
    (model.PackedSockets), unpacked only to build an answer."""
    stats: Stats
    addresses: tuple[AddressRow, ...]
    snap: Snapshot | None = None
    header: bytes | None = None            # the snapshot without its sockets, packed
    sockets: PackedSockets | None = None

    def snapshot(self, lazy: bool = False) -> Snapshot:
        """The snapshot; lazy: its sockets unpacked a chunk at a time as they are iterated
        (what a streamed answer needs), not all at once."""
        if self.snap is not None:
            return self.snap
        assert self.header is not None and self.sockets is not None
        snap = unpack(self.header)
        assert isinstance(snap, Snapshot)
        # a PackedSockets is a Sequence, read as the list it stands for (views iterate it)
        snap.sockets = cast(list[Socket], self.sockets) if lazy else list(self.sockets)
        return snap

    def packed_size(self) -> int:
        return len(self.header or b"") + (self.sockets.packed_size() if self.sockets else 0)

    @staticmethod
    def of(snap: Snapshot, packed: bool = False) -> Published:
        addresses = views.address_rows(snap)
        if not packed:
            return Published(snap.stats, addresses, snap=snap)
        sockets = PackedSockets.pack(sorted(snap.sockets, key=views.socket_order),
                                     in_view_order=True)
        return Published(snap.stats, addresses, header=pack(replace(snap, sockets=[])),
                         sockets=sockets)


@record(slots=True)
class Sample:
    published: Published
    observed: edges.Observed     # edges: open and closed connections, evidence
    closed: int                  # destroy events received since the last sample
    ts: float
    wall: float
    cpu: float
    over_budget: bool            # cost more CPU than --max-cpu of the interval
    paced: float = 0.0           # seconds the walk slept to keep within the budget
    peak_rss: int = 0            # bytes: the peak of the child process that took it (0:
    #                              taken in-process)

    @property
    def snap(self) -> Snapshot:
        return self.published.snapshot()

    @property
    def stats(self) -> Stats:
        return self.published.stats


# (namespace inode, a few of its processes): where destroy events are subscribed to
WatchTargets = list[tuple[int, tuple[int, ...]]]


def watch_targets(snap: Snapshot) -> WatchTargets:
    return [(ns.inode, tuple(ns.pids[:3])) for ns in snap.namespaces.values()
            if ns.inode is not None and ns.pids]   # pinned-only: no process to close one


def stall_after(interval: float) -> float:
    """Seconds after which a sample is stuck: no snapshot of a busy node takes minutes."""
    return 3 * interval + 120


class Pacer:
    """Spreads a snapshot's process walk so that it uses at most `max_cpu` of a core while it
    runs, as Weave Scope's procspy rate-limits its fd walk: called every few processes, it
    sleeps while the CPU used so far is ahead of the budget. It never stretches the walk past
    `within` seconds (a sample that cannot fit its budget in the interval is counted instead),
    and stops pacing once `hurry` is set (SIGTERM: finish the sample now)."""

    def __init__(self, max_cpu: float, within: float, hurry: threading.Event | None = None,
                 cpu: Callable[[], float] = time.process_time):
        self.max_cpu = max_cpu
        self.cpu = cpu
        self.cpu0, self.wall0 = cpu(), time.monotonic()
        self.until = self.wall0 + within
        self.hurry = hurry
        self.slept = 0.0

    def __call__(self) -> None:
        if self.hurry is not None and self.hurry.is_set():
            return
        now = time.monotonic()
        ahead = (self.cpu() - self.cpu0) / self.max_cpu - (now - self.wall0)
        pause = min(ahead, self.until - now)
        if pause > 0.005:
            if self.hurry is not None:
                self.hurry.wait(pause)
            else:
                time.sleep(pause)
            self.slept += pause


class Sampler:
    """One sample at a time: a snapshot (paced within the CPU budget), its edges, and the
    connections that closed since the last one. scanner: what takes the snapshots (default:
    a Snapshotter that keeps its sock_diag sockets); watcher: the destroy-event reader
    (default: one when options.events and the privileges allow)."""

    def __init__(self, options: SamplingOptions, say_once: Say,
                 hurry: threading.Event | None = None, *,
                 scanner: Scanner | None = None,
                 watcher: DestroyWatcher | None = None,
                 others_cpu: Callable[[], float] = lambda: 0.0):
        self.options = options
        self.others_cpu = others_cpu
        self.hurry = hurry
        self.say_once = say_once
        self.scanner: Scanner = scanner if scanner is not None \
            else Snapshotter(snapshot_options(options), keep=True)
        self.memory = edges.Memory()
        self.watcher = watcher if watcher is not None else _destroy_watcher(options, say_once)

    def cpu(self) -> float:
        """CPU seconds of sampling so far: the process's, less what the agent's other threads
        used (its HTTP clients, the destroy-event reader) -- a burst of requests must not
        be charged to the budget and stall the samples."""
        used = time.process_time() - self.others_cpu()
        if self.watcher is not None:
            used -= self.watcher.cpu_seconds()
        return used

    def sample(self) -> Sample:
        """One sample in this process (the live view; the agent with --in-process)."""
        options = self.options
        wall0, cpu0 = time.monotonic(), self.cpu()
        snap, paced = self.take(self.cpu, self.hurry)
        closed = self.watcher.drain() if self.watcher is not None else []
        observed = self.edges(snap, closed)
        if self.watcher is not None:
            _watch_namespaces(self.watcher, watch_targets(snap), snap.proc, self.say_once)
        wall, cpu = time.monotonic() - wall0, self.cpu() - cpu0
        return Sample(Published.of(snap), observed, len(closed), time.time(), wall, cpu,
                      cpu > options.max_cpu * options.interval, paced)

    def take(self, cpu: Callable[[], float], hurry: threading.Event | None
             ) -> tuple[Snapshot, float]:
        """A snapshot paced within the CPU budget, its warnings said; and the seconds the
        pacing slept."""
        options = self.options
        pacer = Pacer(options.max_cpu, options.interval, hurry, cpu)
        snap = self.scanner.take(pacer)
        for line in snap.stats.warnings():
            self.say_once(line)
        if options.traffic and snap.stats.source == "proc":
            self.say_once(NO_TRAFFIC)
        return snap, pacer.slept

    def edges(self, snap: Snapshot, closed: list[Closed]) -> edges.Observed:
        """The sample's edges: what it shows, what changed since the last one (the memory),
        and the connections that closed in between (destroy events)."""
        # an unheld connection (TIME_WAIT) an earlier sample saw held keeps its holder's user
        self.memory.remember(snap)
        observed = edges.observe(snap)
        self.memory.learn(snap)
        edges.merge(observed, edges.transitions(snap, self.memory, self.watcher is not None))
        # bytes and retransmits since the previous sample, rtt now (TCP_INFO, when asked)
        edges.merge(observed, edges.traffic(snap, self.memory.previous))
        # a connection that closed since the last sample is an edge even if no sample saw it
        edges.merge(observed, edges.closed_edges(closed, self.memory))
        return observed

    def wait_after(self, sample: Sample) -> float:
        """The budget: on average at most --max-cpu of one core. The walk is paced (Pacer)
        within the interval; a sample that still cost more than its share of the interval
        makes the next one wait longer (and is counted)."""
        options = self.options
        return max(options.interval - sample.wall, sample.cpu / options.max_cpu - sample.wall,
                   0.0)

    def close(self) -> None:
        self.scanner.close()
        if self.watcher is not None:
            self.watcher.close()


@record
class _Outcome:
    """What a sampling child sends back (its fds follow, one per `handed` inode)."""
    published: Published
    observed: edges.Observed
    ts: float
    paced: float
    said: list[str]
    targets: WatchTargets
    memory: bytes                 # the edges' memory after this sample, packed
    kept: list[int]               # namespaces whose sock_diag socket the child keeps
    proc: str                     # the procfs the snapshot read
    handed: list[int] = field(default_factory=list)   # ... of them opened by the child


class ForkedSampler:
    """Each sample taken in a child process that exits (isolate.py), so that the agent keeps
    only what it needs between samples: the edges, the snapshot packed for its API, the
    edges' memory packed. Everything the walk and the joins allocate is given back whole
    at the end of each sample -- no fragmentation accumulates, and the previous snapshot
    never coexists with the one being built in the agent's own memory.

    The parent keeps what must outlive a child: the sock_diag sockets of each namespace (a
    child hands over those it opened), the destroy-event subscriptions (a thread of the
    parent reads them; the child gets the events drained before it starts), and what it
    said once. `stop` set: the child is told to hurry (SIGTERM), as the in-process pacer is."""

    def __init__(self, sampler: Sampler, stop: threading.Event | None = None):
        self.sampler = sampler
        self.stop = stop
        self.packed_memory: bytes | None = None
        # destroy events drained for a sample whose child failed: given to the next one
        self.undelivered: list[Closed] = []

    @property
    def watcher(self) -> DestroyWatcher | None:
        return self.sampler.watcher

    def sample(self) -> Sample:
        sampler, options = self.sampler, self.sampler.options
        closed = self.undelivered + (sampler.watcher.drain() if sampler.watcher is not None
                                     else [])
        self.undelivered = closed[-MAX_PENDING:]    # until a child has taken them
        kept = sampler.scanner.kept()    # chosen here: every child inherits the same source
        known = set(kept.inodes()) if kept is not None else set()
        packed_memory = self.packed_memory

        def work(hurry: threading.Event) -> tuple[_Outcome, list[int]]:
            said: list[str] = []
            sampler.say_once = said.append      # said by the parent, once
            if packed_memory is not None:
                memory = unpack(packed_memory)
                assert isinstance(memory, edges.Memory)
                sampler.memory = memory
            # the child's own CPU clock: it has no HTTP threads, and the watcher's thread
            # stayed in the parent
            snap, paced = sampler.take(time.process_time, hurry)
            observed = sampler.edges(snap, closed)
            inodes = list(kept.inodes()) if kept is not None else []
            handed = [i for i in inodes if i not in known]
            outcome = _Outcome(Published.of(snap, packed=True), observed, time.time(), paced,
                               said, watch_targets(snap), pack(sampler.memory), inodes, snap.proc, handed)
            assert kept is None or all(kept.get(i) is not None for i in handed)
            return outcome, [kept.fileno(i) for i in handed] if kept is not None else []

        done = run_forked(work, stop=self.stop, deadline=stall_after(options.interval),
                          what="sampling")
        outcome = done.value
        assert isinstance(outcome, _Outcome)
        self.undelivered = []
        if kept is not None:
            kept.prune(set(outcome.kept))       # what the child closed: gone namespaces
            if len(done.fds) == len(outcome.handed):
                for inode, fd in zip(outcome.handed, done.fds, strict=True):
                    kept.adopt(inode, fd)
            else:    # some were dropped on the way (our fd table is full): which is which?
                for fd in done.fds:
                    os.close(fd)
                sampler.say_once(
                    f"kept sock_diag sockets: {len(outcome.handed) - len(done.fds)} of the "
                    f"{len(outcome.handed)} a sample opened were lost on the way to the agent "
                    "(out of file descriptors: raise RLIMIT_NOFILE); those namespaces are "
                    "entered again at the next sample")
        self.packed_memory = outcome.memory
        for line in outcome.said:
            sampler.say_once(line)
        if sampler.watcher is not None:
            _watch_namespaces(sampler.watcher, outcome.targets, outcome.proc,
                              sampler.say_once)
        return Sample(outcome.published, outcome.observed, len(closed), outcome.ts, done.wall,
                      done.cpu, done.cpu > options.max_cpu * options.interval, outcome.paced,
                      done.peak_rss)

    def wait_after(self, sample: Sample) -> float:
        return self.sampler.wait_after(sample)

    def close(self) -> None:
        self.sampler.close()


def snapshot_options(options: SamplingOptions) -> SnapshotOptions:
    """What each sample reads: the snapshot options, with each TCP socket's TCP_INFO counters
    (model.TRAFFIC: no SocketDetail) when the edges carry their traffic
    (SamplingOptions.traffic)."""
    if not options.traffic or TRAFFIC in options.snapshot.details:
        return options.snapshot
    return replace(options.snapshot, details=options.snapshot.details | {TRAFFIC})


def _destroy_watcher(options: SamplingOptions, say_once: Say) -> DestroyWatcher | None:
    if not options.events:
        return None
    missing = lacking(own_capabilities(), CAP_NET_ADMIN, CAP_SYS_ADMIN)
    if missing:
        say_once(f"TCP destroy events off: subscribing in each namespace needs "
                 f"{' and '.join(missing)}; connections shorter than the interval are seen "
                 "only while in TIME_WAIT, and attributed to their namespace's owners")
        return None
    return DestroyWatcher()


def _watch_namespaces(watcher: DestroyWatcher, targets: WatchTargets, proc: str,
                      say_once: Say) -> None:
    """Subscribe in namespaces new since the last sample (main thread: setns), forget gone
    ones (a pinned-only namespace is not a target, and has no process to close a
    connection: forgotten too)."""
    watcher.forget({inode for inode, _ in targets})
    watched = watcher.watched()
    failures = 0
    last: str | None = None
    for inode, pids in targets:
        if inode in watched:
            continue
        for pid in pids:   # a member may exit meanwhile: try another
            why = watcher.watch(f"{proc}/{pid}/ns/net", inode)
            if why is None or not os.path.exists(f"{proc}/{pid}"):
                break   # subscribed, or churn: the next sample tries again
        else:
            failures += 1
            last = why
    if failures and not watcher.failure_said:   # once: the counts change every sample
        watcher.failure_said = True
        say_once(f"TCP destroy events: could not subscribe in {failures} namespace(s) "
                 f"(retried every sample), e.g.: {last}")
