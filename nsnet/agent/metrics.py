"""Prometheus metrics of the agent (prometheus_client): the dependency edges it knows and its
own health.

Cardinality guard: at most `max_series` edges are exported, the most recently seen first; the
rest are summed into one series per (direction, user) whose `peer` label is "__overflow__",
for at most max(10, max_series / 10) users (those seen most recently), and the users beyond
into one series per direction whose `user` is "__overflow__" too -- a tenant with a user
namespace has 65,536 uids, and must not turn the cap into one series per uid.
`nsnet_edge_series_dropped` says how many edges were folded. Ephemeral ports are never labels
(see edges.py), so the number of series follows the number of distinct services and clients.
"""
from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .. import __version__
from ..model import ServiceMap, Stats
from ..ownership import user_name
from ..records import record
from .auth import REASONS
from .edges import EdgeKey, EdgeState, service_name
from .history import split_where

# A copy of the agent's edges, taken under its lock: the collector runs in an HTTP thread
# while the sampler updates the book, and must never see it half-updated.
EdgeRows = Callable[[], list[tuple[EdgeKey, EdgeState]]]

OVERFLOW = "__overflow__"
EDGE_LABELS = ("node", "uid", "user", "pod", "namespace", "netns", "direction", "proto",
               "peer", "port", "service", "evidence", "direction_inferred", "via")
# evidence: how the edge's user is known (model.EVIDENCE; namespace-owners is a guess),
# "unknown" when no user is (an edge of the host's namespace nothing attributes);
# direction_inferred: "true" when which end served was only inferred from the ports;
# via: the Service VIP ("vip:port") an outbound edge went through, peer/port then being the
# backend the node's conntrack says it reached ("" -- no label -- otherwise)


@record
class _Families:
    """The edge metric families of one scrape, filled edge by edge."""
    open: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "nsnet_edge_connections", "Connections of the edge open in the latest sample",
        labels=EDGE_LABELS))
    closed: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "nsnet_edge_recently_closed_connections",
        "Connections of the edge closed recently (TIME_WAIT and other closing states) in the "
        "latest sample", labels=EDGE_LABELS))
    max_conc: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "nsnet_edge_max_concurrent_connections",
        "Most connections of the edge open at once since first seen", labels=EDGE_LABELS))
    last_seen: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "nsnet_edge_last_seen_timestamp_seconds", "When the edge was last seen",
        labels=EDGE_LABELS))
    samples: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_samples", "Samples in which the edge was seen", labels=EDGE_LABELS))
    opened: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_connections_opened", "Connections of the edge seen opening since the agent "
        "started", labels=EDGE_LABELS))
    ended: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_connections_closed", "Connections of the edge seen closing since the agent "
        "started", labels=EDGE_LABELS))
    # traffic, from TCP_INFO: only edges whose source measured it have these series
    sent: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_sent_bytes", "Bytes the edge's connections sent (and the peer "
        "acknowledged) since the agent started, from our side", labels=EDGE_LABELS))
    received: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_received_bytes", "Bytes the edge's connections received since the agent "
        "started", labels=EDGE_LABELS))
    retransmits: CounterMetricFamily = field(default_factory=lambda: CounterMetricFamily(
        "nsnet_edge_retransmitted_segments", "TCP segments the edge's connections "
        "retransmitted since the agent started", labels=EDGE_LABELS))
    rtt: GaugeMetricFamily = field(default_factory=lambda: GaugeMetricFamily(
        "nsnet_edge_rtt_seconds", "Mean smoothed round-trip time of the edge's connections "
        "open in the latest sample", labels=EDGE_LABELS))

    def add(self, labels: tuple[str, ...], state: EdgeState) -> None:
        # One label dict per edge, shared by its series in every family (add_metric makes
        # one per family and edge; what a scrape keeps until the edges change, measured at
        # 6,000 edges: 41 MiB that way, 14 MiB this way). Never mutated once built.
        shared = dict(zip(EDGE_LABELS, labels, strict=True))
        counters: list[tuple[Metric, float]] = [
            (self.samples, state.samples), (self.opened, state.opened_total),
            (self.ended, state.closed_total)]
        gauges: list[tuple[Metric, float]] = [(self.open, state.current), (self.closed, state.closed),
                  (self.max_conc, state.max_concurrent), (self.last_seen, state.last_seen)]
        if state.measured:
            counters += [(self.sent, state.sent_total), (self.received, state.received_total),
                         (self.retransmits, state.retransmits_total)]
        if state.rtt_us is not None:
            gauges.append((self.rtt, state.rtt_us / 1e6))
        for family, value in gauges:
            family.samples.append(Sample(family.name, shared, value))
        for family, value in counters:
            family.samples.append(Sample(family.name + "_total", shared, value))

    def all(self) -> tuple[Metric, ...]:
        return (self.open, self.closed, self.max_conc, self.last_seen, self.samples,
                self.opened, self.ended, self.sent, self.received, self.retransmits, self.rtt)


def _fold(into: EdgeState | None, state: EdgeState) -> EdgeState:
    """Edges summed into one overflow series."""
    if into is None:
        return replace(state, evidence=None, rtt_us=None)
    into.current += state.current
    into.closed += state.closed
    into.max_concurrent = max(into.max_concurrent, state.max_concurrent)
    into.last_seen = max(into.last_seen, state.last_seen)
    into.samples += state.samples
    into.opened_total += state.opened_total
    into.closed_total += state.closed_total
    into.sent_total += state.sent_total
    into.received_total += state.received_total
    into.retransmits_total += state.retransmits_total
    into.measured = into.measured or state.measured
    into.rtt_us = None      # a mean over unrelated edges says nothing
    return into


class _PerVersion(Collector):
    """Families built once per change of `version` (once per sample), under a lock, whoever
    scrapes and however often: a burst of scrapes costs one build, one at a time. Without a
    version, built at every collect. Only the families are kept, never what they came from."""

    def __init__(self, version: Callable[[], int] | None):
        self.version = version
        self._built: tuple[int, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            version = self.version() if self.version is not None else None
            if version is None or self._built is None or self._built[0] != version:
                built = list(self._build())
                if version is None:
                    return iter(built)
                self._built = (version, built)
            return iter(self._built[1])

    def _build(self) -> Iterator[Metric]:
        raise NotImplementedError


class EdgeCollector(_PerVersion):
    """The edge series, built from a copy of the edges (`rows`) once per change of the edges
    (`version`): not a copy of every edge per scrape under the agent's lock, which the
    sampler waits on."""

    def __init__(self, node: str, rows: EdgeRows, services: ServiceMap, max_series: int,
                 version: Callable[[], int] | None = None):
        super().__init__(version)
        self.node = node
        self.rows = rows
        self.services = services
        self.max_series = max_series

    def _user(self, key: EdgeKey) -> tuple[str, str]:
        """uid and user labels. A uid without a passwd entry (every tenant inside the agent's
        image) is its own user label: `sum by (user)` must not merge the tenants."""
        if key.uid < 0:
            return str(key.uid), ""
        return str(key.uid), user_name(key.uid) or str(key.uid)

    def _labels(self, key: EdgeKey, state: EdgeState) -> tuple[str, ...]:
        where = split_where(key.where)
        service = service_name(self.services, key)
        return (self.node, *self._user(key),
                where["pod"] or where["pod_uid"] or "", where["pod_namespace"] or "",
                where["netns"] or "", key.direction, key.proto, key.peer_addr, str(key.port),
                service or "", state.evidence or "unknown",
                "true" if state.direction_inferred else "false", key.via)

    def _build(self) -> Iterator[Metric]:
        families = _Families()
        dropped = GaugeMetricFamily(
            "nsnet_edge_series_dropped",
            f"Edges folded into peer=\"{OVERFLOW}\" series by the cardinality cap")
        edges = sorted(self.rows(), key=lambda kv: -kv[1].last_seen)
        kept, rest = edges[:self.max_series], edges[self.max_series:]
        for key, state in kept:
            labels: tuple[str, ...] = self._labels(key, state)
            families.add(labels, state)
        folded: dict[tuple[str, ...], EdgeState] = {}
        users: set[int] = set()
        room = max(10, self.max_series // 10)
        for key, state in rest:          # the most recently seen first
            if key.uid in users or len(users) < room:
                users.add(key.uid)
                who = self._user(key)
            else:
                who = ("", OVERFLOW)
            folded_labels = (self.node, *who, "", "", "", key.direction, "", OVERFLOW, "", "",
                             "mixed", "mixed", "")
            folded[folded_labels] = _fold(folded.get(folded_labels), state)
        for labels, state in folded.items():
            families.add(labels, state)
        dropped.add_metric([], len(rest))
        yield from (*families.all(), dropped)


ADDRESS_LABELS = ("node", "address", "interface", "netns", "kind", "namespace", "pod",
                  "pod_uid")
# the latest sample's views.address_rows (none before the first sample)
AddressRows = Callable[[], Sequence[tuple[str, ...]]]


class AddressCollector(_PerVersion):
    """nsnet_address_info: each namespace's own addresses and whose they are (a pod, the
    host, another namespace), from the latest sample (views.address_rows) -- what joins the
    edges of two nodes: an edge's peer address on one node is a pod's address on the other.
    One series per address and namespace."""

    def __init__(self, node: str, rows: AddressRows, version: Callable[[], int] | None = None):
        super().__init__(version)
        self.node = node
        self.rows = rows

    def _build(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "nsnet_address_info", "An address of a network namespace of this node, and whose "
            "it is: kind=pod (the pod's own namespace), host, or netns", labels=ADDRESS_LABELS)
        for row in self.rows():
            family.add_metric((self.node, *row), 1.0)
        yield family


class _WithChildrenCpu(ProcessCollector):
    """prometheus_client's process collector, with the CPU of the agent's sampling children
    in process_cpu_seconds_total: their work is the agent's (os.times: the children waited
    for, /proc/self/stat's cutime and cstime)."""

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.name == "process_cpu_seconds":
                times = os.times()
                children = times.children_user + times.children_system
                family.samples = [s._replace(value=s.value + children) for s in family.samples]
            yield family


class _Collecting:
    """Collectors read as one registry (what prometheus_client's encoders iterate)."""

    def __init__(self, collectors: tuple[Collector, ...]):
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class AgentMetrics:
    """The agent's registry: its own health, and the edges (EdgeCollector)."""

    def __init__(self, node: str, rows: EdgeRows, services: ServiceMap, max_series: int,
                 version: Callable[[], int] | None = None,
                 addresses: AddressRows | None = None,
                 samples: Callable[[], int] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sample_duration = Histogram(
            "nsnet_sample_duration_seconds", "Wall time of one sample", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.sample_cpu = Histogram(
            "nsnet_sample_cpu_seconds", "CPU time of one sample", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.samples = Counter("nsnet_samples", "Samples taken", registry=r)
        self.sample_failures = Counter("nsnet_sample_failures", "Samples that failed",
                                       registry=r)
        self.over_budget = Counter(
            "nsnet_samples_over_budget",
            "Samples whose CPU time exceeded --max-cpu of the interval (the next one waited)",
            registry=r)
        self.sample_peak_rss = Gauge(
            "nsnet_sample_peak_resident_memory_bytes",
            "Peak resident memory of the process that took the latest sample (each sample is "
            "taken in a child process that exits; process_resident_memory_bytes is the agent's "
            "own between samples)", registry=r)
        self.namespaces = Gauge("nsnet_namespaces", "Network namespaces in the latest sample",
                                registry=r)
        self.sockets = Gauge("nsnet_sockets", "Sockets in the latest sample", registry=r)
        self.processes = Gauge("nsnet_processes", "Processes in the latest sample", registry=r)
        self.pids_denied = Gauge(
            "nsnet_processes_fd_denied",
            "Processes whose fds could not be read in the latest sample (pid attribution)",
            registry=r)
        self.store_errors = Counter("nsnet_store_errors", "History writes that failed",
                                    registry=r)
        self.events = Counter("nsnet_destroy_events",
                              "TCP destroy events received between samples", registry=r)
        self.events_dropped = Counter(
            "nsnet_destroy_events_dropped",
            "Destroy events lost (kernel buffer overruns, or over the per-interval cap)",
            registry=r)
        self._dropped_seen = 0
        self.namespaces_watched = Gauge(
            "nsnet_destroy_namespaces_watched",
            "Namespaces with a subscription to TCP destroy events", registry=r)
        self.http_unauthorized = Counter(
            "nsnet_http_unauthorized",
            "HTTP requests refused for want of the bearer token (--auth-token-file): "
            "reason=missing (no Authorization header) or invalid (another token or scheme)",
            ["reason"], registry=r)
        for reason in REASONS:   # both series from the start: rate() sees the first refusal
            self.http_unauthorized.labels(reason)
        edge_families = EdgeCollector(node, rows, services, max_series, version)
        r.register(edge_families)
        # the addresses change with the sample (`samples`: how many were taken)
        address_families = AddressCollector(node, addresses or (lambda: ()), samples)
        r.register(address_families)
        build = Info("nsnet_build", "The agent's version and interpreter", registry=r)
        build.info({"version": __version__, "python": platform.python_version()})
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...:
        # read from /proc/self, the agent's own procfs (not --proc, the node's)
        process = _WithChildrenCpu(registry=r)
        # render(): the families that change once per sample, formatted once per sample and
        # format; the others (a dozen series) at each scrape
        self._per_sample = _Collecting((edge_families, address_families))
        self.own = CollectorRegistry()     # the agent's own series: rendered at each scrape
        for collector in (self.sample_duration, self.sample_cpu, self.samples, self.sample_failures,
                          self.over_budget, self.sample_peak_rss, self.namespaces,
                          self.sockets, self.processes, self.pids_denied, self.store_errors,
                          self.events, self.events_dropped, self.namespaces_watched,
                          self.http_unauthorized, build, process):
            self.own.register(collector)
        self._sample_key = (lambda: (version(), samples())) if version and samples else None
        self._rendered_for: object = None       # the sample the formats below are of
        self._rendered: dict[str, bytes] = {}    # content type -> the per-sample families
        self._render_lock = threading.Lock()
        self.per_sample_renders = 0     # how often the per-sample families were formatted

    def render(self, encoder: Callable[[Any], bytes], content_type: str) -> bytes:
        """The whole exposition in one format (prometheus_client's encoder): the edge and
        address families -- thousands of series on a busy node, ~0.4 s of formatting at 16k
        -- formatted once per sample and format, whoever scrapes and however often (two
        Prometheus replicas, a burst of clients); the agent's own series at each scrape."""
        if self._sample_key is None:
            return encoder(self.registry)
        key = self._sample_key()
        with self._render_lock:
            if self._rendered_for != key:          # a new sample: every format anew
                self._rendered_for, self._rendered = key, {}
            text = self._rendered.get(content_type)
            if text is None:
                # OpenMetrics ends the exposition with "# EOF": once, after the live part
                text = encoder(self._per_sample).removesuffix(b"# EOF\n")
                self._rendered[content_type] = text
                self.per_sample_renders += 1
        return text + encoder(self.own)

    def dropped_events(self, total: int) -> None:
        """The watcher's count of lost destroy events so far, as the counter's increase."""
        if total > self._dropped_seen:
            self.events_dropped.inc(total - self._dropped_seen)
            self._dropped_seen = total

    def observe_sample(self, st: Stats, wall: float, cpu: float, over_budget: bool,
                       peak_rss: int = 0) -> None:
        self.samples.inc()
        self.sample_duration.observe(wall)
        self.sample_cpu.observe(cpu)
        if over_budget:
            self.over_budget.inc()
        if peak_rss:
            self.sample_peak_rss.set(peak_rss)
        self.namespaces.set(st.namespaces)
        self.sockets.set(st.sockets)
        self.processes.set(st.processes)
        self.pids_denied.set(st.processes_fd_denied)
