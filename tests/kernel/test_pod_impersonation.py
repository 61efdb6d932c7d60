"""A tenant cannot pass for another pod through a cgroup named after it, nor drop out of its
namespace's owners by calling itself pause.

Real processes, real cgroups: the dependency node (support/depnode.py: pods as namespaces
and cgroups, the kubelet's log tree under a host root). A tenant gets a cgroup subtree of its
own (what systemd delegates to user@.service) and, under it, a path shaped exactly like the
kubelet's for pod tenant-a, with a made-up container id; a process of its uid in its own
namespace listens there. In a second namespace, a tenant process named pause (holding no
socket) joins a co-tenant's namespace, where it listens.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_root
from depnode import CGROUP_ROOT, DepNode
from realnode import ip_tool
from tenant import start_as

REPO = Path(__file__).resolve().parents[2]
TENANT, COTENANT = 10816, 10817

LISTEN = r"""
import socket, sys
s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
print("ready", flush=True)
sys.stdin.read()
"""
IDLE = r"""
import sys
print("ready", flush=True)
sys.stdin.read()
"""


def nsnet(*args: str) -> tuple[dict, str]:
    run = subprocess.run([sys.executable, "-m", "nsnet", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), run.stderr


def start(netns: str, uid: int, prog: str, *args: str, argv0: str | None = None,
          cgroup: Path | None = None) -> subprocess.Popen:
    popen, line = start_as(uid, prog, *args, netns=netns, argv0=argv0, cgroup=cgroup)
    assert line.strip() == "ready", line
    return popen


@pytest.fixture(scope="module")
def impostors(tmp_path_factory):
    require_root("ip", "setpriv", "ss")
    root = tmp_path_factory.mktemp("host")
    tag = secrets.token_hex(3)
    netns = {"tenant": f"nsnt-imp-{tag}", "shared": f"nsnt-shr-{tag}"}
    procs: list[subprocess.Popen] = []
    delegated = CGROUP_ROOT / f"nsnt-user-{tag}"
    with DepNode.build(root) as node:
        try:
            for ns in netns.values():
                subprocess.run([ip_tool(), "netns", "add", ns], check=True)
            fake_id = secrets.token_hex(32)
            leaf = delegated / "kubepods" / "burstable" / f"pod{node.pod_uid['a']}" / fake_id
            leaf.mkdir(parents=True)
            for d in [delegated, *delegated.rglob("*")]:
                if d.is_dir():
                    os.chown(d, TENANT, TENANT)
            procs.append(start(netns["tenant"], TENANT, LISTEN, "8080", cgroup=leaf))
            # the co-tenant first: a holder that made the namespace would have come first
            cotenant = start(netns["shared"], COTENANT, LISTEN, "9090")
            time.sleep(0.05)   # a later clock tick (start times count in 10 ms ticks)
            procs.append(start(netns["shared"], TENANT, IDLE, argv0="pause"))
            procs.append(cotenant)
            inodes = {k: os.stat(f"/run/netns/{v}").st_ino for k, v in netns.items()}
            yield node, root, fake_id, inodes, procs
        finally:
            for p in procs:
                p.kill()
                p.wait()
            for ns in netns.values():
                subprocess.run([ip_tool(), "netns", "del", ns], capture_output=True)
            for d in sorted((p for p in delegated.rglob("*") if p.is_dir()), reverse=True):
                d.rmdir()
            if delegated.exists():
                delegated.rmdir()


def test_a_cgroup_named_after_a_pod_does_not_make_a_process_the_pods(impostors):
    node, root, fake_id, inodes, procs = impostors
    impostor = procs[0].pid
    doc, stderr = nsnet("by-pod", "--json", "--host-root", str(root))
    [pod_a] = [p for p in doc["pods"] if p["uid"] == node.pod_uid["a"]]
    assert impostor not in {p["pid"] for c in pod_a["containers"] for p in c.get("processes", [])}
    assert fake_id not in {c["id"] for c in pod_a["containers"]}
    assert TENANT not in pod_a["owners"]
    assert 8080 not in {listener["port"] for listener in pod_a["listening"]}
    assert doc["stats"]["pod_claims_rejected"] == 1
    assert f"pid {impostor} (python" in stderr and "claims shop/tenant-a" in stderr

    sockets, _ = nsnet("sockets", "--json", "--host-root", str(root))
    [listener] = [s for s in sockets["sockets"] if s["netns"] == inodes["tenant"]
                  and s["local_port"] == 8080]
    assert listener["pods"] == []
    assert listener["containers"] == [{"id": fake_id, "name": None, "pod_uid": None,
                                       "claimed_pod": node.pod_uid["a"]}]
    assert listener["users"] == [TENANT]


def test_a_process_named_pause_stays_an_owner(impostors):
    _, root, _, inodes, procs = impostors
    doc, _ = nsnet("by-namespace", "--json", "--host-root", str(root))
    [shared] = [n for n in doc["namespaces"] if n["inode"] == inodes["shared"]]
    assert shared["owners"] == [TENANT, COTENANT]
    assert procs[1].pid in shared["pids"]
