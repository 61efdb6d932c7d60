"""Smoke test of support/simcluster.py: three nodes, each agent sees its own node only.

  node-a: shop/api-7c9d8f6b5-x2x7q -> cache/redis-... on node-c by pod IP (host-gw, no NAT)
          and -> 10.96.0.20:5432, a ClusterIP DNATed in node-a's netns to data/postgres-0
  node-b: data/postgres-0 (5432), shop/web-... -> postgres-0 by pod IP (same node)
  node-c: cache/redis-6b8f9d7c5-m4n8p (6379)
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from conftest import require_root
from prometheus_client.parser import text_string_to_metric_families
from simcluster import Conn, Pod, SimCluster

VIP, PG_PORT, REDIS_PORT = "10.96.0.20", 5432, 6379
ESTABLISHED = ("ESTABLISHED", "ESTAB")


def _pod_refs(docs: list[dict]) -> set[str]:
    return {f"{p['namespace']}/{p['name']}" for d in docs for p in d.get("pods") or ()}


def _socks(doc: dict, pod: Pod, **want: object) -> list[dict]:
    """The snapshot's TCP sockets of the pod with these fields."""
    return [s for s in doc["sockets"] if s["proto"] == "tcp"
            and pod.ref in _pod_refs([s]) and all(s[k] == v for k, v in want.items())]


def _pod_addresses(metrics: str) -> set[tuple[str, str, str, str]]:
    """(node, namespace/pod, address, pod_uid) of every nsnet_address_info kind="pod"."""
    out = set()
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "nsnet_address_info" and s.labels["kind"] == "pod":
                lab = s.labels
                out.add((lab["node"], f"{lab['namespace']}/{lab['pod']}", lab["address"],
                         lab["pod_uid"]))
    return out


def _problems(cluster: SimCluster, pods: dict[str, Pod], conns: dict[str, Conn]) -> list[str]:
    """What the agents do not (yet) say right; empty when all is as built."""
    problems = []
    docs, metrics = {}, {}
    for name in cluster.nodes:
        status, body = cluster.get(name, "/api/v1/snapshot")
        if status != 200:
            return [f"{name}: /api/v1/snapshot {status}"]
        docs[name] = json.loads(body)
        status, body = cluster.get(name, "/metrics")
        metrics[name] = body.decode()
    for name, node in cluster.nodes.items():
        doc = docs[name]
        want = {p.ref for p in node.pods}
        seen = _pod_refs(doc["namespaces"])
        if seen != want:
            problems.append(f"{name}: pods {sorted(seen)}, want {sorted(want)}")
        # nsnet's host namespace is the node's: pid 1 of the procfs it reads is there
        host = [ns for ns in doc["namespaces"] if ns["host"]]
        if len(host) != 1 or node.ip not in {a["addr"] for a in host[0]["addresses"] or ()}:
            problems.append(f"{name}: host namespace {host} lacks {node.ip}")
        want_addr = {(name, p.ref, p.ip, p.uid) for p in node.pods}
        got_addr = _pod_addresses(metrics[name])
        if got_addr != want_addr:
            problems.append(f"{name}: address_info kind=pod {sorted(got_addr)}, "
                            f"want {sorted(want_addr)}")
    api, pg, redis = pods["api"], pods["pg"], pods["redis"]
    to_vip, to_redis = conns["vip"], conns["redis"]
    # the client's end knows only the VIP: its peer is 10.96.0.20:5432
    if not [s for s in _socks(docs["node-a"], api, remote_addr=VIP, remote_port=PG_PORT,
                               local_port=to_vip.local_port) if s["state"] in ESTABLISHED]:
        problems.append(f"node-a: no socket of {api.ref} to {VIP}:{PG_PORT}")
    # the backend's accepted end sees the client pod itself (DNAT on node-a, no SNAT)
    accepted = [s for s in _socks(docs["node-b"], pg, local_port=PG_PORT, remote_addr=api.ip,
                                  remote_port=to_vip.local_port)
                if s["state"] in ESTABLISHED and s["pids"]]
    if not accepted:
        problems.append(f"node-b: {pg.ref} holds no accepted socket from {api.ip}")
    if not _socks(docs["node-a"], api, remote_addr=redis.ip, remote_port=REDIS_PORT,
                  local_port=to_redis.local_port):
        problems.append(f"node-a: no socket of {api.ref} to {redis.ip}:{REDIS_PORT}")
    if not [s for s in _socks(docs["node-c"], redis, local_port=REDIS_PORT,
                              remote_addr=api.ip, remote_port=to_redis.local_port)
            if s["pids"]]:
        problems.append(f"node-c: {redis.ref} holds no accepted socket from {api.ip}")
    return problems


def test_three_nodes_each_agent_sees_its_own_node(tmp_path: Path) -> None:
    require_root("ip", "iptables", "unshare", "setpriv", "ss")
    started = time.monotonic()
    with SimCluster.build(tmp_path) as cluster:
        api = cluster.add_pod("node-a", "shop/api-7c9d8f6b5-x2x7q")
        pg = cluster.add_pod("node-b", "data/postgres-0")
        web = cluster.add_pod("node-b", "shop/web-5f6d7c8b9-qk4zt")
        redis = cluster.add_pod("node-c", "cache/redis-6b8f9d7c5-m4n8p")
        cluster.listen(pg, PG_PORT)
        cluster.listen(redis, REDIS_PORT)
        to_redis = cluster.connect(api, redis.ip, REDIS_PORT)
        cluster.connect(web, pg.ip, PG_PORT)
        cluster.service_vip("node-a", VIP, PG_PORT, pg, PG_PORT)
        to_vip = cluster.connect(api, VIP, PG_PORT)
        # the kernel's own word: node-a's table holds the translation, node-b's knows no VIP
        cluster.wait_for(pg.netns, lambda rows: ("ESTAB", f"{pg.ip}:{PG_PORT}",
                                                 f"{api.ip}:{to_vip.local_port}") in rows,
                         "the VIP connection at the backend")
        if shutil.which("conntrack"):
            nat = cluster.conntrack("node-a", "-p", "tcp", "--orig-dst", VIP)
            assert f"sport={to_vip.local_port}" in nat and f"src={pg.ip}" in nat, nat
            assert VIP not in cluster.conntrack("node-b"), "node-b translated nothing"

        targets = cluster.start_agents()
        assert targets == [f"172.31.0.1{i}:9810" for i in (1, 2, 3)]
        pods = {"api": api, "pg": pg, "redis": redis}
        conns = {"vip": to_vip, "redis": to_redis}
        deadline = time.monotonic() + 30
        while problems := _problems(cluster, pods, conns):
            if time.monotonic() > deadline:
                logs = {n: (node.host_root / "agent.log").read_text()[-800:]
                        for n, node in cluster.nodes.items()}
                raise AssertionError(f"{problems}\nagent logs: {logs}")
            time.sleep(0.5)
        for node in cluster.nodes.values():     # nothing went wrong quietly
            assert "Traceback" not in (node.host_root / "agent.log").read_text()
    assert time.monotonic() - started < 60
