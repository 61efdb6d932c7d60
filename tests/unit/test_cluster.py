"""nsnet cluster: the join of three nodes' series into one workload map, its renderers, the
Prometheus client against answers it must refuse, and the CLI's errors. The answers are the
JSON documents Prometheus' /api/v1/query gives (captured shape: status, data.resultType,
data.result[].metric / .value)."""
from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nsnet import cluster
from nsnet.cli import main
from nsnet.cluster import Prometheus, PrometheusError, build_map, parse_vector
from nsnet.errors import NsnetError
from nsnet.services import parse_services

REPO = Path(__file__).resolve().parents[2]
NOW = 1_760_000_000.0

# Three nodes: pods 10.244.<n>.x, hosts 192.168.0.1<n>
HOSTS = {"n1": "192.168.0.11", "n2": "192.168.0.12", "n3": "192.168.0.13"}
WEB = ("n1", "shop", "web-7d4b9c8f6d-x2x9k", "10.244.1.10")      # kube_pod_owner: Deployment
DB = ("n2", "shop", "db-0", "10.244.2.20")                       # kube_pod_owner: StatefulSet
API = ("n2", "shop", "api-6b8f7d9c5e-q8w7z", "10.244.2.40")       # RS without its owner row
CACHE = ("n3", "shop", "cache-5f6d8b7c9d-abcde", "10.244.3.30")   # no kube_pod_owner: a guess
SERVICES = parse_services('[[service]]\nname = "shared-db"\nmatch = ["10.0.0.5:3306"]\n')


def vector(rows: list[tuple[dict, float]]) -> bytes:
    """An /api/v1/query answer, as Prometheus writes it."""
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [NOW, repr(value) if value == value else "NaN"]}
        for labels, value in rows]}}).encode()


def edge(node: str, direction: str, peer: str, port: int, **given: str) -> dict:
    """An edge's labels (metrics.EDGE_LABELS and `via`); `given` overrides the defaults."""
    labels = {"node": node, "uid": "1000", "user": "1000", "namespace": "", "pod": "",
              "netns": "", "direction": direction, "proto": "tcp", "peer": peer,
              "port": str(port), "via": "", "service": "", "evidence": "holder",
              "direction_inferred": "false"}
    return {**labels, **given}


def out_of(p: tuple, peer: str, port: int, **kw) -> dict:
    return edge(p[0], "outbound", peer, port, namespace=p[1], pod=p[2], **kw)


def into(p: tuple, client: str, port: int, **kw) -> dict:
    return edge(p[0], "inbound", client, port, namespace=p[1], pod=p[2], **kw)


# (labels, last seen, peak, open now, opened in the window)
EDGES = [
    (out_of(WEB, DB[3], 5432), NOW - 10, 5, 3, 12),                        # pod -> pod
    (out_of(WEB, CACHE[3], 6379, via="10.96.0.50:6379"), NOW - 20, 2, 1, 4),  # through a VIP
    (edge("n1", "outbound", HOSTS["n3"], 9100, netns="host", uid="0", user="root"),
     NOW - 5, 1, 0, 30),                                                    # host -> a host
    (out_of(DB, "10.0.0.5", 3306), NOW - 30, 1, 1, 1),                      # --services
    (out_of(API, "203.0.113.7", 443, evidence="namespace-owners"), NOW - 40, 1, 0, 2),
    (out_of(API, "::ffff:10.244.2.20", 5432), NOW - 50, 1, 1, 1),          # v4-mapped, same node
    # the other ends: confirmations, not edges of their own
    (into(DB, WEB[3], 5432), NOW - 10, 5, 3, 12),
    (into(CACHE, WEB[3], 6379), NOW - 20, 2, 1, 4),
    (edge("n3", "inbound", HOSTS["n1"], 9100, netns="host", uid="65534", user="nobody"),
     NOW - 5, 1, 0, 30),
    # inbound only: a client without an agent, and a connection the client's agent missed
    (into(DB, "192.168.0.99", 5432), NOW - 60, 2, 2, 6),
    (into(DB, CACHE[3], 5432), NOW - 70, 1, 0, 1),
    # an edge the agent remembers but that was last seen days ago: not in a 1h window
    (out_of(WEB, "198.51.100.1", 80), NOW - 3 * 86400, 0, 0, 0),
]
OVERFLOW_ROW = {**edge("n3", "outbound", "__overflow__", 0, evidence="mixed",
                      direction_inferred="mixed"), "port": ""}


def addresses() -> list[tuple[dict, float]]:
    rows = [({"node": p[0], "address": p[3], "kind": "pod", "namespace": p[1], "pod": p[2],
              "netns": f"pod {p[1]}/{p[2]}"}, 1.0) for p in (WEB, DB, API, CACHE)]
    rows += [({"node": n, "address": a, "kind": "host", "namespace": "", "pod": "",
               "netns": "host"}, 1.0) for n, a in HOSTS.items()]
    # a hostNetwork pod's address is the host's: even were a pod named on it, kind=host wins
    rows.append(({"node": "n3", "address": HOSTS["n3"], "kind": "host",
                  "namespace": "monitoring", "pod": "node-exporter-7xk2p", "netns": "host"}, 1.0))
    return rows


def owners() -> tuple[list, list]:
    pods = [({"namespace": "shop", "pod": WEB[2], "owner_kind": "ReplicaSet",
              "owner_name": "web-7d4b9c8f6d"}, 1.0),
            ({"namespace": "shop", "pod": DB[2], "owner_kind": "StatefulSet",
              "owner_name": "db"}, 1.0),
            ({"namespace": "shop", "pod": API[2], "owner_kind": "ReplicaSet",
              "owner_name": "api-6b8f7d9c5e"}, 1.0)]
    replicasets = [({"namespace": "shop", "replicaset": "web-7d4b9c8f6d",
                     "owner_kind": "Deployment", "owner_name": "web"}, 1.0)]
    return pods, replicasets


def identity(labels: dict) -> dict:
    return {k: v for k, v in labels.items() if k not in ("evidence", "direction_inferred")}


def answers() -> dict[str, bytes]:
    """Each query's answer (by QUERIES' name)."""
    pods, replicasets = owners()
    edges = [*EDGES]
    return {
        "edges": vector([(e[0], e[1]) for e in edges] + [(OVERFLOW_ROW, NOW - 1)]),
        "peak": vector([(identity(e[0]), e[2]) for e in edges]),
        "open": vector([(identity(e[0]), e[3]) for e in edges]),
        "opened": vector([(identity(e[0]), e[4]) for e in edges]),
        "addresses": vector(addresses()),
        "pod_owners": vector(pods), "replicaset_owners": vector(replicasets),
    }


def the_map(answered: dict[str, bytes] | None = None) -> dict:
    results = {name: parse_vector(body) for name, body in (answered or answers()).items()}
    return build_map(results, SERVICES, seen_after=NOW - 3600)


def edges_by(doc: dict) -> dict[tuple[str, str, int], dict]:
    return {(e["source"], e["destination"], e["port"]): e for e in doc["edges"]}


def test_the_three_nodes_join_into_workloads():
    doc = the_map()
    assert doc["schema"] == "nsnet/1" and doc["view"] == "cluster"
    edges = edges_by(doc)
    web, db = "Deployment:shop/web", "StatefulSet:shop/db"
    # pod -> pod by address, on two nodes; the server's inbound edge confirms it
    e = edges[(web, db, 5432)]
    assert (e["open"], e["peak"], e["opened"]) == (3, 5, 12)
    assert e["cross_node"] is True and e["nodes"] == ["n1", "n2"]
    assert e["seen_from"] == ["client"] and e["confirmed_by_server"] is True
    assert e["evidence"] == ["holder"] and e["guess"] is False and e["via"] == []
    # through a Service VIP: to the backend reached, the VIP kept
    e = edges[(web, "Deployment:shop/cache", 6379)]
    assert e["via"] == ["10.96.0.50:6379"] and e["confirmed_by_server"] is True
    # the host of n1 (its user) to the host of n3 -- not to the hostNetwork pod there
    e = edges[("user:root@n1", "node:n3", 9100)]
    assert e["cross_node"] is True and e["confirmed_by_server"] is True
    assert not any("node-exporter" in json.dumps(ep) for ep in doc["endpoints"])
    # named by --services; an external address; a v4-mapped peer on the same node
    assert edges[(db, "service:shared-db", 3306)]["cross_node"] is None
    external = edges[("Deployment:shop/api", "203.0.113.7:443", 443)]
    assert external["guess"] is True and external["evidence"] == ["namespace-owners"]
    assert edges[("Deployment:shop/api", db, 5432)]["cross_node"] is False
    # inbound only: a client without an agent, and a pod whose agent missed the connection
    e = edges[("address:192.168.0.99", db, 5432)]
    assert e["seen_from"] == ["server"] and e["open"] == 2 and e["cross_node"] is None
    e = edges[("Deployment:shop/cache", db, 5432)]
    assert e["seen_from"] == ["server"] and e["cross_node"] is True
    # nothing else: no double count of the confirmed connections, the old edge left out
    assert len(edges) == 8, sorted(edges)
    assert doc["stats"]["overflow_series"] == 1
    assert any("n3: 1 overflow series" in w for w in doc["warnings"])


def test_a_workload_from_the_pods_name_is_marked_a_guess():
    endpoints = {ep["id"]: ep for ep in the_map()["endpoints"]}
    assert endpoints["Deployment:shop/web"]["inferred"] is None     # kube-state-metrics
    assert endpoints["StatefulSet:shop/db"]["inferred"] is None
    assert endpoints["Deployment:shop/cache"]["inferred"] == cluster.NAME_GUESS
    assert endpoints["Deployment:shop/api"]["inferred"] == cluster.REPLICASET_GUESS
    assert endpoints["Deployment:shop/web"]["pods"] == [
        {"node": "n1", "namespace": "shop", "pod": WEB[2]}]
    assert endpoints["node:n3"]["kind"] == "node"
    assert endpoints["user:root@n1"]["kind"] == "user"


def test_without_kube_state_metrics_every_workload_is_inferred():
    answered = answers()
    answered["pod_owners"] = answered["replicaset_owners"] = vector([])
    doc = the_map(answered)
    workloads = [ep for ep in doc["endpoints"] if ep["namespace"] is not None]
    assert workloads and all(ep["inferred"] for ep in workloads
                             if ep["kind"] != "Pod"), workloads
    assert {ep["id"] for ep in workloads} >= {"Deployment:shop/web", "StatefulSet:shop/db"}
    assert any("kube_pod_owner" in w for w in doc["warnings"])


@pytest.mark.parametrize(("pod", "kind", "name"), [
    ("web-7d4b9c8f6d-x2x9k", "Deployment", "web"),
    ("db-12", "StatefulSet", "db"),
    ("fluentd-q8w7z", "DaemonSet-or-Job", "fluentd"),
    ("standalone", "Pod", "standalone"),
])
def test_workload_from_the_name(pod, kind, name):
    ep = cluster.workload_from_name("ns", pod)
    assert (ep.kind, ep.name) == (kind, name)
    assert (ep.inferred is None) == (kind == "Pod")


def test_kube_state_metrics_owners():
    rows = parse_vector(vector([
        ({"namespace": "kube-system", "pod": "kube-apiserver-n1", "owner_kind": "Node",
          "owner_name": "n1"}, 1.0),
        ({"namespace": "a", "pod": "bare", "owner_kind": "<none>", "owner_name": "<none>"}, 1.0),
        ({"namespace": "a", "pod": "x-1", "owner_kind": "ReplicaSet", "owner_name": "x"}, 1.0)]))
    rs = parse_vector(vector([({"namespace": "a", "replicaset": "x", "owner_kind": "<none>",
                                "owner_name": "<none>"}, 1.0)]))
    owners_ = cluster.Owners.of(rows, rs)
    assert owners_.workload("kube-system", "kube-apiserver-n1").id == \
        "StaticPod:kube-system/kube-apiserver"
    assert owners_.workload("a", "bare").id == "Pod:a/bare"
    assert owners_.workload("a", "x-1").id == "ReplicaSet:a/x"


def test_an_address_several_places_held_is_not_guessed():
    answered = answers()
    rows = addresses() + [({"node": "n3", "address": DB[3], "kind": "pod", "namespace": "other",
                            "pod": "reused-0", "netns": "x"}, 1.0)]
    answered["addresses"] = vector(rows)
    doc = the_map(answered)
    # n1's web reached 10.244.2.20: which of the two it was is not known
    assert ("Deployment:shop/web", f"{DB[3]}:5432", 5432) in edges_by(doc)
    assert any(DB[3] in w and "several" in w for w in doc["warnings"])


# --------------------------------------------------------------------------- renderers

HOSTILE = 'evil\x1b[2J\x1b]0;pwned\x07"\n<b>#&|}{[x]'


def hostile_map() -> dict:
    answered = answers()
    pod = (WEB[0], "shop", HOSTILE, "10.244.1.66")
    rows = addresses() + [({"node": "n1", "address": pod[3], "kind": "pod", "namespace": "shop",
                            "pod": HOSTILE, "netns": HOSTILE}, 1.0)]
    answered["addresses"] = vector(rows)
    hostile = out_of(pod, "203.0.113.9", 443, via=HOSTILE, user=HOSTILE)
    answered["edges"] = vector([(hostile, NOW)])
    for name in ("peak", "open", "opened"):
        answered[name] = vector([(identity(hostile), 1.0)])
    return the_map(answered)


def test_the_table_shows_no_terminal_control():
    text = cluster.render_table(hostile_map(), width=None, color=False)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J" in text
    table = text.split("\n\n")[0].splitlines()
    assert len(table) == 2, table    # the header and one row: the newline stayed escaped
    wide = cluster.render_table(the_map(), width=80, color=False)
    assert all(len(line) <= 80 for line in wide.splitlines())
    assert "Deployment shop/cache ?" in cluster.render_table(the_map(), None, False)


def test_dot_and_mermaid_escape_every_label():
    doc = hostile_map()
    dot = cluster.to_dot(doc)
    assert "\x1b" not in dot and "\x07" not in dot
    for line in dot.splitlines()[5:-1]:
        # every quoted string closes on its line: no quote or newline escaped it
        assert re.fullmatch(r'\s*(?:[^"]|"(?:[^"\\]|\\.)*")*', line), line
    mermaid = cluster.to_mermaid(doc)
    assert "\x1b" not in mermaid and "\x07" not in mermaid
    for line in mermaid.splitlines()[1:]:
        for label in re.findall(r'"(.*?)"', line):
            assert not set(label) & set('"<>|'), label
    assert len(mermaid.splitlines()) == 2 + len(doc["endpoints"]) + len(doc["edges"])


def test_dot_marks_guesses():
    dot = cluster.to_dot(the_map())
    assert re.search(r'"Deployment:shop/cache" \[label="Deployment shop/cache \?".*dashed', dot)
    assert re.search(r'"Deployment:shop/api" -> "203.0.113.7:443" \[label="tcp/443 x0 \?", '
                     r'style=dashed\]', dot)
    assert 'label="tcp/6379 x1 via 10.96.0.50:6379"' in dot


# ----------------------------------------------------------------------- API responses

@pytest.mark.parametrize(("body", "says"), [
    (b"<html>not prometheus</html>", "not JSON"),
    (b"[1, 2]", "no status"),
    (json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode(),
     "bad_data: parse error"),
    (json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(),
     "not an instant vector"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [1]}}).encode(),
     "not an object"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"node": 7}, "value": [1, "1"]}]}}).encode(), "labels are not strings"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1, 1]}]}}).encode(), "[time, \"value\"]"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}}]}}).encode(), "[time, \"value\"]"),
    (json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1, "many"]}]}}).encode(), "not a number"),
    (b"[" * 100_000, "not JSON"),
])
def test_malformed_answers_are_one_error(body, says):
    with pytest.raises(PrometheusError) as raised:
        parse_vector(body)
    assert says in str(raised.value) and isinstance(raised.value, NsnetError)


def test_malformed_series_values_are_left_out_not_fatal():
    answered = answers()
    bad = edge("n1", "sideways", "10.0.0.1", 1)
    answered["edges"] = vector([(bad, NOW), (edge("n1", "outbound", "10.0.0.1", 99999), NOW),
                                (edge("n1", "outbound", "10.0.0.1", 1), float("nan"))])
    doc = the_map(answered)
    assert doc["edges"] == [] and doc["stats"]["malformed_series"] == 3


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    """Answers /api/v1/query from `routes` (a query's name -> its answer), or as told."""
    routes: dict[str, bytes] = {}
    status = 200
    body: bytes | None = None
    seen: list[dict] = []

    def do_GET(self) -> None:     # http.server's name
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        self.seen.append({"path": url.path, "auth": self.headers.get("Authorization"),
                          **params})
        if self.status in (301, 302):
            self.send_response(self.status)
            self.send_header("Location", "http://203.0.113.1/elsewhere")
            self.end_headers()
            return
        body = self.body
        if body is None:
            sent = cluster.queries("1h")
            name = next((n for n, q in sent.items() if q == params.get("query")), None)
            body = self.routes.get(name or "", vector([]))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fake_prometheus(**kw: object) -> Iterator[tuple[str, type[FakePrometheus]]]:
    handler = type("Handler", (FakePrometheus,), {"seen": [], **kw})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_sends_the_time_the_timeout_and_the_token():
    with fake_prometheus() as (url, handler):
        prom = Prometheus(url + "/", timeout=7, token="s3cret")
        assert prom.query("up", NOW) == []
    (request,) = handler.seen
    assert request == {"path": "/api/v1/query", "auth": "Bearer s3cret", "query": "up",
                       "time": f"{NOW:.3f}", "timeout": "7s"}


@pytest.mark.parametrize(("kw", "says"), [
    ({"status": 400, "body": json.dumps({"status": "error", "errorType": "bad_data",
                                        "error": "1:5: parse error"}).encode()},
     "HTTP 400: bad_data: 1:5: parse error"),
    ({"status": 503, "body": b"Service Unavailable"}, "HTTP 503: Service Unavailable"),
    ({"status": 302}, "redirect (HTTP 302)"),
    ({"body": b"{" + b" " * 5000 + b"}"}, "larger than 4096 bytes"),
])
def test_http_failures_are_one_error(kw, says):
    with fake_prometheus(**kw) as (url, _), pytest.raises(PrometheusError) as raised:
        Prometheus(url, timeout=5, max_bytes=4096).query("up", NOW)
    assert says in str(raised.value)


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://prometheus:9090", "not an http"), ("prometheus:9090", "not an http"),
    ("http://user:pw@prometheus:9090", "credentials"), ("http://p:99999", "not a Prometheus URL"),
    ("http://p:9090/?x=1", "no query"),
])
def test_bad_urls(url, says):
    with pytest.raises(PrometheusError, match=re.escape(says)):
        Prometheus(url)


def test_bearer_token_file(tmp_path):
    good = tmp_path / "token"
    good.write_text("  abc.def-123\n")
    assert cluster.read_token(str(good)) == "abc.def-123"
    bad = tmp_path / "bad"
    bad.write_text("two words")
    with pytest.raises(PrometheusError) as raised:
        cluster.read_token(str(bad))
    assert "two" not in str(raised.value)     # never the content: it is a secret
    with pytest.raises(PrometheusError, match="cannot read"):
        cluster.read_token(str(tmp_path / "missing"))


def test_since_is_a_prometheus_duration():
    assert cluster.duration_seconds("1h30m") == 5400
    for bad in ("1x", "", "0h", "1h]) or vector(1", "-1h"):
        with pytest.raises(ValueError):
            cluster.queries(bad)


# ---------------------------------------------------------------------------------- CLI

def test_the_cli_prints_the_map_as_json(capsys, monkeypatch):
    monkeypatch.setattr(cluster, "duration_seconds", lambda since: 10 * 365 * 86400.0)
    with fake_prometheus(routes=answers()) as (url, _):
        assert main(["cluster", "--prometheus", url, "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["queries"] == cluster.queries("1h") and doc["since"] == "1h"
    assert ("Deployment:shop/web", "StatefulSet:shop/db", 5432) in edges_by(doc)
    assert "overflow series" in captured.err


@pytest.mark.parametrize("fmt", ["table", "dot", "mermaid"])
def test_the_cli_formats(capsys, fmt, monkeypatch, tmp_path):
    services = tmp_path / "services.toml"
    services.write_text('[[service]]\nname = "shared-db"\nmatch = ["10.0.0.5:3306"]\n')
    monkeypatch.setattr(cluster, "duration_seconds", lambda since: 10 * 365 * 86400.0)
    with fake_prometheus(routes=answers()) as (url, _):
        assert main(["cluster", "--prometheus", url, "--format", fmt, "-q",
                     "--services", str(services)]) == 0
    captured = capsys.readouterr()
    assert "shared-db" in captured.out and captured.err == ""


def test_show_queries_asks_nothing(capsys):
    assert main(["cluster", "--show-queries", "--since", "30m"]) == 0
    out = capsys.readouterr().out
    for promql in cluster.queries("30m").values():
        assert promql + "\n" in out


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsnet", "cluster", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(("args", "code", "says"), [
    (("--prometheus", "http://127.0.0.1:1"), 1, "connection refused"),
    (("--prometheus", "ftp://127.0.0.1"), 1, "not an http"),
    ((), 2, "needs --prometheus"),
    (("--prometheus", "http://127.0.0.1:1", "--since", "1 hour"), 2, "not a Prometheus duration"),
    (("--prometheus", "http://127.0.0.1:1", "--json", "--format", "dot"), 2, "choose one"),
    (("--prometheus", "http://127.0.0.1:1", "--bearer-token-file", "/nonexistent"), 1,
     "cannot read bearer token file"),
])
def test_cli_errors_are_one_line(args, code, says):
    import os

    env = {k: v for k, v in os.environ.items() if k != "NSNET_PROMETHEUS"}
    run = run_cli(*args, env=env)
    assert run.returncode == code, run
    assert run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("nsnet: error: ") and says in run.stderr, run.stderr


def test_the_cli_starts_without_the_cluster_module():
    run = subprocess.run([sys.executable, "-c", "import sys\nfrom nsnet import cli\n"
                          "cli.build_parser().parse_args(['cluster', '--show-queries'])\n"
                          "print('nsnet.cluster' in sys.modules)"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


# ---------------------------------------------------------------------------- README

def test_the_readme_has_every_query():
    """EXPECTED TO FAIL until the "The cluster map" section is pasted into README.md: every
    query the command sends, with `{since}` as 1h, verbatim."""
    readme = (REPO / "README.md").read_text()
    missing = [name for name, promql in cluster.queries("1h").items() if promql not in readme]
    assert not missing, f"README.md lacks the cluster queries {missing}: paste the section"
