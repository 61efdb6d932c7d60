"""`nsnet cluster` against a real Prometheus (Debian's binary, on 127.0.0.1 with a private data
directory, as in test_promql): three nodes' agents are played by three tiny HTTP servers
exposing the series a real agent exposes (metrics.EDGE_LABELS plus `via`, and
nsnet_address_info), a fourth plays kube-state-metrics; Prometheus scrapes them every second,
and the command -- a subprocess, as an operator runs it -- must draw the map they describe.

Scraping (not `promtool tsdb create-blocks-from openmetrics`) because the map is asked "now":
backfilled blocks are only queryable once old enough for the head block to leave them alone,
which a query at the present time would then not see."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import require_root
from test_promql import Prometheus, free_port

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"n1": "192.168.0.11", "n2": "192.168.0.12", "n3": "192.168.0.13"}
WEB = ("n1", "shop", "web-7d4b9c8f6d-x2x9k", "10.244.1.10")
DB = ("n2", "shop", "db-0", "10.244.2.20")
CACHE = ("n3", "shop", "cache-5f6d8b7c9d-abcde", "10.244.3.30")
EDGE_LABELS = ("node", "uid", "user", "pod", "namespace", "netns", "direction", "proto", "peer",
               "port", "service", "evidence", "direction_inferred", "via")


def labels(**kw: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in kw.items())


def edge(node: str, direction: str, peer: str, port: int, pod: tuple | None = None,
         **given: str) -> dict[str, str]:
    """An agent's edge labels; `given` overrides the defaults (user 1000, evidence holder)."""
    user = given.get("user", "1000")
    defaults = dict(zip(EDGE_LABELS, (
        node, "0" if user == "root" else user, user, pod[2] if pod else "",
        pod[1] if pod else "", "", direction, "tcp", peer, str(port), "", "holder", "false",
        ""), strict=True))
    return {**defaults, **given}


# node -> [(labels, open now, seconds since last seen)]
EDGES = {
    "n1": [(edge("n1", "outbound", DB[3], 5432, pod=WEB), 3, 0),
           (edge("n1", "outbound", CACHE[3], 6379, pod=WEB, via="10.96.0.50:6379"), 1, 0),
           (edge("n1", "outbound", HOSTS["n3"], 9100, user="root", netns="host"), 0, 5),
           # remembered by the agent, last seen three days ago: not in the window
           (edge("n1", "outbound", "198.51.100.1", 80, pod=WEB), 0, 3 * 86400)],
    "n2": [(edge("n2", "inbound", WEB[3], 5432, pod=DB), 3, 0),
           (edge("n2", "inbound", "192.168.0.99", 5432, pod=DB), 2, 0),
           (edge("n2", "outbound", "203.0.113.7", 443, pod=DB, evidence="namespace-owners"),
            1, 0)],
    "n3": [(edge("n3", "inbound", WEB[3], 6379, pod=CACHE), 1, 0),
           (edge("n3", "inbound", HOSTS["n1"], 9100, user="nobody", netns="host"), 0, 5),
           ({**edge("n3", "outbound", "__overflow__", 0), "port": "", "evidence": "mixed",
             "direction_inferred": "mixed"}, 4, 0)],
}
ADDRESSES = {node: [labels(node=node, address=addr, interface="eth0", netns="host", kind="host",
                           namespace="", pod="", pod_uid="")] for node, addr in HOSTS.items()}
for _node, _ns, _pod, _addr in (WEB, DB, CACHE):
    ADDRESSES[_node].append(labels(node=_node, address=_addr, interface="eth0",
                                   netns=f"pod {_ns}/{_pod}", kind="pod", namespace=_ns,
                                   pod=_pod, pod_uid="0d0c9a5e-0000-4000-8000-00000000000" + _node[1]))
KUBE_STATE_METRICS = "\n".join([
    "# TYPE kube_pod_owner gauge",
    f'kube_pod_owner{{namespace="shop",pod="{WEB[2]}",owner_kind="ReplicaSet",'
    'owner_name="web-7d4b9c8f6d",owner_is_controller="true"} 1',
    f'kube_pod_owner{{namespace="shop",pod="{DB[2]}",owner_kind="StatefulSet",'
    'owner_name="db",owner_is_controller="true"} 1',
    "# TYPE kube_replicaset_owner gauge",
    'kube_replicaset_owner{namespace="shop",replicaset="web-7d4b9c8f6d",owner_kind="Deployment",'
    'owner_name="web",owner_is_controller="true"} 1', ""])


def agent_text(node: str, scrape: int, now: float) -> str:
    """What node's agent exposes at its scrape-th scrape: its counters grow."""
    lines = ["# TYPE nsnet_edge_connections gauge",
             "# TYPE nsnet_edge_last_seen_timestamp_seconds gauge",
             "# TYPE nsnet_edge_connections_opened_total counter",
             "# TYPE nsnet_address_info gauge"]
    for edge_labels, open_now, age in EDGES[node]:
        text = labels(**edge_labels)
        lines += [f"nsnet_edge_connections{{{text}}} {open_now}",
                  f"nsnet_edge_last_seen_timestamp_seconds{{{text}}} {now - age:.3f}",
                  f"nsnet_edge_connections_opened_total{{{text}}} {scrape * 2 if not age else 7}"]
    lines += [f"nsnet_address_info{{{a}}} 1" for a in ADDRESSES[node]]
    return "\n".join(lines) + "\n"


def exporter(text_of) -> http.server.ThreadingHTTPServer:
    scrapes = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:     # http.server's name
            scrapes[0] += 1
            body = text_of(scrapes[0], time.time()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class ClusterPrometheus(Prometheus):
    """test_promql's Prometheus, scraping several targets (the agents and kube-state-metrics)
    every second."""

    def __init__(self, targets: list[str], workdir: Path):
        self.port = free_port()
        config = workdir / "prometheus.yml"
        job = json.dumps({"job_name": "nsnet", "honor_labels": True,
                          "static_configs": [{"targets": targets}]})
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n  - {job}\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_cluster_map_from_a_real_prometheus(tmp_path):
    require_root("prometheus", "promtool")
    servers = [exporter(lambda scrape, now, node=node: agent_text(node, scrape, now))
               for node in EDGES]
    servers.append(exporter(lambda scrape, now: KUBE_STATE_METRICS))
    prom = ClusterPrometheus([f"127.0.0.1:{s.server_address[1]}" for s in servers], tmp_path)
    try:
        # every target scraped a few times: increase() has samples to work on
        prom.wait("min(count_over_time(nsnet_edge_connections_opened_total[1m]))",
                  lambda r: r and float(r[0]["value"][1]) >= 4)
        prom.wait("count(kube_pod_owner)", lambda r: r and float(r[0]["value"][1]) == 2)
        run = subprocess.run(
            [sys.executable, "-m", "nsnet", "cluster", "--prometheus",
             f"http://127.0.0.1:{prom.port}", "--since", "10m", "--format", "json"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        prom.stop()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    edges = {(e["source"], e["destination"], e["port"]): e for e in doc["edges"]}
    web, db, cache = "Deployment:shop/web", "StatefulSet:shop/db", "Deployment:shop/cache"
    assert set(edges) == {
        (web, db, 5432), (web, cache, 6379), ("user:root@n1", "node:n3", 9100),
        ("address:192.168.0.99", db, 5432), (db, "203.0.113.7:443", 443)}, sorted(edges)
    pod_to_pod = edges[(web, db, 5432)]
    assert pod_to_pod["open"] == 3 and pod_to_pod["peak"] == 3 and pod_to_pod["opened"] > 0
    assert pod_to_pod["cross_node"] is True and pod_to_pod["confirmed_by_server"] is True
    assert edges[(web, cache, 6379)]["via"] == ["10.96.0.50:6379"]
    assert edges[("user:root@n1", "node:n3", 9100)]["confirmed_by_server"] is True
    assert edges[("address:192.168.0.99", db, 5432)]["seen_from"] == ["server"]
    assert edges[(db, "203.0.113.7:443", 443)]["guess"] is True
    endpoints = {ep["id"]: ep for ep in doc["endpoints"]}
    assert endpoints[web]["inferred"] is None and endpoints[db]["inferred"] is None
    assert endpoints[cache]["inferred"] == "workload from the pod name: a guess"
    assert doc["stats"]["overflow_series"] == 1
    assert "overflow series" in run.stderr
