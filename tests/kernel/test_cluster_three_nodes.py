"""The cluster map, end to end: three simulated nodes (support/simcluster.py: each agent in its
own pid namespace with its own procfs, pods as network namespaces routed between the nodes,
real pod cgroups and kubelet log trees), one node reaching a Service VIP made with a real
iptables DNAT rule, real `nsnet serve` agents, and real Prometheus servers scraping the three
(statically, and the way prometheus-operator does through deploy/'s ServiceMonitor).

    node-a: shop/api-7c9d8f6b5-x2x7q  -> cache/redis-6b8f9d7c5-m4n8p on node-c, by pod IP
                                      -> 10.96.0.20:5432, DNATed on node-a to
                                         data/postgres-0 on node-b
    node-b: data/postgres-0 (5432)    <- shop/web-5f6d7c8b9-qk4zt, on node-b too (same node)
    node-c: cache/redis-... (6379)

`nsnet cluster` must list exactly the cross-node pod -> pod edges the fixture made (the one
through the VIP resolved to its backend pod), the same through both scrape styles; the
README's per-service PromQL answers what the fixture made under both; every dashboard query
returns data; each agent's exposition passes `promtool check metrics`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import require_root
from simcluster import Pod, SimCluster
from test_promql import Prometheus, by_user, readme_queries

REPO = Path(__file__).resolve().parents[2]
VIP, PG_PORT, REDIS_PORT = "10.96.0.20", 5432, 6379


def nsnet_cluster(prom: Prometheus, form: str) -> str:
    run = subprocess.run([sys.executable, "-m", "nsnet", "cluster", "--prometheus", prom.url,
                          "--since", "10m", "--format", form],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def cluster_map(prom: Prometheus) -> dict:
    return json.loads(nsnet_cluster(prom, "json"))


def edges_of(doc: dict) -> dict[tuple[str, str, int], dict]:
    return {(e["source"], e["destination"], e["port"]): e for e in doc["edges"]}


def check_maps(maps: list[dict]) -> None:
    """nsnet cluster: exactly the cross-node pod -> pod edges made, the same through both
    scrape styles."""
    api_w, pg_w = "Deployment:shop/api", "StatefulSet:data/postgres"
    redis_w, web_w = "Deployment:cache/redis", "Deployment:shop/web"
    for doc in maps:
        edges = edges_of(doc)
        crossing = {k for k, e in edges.items() if e["cross_node"]}
        assert crossing == {(api_w, redis_w, REDIS_PORT), (api_w, pg_w, PG_PORT)}, \
            sorted(edges)
        through = edges[(api_w, pg_w, PG_PORT)]
        assert through["via"] == [f"{VIP}:{PG_PORT}"] and through["open"] == 1
        assert set(through["nodes"]) == {"node-a", "node-b"}
        # seen from both ends: node-b's postgres saw the client pod's own address
        assert through["confirmed_by_server"] is True
        assert edges[(api_w, redis_w, REDIS_PORT)]["confirmed_by_server"] is True
        # the same-node edge is there, and not crossing
        assert edges[(web_w, pg_w, PG_PORT)]["cross_node"] is False
        endpoints = {ep["id"]: ep for ep in doc["endpoints"]}
        # no kube-state-metrics here: every workload is read from a pod name, a guess
        assert all(endpoints[w]["inferred"] for w in (api_w, pg_w, redis_w, web_w))
    assert edges_of(maps[0]).keys() == edges_of(maps[1]).keys()


def check_readme_queries(proms: list[Prometheus], api: Pod, web: Pod, pg: Pod) -> None:
    """The README's per-service queries, asked of postgres-0 (its backend address): both
    clients, the one through the VIP included."""
    queries = readme_queries(pg.ip, PG_PORT)
    clients = {str(api.app_uid), str(web.app_uid)}
    for prom in proms:
        seen_today = prom.query(queries[0])
        assert sorted((r["metric"]["user"], r["metric"]["namespace"], r["metric"]["pod"],
                       float(r["value"][1])) for r in seen_today) == \
            sorted([(str(api.app_uid), "shop", api.ref.split("/")[1], 1.0),
                    (str(web.app_uid), "shop", web.ref.split("/")[1], 1.0)])
        assert by_user(prom.query(queries[1])) == dict.fromkeys(clients, 1.0)
        assert set(by_user(prom.query(queries[2]))) == clients
        assert by_user(prom.query(queries[3])) == dict.fromkeys(clients, 1.0)
        assert set(by_user(prom.query(queries[4]))) == clients
        rtt = by_user(prom.query(queries[5]))
        assert set(rtt) == clients and all(0 < v < 1 for v in rtt.values())


def test_the_cluster_map_from_three_agents_on_a_real_prometheus(tmp_path: Path) -> None:
    require_root("ip", "iptables", "unshare", "setpriv", "ss", "prometheus", "promtool")
    from dashboard import dashboard_queries

    with SimCluster.build(tmp_path / "cluster") as cluster:
        api = cluster.add_pod("node-a", "shop/api-7c9d8f6b5-x2x7q")
        pg = cluster.add_pod("node-b", "data/postgres-0")
        web = cluster.add_pod("node-b", "shop/web-5f6d7c8b9-qk4zt")
        redis = cluster.add_pod("node-c", "cache/redis-6b8f9d7c5-m4n8p")
        cluster.listen(pg, PG_PORT)
        cluster.listen(redis, REDIS_PORT)
        cluster.service_vip("node-a", VIP, PG_PORT, pg, PG_PORT)
        cluster.connect(api, redis.ip, REDIS_PORT)
        to_vip = cluster.connect(api, VIP, PG_PORT)
        cluster.connect(web, pg.ip, PG_PORT)
        cluster.wait_for(pg.netns, lambda rows: ("ESTAB", f"{pg.ip}:{PG_PORT}",
                                                 f"{api.ip}:{to_vip.local_port}") in rows,
                         "the VIP connection at its backend")
        targets = cluster.start_agents()
        proms: list[Prometheus] = []
        try:
            proms += [Prometheus(targets, tmp_path, style) for style in ("static", "operator")]
            for prom in proms:    # every agent sampled a few times, and scraped since
                prom.wait("count(nsnet_samples_total >= 3)",
                          lambda r: r and float(r[0]["value"][1]) == 3, timeout=90)
                prom.wait('count(nsnet_address_info{kind="pod"})',
                          lambda r: r and float(r[0]["value"][1]) == 4)
            time.sleep(3)         # rate() and increase() want a few scrapes each

            # the agent on node-a resolved the VIP from its conntrack table: the edge names
            # the backend pod's address, via the VIP
            for prom in proms:
                (vip_edge,) = prom.query(
                    f'nsnet_edge_connections{{direction="outbound", via="{VIP}:{PG_PORT}"}}')
                assert {k: vip_edge["metric"][k] for k in ("node", "pod", "peer", "port")} == \
                    {"node": "node-a", "pod": api.ref.split("/")[1], "peer": pg.ip,
                     "port": str(PG_PORT)}
                assert float(vip_edge["value"][1]) == 1.0

            check_maps([cluster_map(prom) for prom in proms])
            # what an operator reads: the table and the picture name the same edges
            table = nsnet_cluster(proms[0], "table")
            rows = [line for line in table.splitlines() if line.startswith("Deployment shop/api")]
            assert any(f"{VIP}:{PG_PORT}" in r and "StatefulSet data/postgres" in r
                       and "node-a,node-b" in r for r in rows), table
            assert any("Deployment cache/redis" in r and "node-a,node-c" in r for r in rows), table
            mermaid = nsnet_cluster(proms[0], "mermaid")
            assert mermaid.startswith(("graph", "flowchart")) and "postgres" in mermaid
            check_readme_queries(proms, api, web, pg)
            # the map's own queries answer through both styles (nsnet cluster ran them)
            for title, ref, expr in dashboard_queries():
                assert proms[0].query(expr), (title, ref, expr)

            # each agent's text exposition passes Prometheus' own linter
            for name in cluster.nodes:
                status, body = cluster.get(name, "/metrics")
                assert status == 200
                lint = subprocess.run([shutil.which("promtool") or "promtool", "check",
                                       "metrics"], input=body, capture_output=True,
                                      timeout=60)
                assert lint.returncode == 0 and not lint.stdout.strip() and \
                    not lint.stderr.strip(), (name, lint.stdout, lint.stderr)
        finally:
            for prom in proms:
                prom.stop()
        for node in cluster.nodes.values():     # nothing went wrong quietly
            assert "Traceback" not in (node.host_root / "agent.log").read_text()
