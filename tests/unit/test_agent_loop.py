"""The agent's loop, its HTTP side, its history and the live view, driven in-process by a
fixed scanner (support/memnode.py) instead of /proc: no root, no sockets but the agent's
own HTTP port on 127.0.0.1."""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest
from memnode import HOST_INODE, FixedScanner, MemNode
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nsnet import __version__
from nsnet.agent import serve as serve_module
from nsnet.agent.edges import EdgeKey
from nsnet.agent.serve import VIEWS, Agent, http_server
from nsnet.agent.store import Store
from nsnet.errors import NsnetError
from nsnet.model import Snapshot
from nsnet.options import AgentOptions, SamplingOptions
from nsnet.ownership import user_name
from nsnet.views import socket_order

A, B = 4026532300, 4026532400
SECRET_ARGV = ["/srv/api", "--db-password=hunter2"]
POD, APP = "0f8d2a51-7c3e-4b7a-9a55-2f1c1e0b9d11", "a0" * 32
OUT_8080 = EdgeKey(10002, f"netns:{B}", "outbound", "tcp", "10.1.0.1", 8080)
IN_8080 = EdgeKey(10001, f"netns:{A}", "inbound", "tcp", "10.1.0.2", 8080)
OUT_9090 = EdgeKey(10002, f"netns:{B}", "outbound", "tcp", "10.1.0.1", 9090)
IN_9090 = EdgeKey(10001, f"netns:{A}", "inbound", "tcp", "10.1.0.2", 9090)


def tenants(port: int = 8080, connections: int = 1, *, host_time_wait: bool = False,
            pod: bool = False, warning: str | None = None) -> Snapshot:
    """Tenant 10001's server in A (a secret on its command line) listening on `port`, with
    `connections` accepted from tenant 10002's client in B. host_time_wait: also an unheld
    TIME_WAIT in the host's namespace (an edge of an unknown user); pod: the server is pod
    shop/api's; warning: a line the snapshot's stats carry (as a kubelet error)."""
    node = MemNode()
    if warning:
        node.stats.kubelet_errors.append(warning)
    node.process(1, uid=0, cmdline=["/sbin/init"])
    if pod:
        node.kubelet(POD, "shop", "api", {"api": APP})
        node.process(200, uid=10001, netns=A, cmdline=SECRET_ARGV, container=APP, pod=POD)
    else:
        node.process(200, uid=10001, netns=A, cmdline=SECRET_ARGV)
    node.process(300, uid=10002, netns=B, cmdline=["/bin/client", "--token=s3cret"])
    node.socket("tcp", "LISTEN", f"0.0.0.0:{port}", netns=A, holders=[200])
    for n in range(connections):
        node.connection(f"10.1.0.2:{40000 + n}", f"10.1.0.1:{port}", client_netns=B,
                        server_netns=A, client_holders=[300], server_holders=[200])
    if host_time_wait:
        node.socket("tcp", "TIME_WAIT", "192.168.1.5:51000", "10.0.0.5:3306")
    return node.build()


def test_the_tenant_uids_have_no_name_here():
    """The expectations below show uids 10001 and 10002 as numbers (no passwd entry)."""
    assert user_name(10001) is None and user_name(10002) is None


def options(**kw) -> AgentOptions:
    return AgentOptions(sampling=SamplingOptions(events=False, interval=15.0), node="n1",
                        listen=("127.0.0.1", 0), **kw)


def same(a: Snapshot | None, b: Snapshot) -> bool:
    """Equal snapshots, whatever the order of their sockets (a packed snapshot keeps them in
    the sockets view's)."""
    return a is not None and replace(a, sockets=sorted(a.sockets, key=socket_order)) == \
        replace(b, sockets=sorted(b.sockets, key=socket_order))


def metric(agent: Agent, name: str, **labels: str) -> float | None:
    text = generate_latest(agent.metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return None


# ---------------------------------------------------------------------------- the loop

def test_steps_record_samples_and_accumulate_edges():
    first, second = tenants(8080, 1), tenants(9090, 2)
    scanner = FixedScanner([first, second])
    agent = Agent(options(), io.StringIO(), scanner=scanner)
    status = agent.status()
    assert (status["samples"], status["ready"], status["last_error"]) == (0, False, None)
    assert agent.latest() is None and agent.document("sockets") is None

    wait = agent.step()
    assert 0 < wait <= 15.0
    assert agent.status()["samples"] == 1 and agent.status()["ready"]
    assert same(agent.latest(), first)
    assert {k: s.current for k, s in agent.edge_rows()} == {OUT_8080: 1, IN_8080: 1}

    agent.step()
    rows = dict(agent.edge_rows())
    assert agent.status()["samples"] == 2 and same(agent.latest(), second)
    # 8080's edges stay, not seen any more; 9090's come with their two connections
    assert {k: (s.current, s.samples, s.max_concurrent) for k, s in rows.items()} == {
        OUT_8080: (0, 1, 1), IN_8080: (0, 1, 1), OUT_9090: (2, 1, 2), IN_9090: (2, 1, 2)}
    assert rows[OUT_8080].last_seen <= rows[OUT_9090].first_seen
    assert scanner.takes == 2 and scanner.paces_callable()
    assert metric(agent, "nsnet_samples_total") == 2
    assert metric(agent, "nsnet_sockets") == len(second.sockets)
    assert metric(agent, "nsnet_edge_connections", peer="10.1.0.1", port="9090") == 2
    agent.close()
    assert scanner.closed


def test_edge_rows_are_copies():
    agent = Agent(options(), io.StringIO(), scanner=FixedScanner([tenants()]))
    agent.step()
    [(key, state), *_] = agent.edge_rows()
    state.samples = 999
    assert dict(agent.edge_rows())[key].samples == 1


def test_a_failing_sample_is_counted_and_the_agent_goes_on():
    err = io.StringIO()
    first, third = tenants(8080), tenants(9090)
    scanner = FixedScanner([first, NsnetError("/proc went away \x1b[2J"), third])
    agent = Agent(options(), err, scanner=scanner)
    agent.step()
    assert agent.step() == 15.0                        # failed: wait one interval
    status = agent.status()
    assert status["samples"] == 1 and status["ready"]
    assert status["last_error"] == "/proc went away \x1b[2J"
    assert same(agent.latest(), first)                     # the last good snapshot stays
    assert metric(agent, "nsnet_sample_failures_total") == 1
    assert "nsnet: sample failed: /proc went away \\x1b[2J" in err.getvalue()
    assert "\x1b" not in err.getvalue()
    agent.step()
    status = agent.status()
    assert status["samples"] == 2 and status["last_error"] is None
    assert metric(agent, "nsnet_sample_failures_total") == 1
    assert metric(agent, "nsnet_samples_total") == 2
    assert OUT_9090 in dict(agent.edge_rows())


def test_snapshot_warnings_are_said_once():
    err = io.StringIO()
    line = "cannot read /host/var/log/pods: permission denied \x1b]0;x\x07"
    agent = Agent(options(), err, scanner=FixedScanner([tenants(warning=line)] * 3))
    for _ in range(3):
        agent.step()
    said = err.getvalue()
    assert said.count("nsnet: warning: cannot read /host/var/log/pods") == 1
    assert "\x1b" not in said and "\\x1b]0;x\\x07" in said


def test_the_first_sample_says_what_read_the_node_once():
    err = io.StringIO()
    snap = tenants()
    snap.stats.source, snap.stats.source_reason = "netlink", "auto: \x1b[31mred"
    snap.stats.reader_threads, snap.stats.reader_threads_reason = 2, "2 CPU(s) usable"
    snap.stats.tables_from_proc = ["raw"]
    agent = Agent(options(), err, scanner=FixedScanner([snap] * 3))
    for _ in range(3):
        agent.step()
    lines = [x for x in err.getvalue().splitlines() if x.startswith("nsnet: first sample: ")]
    assert lines == ["nsnet: first sample: source netlink (auto: \\x1b[31mred); raw from "
                     "/proc (this kernel's sock_diag has no handler for them); 2 reader "
                     f"thread(s): 2 CPU(s) usable; {snap.stats.namespaces} namespaces, "
                     f"{snap.stats.sockets} sockets in {snap.stats.elapsed_seconds:.2f} s"]
    agent.close()


class _WeakSnapshot(Snapshot):
    """A Snapshot a weak reference can follow (the model's is slotted)."""


def _weak(snap: Snapshot) -> Snapshot:
    return _WeakSnapshot(**{name: getattr(snap, name) for name in Snapshot.__dataclass_fields__})


def test_an_older_sample_and_its_answers_are_not_kept():
    """A view asked for at one sample is not kept past the next: neither its encoded text
    nor, through it, its snapshot; nor does a scrape keep it."""
    import gc
    import weakref

    first = _weak(tenants(8080))
    gone = weakref.ref(first)
    class Handing(FixedScanner):   # keeps nothing it handed out
        def take(self, pace=None) -> Snapshot:
            self.paces.append(pace)
            return self.items.pop(0)

    # in-process samples: the agent's own memory holds the snapshots (forked samples keep
    # only a packed copy, test_forked_samples_keep_the_snapshot_packed)
    agent = Agent(options(fork_samples=False), io.StringIO(),
                  scanner=Handing([first, tenants(9090)]))
    del first
    agent.step()
    for view in VIEWS:
        assert agent.document_bytes(view) is not None
    generate_latest(agent.metrics.registry)   # nsnet_address_info is built from it too
    agent.step()
    gc.collect()
    assert gone() is None
    built = agent.views_built
    assert agent.document("sockets") is not None and agent.views_built == built + 1
    agent.close()


def test_alive_until_no_sample_ended_for_three_intervals_and_two_minutes(monkeypatch):
    agent = Agent(options(), io.StringIO(), scanner=FixedScanner([tenants()]))
    agent.step()
    assert agent.alive()
    now = time.monotonic()
    monkeypatch.setattr(serve_module.time, "monotonic", lambda: now + 3 * 15.0 + 119)
    assert agent.alive()
    monkeypatch.setattr(serve_module.time, "monotonic", lambda: now + 3 * 15.0 + 121)
    assert not agent.alive()


def cmdlines(doc) -> list:
    """Every "cmdline" value anywhere in a document."""
    if isinstance(doc, dict):
        return [v for k, v in doc.items() if k == "cmdline"] + \
            [c for v in doc.values() for c in cmdlines(v)]
    if isinstance(doc, list):
        return [c for v in doc for c in cmdlines(v)]
    return []


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_documents_blank_command_lines_unless_exposed(view):
    snap = tenants(pod=True)
    blank = Agent(options(), io.StringIO(), scanner=FixedScanner([snap]))
    exposed = Agent(options(expose_cmdlines=True), io.StringIO(), scanner=FixedScanner([snap]))
    blank.step()
    exposed.step()
    shown = cmdlines(exposed.document(view))
    assert SECRET_ARGV in shown
    hidden = cmdlines(blank.document(view))
    assert len(hidden) == len(shown) and all(c == [] for c in hidden)
    assert "hunter2" not in json.dumps(blank.document(view))


# --------------------------------------------------------------------------- over HTTP

@pytest.fixture
def served():
    """An agent (fixed scanner: two samples) serving on 127.0.0.1:<free port>."""
    scanner = FixedScanner([tenants(8080, 2, host_time_wait=True), tenants(9090, 1)])
    agent = Agent(options(), io.StringIO(), scanner=scanner)
    server = http_server(agent)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield agent, f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    agent.close()


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with NO_PROXY.open(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def get_json(url: str) -> tuple[int, dict]:
    status, ctype, body = get(url)
    assert ctype == "application/json"
    return status, json.loads(body)


def test_health_and_readiness(served):
    agent, base = served
    assert get_json(base + "/healthz") == (200, {"status": "ok"})
    status, body = get_json(base + "/readyz")
    assert status == 503 and body["status"] == "no sample yet" and body["samples"] == 0
    assert get_json(base + "/api/v1/snapshot")[0] == 503
    agent.step()
    status, body = get_json(base + "/readyz")
    assert status == 200 and body == {"status": "ready", "samples": 1, "last_error": None,
                                      "history": "memory only (no --db)",
                                      "history_error": None}


def _scrape(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with NO_PROXY.open(request, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def test_metrics_negotiate_openmetrics_and_gzip_as_prometheus_asks(served):
    import gzip

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    agent, base = served
    agent.step()
    _, plain_headers, plain = _scrape(base + "/metrics", {})
    assert plain_headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in plain_headers
    # what Prometheus 2.x sends
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    status, headers, body = _scrape(base + "/metrics", {"Accept": accept,
                                                         "Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n") and int(headers["Content-Length"]) == len(body)
    families = {f.name: f for f in om_parse(text)}
    assert families["nsnet_samples"].type == "counter"
    assert families["nsnet_edge_samples"].type == "counter"      # cumulative: a counter
    assert families["nsnet_destroy_events_dropped"].type == "counter"
    (build,) = families["nsnet_build"].samples
    assert build.name == "nsnet_build_info" and build.labels["version"] == __version__
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= \
        set(families)
    # only the families asked for (federation-style name[])
    _, _, some = _scrape(base + "/metrics?name[]=nsnet_sockets&name[]=nsnet_build_info", {})
    names = {f.name for f in text_string_to_metric_families(some.decode())}
    assert names == {"nsnet_sockets", "nsnet_build_info"}   # the text parser keeps _info


def test_address_info_maps_each_unique_address_to_its_pod_or_the_host():
    from nsnet.model import netns_key
    from nsnet.netparse import Address

    snap = tenants(pod=True)
    addresses = {
        A: [Address("10.1.0.1", 32, None), Address("127.0.0.1", 32, None),
            Address("127.0.0.0", 8, None), Address("fd00::1:1", 128, "eth0"),
            Address("fe80::1", 128, "eth0"), Address("10.1.0.1", 32, None)],
        B: [Address("10.1.0.2", 32, None), Address("::1", 128, "lo")],
        HOST_INODE: [Address("192.168.1.5", 32, None), Address("10.1.0.0", 24, None)],
    }
    for inode, addrs in addresses.items():
        snap.namespaces[netns_key(inode)].addresses = addrs
    agent = Agent(options(), io.StringIO(), scanner=FixedScanner([snap]))
    assert "nsnet_address_info{" not in generate_latest(agent.metrics.registry).decode()
    agent.step()
    text = generate_latest(agent.metrics.registry).decode()
    got = {(s.labels["address"], s.labels["kind"], s.labels["namespace"], s.labels["pod"],
            s.labels["interface"]): s.value
           for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "nsnet_address_info"}
    b_name = snap.namespaces[netns_key(B)].name or netns_key(B)
    assert got == {("10.1.0.1", "pod", "shop", "api", ""): 1.0,
                   ("fd00::1:1", "pod", "shop", "api", "eth0"): 1.0,
                   ("10.1.0.2", "netns", "", "", ""): 1.0,
                   ("192.168.1.5", "host", "", "", ""): 1.0}, got
    netns = {s.labels["address"]: s.labels["netns"]
             for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "nsnet_address_info"}
    assert netns["10.1.0.2"] == b_name and netns["192.168.1.5"] == "host"
    agent.close()


def test_dropped_destroy_events_count_up_from_the_watcher_total():
    agent = Agent(options(), io.StringIO(), scanner=FixedScanner([]))
    for total in (0, 3, 3, 10):
        agent.metrics.dropped_events(total)
    assert metric(agent, "nsnet_destroy_events_dropped_total") == 10
    agent.close()


def test_metrics_endpoint_is_parseable(served):
    agent, base = served
    agent.step()
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("nsnet_samples_total", ())] == 1
    edges = {dict(labels)["peer"] + ":" + dict(labels)["port"] + "/" + dict(labels)["uid"]: v
             for (name, labels), v in samples.items() if name == "nsnet_edge_connections"}
    # open connections only: the unheld TIME_WAIT is closed, counted apart
    assert edges == {"10.1.0.1:8080/10002": 2, "10.1.0.2:8080/10001": 2,
                     "10.0.0.5:3306/-1": 0}
    closed = {dict(labels)["peer"] + "/" + dict(labels)["evidence"]: v
              for (name, labels), v in samples.items()
              if name == "nsnet_edge_recently_closed_connections" and v}
    assert closed == {"10.0.0.5/unknown": 1}


def test_snapshot_api_views_and_errors(served):
    agent, base = served
    agent.step()
    status, doc = get_json(base + "/api/v1/snapshot")
    assert status == 200 and doc["view"] == "sockets"
    assert len(doc["sockets"]) == len(agent.latest().sockets)
    status, doc = get_json(base + "/api/v1/snapshot?view=by-namespace")
    assert status == 200 and doc["view"] == "by-namespace"
    assert [n["inode"] for n in doc["namespaces"]] == [HOST_INODE, A, B]
    procs = [p for n in doc["namespaces"] for p in n["processes"]]
    assert [p["comm"] for p in procs] == ["init", "api", "client"]
    assert all(p["cmdline"] == [] for p in procs)          # blanked: not --expose-cmdlines
    status, body = get_json(base + "/api/v1/snapshot?view=by-user")
    assert status == 200 and [u["uid"] for u in body["users"]] == [0, 10001, 10002]
    status, body = get_json(base + "/api/v1/snapshot?view=nope")
    assert status == 400 and "unknown view" in body["error"]
    status, body = get_json(base + "/nope")
    assert status == 404 and "/metrics" in body["paths"]


def test_dependencies_api(served):
    agent, base = served
    agent.step()
    agent.step()
    status, doc = get_json(base + "/api/v1/dependencies")
    assert status == 200 and doc["view"] == "dependencies" and doc["source"] == "agent"
    got = [(e["uid"], e["direction"], e["peer_addr"], e["port"], e["samples"])
           for e in doc["edges"]]
    assert got == [(10001, "inbound", "10.1.0.2", 8080, 1),
                   (10001, "inbound", "10.1.0.2", 9090, 1),
                   (10002, "outbound", "10.1.0.1", 8080, 1),
                   (10002, "outbound", "10.1.0.1", 9090, 1),
                   (None, "outbound", "10.0.0.5", 3306, 1)]
    status, doc = get_json(base + "/api/v1/dependencies?user=10002&since=1h")
    assert [(e["uid"], e["port"]) for e in doc["edges"]] == [(10002, 8080), (10002, 9090)]
    assert all(e["node"] == "n1" and e["where"] == f"netns:{B}" for e in doc["edges"])
    status, doc = get_json(base + "/api/v1/dependencies?user=root")
    assert status == 200 and doc["edges"] == []
    assert get_json(base + "/api/v1/dependencies?user=no-such-user-nsnet")[0] == 400
    assert get_json(base + "/api/v1/dependencies?since=yesterday")[0] == 400


# ----------------------------------------------------------------------------- history

def test_a_new_agent_reloads_the_edges_from_its_store(tmp_path):
    db = str(tmp_path / "history.db")
    first = Agent(options(db=db), io.StringIO(), store=Store(db),
                  scanner=FixedScanner([tenants(8080, 3), tenants(8080, 1)]))
    first.step()
    first.step()
    before = dict(first.edge_rows())
    first.close()
    assert before[OUT_8080].samples == 2 and before[OUT_8080].max_concurrent == 3

    again = Agent(options(db=db), io.StringIO(), store=Store(db),
                  scanner=FixedScanner([tenants(8080, 1)]))
    loaded = dict(again.edge_rows())          # before any sample of its own
    assert set(loaded) == {OUT_8080, IN_8080}
    for key, state in loaded.items():
        was = before[key]
        assert (state.first_seen, state.last_seen, state.samples, state.max_concurrent) \
            == (was.first_seen, was.last_seen, was.samples, was.max_concurrent)
        assert state.current == 0
    again.step()
    assert dict(again.edge_rows())[OUT_8080].samples == 3
    again.close()
    [row] = [r for r in Store(db).edges(uid=10002)]
    assert (row.node, row.samples, row.max_concurrent) == ("n1", 3, 3)

    elsewhere = AgentOptions(sampling=SamplingOptions(events=False), node="other-node",
                             db=db)
    other = Agent(elsewhere, io.StringIO(), store=Store(db), scanner=FixedScanner([]))
    assert other.edge_rows() == []            # another node's edges are not ours
    other.close()




def test_the_agent_says_a_condition_once_not_each_time_a_count_in_it_changes():
    err = io.StringIO()
    agent = Agent(options(), err, scanner=FixedScanner([]))
    for n in (1, 2, 7, 1):
        agent.say_once(f"no pid attribution for {n} of {40 + n} processes (pid 1 (init), "
                       f"pid {100 + n} (sshd)): /proc/<pid>/fd needs CAP_SYS_PTRACE")
    agent.say_once("1 namespace(s) pinned only by a bind mount not read: needs CAP_SYS_ADMIN")
    agent.say_once("2 namespace(s) pinned only by a bind mount not read: needs CAP_SYS_ADMIN")
    lines = err.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("nsnet: warning: no pid attribution for 1 of 41 processes")
    assert lines[1].startswith("nsnet: warning: 1 namespace(s) pinned")
    agent.close()


def test_healthz_fails_when_every_sample_fails_not_only_when_stuck():
    """Samples that end, but all in failure, are not health: the kubelet must restart an
    agent that can no longer take one (its loop still turns)."""
    agent = Agent(options(), io.StringIO(),
                  scanner=FixedScanner([NsnetError("--proc /proc is gone")], cycle=True))
    server = http_server(agent)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        agent.step()
        assert get_json(base + "/healthz")[0] == 200          # within the grace period
        # ...and once the last good sample is older than 3 intervals + 2 minutes:
        agent._last_good_sample -= 3 * agent.options.sampling.interval + 121
        for _ in range(3):
            agent.step()                                       # failing, but ending
        assert agent.status()["last_error"] == "--proc /proc is gone"
        assert get_json(base + "/healthz") == (503, {"status": "sampler stalled"})
    finally:
        server.shutdown()
        server.server_close()
        agent.close()


@pytest.mark.parametrize("since", ["1e400", "inf", "-1d", "nan"])
def test_the_api_refuses_durations_json_cannot_carry(served, since):
    agent, base = served
    status, body = get_json(f"{base}/api/v1/dependencies?since={since}")
    assert status == 400 and "not a duration" in body["error"]


# ------------------------------------------------------------------ hostile HTTP clients

def limited(**kw) -> tuple[Agent, object, str]:
    agent = Agent(options(**kw), io.StringIO(),
                  scanner=FixedScanner([tenants(8080, 2), tenants(8080, 1)], cycle=True))
    server = http_server(agent)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return agent, server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_burst_of_snapshot_requests_costs_one_build_per_sample():
    agent, server, base = limited()
    try:
        agent.step()
        answers: list[bytes] = []

        def fetch() -> None:
            answers.append(get(base + "/api/v1/snapshot?view=sockets")[2])
        threads = [threading.Thread(target=fetch) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 24 and len(set(answers)) == 1
        assert agent.views_built == 1
        assert json.loads(answers[0])["view"] == "sockets"
        agent.step()                                   # a new sample: built again, once
        get(base + "/api/v1/snapshot?view=sockets")
        get(base + "/api/v1/snapshot?view=sockets")
        assert agent.views_built == 2
    finally:
        server.shutdown()
        server.server_close()
        agent.close()


def test_waiters_of_a_build_are_answered_by_it_when_a_sample_comes_meanwhile():
    # A sample published while an answer is being built (a busy node: builds as slow as the
    # interval) must not make each waiter build the sample it asked for, one after the other:
    # that starved a burst of clients past their timeouts in the hour-long soak.
    agent, server, base = limited()
    build = agent._build
    started = threading.Event()

    def slow_build(published, view):
        if agent.views_built == 0:
            started.set()
            time.sleep(0.3)
            agent.step()                # the next sample comes while the first build runs
        return build(published, view)

    agent._build = slow_build
    try:
        agent.step()
        answers: list[dict] = []

        def fetch() -> None:
            answers.append(json.loads(get(base + "/api/v1/snapshot?view=sockets")[2]))
        first = threading.Thread(target=fetch)
        first.start()
        started.wait(10)
        waiters = [threading.Thread(target=fetch) for _ in range(8)]
        for t in waiters:
            t.start()
        for t in [first, *waiters]:
            t.join(60)
        assert len(answers) == 9 and agent.views_built == 1
        get(base + "/api/v1/snapshot?view=sockets")    # the newer sample: built once more
        get(base + "/api/v1/snapshot?view=sockets")
        assert agent.views_built == 2
    finally:
        server.shutdown()
        server.server_close()
        agent.close()


def test_idle_connections_are_capped_per_client_and_dropped_after_the_timeout():
    import socket as socketlib

    agent, server, base = limited(max_per_client=4, http_timeout=1.0)
    port = server.server_address[1]
    idle = []
    try:
        agent.step()
        for _ in range(4):
            idle.append(socketlib.create_connection(("127.0.0.1", port)))
        time.sleep(0.2)
        extra = socketlib.create_connection(("127.0.0.1", port), timeout=5)
        answer = extra.recv(4096)
        extra.close()
        assert answer.startswith(b"HTTP/1.0 503") and b"too many connections" in answer
        # another client address is still served at once (the kubelet's probes)
        other = socketlib.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0),
                                            timeout=5)
        other.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert other.recv(4096).startswith(b"HTTP/1.0 200")
        other.close()
        # the silent ones are dropped after http_timeout, and the address is served again
        for s in idle:
            s.settimeout(5)
            assert s.recv(4096) == b""
        assert get_json(base + "/healthz")[0] == 200
        assert server.refused >= 1
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()
        agent.close()


def test_a_burst_of_scrapes_renders_two_at_a_time():
    """Each /metrics render formats every edge series holding the GIL: 8 scrapers at once
    are rendered two at a time (the others wait without using the CPU), all answered."""
    from prometheus_client.registry import Collector

    class Slow(Collector):
        def __init__(self) -> None:
            self.now, self.most, self.lock = 0, 0, threading.Lock()

        def collect(self):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.2)
            with self.lock:
                self.now -= 1
            return iter(())

    agent, server, base = limited()
    slow = Slow()
    agent.metrics.own.register(slow)      # what is rendered at each scrape
    try:
        agent.step()
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(get(base + "/metrics")[0]))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert codes == [200] * 8 and slow.most == 2
    finally:
        server.shutdown()
        server.server_close()
        agent.close()


def test_a_slow_reader_that_keeps_reading_gets_its_whole_answer(monkeypatch):
    """http_timeout is the time a client takes no byte, not the time one write takes, nor
    the time until the kernel wakes a blocked sender (when a third of the send buffer is
    free: 64 KiB here, 0.64 s for this reader): a reader taking 2 KiB every 20 ms (at most
    100 KiB/s) gets the whole sockets view against a 0.3 s timeout; one that stops reading
    is dropped."""
    import socket as socketlib

    setup = serve_module._Handler.setup

    def fixed_send_buffer(handler) -> None:   # the kernel grows it to MBs: fixed, smaller
        handler.request.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_SNDBUF, 65536)
        setup(handler)

    monkeypatch.setattr(serve_module._Handler, "setup", fixed_send_buffer)
    agent = Agent(options(http_timeout=0.3), io.StringIO(),
                  scanner=FixedScanner([tenants(8080, 200)], cycle=True))
    server = http_server(agent)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    port = server.server_address[1]

    def reader() -> socketlib.socket:
        s = socketlib.socket()
        s.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /api/v1/snapshot?view=sockets HTTP/1.0\r\n\r\n")
        s.settimeout(10)
        return s

    try:
        agent.step()
        slow, got = reader(), b""
        while chunk := slow.recv(2048):
            got += chunk
            time.sleep(0.02)
        slow.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert length > 200_000 and len(body) == length
        assert len(json.loads(body)["sockets"]) == 401
        stalled = reader()
        first = stalled.recv(2048)
        time.sleep(1.5)        # reads nothing more: dropped after 0.3 s
        rest = b""
        while chunk := stalled.recv(65536):
            rest += chunk
        stalled.close()
        assert first.startswith(b"HTTP/1.0 200") and len(first + rest) < length
    finally:
        server.shutdown()
        server.server_close()
        agent.close()


def test_a_request_trickled_a_byte_at_a_time_is_cut_at_the_header_deadline():
    """Each byte comes well within http_timeout; the whole request never does: the
    connection is closed once header_deadline has passed, and the agent answers others."""
    import socket as socketlib

    agent, server, base = limited(http_timeout=5.0, http_header_deadline=1.0)
    port = server.server_address[1]
    agent.step()
    slow = socketlib.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    try:
        closed_after = None
        for byte in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 200:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            slow.settimeout(0.2)
            try:
                if slow.recv(4096) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socketlib.timeout:
                pass
        # the deadline runs from the accept, a moment before `started`
        assert closed_after is not None and 0.9 <= closed_after < 4.0, closed_after
        assert server.timed_out == 1
        assert get_json(base + "/healthz")[0] == 200
    finally:
        slow.close()
        server.shutdown()
        server.server_close()
        agent.close()


def test_when_full_the_longest_waiting_connection_makes_room_for_a_probe():
    """Idle and slow clients from many addresses fill every connection: a probe that sends
    its request at once is still answered, the connections that waited longest (idle, or
    still sending their headers) are closed to make room -- never one being answered."""
    import socket as socketlib

    agent, server, base = limited(max_connections=6, max_per_client=3, http_timeout=30.0)
    port = server.server_address[1]
    held = []

    def settle(waiting: int, open_: int = 6) -> None:   # the server's threads caught up
        deadline = time.monotonic() + 30
        while len(server.waiting) != waiting or sum(server.open.values()) != open_:
            assert time.monotonic() < deadline, (server.waiting, server.open)
            time.sleep(0.02)

    try:
        agent.step()
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(3):
                held.append(socketlib.create_connection(("127.0.0.1", port), timeout=5,
                                                        source_address=(source, 0)))
                settle(len(held)) if len(held) == 6 else time.sleep(0.05)
        held[1].sendall(b"GET /healthz HTTP/1.0\r\nX-Slow: ")   # headers never finished
        time.sleep(0.1)
        settle(6)
        for evicted in range(2):
            probe = socketlib.create_connection(("127.0.0.1", port), timeout=10)
            probe.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert probe.recv(4096).startswith(b"HTTP/1.0 200")
            probe.close()
            # the one that waited longest made room: first an idle one, then the slow one
            held[evicted].settimeout(10)
            assert held[evicted].recv(4096) == b""
            settle(5, 5)   # the probe's and the evicted connection's threads are done
            held.append(socketlib.create_connection(("127.0.0.1", port), timeout=5,
                                                    source_address=("127.0.0.4", 0)))
            settle(6)   # full again
        for s in held[2:]:   # the others still wait
            s.settimeout(0.3)
            with pytest.raises(socketlib.timeout):
                s.recv(4096)
        assert server.evicted == 2 and server.refused == 0
    finally:
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()
        agent.close()


def test_a_client_that_resets_is_not_a_traceback(capfd):
    import socket as socketlib
    import struct

    agent, server, base = limited()
    port = server.server_address[1]
    try:
        agent.step()
        for _ in range(20):
            s = socketlib.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /api/v1/snapshot?view=sockets HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()                                  # RST before the answer is read
        time.sleep(0.5)
        assert get_json(base + "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        agent.close()
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Exception" not in err


CLIENT = """
import sys, time, urllib.request
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while time.monotonic() < until:
    try:
        opener.open(url, timeout=30).read()
    except OSError:
        pass
"""


class WalkingScanner:
    """A Scanner whose snapshot takes `seconds` of wall time, calling the pacer as the real
    walk does every few processes, and little CPU: what the HTTP threads use meanwhile is
    all that a wrong budget could charge to it."""

    def __init__(self, snaps: list[Snapshot], seconds: float):
        self.snaps, self.seconds, self.n = snaps, seconds, 0

    def kept(self) -> None:
        return None

    def take(self, pace=None) -> Snapshot:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            if pace is not None:
                pace()
            time.sleep(0.02)
        self.n += 1
        return self.snaps[self.n % len(self.snaps)]

    def close(self) -> None:
        pass


def test_a_burst_of_clients_is_not_charged_to_the_sampling_budget():
    """Four client processes scrape /metrics (thousands of series: real CPU in the agent's
    HTTP threads) while the agent takes samples that last a second each: the samples' CPU,
    the pacing and the wait the budget imposes are the sampler's own, not the clients'
    (charged to the sampler, a 5% budget would make the next sample wait ~20 s)."""
    agent = Agent(AgentOptions(sampling=SamplingOptions(events=False, interval=2.0,
                                                        max_cpu=0.05),
                               node="n1", listen=("127.0.0.1", 0), max_series=100_000),
                  io.StringIO(), scanner=WalkingScanner([tenants(8080, 2), tenants(9090, 1)],
                                                        1.0))
    server = http_server(agent)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    clients = []
    try:
        agent.step()
        with agent.lock:             # thousands of edges to render at each scrape
            template = next(iter(agent.book.edges.values()))
            for n in range(1500):
                key = EdgeKey(20000 + n % 50, "netns:4026532300", "outbound", "tcp",
                              f"10.7.{n // 250}.{n % 250}", 443)
                agent.book.edges[key] = type(template)(1.0, 2.0, samples=1, max_concurrent=1,
                                                        current=1)
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, base + "/metrics", "8"])
                   for _ in range(4)]
        time.sleep(0.5)
        process0 = time.process_time()
        samples = [agent.sampler.sample() for _ in range(3)]
        used = time.process_time() - process0
        own = sum(s.cpu for s in samples)
        assert used > 0.5, used                          # the clients did cost CPU here...
        assert own < 0.2 * used, (own, used)              # ...not charged to the samples,
        for s in samples:
            assert s.wall < 1.5, s.wall                  # nor paced for,
            assert agent.sampler.wait_after(s) <= agent.options.sampling.interval  # nor waited
        assert agent.http_cpu() > 0
    finally:
        for c in clients:
            c.kill()
            c.wait()
        server.shutdown()
        server.server_close()
        agent.close()


# ------------------------------------------------------- samples taken in a child process

def client_gone(port: int = 8080) -> Snapshot:
    """The sample after tenants(port): tenant 10002's client has closed its connection (an
    unheld TIME_WAIT in B, where tenant 10003 now runs): only the agent's memory of the
    earlier sample can say whose connection that was."""
    node = MemNode()
    node.process(1, uid=0, cmdline=["/sbin/init"])
    node.process(200, uid=10001, netns=A, cmdline=SECRET_ARGV)
    node.process(301, uid=10003, netns=B, cmdline=["/bin/other"])
    node.socket("tcp", "LISTEN", f"0.0.0.0:{port}", netns=A, holders=[200])
    node.socket("tcp", "TIME_WAIT", "10.1.0.2:40000", f"10.1.0.1:{port}", netns=B)
    return node.build()


def test_forked_samples_carry_the_edges_memory_from_one_child_to_the_next():
    """The memory of the last samples is kept packed by the agent and unpacked by each
    sampling child: the same edges as samples taken in-process."""
    books = {}
    for forked in (False, True):
        agent = Agent(options(fork_samples=forked), io.StringIO(),
                      scanner=FixedScanner([tenants(), client_gone()]))
        agent.step()
        agent.step()
        books[forked] = {k: (s.closed, s.evidence) for k, s in agent.book.edges.items()}
        agent.close()
    assert books[True] == books[False]
    # the TIME_WAIT is tenant 10002's, as the first sample saw it held -- not a guess at
    # the tenant who runs in B now
    assert books[True][OUT_8080][0] == 1
    assert not any(key.uid == 10003 for key in books[True])


def test_forked_samples_keep_the_snapshot_packed():
    """What the agent keeps of a forked sample: counts, addresses and the packed snapshot --
    not its objects; answers built from it (in a child) are the in-process ones, gzipped
    to a client that accepts gzip and plain to one that does not."""
    snap = tenants(pod=True)
    forked = Agent(options(), io.StringIO(), scanner=FixedScanner([snap]))
    local = Agent(options(fork_samples=False), io.StringIO(), scanner=FixedScanner([snap]))
    forked.step()
    local.step()
    published = forked.published()
    assert published is not None and published.snap is None
    assert 0 < published.packed_size() < 4096
    assert published.stats == snap.stats and published.addresses == local.published().addresses
    assert same(forked.latest(), snap)
    for view in VIEWS:
        data = forked.document_bytes(view)
        assert data is not None and data.gzipped
        plain = b"".join(local.document_bytes(view).pieces)
        assert b"".join(data.plain_pieces(size=7)) == plain and data.plain_length == len(plain)
        assert gzip.decompress(b"".join(data.pieces)) == plain
    assert metric(forked, "nsnet_sample_peak_resident_memory_bytes") > 1 << 20
    assert metric(local, "nsnet_sample_peak_resident_memory_bytes") == 0
    forked.close()
    local.close()


def test_the_api_sends_a_gzipped_answer_as_the_client_accepts(served):
    agent, base = served
    agent.step()
    plain = urllib.request.urlopen(base + "/api/v1/snapshot?view=by-user", timeout=30)
    body = plain.read()
    assert plain.headers.get("Content-Encoding") is None
    assert int(plain.headers["Content-Length"]) == len(body)
    request = urllib.request.Request(base + "/api/v1/snapshot?view=by-user",
                                     headers={"Accept-Encoding": "gzip"})
    zipped = urllib.request.urlopen(request, timeout=30)
    data = zipped.read()
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert int(zipped.headers["Content-Length"]) == len(data)
    assert gzip.decompress(data) == body and json.loads(body)["view"] == "by-user"


def test_a_sampling_child_that_dies_is_a_failed_sample_and_the_agent_goes_on():
    class Dying(FixedScanner):
        def take(self, pace=None) -> Snapshot:
            snap = super().take(pace)
            if self.takes == 1:
                os.kill(os.getpid(), signal.SIGKILL)     # as the OOM killer would
            return snap

    err = io.StringIO()
    agent = Agent(options(), err, scanner=Dying([tenants(), tenants(9090)]))
    agent.step()
    assert agent.status()["samples"] == 0
    assert "killed by SIGKILL (out of memory?)" in agent.status()["last_error"]
    assert metric(agent, "nsnet_sample_failures_total") == 1
    agent.step()
    assert agent.status()["samples"] == 1 and same(agent.latest(), tenants(9090))
    agent.close()


def test_the_agents_cpu_counts_its_sampling_children():
    """process_cpu_seconds_total: the agent's own CPU and its children's (the samples)."""
    agent = Agent(options(), io.StringIO(), scanner=FixedScanner([tenants()] * 3))
    for _ in range(3):
        agent.step()
    before = os.times()
    total = metric(agent, "process_cpu_seconds_total")
    after = os.times()
    children = after.children_user + after.children_system
    assert children > 0 and before.children_user + before.children_system == children
    assert before.user + before.system + children - 0.02 <= total
    assert total <= after.user + after.system + children + 0.02
    agent.close()


def test_sock_diag_sockets_lost_on_the_way_to_a_full_fd_table_are_said_not_fatal():
    """A sampling child hands the agent the per-namespace sockets it opened; when the agent's
    fd table is full the kernel drops some (MSG_CTRUNC): the sample stands, the agent keeps
    none of that batch (it cannot tell which is which) and says so once."""
    import resource
    import socket

    from nsnet.sources import DiagSockets

    class Opening(FixedScanner):
        def __init__(self, items):
            super().__init__(items)
            self.pool = DiagSockets(limit=10_000)

        def kept(self) -> DiagSockets:
            return self.pool

        def take(self, pace=None) -> Snapshot:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # the child's own room
            for i in range(60):
                near, far = socket.socketpair()
                far.close()
                self.pool.put(4026540000 + i, near)
            return super().take(pace)

    err = io.StringIO()
    scanner = Opening([tenants()] * 2)
    agent = Agent(options(), err, scanner=scanner)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (before + 25, hard))
    try:
        agent.step()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert agent.status()["samples"] == 1 and len(scanner.pool) == 0
    assert "were lost on the way to the agent (out of file descriptors" in err.getvalue()
    assert len(os.listdir("/proc/self/fd")) == before
    agent.step()             # room again: the next child's sockets are kept
    assert len(scanner.pool) == 60 and err.getvalue().count("lost on the way") == 1
    agent.close()


def test_the_per_sample_series_are_formatted_once_per_sample_and_format():
    """/metrics: the edge and address families are formatted once per sample and format
    (a burst of scrapes, two Prometheus replicas), the agent's own series at each scrape --
    the same exposition as the whole registry's, in text and OpenMetrics."""
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    agent = Agent(options(), io.StringIO(),
                  scanner=FixedScanner([tenants(8080, 2, host_time_wait=True, pod=True),
                                        tenants(9090)]))
    agent.step()
    metrics = agent.metrics
    steady = ("process_", "nsnet_http_")     # values that move between two renders

    def families(text: str, parse) -> dict:
        return {f.name: sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                               for s in f.samples if not s.name.startswith(steady))
                for f in parse(text)}

    for accept, parse in (("text/plain", text_string_to_metric_families),
                          ("application/openmetrics-text; version=1.0.0", om_parse)):
        encoder, content_type = choose_encoder(accept)
        before = metrics.per_sample_renders
        first = metrics.render(encoder, content_type)
        again = metrics.render(encoder, content_type)
        assert metrics.per_sample_renders == before + 1
        whole = encoder(metrics.registry).decode()
        assert families(first.decode(), parse) == families(whole, parse)
        assert families(again.decode(), parse) == families(whole, parse)
        assert "nsnet_edge_connections" in families(whole, parse)
        if "openmetrics" in content_type:
            assert first.decode().count("# EOF") == 1 and first.endswith(b"# EOF\n")
    agent.step()                                 # a new sample: formatted anew
    encoder, content_type = choose_encoder("text/plain")
    before = metrics.per_sample_renders
    text = metrics.render(encoder, content_type).decode()
    assert metrics.per_sample_renders == before + 1 and 'port="9090"' in text
    agent.close()


def test_an_answer_whose_child_fails_is_a_503_with_its_reason(served, monkeypatch):
    """The child that builds an answer is killed (the OOM killer): the client gets a 503
    saying so, the agent goes on, and the next request builds it again."""
    agent, base = served
    agent.step()
    real = serve_module.encode

    def dying(doc, piece_size=1 << 16, gzipped=False):
        if gzipped:                      # in the answer's child
            os.kill(os.getpid(), signal.SIGKILL)
        return real(doc, piece_size, gzipped)

    monkeypatch.setattr(serve_module, "encode", dying)
    with pytest.raises(urllib.error.HTTPError) as failed:
        NO_PROXY.open(base + "/api/v1/snapshot?view=by-user", timeout=30)
    assert failed.value.code == 503
    assert json.loads(failed.value.read()) == {
        "error": "the answer process was killed by SIGKILL (out of memory?)"}
    monkeypatch.setattr(serve_module, "encode", real)
    assert json.loads(NO_PROXY.open(base + "/api/v1/snapshot?view=by-user",
                                    timeout=30).read())["view"] == "by-user"
