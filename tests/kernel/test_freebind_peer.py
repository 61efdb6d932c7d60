"""A tenant cannot pass for the node's end of connections to an external service by binding
its address with IP_FREEBIND (no capability needed).

Real sockets: a client namespace connects (SYN_SENT, out of a veth) to
10.0.0.5:3306, an address no namespace of the node has, and to 10.0.0.6:5432, the address of
a service namespace (on its veth) with a listener there. A tenant's namespace, as
another uid, holds a listener on 10.0.0.5:3306 bound with IP_FREEBIND. The first connection's
other end is off the node; the second's is the service's namespace -- with every source.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_root
from realnode import ip_tool
from tenant import start_json

REPO = Path(__file__).resolve().parents[2]
TENANT, SERVICE, CLIENT = 10813, 10814, 10815

# argv: address, port, freebind (0/1); listens there, prints its inode, waits on stdin
LISTEN = r"""
import json, os, socket, sys
s = socket.socket()
if sys.argv[3] == "1":
    s.setsockopt(socket.IPPROTO_IP, 15, 1)   # IP_FREEBIND
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print(json.dumps(os.fstat(s.fileno()).st_ino), flush=True)
sys.stdin.read()
"""
# argv: address:port ...; connects to each without waiting (SYN_SENT), prints the inodes
CONNECT = r"""
import json, os, socket, sys
held = []
for ep in sys.argv[1:]:
    addr, port = ep.rsplit(":", 1)
    s = socket.socket(); s.setblocking(False)
    try:
        s.connect((addr, int(port)))
    except BlockingIOError:
        pass
    held.append(s)
print(json.dumps([os.fstat(s.fileno()).st_ino for s in held]), flush=True)
sys.stdin.read()
"""


def _ns(name: str, *setup: str) -> None:
    subprocess.run([ip_tool(), "netns", "add", name], check=True)
    for cmd in ("link set lo up", *setup):
        subprocess.run([ip_tool(), "-n", name, *cmd.split()], check=True)


@pytest.fixture(scope="module")
def freebind():
    require_root("ip", "setpriv")
    tag = secrets.token_hex(3)
    names = {role: f"nsnt-fb{role[0]}-{tag}" for role in ("tenant", "service", "client")}
    # (no dummy driver everywhere: a veth pair with both ends in the namespace)
    dummy = ("link add d0 type veth peer name d1", "link set d1 up", "link set d0 up")
    procs: list[subprocess.Popen] = []
    try:
        _ns(names["tenant"])
        _ns(names["service"], *dummy, "addr add 10.0.0.6/32 dev d0")
        # a gateway whose neighbour entry is permanent: the SYNs leave, nothing answers,
        # the connections stay in SYN_SENT (no ARP failure closes them)
        _ns(names["client"], *dummy, "addr add 192.0.2.10/24 dev d0",
            "neigh add 192.0.2.1 lladdr 02:00:00:00:00:01 dev d0 nud permanent",
            "route add default via 192.0.2.1 dev d0")
        tenant, tenant_inode = start_json(names["tenant"], TENANT, LISTEN, "10.0.0.5", "3306", "1")
        procs.append(tenant)
        service, service_inode = start_json(names["service"], SERVICE, LISTEN, "10.0.0.6", "5432",
                                        "0")
        procs.append(service)
        client, (to_external, to_service) = start_json(names["client"], CLIENT, CONNECT,
                                                   "10.0.0.5:3306", "10.0.0.6:5432")
        procs.append(client)
        netns = {role: os.stat(f"/run/netns/{ns}").st_ino for role, ns in names.items()}
        yield {"netns": netns, "tenant": (tenant.pid, tenant_inode),
               "service": (service.pid, service_inode), "to_external": to_external,
               "to_service": to_service}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in names.values():
            subprocess.run([ip_tool(), "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("source", ["proc", "netlink", "pidfd", "auto"])
def test_a_freebind_listener_is_not_the_other_end(freebind, source):
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--source",
                          source], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    by_inode = {s["inode"]: s for s in doc["sockets"] if s["inode"]}
    netns = freebind["netns"]

    # the tenant's listener is there, as it is: bound where its namespace has no address
    tenant_pid, tenant_inode = freebind["tenant"]
    listener = by_inode[tenant_inode]
    assert (listener["local_addr"], listener["local_port"], listener["state"]) == \
        ("10.0.0.5", 3306, "LISTEN")
    [tenant_ns] = [n for n in doc["namespaces"] if n["inode"] == netns["tenant"]]
    assert {a["addr"] for a in tenant_ns["addresses"]} == {"127.0.0.0", "127.0.0.1", "::1"}

    external = by_inode[freebind["to_external"]]
    assert external["state"] == "SYN_SENT"
    assert external["peer_pids"] == [] and external["peer_netns"] is None
    if source == "pidfd":
        # a borrowed SYN_SENT socket does not say its peer (inet_getname: ENOTCONN): no
        # peer at all, and above all not the tenant
        assert external["peer"] is None
    else:
        assert (external["remote_addr"], external["remote_port"]) == ("10.0.0.5", 3306)
        assert external["peer"] == "external"

    # a real service on its own address is still found on the node
    service_pid, _ = freebind["service"]
    to_service = by_inode[freebind["to_service"]]
    if source != "pidfd":   # (pidfd: see above)
        assert (to_service["peer"], to_service["peer_netns"], to_service["peer_pids"]) == \
            ("node", netns["service"], [service_pid])
    [service_ns] = [n for n in doc["namespaces"] if n["inode"] == netns["service"]]
    assert {"addr": "10.0.0.6", "prefix": 32, "interface": None} in service_ns["addresses"]
