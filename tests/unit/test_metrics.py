"""The agent's Prometheus metrics (nsnet.agent.metrics): the edge series and their labels,
the cardinality cap, and scrapes that race the sampler, parsed back from the text format."""
from __future__ import annotations

import io
import ipaddress
import re
import sys
import threading
import time
from collections import Counter

import pytest
from memnode import FixedScanner, MemNode
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nsnet.agent.edges import EdgeKey, EdgeState, observe
from nsnet.agent.metrics import OVERFLOW, AgentMetrics
from nsnet.agent.serve import Agent
from nsnet.model import NO_SERVICES, Rule, ServiceMap, Snapshot
from nsnet.options import AgentOptions, SamplingOptions
from nsnet.ownership import user_name

POD = "0f8d2a51-7c3e-4b7a-9a55-2f1c1e0b9d11"
EDGE_FAMILIES = ("nsnet_edge_connections", "nsnet_edge_recently_closed_connections",
                 "nsnet_edge_max_concurrent_connections",
                 "nsnet_edge_last_seen_timestamp_seconds", "nsnet_edge_samples_total",
                 "nsnet_edge_connections_opened_total", "nsnet_edge_connections_closed_total")


def scrape(registry) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label items: value}, from the exposition text."""
    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """The exposition text through prometheus_client's own parser."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series = out.setdefault(sample.name, {})
            labels = tuple(sorted(sample.labels.items()))
            assert labels not in series, f"duplicate series {sample.name}{labels}"
            series[labels] = sample.value
    return out


LINE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def quick_parse(text: str) -> dict[str, dict[tuple, float]]:
    """The same as parse(), fast enough for a tight loop (prometheus_client's parser takes
    ~0.2 ms a line); the race test checks once that both agree. Our label values hold no
    escapes."""
    out: dict[str, dict[tuple, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.fullmatch(line)
        assert m, line
        name, body, value = m.groups()
        labels = tuple(sorted(LABEL.findall(body or "")))
        series = out.setdefault(name, {})
        assert labels not in series, f"duplicate series {name}{labels}"
        series[labels] = float(value)
    return out


def labels(**kw: str) -> tuple:
    base = {"node": "n1", "uid": "", "user": "", "pod": "", "namespace": "", "netns": "",
            "direction": "", "proto": "", "peer": "", "port": "", "service": "",
            "evidence": "unknown", "direction_inferred": "false", "via": ""}
    if kw.get("evidence") == "mixed":      # a folded series: mixed in both
        base["direction_inferred"] = "mixed"
    base.update(kw)
    if "user" not in kw and base["uid"] not in ("", "-1"):
        base["user"] = base["uid"]   # no passwd entry: the uid is the user label
    return tuple(sorted(base.items()))


def test_edge_series_and_labels():
    # the tenants' uids have no passwd entry here: their user label is the uid (so that
    # `sum by (user)` keeps the tenants apart)
    assert user_name(10001) is None and user_name(10002) is None
    services = ServiceMap([Rule("api", ipaddress.ip_network("10.1.0.1/32"), 8080),
                           Rule("clients", ipaddress.ip_network("10.1.0.0/16"), None)])
    rows = [
        (EdgeKey(10002, "pod:shop/cart", "outbound", "tcp", "10.1.0.1", 8080),
         EdgeState(100.0, 400.0, samples=4, max_concurrent=6, current=2, closed=5,
                   evidence="holder", opened_total=30, closed_total=28)),
        (EdgeKey(0, f"pod:{POD}", "outbound", "udp", "8.8.8.8", 53),
         EdgeState(100.0, 300.0, samples=2, max_concurrent=1, current=0,
                   evidence="namespace-owners")),
        (EdgeKey(-1, "host", "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(200.0, 200.0, samples=1, max_concurrent=1, current=1)),
        (EdgeKey(10001, "netns:4026532300", "inbound", "tcp", "10.1.0.2", 8080),
         EdgeState(100.0, 400.0, samples=4, max_concurrent=3, current=3,
                   evidence="listener")),
    ]
    got = scrape(AgentMetrics("n1", lambda: rows, services, 100).registry)
    cart = labels(uid="10002", pod="cart", namespace="shop", direction="outbound",
                  proto="tcp", peer="10.1.0.1", port="8080", service="api", evidence="holder")
    # a guess says so in its label
    static = labels(uid="0", user="root", pod=POD, direction="outbound", proto="udp",
                    peer="8.8.8.8", port="53", evidence="namespace-owners")
    unknown = labels(uid="-1", netns="host", direction="outbound", proto="tcp",
                     peer="10.0.0.5", port="3306")
    # inbound: our port; no service name from the client's address
    inbound = labels(uid="10001", netns="netns:4026532300", direction="inbound", proto="tcp",
                     peer="10.1.0.2", port="8080", evidence="listener")
    assert got["nsnet_edge_connections"] == {cart: 2, static: 0, unknown: 1, inbound: 3}
    assert got["nsnet_edge_recently_closed_connections"] == \
        {cart: 5, static: 0, unknown: 0, inbound: 0}
    assert got["nsnet_edge_connections_opened_total"] == \
        {cart: 30, static: 0, unknown: 0, inbound: 0}
    assert got["nsnet_edge_connections_closed_total"] == \
        {cart: 28, static: 0, unknown: 0, inbound: 0}
    assert got["nsnet_edge_max_concurrent_connections"] == \
        {cart: 6, static: 1, unknown: 1, inbound: 3}
    assert got["nsnet_edge_last_seen_timestamp_seconds"] == \
        {cart: 400, static: 300, unknown: 200, inbound: 400}
    assert got["nsnet_edge_samples_total"] == {cart: 4, static: 2, unknown: 1, inbound: 4}
    assert got["nsnet_edge_series_dropped"] == {(): 0}
    # no traffic measured (the proc source, --no-traffic): no traffic series at all
    assert not {"nsnet_edge_sent_bytes_total", "nsnet_edge_rtt_seconds"} & set(got)


def test_traffic_series_only_for_measured_edges_and_rtt_only_when_open():
    measured = EdgeKey(10002, "pod:shop/cart", "outbound", "tcp", "10.1.0.1", 8080)
    closed = EdgeKey(10002, "pod:shop/cart", "outbound", "tcp", "10.1.0.7", 5432)
    unmeasured = EdgeKey(10002, "pod:shop/cart", "outbound", "udp", "8.8.8.8", 53)
    rows = [
        (measured, EdgeState(100.0, 400.0, samples=4, max_concurrent=2, current=2,
                             evidence="holder", sent_total=123456, received_total=789,
                             retransmits_total=3, rtt_us=1500.0, measured=True)),
        (closed, EdgeState(100.0, 400.0, samples=4, max_concurrent=1, evidence="holder",
                           sent_total=10, received_total=20, measured=True)),
        (unmeasured, EdgeState(100.0, 400.0, samples=4, max_concurrent=1, current=1,
                               evidence="holder")),
    ]
    got = scrape(AgentMetrics("n1", lambda: rows, NO_SERVICES, 100).registry)
    common = {"uid": "10002", "pod": "cart", "namespace": "shop", "direction": "outbound",
              "evidence": "holder"}
    m = labels(**common, proto="tcp", peer="10.1.0.1", port="8080")
    c = labels(**common, proto="tcp", peer="10.1.0.7", port="5432")
    assert got["nsnet_edge_sent_bytes_total"] == {m: 123456, c: 10}
    assert got["nsnet_edge_received_bytes_total"] == {m: 789, c: 20}
    assert got["nsnet_edge_retransmitted_segments_total"] == {m: 3, c: 0}
    assert got["nsnet_edge_rtt_seconds"] == {m: 0.0015}


def test_cardinality_cap_folds_the_stalest_per_user_and_direction():
    def edge(uid, direction, port, last, cur, mx, n):
        return (EdgeKey(uid, "netns:4026532300", direction, "tcp", "10.1.0.9", port),
                EdgeState(last - 50, last, samples=n, max_concurrent=mx, current=cur))
    rows = [edge(10002, "outbound", 1001, 100.0, 1, 3, 2),
            edge(10002, "outbound", 1002, 200.0, 2, 5, 4),
            edge(10001, "inbound", 1003, 300.0, 0, 1, 1),
            edge(10002, "outbound", 1004, 400.0, 1, 1, 1),
            edge(-1, "outbound", 1005, 500.0, 1, 1, 1)]
    got = scrape(AgentMetrics("n1", lambda: rows, NO_SERVICES, 2).registry)
    kept = {labels(uid=u, netns="netns:4026532300", direction="outbound", proto="tcp",
                   peer="10.1.0.9", port=p) for u, p in (("10002", "1004"), ("-1", "1005"))}
    folded_out = labels(uid="10002", direction="outbound", peer=OVERFLOW, evidence="mixed")
    folded_in = labels(uid="10001", direction="inbound", peer=OVERFLOW, evidence="mixed")
    for family in EDGE_FAMILIES:
        assert set(got[family]) == kept | {folded_out, folded_in}, family
    # summed: current and samples; the most of max_concurrent and last_seen
    assert got["nsnet_edge_connections"][folded_out] == 1 + 2
    assert got["nsnet_edge_samples_total"][folded_out] == 2 + 4
    assert got["nsnet_edge_max_concurrent_connections"][folded_out] == 5
    assert got["nsnet_edge_last_seen_timestamp_seconds"][folded_out] == 200
    assert got["nsnet_edge_connections"][folded_in] == 0
    assert got["nsnet_edge_series_dropped"] == {(): 3}


def test_sample_health_metrics():
    node = MemNode()
    node.process(200, uid=10001, netns=4026532300)
    node.process(201, uid=10001, netns=4026532300, fds_readable=False)
    node.socket("tcp", "LISTEN", "0.0.0.0:80", netns=4026532300, holders=[200])
    node.stats.processes_fd_denied = 1
    snap = node.build()
    metrics = AgentMetrics("n1", lambda: [], NO_SERVICES, 10)
    metrics.observe_sample(snap.stats, wall=0.3, cpu=0.02, over_budget=True)
    metrics.observe_sample(snap.stats, wall=0.1, cpu=0.01, over_budget=False)
    got = scrape(metrics.registry)
    assert got["nsnet_samples_total"] == {(): 2}
    assert got["nsnet_samples_over_budget_total"] == {(): 1}
    assert got["nsnet_sample_failures_total"] == {(): 0}
    assert got["nsnet_sample_duration_seconds_count"] == {(): 2}
    assert got["nsnet_sample_duration_seconds_sum"][()] == pytest.approx(0.4)
    assert got["nsnet_namespaces"] == {(): 2}            # A and the host's
    assert got["nsnet_sockets"] == {(): 1}
    assert got["nsnet_processes"] == {(): 2}
    assert got["nsnet_processes_fd_denied"] == {(): 1}
    assert got["nsnet_edge_series_dropped"] == {(): 0}
    assert "nsnet_edge_connections" not in got          # no edges, no series


# ------------------------------------------------------------------------ concurrency

B = 4026532400
WINDOWS = 6          # distinct snapshots, cycled
EDGES = 30           # edges per snapshot
SLIDE = 10           # ports the window moves by: some edges persist, some go
SCRAPES = 25


def window_snapshot(i: int) -> tuple[Snapshot, dict[tuple[str, str], int]]:
    """Tenant 10002's client in B with `count` connections to each of EDGES external
    services; the window of ports slides with i. Returns the snapshot and, per (peer,
    port), the connections each edge has in it."""
    node = MemNode()
    node.process(300, uid=10002, netns=B)
    count = 1 + i % 3
    expected = {}
    for j in range(EDGES):
        port = 6000 + SLIDE * i + j
        peer = f"203.0.113.{port % 50}"
        for c in range(count):
            node.socket("tcp", "ESTABLISHED", f"10.1.0.2:{20000 + j * 4 + c}",
                        f"{peer}:{port}", netns=B, holders=[300])
        expected[(peer, str(port))] = count
    return node.build(), expected


@pytest.fixture
def fast_switching():
    """Make the interpreter switch threads far more often, so that a race shows."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def key_of(labels: tuple) -> tuple[str, str]:
    d = dict(labels)
    return d["peer"], d["port"]


def consistent_window(text: str, allowed: list[dict], *, official: bool) -> int:
    """Check one scrape; returns which of `allowed` (the books of each window) it showed.
    official: also parse it with prometheus_client's parser and compare."""
    got = quick_parse(text)
    if official:
        assert got == parse(text)
    series = [got.get(f, {}) for f in EDGE_FAMILIES]
    # every edge has all its series, with identical label sets
    assert all(set(s) == set(series[0]) for s in series), "families disagree"
    assert got["nsnet_edge_series_dropped"] == {(): 0}
    connections, _, max_conc, _, samples, _, _ = series
    assert all(samples[k] >= 1 and max_conc[k] >= connections[k] for k in connections)
    # the book of exactly one sample: the edges it saw, with its counts
    current = {key_of(k): v for k, v in connections.items() if v > 0}
    assert current in allowed, "a scrape saw a half-updated edge book"
    return allowed.index(current)


@pytest.mark.parametrize("writer", ["agent-step", "book-under-lock"])
def test_scrapes_racing_the_sampler_are_always_consistent(fast_switching, writer):
    """A writer thread changes the agent's edge book (by Agent.step with a cycling fixed
    scanner, or by updating the book under agent.lock back to back, which keeps it inside
    the update almost all the time) while this thread scrapes. Every scrape must show the
    book of exactly one sample: the edge series with the same label sets, and the
    edges with connections > 0 exactly those of one window, with its counts."""
    built = [window_snapshot(i) for i in range(WINDOWS)]
    scanner = FixedScanner([snap for snap, _ in built], cycle=True)
    agent = Agent(AgentOptions(sampling=SamplingOptions(events=False), node="n1",
                               max_series=100_000), io.StringIO(), scanner=scanner)
    allowed = [{}] + [expected for _, expected in built]
    observed = [observe(snap) for snap, _ in built]
    stop, errors, updates = threading.Event(), [], Counter()

    def run():
        try:
            n = 0
            while not stop.is_set() or n < 2 * WINDOWS:
                if writer == "agent-step":
                    agent.step()
                else:
                    with agent.lock:
                        agent.book.update(observed[n % WINDOWS], float(n))
                    time.sleep(0)   # let a waiting scrape take the lock
                updates[n % WINDOWS] += 1
                n += 1
        except BaseException as exc:   # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="test-sampler")
    seen_windows = set()
    thread.start()
    try:
        for n in range(SCRAPES):
            text = generate_latest(agent.metrics.registry).decode()
            seen_windows.add(consistent_window(text, allowed, official=n == SCRAPES // 2))
    finally:
        stop.set()
        thread.join(timeout=60)
        agent.close()
    assert not errors, errors
    assert len(seen_windows - {0}) >= 2      # the scrapes did interleave with the writer
    if writer == "agent-step":
        assert agent.status()["samples"] == scanner.takes == sum(updates.values())
        assert agent.status()["last_error"] is None
    # in the end, every edge was counted once per update that saw it
    expected_samples: Counter = Counter()
    for i, (_, expected) in enumerate(built):
        for k in expected:
            expected_samples[k] += updates[i]
    final = {key_of(k): v
             for k, v in scrape(agent.metrics.registry)["nsnet_edge_samples_total"].items()}
    assert final == dict(expected_samples)


def test_the_cap_holds_across_uids():
    """A tenant's user namespace gives it 65,536 uids: 3,000 of them, one edge each, with a cap
    of 100 series, must not become 3,000 overflow series."""
    rows = [(EdgeKey(200000 + u, "netns:4026532300", "outbound", "tcp", "10.1.0.9", 443),
             EdgeState(1.0, 1000.0 - u * 0.1, samples=1, max_concurrent=1, current=1))
            for u in range(3000)]
    got = scrape(AgentMetrics("n1", lambda: rows, NO_SERVICES, 100).registry)
    series = got["nsnet_edge_connections"]
    assert len(series) <= 100 + 10 + 1
    everyone = labels(uid="", user=OVERFLOW, direction="outbound", peer=OVERFLOW,
                      evidence="mixed")
    assert everyone in series
    assert sum(series.values()) == 3000            # nothing lost: every connection counted
    assert got["nsnet_edge_series_dropped"] == {(): 2900}


def test_edge_series_are_built_once_per_change_of_the_edges():
    """A burst of scrapes costs one copy of the edges (taken under the agent's lock, which
    the sampler waits on) and one build, not one per scrape."""
    from prometheus_client import generate_latest

    from nsnet.agent.edges import EdgeBook, EdgeKey, Seen
    from nsnet.agent.metrics import AgentMetrics
    from nsnet.model import NO_SERVICES

    book = EdgeBook(retention=3600.0)
    copies = []

    def rows():
        copies.append(1)
        return list(book.edges.items())

    metrics = AgentMetrics("n", rows, NO_SERVICES, 100, version=lambda: book.version)
    book.update({EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.5", 5432): Seen(opened=1)},
                100.0)
    def edge_lines() -> bytes:   # the process_* series move between scrapes; the edges not
        return b"".join(line for line in generate_latest(metrics.registry).splitlines(True)
                        if line.startswith(b"nsnet_edge"))

    first = [edge_lines() for _ in range(20)]
    assert len(copies) == 1 and len(set(first)) == 1 and b'port="5432"' in first[0]
    book.update({EdgeKey(1000, "host", "outbound", "tcp", "10.0.0.6", 6379): Seen(opened=1)},
                101.0)
    assert b'port="6379"' in generate_latest(metrics.registry) and len(copies) == 2
