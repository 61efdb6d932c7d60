"""nsnet against real containers laid out like kubelet pods (tests/support/kubepods.py).

Every expectation comes from the setup (container ids, pids, uids, ports, cgroup paths we
chose), never from nsnet. nsnet runs as a separate process, as users run it:
`python -m nsnet <view> --json --host-root <fake kubelet root>`; each view is taken once
(the scenario does not change) and shared by the tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

import pytest

from conftest import require_root
from kubepods import (UID_CLIENT, UID_DB, UID_EXPORTER, UID_PAUSE, UID_PLAIN, UID_SIDECAR,
                      UID_WEB, KubeNode)

pytestmark = pytest.mark.containers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ("ip", "ss", "dockerd", "docker", "runc", "gcc", "busybox")


@pytest.fixture(scope="module")
def kube():
    """Module-scoped on purpose: the containers live only while this module runs, so the
    rest of the suite (which compares nsnet with the whole node) never sees them."""
    require_root(*TOOLS)
    with KubeNode.build() as kn:
        yield kn


def run_nsnet(args: list[str], env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsnet", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


class Views:
    """Each nsnet view of the scenario, taken once (lazily) and shared by the tests."""

    def __init__(self, kn) -> None:
        self.kn = kn
        self._docs: dict[tuple, dict] = {}

    def get(self, *args: str) -> dict:
        if args not in self._docs:
            done = run_nsnet([*args, "--json", "--host-root", str(self.kn.host_root)])
            assert done.returncode == 0, (args, done.stderr)
            self._docs[args] = json.loads(done.stdout)
        return self._docs[args]


@pytest.fixture(scope="module")
def views(kube):
    return Views(kube)


def pod_doc(doc: dict, uid: str) -> dict:
    found = [p for p in doc["pods"] if p["uid"] == uid]
    assert len(found) == 1, f"pod {uid} listed {len(found)} times in {[p['uid'] for p in doc['pods']]}"
    return found[0]


def find_socket(doc: dict, t) -> dict:
    """The socket of SocketTruth `t`: keyed by namespace and ports (unique in our scenario)."""
    found = [s for s in doc["sockets"]
             if s["netns"] == t.netns and s["proto"] == t.proto and s["state"] == t.state
             and s["local_port"] == t.local_port
             and (t.remote_port is None or s["remote_port"] == t.remote_port)]
    assert len(found) == 1, f"{t.key}: {len(found)} matches: {found}"
    return found[0]


def container_ref(c, pod) -> dict:
    return {"id": c.id, "name": c.name, "pod_uid": pod.uid if pod else None, "claimed_pod": None}


# ------------------------------------------------------------------ the harness itself


def test_harness_layout_is_what_a_kubelet_makes(kube):
    """The scenario is right before nsnet is judged on it: cgroup paths carry the pod uid in
    both drivers' spellings and the container id, sandboxes run /pause as UID_PAUSE, app
    containers run as their uids, each pod has its own namespace except hostNetwork."""
    for pod in kube.pods.values():
        uid_text = pod.uid.replace("-", "_") if pod.key == "client" else pod.uid
        for c in [pod.sandbox, *pod.apps]:
            with open(f"/proc/{c.pid}/cgroup") as f:
                line = next(x for x in f.read().splitlines() if x.split(":")[1] == "pids")
            assert f"pod{uid_text}" in line and c.id in line, line
            assert all(os.stat(f"/proc/{p}").st_uid == c.uid for p in c.pids)
            assert c.netns == pod.netns
        with open(f"/proc/{pod.sandbox.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"/pause"
    netns = [p.netns for p in kube.pods.values()]
    assert len(set(netns)) == len(netns)
    assert kube.pods["agent"].netns == kube.host_netns
    assert kube.containers["plain"].netns not in netns
    print(f"KubeNode setup took {kube.setup_seconds:.2f}s")


# ------------------------------------------------------------------ by-pod


def test_by_pod_names_pods_and_containers(kube, views):
    doc = views.get("by-pod")
    assert doc["schema"] == "nsnet/1" and doc["view"] == "by-pod"
    assert doc["stats"]["kubelet_errors"] == []
    for pod in kube.pods.values():
        p = pod_doc(doc, pod.uid)
        assert (p["namespace"], p["name"], p["qos"], p["host_network"]) == \
            (pod.namespace, pod.name, pod.qos, pod.host_network), pod.key
        assert p["netns"] == [pod.netns], pod.key
        by_id = {c["id"]: c for c in p["containers"]}
        want = {c.id for c in [pod.sandbox, *pod.apps]}
        assert set(by_id) == want, pod.key
        sb = by_id[pod.sandbox.id]
        assert sb["sandbox"] is True and sb["name"] is None, sb
        assert sb["pids"] == pod.sandbox.pids and sb["users"] == [UID_PAUSE], sb
        for app in pod.apps:
            c = by_id[app.id]
            assert (c["name"], c["sandbox"], c["users"]) == (app.name, False, [app.uid]), c
            assert c["pids"] == app.pids, (app.key, c)


def test_by_pod_owners_are_app_users_never_the_sandbox(kube, views):
    doc = views.get("by-pod")
    for pod in kube.pods.values():
        p = pod_doc(doc, pod.uid)
        assert p["owners"] == pod.owners, pod.key
        assert UID_PAUSE not in p["owners"]


def test_by_pod_runtime_from_cgroup_layout(kube, views):
    """systemd-style `cri-containerd-<id>.scope` says containerd; the kubelet cgroupfs layout
    (`/kubepods/<qos>/pod<uid>/<id>`) does not name its runtime."""
    doc = views.get("by-pod")
    client = pod_doc(doc, kube.pods["client"].uid)
    assert {c["runtime"] for c in client["containers"]} == {"containerd"}
    web = pod_doc(doc, kube.pods["web"].uid)
    assert {c["runtime"] for c in web["containers"]} <= {None, "docker"}


def test_by_pod_cross_pod_connection_both_ends(kube, views):
    doc = views.get("by-pod")
    web, client = kube.pods["web"], kube.pods["client"]
    w = pod_doc(doc, web.uid)
    c = pod_doc(doc, client.uid)

    [listener] = [x for x in w["listening"] if x["port"] == 8080]
    assert listener["users"] == [UID_WEB] and listener["pods"] == [web.ref()]
    assert [x["container"] for x in listener["processes"]] == ["server"]

    [out] = c["connects_to"]
    assert (out["peer_addr"], out["peer_port"], out["count"]) == ("10.88.0.1", 8080, 1)
    assert out["users"] == [UID_CLIENT] and out["peer_users"] == [UID_WEB]
    assert out["pods"] == [client.ref()] and out["peer_pods"] == [web.ref()]
    assert out["netns"] == [client.netns] and out["peer_netns"] == [web.netns]
    assert out["pids"] == [kube.containers["client/curl"].pid]

    [inb] = w["connected_from"]
    assert (inb["peer_addr"], inb["local_port"], inb["count"]) == ("10.88.0.2", 8080, 1)
    assert inb["users"] == [UID_WEB] and inb["peer_users"] == [UID_CLIENT]
    assert inb["pods"] == [web.ref()] and inb["peer_pods"] == [client.ref()]
    assert c["listening"] == [] and w["connects_to"] == []


def test_by_pod_connection_inside_one_pod(kube, views):
    """Two app containers of one pod (db UID_DB, sidecar UID_SIDECAR) over loopback."""
    doc = views.get("by-pod")
    ledger = kube.pods["ledger"]
    p = pod_doc(doc, ledger.uid)
    [out] = p["connects_to"]
    [inb] = p["connected_from"]
    assert (out["peer_addr"], out["peer_port"], out["users"], out["peer_users"]) == \
        ("127.0.0.1", 9000, [UID_SIDECAR], [UID_DB])
    assert (inb["local_port"], inb["users"], inb["peer_users"]) == (9000, [UID_DB], [UID_SIDECAR])
    assert out["peer_pods"] == inb["peer_pods"] == [ledger.ref()]
    assert [x["port"] for x in p["listening"]] == [9000]


def test_by_pod_host_network_pod_keeps_its_socket(kube, views):
    doc = views.get("by-pod")
    agent = kube.pods["agent"]
    p = pod_doc(doc, agent.uid)
    assert p["host_network"] is True and p["netns"] == [kube.host_netns]
    [listener] = p["listening"]
    assert (listener["addr"], listener["port"], listener["netns"]) == \
        ("127.0.0.1", kube.exporter_port, kube.host_netns)
    assert listener["users"] == [UID_EXPORTER] and listener["pods"] == [agent.ref()]
    # The host namespace's other sockets are not this pod's.
    assert p["sockets"] == 1, p


def test_by_pod_filter_by_name_and_uid(kube, views):
    web = kube.pods["web"]
    for sel in (f"{web.namespace}/{web.name}", web.uid):
        doc = views.get("by-pod", "--pod", sel)
        assert [p["uid"] for p in doc["pods"]] == [web.uid], sel


def test_plain_docker_container_is_in_no_pod(kube, views):
    doc = views.get("by-pod")
    plain = kube.containers["plain"]
    for p in doc["pods"]:
        assert plain.id not in {c["id"] for c in p["containers"]}
        assert plain.netns not in p["netns"]


# ------------------------------------------------------------------ sockets


def test_sockets_name_pod_container_and_owner(kube, views):
    doc = views.get("sockets", "--tcp")
    procs = {p["pid"]: p for p in doc["processes"]}
    for t in kube.sockets.values():
        s = find_socket(doc, t)
        c = kube.containers[t.container]
        pod = kube.pods[t.pod] if t.pod else None
        assert s["pods"] == ([pod.ref()] if pod else []), t.key
        assert s["containers"] == [container_ref(c, pod)], t.key
        assert s["users"] == [t.uid], t.key
        assert s["direction"] == t.direction, t.key
        assert s["pids"] and set(s["pids"]) <= set(c.pids), (t.key, s["pids"], c.pids)
        for pid in s["pids"]:
            p = procs[pid]
            assert p["uid"] == t.uid and p["sandbox"] is False
            assert p["container"]["id"] == c.id and p["container"]["sandbox"] is False
            assert p["container"]["name"] == c.name
            if pod:
                assert p["pod"] == {**pod.ref(), "qos": pod.qos}, t.key
            else:
                assert p["pod"] is None and p["container"]["runtime"] == "docker"


def test_sockets_cross_pod_peers(kube, views):
    doc = views.get("sockets", "--tcp")
    web, client = kube.pods["web"], kube.pods["client"]
    out = find_socket(doc, kube.sockets["client-conn"])
    inb = find_socket(doc, kube.sockets["web-accepted"])
    assert out["peer_netns"] == web.netns and inb["peer_netns"] == client.netns
    assert out["peer_pids"] == inb["pids"] and inb["peer_pids"] == out["pids"]
    assert out["peer"] == inb["peer"] == "node"


def test_host_network_socket_in_host_namespace_carries_its_pod(kube, views):
    doc = views.get("sockets", "--tcp")
    t = kube.sockets["exporter-listen"]
    s = find_socket(doc, t)
    assert s["netns"] == kube.host_netns
    assert s["pods"] == [kube.pods["agent"].ref()]
    assert [n for n in doc["namespaces"] if n["inode"] == kube.host_netns][0]["host"] is True


# ------------------------------------------------------------------ by-namespace / by-user


def test_by_namespace_pods_owners_and_sandboxes(kube, views):
    doc = views.get("by-namespace")
    nss = {n["inode"]: n for n in doc["namespaces"]}
    for pod in kube.pods.values():
        n = nss[pod.netns]
        assert pod.ref() in n["pods"], pod.key
        if pod.host_network:
            assert n["host"] is True
            assert set(pod.owners) <= set(n["owners"]) and UID_PAUSE not in n["owners"]
            continue
        assert n["pods"] == [pod.ref()] and n["owners"] == pod.owners, pod.key
        assert n["pids"] == sorted(p for c in [pod.sandbox, *pod.apps] for p in c.pids)
        procs = {p["pid"]: p for p in n["processes"]}
        sb = procs[pod.sandbox.pid]
        assert sb["sandbox"] is True and sb["container"]["sandbox"] is True, sb
        assert sb["container"]["id"] == pod.sandbox.id and sb["pod"]["uid"] == pod.uid
        for app in pod.apps:
            for pid in app.pids:
                assert procs[pid]["sandbox"] is False
                assert procs[pid]["container"]["name"] == app.name
        ports = sorted(x["port"] for x in n["listening"])
        assert ports == sorted(t.local_port for t in kube.sockets.values()
                               if t.netns == pod.netns and t.direction == "listening")
    plain = kube.containers["plain"]
    n = nss[plain.netns]
    assert n["pods"] == [] and n["owners"] == [UID_PLAIN]
    assert [x["port"] for x in n["listening"]] == [7070]


def test_by_user_names_pods_of_each_owner(kube, views):
    doc = views.get("by-user")
    users = {u["uid"]: u for u in doc["users"]}
    pods = kube.pods
    for pod in pods.values():
        for uid in pod.owners:
            u = users[uid]
            assert pod.ref() in u["pods"], (uid, pod.key)
            assert pod.netns in u["namespaces"], (uid, pod.key)
    # the pause user owns nothing: it is in every pod, and in none of them an owner
    assert users[UID_PAUSE]["pods"] == [] and users[UID_PAUSE]["namespaces"] == []

    [listen] = users[UID_WEB]["listening"]
    assert (listen["port"], listen["pods"]) == (8080, [pods["web"].ref()])
    [out] = users[UID_CLIENT]["connects_to"]
    assert (out["peer_addr"], out["peer_port"]) == ("10.88.0.1", 8080)
    assert out["pods"] == [pods["client"].ref()] and out["peer_pods"] == [pods["web"].ref()]
    [inb] = users[UID_WEB]["connected_from"]
    assert inb["peer_pods"] == [pods["client"].ref()] and inb["peer_users"] == [UID_CLIENT]

    assert [x["port"] for x in users[UID_EXPORTER]["listening"]] == [kube.exporter_port]
    assert users[UID_EXPORTER]["pods"] == [pods["agent"].ref()]
    plain = users[UID_PLAIN]
    assert plain["pods"] == [] and plain["namespaces"] == [kube.containers["plain"].netns]
    assert [(x["port"], x["pods"]) for x in plain["listening"]] == [(7070, [])]


# ------------------------------------------------------------------ degraded inputs


def test_without_kubelet_logs_pods_still_found_by_cgroup(kube, tmp_path):
    """No /var/log/pods: pods are still grouped by uid (from cgroups), names unknown, the
    sandbox still told apart (it runs /pause and holds no socket)."""
    done = run_nsnet(["by-pod", "--json", "--host-root", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    for pod in kube.pods.values():
        p = pod_doc(doc, pod.uid)
        assert (p["namespace"], p["name"]) == (None, None)
        assert p["owners"] == pod.owners, pod.key
        sandboxes = [c["id"] for c in p["containers"] if c["sandbox"]]
        assert sandboxes == [pod.sandbox.id], pod.key


def test_sandbox_without_pause_name_recognised_by_kubelet_logs(kube, views):
    """With the command rule made useless (--sandbox-command that matches nothing), the
    sandbox is still recognised: a pod container with no kubelet log that holds no socket."""
    doc = views.get("by-pod", "--sandbox-command", "nsnt-matches-nothing")
    for pod in kube.pods.values():
        p = pod_doc(doc, pod.uid)
        assert [c["id"] for c in p["containers"] if c["sandbox"]] == [pod.sandbox.id]
        assert p["owners"] == pod.owners, pod.key
