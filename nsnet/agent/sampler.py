"""One sample of the node for the agent and the live view: a snapshot, the dependency edges it
shows, the connections that closed since the last one (destroy events), and the CPU it cost.

Snapshots and subscriptions run on the caller's thread, which must be the main thread (setns).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..caps import CAP_NET_ADMIN, CAP_SYS_ADMIN, lacking, own_capabilities
from ..model import TRAFFIC, Snapshot
from ..options import SamplingOptions, SnapshotOptions
from ..snapshot import Pace, Snapshotter
from . import edges
from .events import DestroyWatcher

Say = Callable[[str], None]
NO_TRAFFIC = ("edge traffic (bytes, retransmits, rtt): the proc source has no TCP_INFO, so the "
              "edges carry none (--source auto or netlink reads it)")


class Scanner(Protocol):
    """What takes the snapshots: a Snapshotter on a real node, a fixed one in tests (as
    Weave Scope's procspy has a fixed scanner)."""

    def take(self, pace: Pace | None = None) -> Snapshot: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Sample:
    snap: Snapshot
    observed: edges.Observed     # edges: open and closed connections, evidence
    closed: int                  # destroy events received since the last sample
    ts: float
    wall: float
    cpu: float
    over_budget: bool            # cost more CPU than --max-cpu of the interval
    paced: float = 0.0           # seconds the walk slept to keep within the budget


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
        options = self.options
        wall0, cpu0 = time.monotonic(), self.cpu()
        pacer = Pacer(options.max_cpu, options.interval, self.hurry, self.cpu)
        snap = self.scanner.take(pacer)
        for line in snap.stats.warnings():
            self.say_once(line)
        if options.traffic and snap.stats.source == "proc":
            self.say_once(NO_TRAFFIC)
        # an unheld connection (TIME_WAIT) an earlier sample saw held keeps its holder's user
        self.memory.remember(snap)
        observed = edges.observe(snap)
        closed = self.watcher.drain() if self.watcher is not None else []
        self.memory.learn(snap)
        edges.merge(observed, edges.transitions(snap, self.memory, self.watcher is not None))
        # bytes and retransmits since the previous sample, rtt now (TCP_INFO, when asked)
        edges.merge(observed, edges.traffic(snap, self.memory.previous))
        # a connection that closed since the last sample is an edge even if no sample saw it
        edges.merge(observed, edges.closed_edges(closed, self.memory))
        if self.watcher is not None:
            _watch_namespaces(self.watcher, snap, snap.proc, self.say_once)
        wall, cpu = time.monotonic() - wall0, self.cpu() - cpu0
        return Sample(snap, observed, len(closed), time.time(), wall, cpu,
                      cpu > options.max_cpu * options.interval, pacer.slept)

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


def _watch_namespaces(watcher: DestroyWatcher, snap: Snapshot, proc: str, say_once: Say) -> None:
    """Subscribe in namespaces new since the last sample (main thread: setns), forget gone ones."""
    live = {ns.inode for ns in snap.namespaces.values() if ns.inode is not None}
    watcher.forget(live)
    watched = watcher.watched()
    failures = 0
    last: str | None = None
    for ns in snap.namespaces.values():
        if ns.inode is None or ns.inode in watched or not ns.pids:
            continue   # pinned-only namespaces have no process to close a connection
        for pid in ns.pids[:3]:   # a member may exit meanwhile: try another
            why = watcher.watch(f"{proc}/{pid}/ns/net", ns.inode)
            if why is None or not os.path.exists(f"{proc}/{pid}"):
                break   # subscribed, or churn: the next sample tries again
        else:
            failures += 1
            last = why
    if failures and not watcher.failure_said:   # once: the counts change every sample
        watcher.failure_said = True
        say_once(f"TCP destroy events: could not subscribe in {failures} namespace(s) "
                 f"(retried every sample), e.g.: {last}")
