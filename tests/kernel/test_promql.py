"""The README's PromQL, run by a real Prometheus (Debian's `prometheus` binary, started here on
127.0.0.1 with a private data directory) against an agent sampling real namespaces
(support/depnode.py): each query of the README's ```promql blocks, with the README's example
endpoint replaced by one of the node's, must answer what the node's plan says."""
from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import require_root
from depnode import APP_A, POD_A_IP, SIDECAR_A, SVC_A, Conn, DepNode

REPO = Path(__file__).resolve().parents[2]
README_PEER, README_PORT = 'peer="10.0.0.5"', 'port="3306"'
PEER, PORT = SVC_A, 5432        # pod A's app and postgres in the services namespace


def readme_queries(peer: str = PEER, port: int = PORT) -> list[str]:
    """The README's queries, its example endpoint replaced by peer:port."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, re.S)
    assert len(blocks) == 6, "the README's PromQL blocks changed: update this test"
    return [b.replace(README_PEER, f'peer="{peer}"').replace(README_PORT, f'port="{port}"')
            for b in blocks]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVICE_MONITOR = REPO / "deploy" / "components" / "servicemonitor" / "servicemonitor.yaml"
# prometheus-operator's generated relabeling gives each target of a ServiceMonitor the
# agent's own namespace, Service, pod, container and endpoint (as target labels)
OPERATOR_TARGET = {"namespace": "nsnet-system", "service": "nsnet", "pod": "nsnet-x7k2p",
                   "container": "nsnet", "endpoint": "http"}


def operator_job(targets: list[str]) -> str:
    """The scrape job prometheus-operator makes of deploy/'s ServiceMonitor, for a target
    whose discovery it plays: its target labels, then the ServiceMonitor's own relabelings
    and honorLabels, read from the manifest."""
    import yaml

    (endpoint,) = yaml.safe_load(SERVICE_MONITOR.read_text())["spec"]["endpoints"]
    relabel = [{"target_label": name, "replacement": value}
               for name, value in OPERATOR_TARGET.items()]
    for rule in endpoint.get("relabelings") or []:
        relabel.append({{"sourceLabels": "source_labels", "targetLabel": "target_label"}
                        .get(k, k): v for k, v in rule.items()})
    return json.dumps({"job_name": "serviceMonitor/nsnet-system/nsnet/0",
                       "honor_labels": bool(endpoint.get("honorLabels")),
                       "metrics_path": endpoint["path"],
                       "static_configs": [{"targets": targets}],
                       "relabel_configs": relabel})


class Prometheus:
    """A real Prometheus scraping the agent every second. style "static": a plain static
    scrape (target labels job and instance only); "operator": as prometheus-operator scrapes
    through deploy/components/servicemonitor."""

    def __init__(self, target: str | list[str], workdir: Path, style: str = "static"):
        targets = [target] if isinstance(target, str) else list(target)
        binary = shutil.which("prometheus")
        assert binary is not None
        self.port = free_port()
        workdir = workdir / style
        workdir.mkdir()
        config = workdir / "prometheus.yml"
        job = operator_job(targets) if style == "operator" else json.dumps(
            {"job_name": "nsnet", "static_configs": [{"targets": targets}]})
        # YAML is a superset of JSON: the job is written as JSON
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n  - {job}\n")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def query(self, promql: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def wait(self, promql: str, check, timeout: float = 60.0) -> list[dict]:
        """Until the query's result passes check (Prometheus scrapes every second)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                last = self.query(promql)
                if check(last):
                    return last
            except OSError as exc:      # not listening yet
                last = exc
            time.sleep(0.5)
        pytest.fail(f"{promql}: {last}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fetch(url: str, accept: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read()


def by_user(result: list[dict]) -> dict[str, float]:
    return {r["metric"].get("user", ""): float(r["value"][1]) for r in result}


def readme_answers(prom: Prometheus, queries: list[str]) -> None:
    """What each README query answers on the node's plan."""
    seen_today = prom.query(queries[0])
    assert sorted((r["metric"]["user"], r["metric"]["namespace"], r["metric"]["pod"],
                   float(r["value"][1])) for r in seen_today) == [
        (str(APP_A), "shop", "tenant-a", 1.0),
        (str(SIDECAR_A), "shop", "tenant-a", 1.0)]    # known only as a guess
    # open now: the app's three; none for the sidecar (its guess is a TIME_WAIT)
    assert by_user(prom.query(queries[1])) == {str(APP_A): 3.0, str(SIDECAR_A): 0.0}
    opening = by_user(prom.query(queries[2]))
    assert opening[str(APP_A)] > 0 and opening.get(str(SIDECAR_A), 0.0) == 0.0
    # leaving out the guesses: the app only
    assert by_user(prom.query(queries[3])) == {str(APP_A): 3.0}
    # traffic: the app's connections moved bytes (their SYNs at least, counted when first
    # seen: p2 and p3 in the second sample); a TIME_WAIT has no TCP_INFO; the app's three
    # open connections have an rtt, the sidecar's guess none
    sending = by_user(prom.query(queries[4]))
    assert sending[str(APP_A)] > 0 and str(SIDECAR_A) not in sending
    rtt = by_user(prom.query(queries[5]))
    assert set(rtt) == {str(APP_A)} and 0 < rtt[str(APP_A)] < 1


def dashboard_answers(prom: Prometheus) -> None:
    """Every query of deploy/grafana/nsnet.json returns data; the node graph's edges join
    nodes it lists: pod A (the client) to the service it reached."""
    from dashboard import dashboard_queries

    results = {}
    for title, ref, expr in dashboard_queries():
        results[(title, ref)] = prom.query(expr)
        assert results[(title, ref)], (title, ref, expr)
    graph = [key for key in results if key[1] in ("nodes", "edges")]
    nodes = {r["metric"]["id"] for key in graph if key[1] == "nodes" for r in results[key]}
    edges = [r["metric"] for key in graph if key[1] == "edges" for r in results[key]]
    assert edges and all({e["source"], e["target"]} <= nodes for e in edges), (nodes, edges)
    assert {"source": "shop/tenant-a", "target": f"{PEER}:{PORT}"}.items() <= \
        next(e for e in edges if e["target"] == f"{PEER}:{PORT}").items()


def test_the_readme_promql_answers_on_a_real_prometheus(tmp_path):
    require_root("ip", "setpriv", "ss", "prometheus", "promtool")
    from nsnet.agent.serve import Agent, http_server
    from nsnet.options import AgentOptions, SamplingOptions, SnapshotOptions

    queries = readme_queries()
    with DepNode.build(tmp_path / "host") as node:
        options = AgentOptions(sampling=SamplingOptions(
            snapshot=SnapshotOptions(source="auto", host_root=str(node.host_root)),
            interval=1.0, max_cpu=1.0, events=False), node="n1", listen=("127.0.0.1", 0))
        agent = Agent(options, io.StringIO())
        server = http_server(agent)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        target = f"127.0.0.1:{server.server_address[1]}"
        proms = [Prometheus(target, tmp_path, style) for style in ("static", "operator")]
        prom = proms[0]
        try:
            node.run("a", Conn("p1", "a", "keep", PEER, PORT))
            agent.step()
            for p in proms:
                p.wait("nsnet_samples_total", lambda r: r and float(r[0]["value"][1]) == 1)
            # two more kept (seen opening by the next sample), and one closed at once by the
            # app: its TIME_WAIT has no holder, and pod A two owners -- a guess
            for name in ("p2", "p3"):
                node.run("a", Conn(name, "a", "keep", PEER, PORT))
            node.run("a", Conn("p4", "a", "client_closes", PEER, PORT))
            agent.step()
            for p in proms:
                p.wait("nsnet_samples_total", lambda r: r and float(r[0]["value"][1]) == 2)
            time.sleep(2.5)     # a few scrapes of the second sample

            # every README query answers the same under both scrape styles
            for p in proms:
                readme_answers(p, queries)
            dashboard_answers(prom)
            # the operator's target labels are gone from every series (the edges' own
            # namespace/pod/service labels name the tenants'), none renamed exported_*
            operator = proms[1].query('{__name__=~"nsnet_edge_connections|nsnet_build_info"}')
            assert operator and not [r for r in operator if r["metric"].get("container")
                                     or r["metric"].get("endpoint")
                                     or any(k.startswith("exported_") for k in r["metric"])]
            assert not [r for r in operator
                        if r["metric"].get("pod") == OPERATOR_TARGET["pod"]
                        or r["metric"].get("namespace") == OPERATOR_TARGET["namespace"]]
            # addresses join nodes: pod A's own address is pod A's, the service namespace's
            # is a namespace's (no pod), each once
            (pod_addr,) = prom.query(f'nsnet_address_info{{address="{POD_A_IP}"}}')
            assert {k: pod_addr["metric"][k] for k in ("kind", "namespace", "pod")} == \
                {"kind": "pod", "namespace": "shop", "pod": "tenant-a"}
            (svc_addr,) = prom.query(f'nsnet_address_info{{address="{SVC_A}"}}')
            assert svc_addr["metric"]["kind"] == "netns" and "pod" not in svc_addr["metric"]
            # Prometheus scraped OpenMetrics (it asks for it first): the agent's self-metrics
            assert prom.query("nsnet_build_info")[0]["metric"]["version"]
            assert float(prom.query("process_resident_memory_bytes")[0]["value"][1]) > 0
            # the text exposition passes Prometheus' own linter (promtool reads only that
            # format); the OpenMetrics one, the reference parser (strict: # EOF, types)
            base = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            lint = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"],
                                  input=fetch(base, "text/plain"), capture_output=True,
                                  timeout=60)
            assert lint.returncode == 0 and not lint.stdout.strip() and \
                not lint.stderr.strip(), (lint.stdout, lint.stderr)
            from prometheus_client.openmetrics.parser import text_string_to_metric_families
            om = fetch(base, "application/openmetrics-text; version=1.0.0").decode()
            assert {"nsnet_edge_connections", "nsnet_samples", "nsnet_build"} <= \
                {f.name for f in text_string_to_metric_families(om)}
        finally:
            for p in proms:
                p.stop()
            server.shutdown()
            server.server_close()
            agent.close()
