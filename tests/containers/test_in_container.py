"""nsnet inside a container shaped like deploy/'s DaemonSet sees what nsnet on the host sees.

The agent image is deploy/Dockerfile built offline (tests/support/agent_image.py) on the private
daemon of the pod scenario (tests/support/kubepods.py). The container gets exactly the DaemonSet's
privileges: host pid namespace, host /proc read-only at /host/proc, the kubelet log trees
read-only under /host, read-only root, uid 0 with every capability dropped but SYS_PTRACE and
DAC_READ_SEARCH, no-new-privileges, and no network (the agent needs none to read /proc).
Same output as on the host proves those privileges are enough; a run with one of them
removed must still exit 0 and say what it could not see.
"""
from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from conftest import require_root
from kubepods import KubeNode
from test_kubepods import TOOLS, run_nsnet

pytestmark = pytest.mark.containers

DAEMONSET_CAPS = ("SYS_PTRACE", "DAC_READ_SEARCH")
CAP_BITS = {"DAC_READ_SEARCH": 2, "SYS_PTRACE": 19}
# Fields that differ between a host and a container run for reasons other than what nsnet
# sees: user names come from the running system's passwd (the image has none of the
# tenants), how a table was read is an implementation detail; and what only some sources
# can tell: whether a [::] listener takes IPv4 too (the DaemonSet's auto is proc, without
# CAP_SYS_ADMIN; the host run's is netlink) -- checked apart (listeners_v6only).
UNSTABLE = {"owner_names", "user", "name_resolved", "read_via", "started", "v6only"}


def listeners_v6only(doc) -> list:
    """The v6only of every IPv6 wildcard listener in a view document, at any depth."""
    found = []
    if isinstance(doc, dict):
        if doc.get("addr") == "::" and "v6only" in doc:
            found.append(doc["v6only"])
        for v in doc.values():
            found.extend(listeners_v6only(v))
    elif isinstance(doc, list):
        for v in doc:
            found.extend(listeners_v6only(v))
    return found


@pytest.fixture(scope="module")
def kube():
    require_root(*TOOLS)
    with KubeNode.build() as kn:
        yield kn


@pytest.fixture(scope="module")
def agent_image(kube):
    from agent_image import build_agent_image

    tag = f"nsnt-agent:{kube.suffix}"
    build_agent_image(kube.docker, tag, kube.work / "agent")
    return tag


def daemonset_run(kube, image: str, args: list[str], caps=DAEMONSET_CAPS,
                  entrypoint: list[str] = ()) -> subprocess.CompletedProcess:
    argv = [*kube.docker, "run", "--rm", "--name", f"{kube.prefix}-agent-{secrets.token_hex(3)}",
            "--pid=host", "--network", "none", "--read-only", "--user", "0:0",
            "--cap-drop", "ALL", *[a for cap in caps for a in ("--cap-add", cap)],
            "--security-opt", "no-new-privileges",
            "-v", "/proc:/host/proc:ro",
            "-v", f"{kube.host_root}/var/log/pods:/host/var/log/pods:ro",
            "-v", f"{kube.host_root}/var/log/containers:/host/var/log/containers:ro",
            "-e", "NSNET_PROC=/host/proc", "-e", "NSNET_HOST_ROOT=/host",
            *entrypoint, image, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def host_run(kube, args: list[str]) -> dict:
    done = run_nsnet([*args, "--json", "--host-root", str(kube.host_root)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def container_run(kube, image: str, args: list[str], caps=DAEMONSET_CAPS) -> tuple[dict, str]:
    done = daemonset_run(kube, image, [*args, "--json"], caps)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def stable(doc):
    """The document without the fields UNSTABLE names, at any depth."""
    if isinstance(doc, dict):
        return {k: stable(v) for k, v in doc.items() if k not in UNSTABLE}
    if isinstance(doc, list):
        return [stable(v) for v in doc]
    return doc


def test_agent_container_has_exactly_the_daemonset_privileges(kube, agent_image):
    """The container under test is what the manifest asks for: capabilities, no new
    privileges, read-only root, uid 0, its own network namespace, the host's pids."""
    probe = ("import json, os\n"
             "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
             "try:\n"
             "    open('/probe', 'w'); ro = False\n"
             "except OSError:\n"
             "    ro = True\n"
             "print(json.dumps({'capeff': int(status['CapEff'], 16), 'capbnd': int(status['CapBnd'], 16),\n"
             "    'nnp': status['NoNewPrivs'].strip(), 'uid': os.geteuid(), 'ro': ro,\n"
             "    'netns': os.stat('/proc/self/ns/net').st_ino,\n"
             "    'host_pids': os.readlink('/proc/self/ns/pid') == os.readlink('/host/proc/2/ns/pid')}))\n")
    done = daemonset_run(kube, agent_image, ["-c", probe],
                         entrypoint=["--entrypoint", "/opt/nsnet/bin/python3"])
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want_caps = sum(1 << CAP_BITS[c] for c in DAEMONSET_CAPS)
    assert got["capeff"] == want_caps and got["capbnd"] == want_caps, got
    assert (got["nnp"], got["uid"], got["ro"]) == ("1", 0, True), got
    assert got["netns"] != kube.host_netns and got["host_pids"] is True


@pytest.mark.parametrize("view", ["by-pod", "by-namespace"])
def test_same_result_in_the_daemonset_container_as_on_the_host(kube, agent_image, view):
    host = host_run(kube, [view])
    inside, _ = container_run(kube, agent_image, [view])
    # the container reads /proc tables (no CAP_SYS_ADMIN), which never say v6only; the host
    # run reads sock_diag, which always does for a [::] listener
    assert inside["stats"]["source"] == "proc" and host["stats"]["source"] == "netlink"
    assert set(listeners_v6only(inside)) == {None}
    assert None not in listeners_v6only(host) and listeners_v6only(host)
    assert inside["stats"]["host_netns"] == host["stats"]["host_netns"] \
        == f"net:[{kube.host_netns}]"
    assert inside["stats"]["kubelet_errors"] == host["stats"]["kubelet_errors"] == []
    if view == "by-pod":
        for pod in kube.pods.values():
            [h] = [p for p in host["pods"] if p["uid"] == pod.uid]
            [c] = [p for p in inside["pods"] if p["uid"] == pod.uid]
            assert (c["namespace"], c["name"]) == (pod.namespace, pod.name)
            assert stable(c) == stable(h), pod.key
        return
    ours = {p.netns for p in kube.pods.values() if not p.host_network}
    ours.add(kube.containers["plain"].netns)
    for inode in ours:
        [h] = [n for n in host["namespaces"] if n["inode"] == inode]
        [c] = [n for n in inside["namespaces"] if n["inode"] == inode]
        assert stable(c) == stable(h), inode
    # The host namespace also holds the rest of the machine (and, on the host run, nsnet
    # itself): compare what belongs to the scenario.
    [h] = [n for n in host["namespaces"] if n["host"]]
    [c] = [n for n in inside["namespaces"] if n["host"]]
    assert c["inode"] == h["inode"] == kube.host_netns
    agent = kube.pods["agent"]
    assert agent.ref() in c["pods"] and agent.ref() in h["pods"]
    assert set(agent.owners) <= set(c["owners"]) and set(agent.owners) <= set(h["owners"])
    port = kube.exporter_port
    assert stable([x for x in c["listening"] if x["port"] == port]) == \
        stable([x for x in h["listening"] if x["port"] == port]) != []


@pytest.mark.parametrize("missing", DAEMONSET_CAPS)
def test_a_missing_capability_is_reported_not_fatal(kube, agent_image, missing):
    caps = [c for c in DAEMONSET_CAPS if c != missing]
    doc, stderr = container_run(kube, agent_image, ["by-pod"], caps)
    warnings = [line for line in stderr.splitlines() if line.startswith("nsnet: warning:")]
    assert any(f"CAP_{missing}" in line for line in warnings), stderr
    privileges = doc["stats"]["privileges"]
    assert any(f"CAP_{missing}" in p for p in privileges), privileges
    # Every tenant process of the scenario runs as another uid: without SYS_PTRACE its
    # namespace and fds are hidden, without DAC_READ_SEARCH its fd directory is.
    tenants = [pid for c in kube.containers.values() if not c.sandbox for pid in c.pids]
    assert doc["stats"]["processes_fd_denied"] >= len(tenants), doc["stats"]
    if missing == "SYS_PTRACE":
        assert doc["stats"]["processes_ns_denied"] >= len(tenants), doc["stats"]
    # What needs no privilege still works: pods from cgroups, names from the kubelet logs.
    for pod in kube.pods.values():
        [p] = [x for x in doc["pods"] if x["uid"] == pod.uid]
        assert (p["namespace"], p["name"]) == (pod.namespace, pod.name)
