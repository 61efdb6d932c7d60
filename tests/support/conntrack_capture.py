"""The conntrack scenario: Service VIPs DNATed by iptables/ip6tables in a "node" namespace, as
kube-proxy does, real TCP and UDP connections through them, and the capture that wrote
tests/data/conntrack_* from it.

Three namespaces, the Kubernetes shape: a client namespace (a pod) routed through the node
namespace, which DNATs the VIPs (nat PREROUTING for the pod's traffic, nat OUTPUT for the node's
own clients, one chain jumped from both as KUBE-SERVICES is) to a backend namespace (the
Service's endpoint). Besides the translated connections (TCP and UDP, IPv4 and IPv6, one UDP
flow whose backend never answers: [UNREPLIED]), one connection that is not translated at all
and one that is only MASQUERADEd (source NAT: not a translation of the destination).

The unit tier checks the parsers on the captures (tests/unit/test_ctparse.py); the kernel tier
builds the same scenario and compares nsnet.conntrack's reads with conntrack(8)
(tests/kernel/test_conntrack.py). Rebuild the captures, as root, with

    .venv/bin/python tests/support/conntrack_capture.py capture
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":      # run from a checkout: nsnet is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"

# client (pod) <-> node: 10.201.1.0/24, node <-> backend: 10.201.2.0/24 (and IPv6 alike)
CLIENT4, NODE4_C, NODE4_B, BACKEND4 = "10.201.1.2", "10.201.1.1", "10.201.2.1", "10.201.2.2"
CLIENT6, NODE6_C, NODE6_B, BACKEND6 = "fd00:c7:1::2", "fd00:c7:1::1", "fd00:c7:2::1", \
    "fd00:c7:2::2"
VIP4, VIP6 = "10.96.7.10", "fd00:96::10"
# Services: (proto, VIP port) -> backend port; UDP 54's backend port has no listener
SERVICES = {("tcp", 80): 8080, ("udp", 53): 5353, ("udp", 54): 5454}
DIRECT_PORT = 7070          # reached without any NAT
MASQ_PORT = 9090            # reached directly, source MASQUERADEd by the node

# The backend: listens on every port (dual stack), keeps what it accepts, echoes UDP.
BACKEND = """
import select, socket, sys
socks = []
for port in (8080, 7070, 9090):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    socks.append(s)
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", 5353))
print("ready", flush=True)
kept = []
while True:
    for s in select.select(socks + [u, sys.stdin], [], [])[0]:
        if s is sys.stdin:
            if not sys.stdin.readline():
                sys.exit(0)
        elif s is u:
            data, peer = u.recvfrom(512)
            u.sendto(data, peer)
        else:
            kept.append(s.accept()[0])
"""

# A client: connects to each [proto, address, port, answered] of argv[1] (JSON), sends a
# datagram on each UDP socket (and waits for the echo when answered), prints each socket's
# [proto, local, local port, remote, remote port], then holds them until stdin closes.
CLIENT = """
import json, socket, sys
held, rows = [], []
for proto, addr, port, answered in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(5)
    s.connect((addr, port))
    if proto == "udp":
        s.send(b"ping")
        if answered:
            s.recv(512)
    held.append(s)
    local, remote = s.getsockname(), s.getpeername()
    rows.append([proto, local[0], local[1], remote[0], remote[1]])
print(json.dumps(rows), flush=True)
sys.stdin.read()
"""


@dataclass
class Scenario:
    node: str                   # the node namespace's name (ip netns)
    client: str
    backend: str
    node_pid: int = 0           # a process in the node namespace (its local client)
    # what the client sockets see, and the backend each must reach (None: not translated)
    expected: dict[tuple[str, str, int, str, int], tuple[str, int] | None] = \
        field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def node_inode(self) -> int:
        return os.stat(f"/run/netns/{self.node}").st_ino

    def in_node(self, *argv: str) -> list[str]:
        return [ip_tool(), "netns", "exec", self.node, *argv]


def ip_tool() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _topology(sc: Scenario, tag: str) -> None:
    ip = ip_tool()
    links = ((sc.client, f"nsc{tag}c", CLIENT4, CLIENT6, f"nsc{tag}n", NODE4_C, NODE6_C),
             (sc.backend, f"nsc{tag}b", BACKEND4, BACKEND6, f"nsc{tag}m", NODE4_B, NODE6_B))
    for ns, dev, a4, a6, peer, n4, n6 in links:
        _run([ip, "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer,
              "netns", sc.node])
        for where, end, v4, v6 in ((ns, dev, a4, a6), (sc.node, peer, n4, n6)):
            _run([ip, "-n", where, "addr", "add", f"{v4}/24", "dev", end])
            _run([ip, "-n", where, "-6", "addr", "add", f"{v6}/64", "dev", end, "nodad"])
            _run([ip, "-n", where, "link", "set", end, "up"])
        _run([ip, "-n", ns, "route", "add", "default", "via", n4])
        _run([ip, "-n", ns, "-6", "route", "add", "default", "via", n6])
    for ns in (sc.client, sc.node, sc.backend):
        _run([ip, "-n", ns, "link", "set", "lo", "up"])
    # the node routes the VIPs somewhere (the route lookup at connect() comes before nat
    # OUTPUT, which then reroutes to the backend), as a node's default route does
    _run([ip, "-n", sc.node, "route", "add", "default", "via", BACKEND4])
    _run([ip, "-n", sc.node, "-6", "route", "add", "default", "via", BACKEND6])
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"):
        _run(sc.in_node("sysctl", "-qw", key))


def _rules(sc: Scenario) -> None:
    """kube-proxy's shape: a chain of DNAT rules jumped from PREROUTING and OUTPUT; the
    MASQUERADE of one direct port (source NAT only)."""
    for tool, vip, backend, client in (("iptables", VIP4, BACKEND4, "10.201.1.0/24"),
                                       ("ip6tables", VIP6, f"[{BACKEND6}]", "fd00:c7:1::/64")):
        nat = [*sc.in_node(tool), "-w", "-t", "nat"]
        _run([*nat, "-N", "NSCT-SERVICES"])
        for (proto, port), target in SERVICES.items():
            _run([*nat, "-A", "NSCT-SERVICES", "-d", vip, "-p", proto, "--dport", str(port),
                  "-j", "DNAT", "--to-destination", f"{backend}:{target}"])
        for chain in ("PREROUTING", "OUTPUT"):
            _run([*nat, "-A", chain, "-j", "NSCT-SERVICES"])
        _run([*nat, "-A", "POSTROUTING", "-s", client, "-p", "tcp", "--dport", str(MASQ_PORT),
              "-j", "MASQUERADE"])


def _client(sc: Scenario, ns: str, targets: list[tuple[str, str, int, bool]]) -> list[list]:
    proc = subprocess.Popen([ip_tool(), "netns", "exec", ns, sys.executable, "-c", CLIENT,
                             json.dumps(targets)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    sc.procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the client in {ns} failed")
    rows: list[list] = json.loads(line)
    return rows


def _connect(sc: Scenario) -> None:
    backend = subprocess.Popen([ip_tool(), "netns", "exec", sc.backend, sys.executable, "-c",
                                BACKEND], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    sc.procs.append(backend)
    assert backend.stdout is not None
    if backend.stdout.readline().strip() != "ready":
        raise RuntimeError("the backend did not start")
    services = [(proto, vip, port, target != 5454)
                for vip in (VIP4, VIP6) for (proto, port), target in SERVICES.items()]
    pod = services + [("tcp", BACKEND4, DIRECT_PORT, True), ("udp", BACKEND6, 5353, True),
                      ("tcp", BACKEND4, MASQ_PORT, True), ("tcp", BACKEND6, MASQ_PORT, True)]
    local = [s for s in services if s[1] == VIP4 or s[0] == "tcp"]
    backends = {VIP4: BACKEND4, VIP6: BACKEND6}
    for ns, targets in ((sc.client, pod), (sc.node, local)):
        for proto, laddr, lport, raddr, rport in _client(sc, ns, targets):
            target = SERVICES.get((proto, rport)) if raddr in backends else None
            sc.expected[(proto, laddr, lport, raddr, rport)] = \
                (backends[raddr], target) if target is not None else None
    sc.node_pid = int(_run([ip_tool(), "netns", "pids", sc.node]).split()[0])


@contextlib.contextmanager
def scenario(prefix: str = "nsct") -> Iterator[Scenario]:
    """The three namespaces, rules and connections; everything is removed afterwards (the
    rules and the conntrack entries go with the node namespace)."""
    tag = secrets.token_hex(3)
    sc = Scenario(f"{prefix}-{tag}-node", f"{prefix}-{tag}-pod", f"{prefix}-{tag}-backend")
    made: list[str] = []
    try:
        for name in (sc.node, sc.client, sc.backend):
            _run([ip_tool(), "netns", "add", name])
            made.append(name)
        _topology(sc, tag)
        _rules(sc)
        _connect(sc)
        yield sc
    finally:
        for proc in sc.procs:
            proc.kill()
            proc.wait()
        for name in made:
            subprocess.run([ip_tool(), "netns", "del", name], check=False)


# ---------------------------------------------------------------------- the oracle

def oracle_lines(sc: Scenario) -> list[str]:
    """`conntrack -L -o extended` in the node namespace (every family: IPv4 and IPv6)."""
    out = _run(sc.in_node("conntrack", "-L", "-o", "extended"))
    return [line for line in out.splitlines() if line.strip()]


def translated_by_oracle(lines: list[str]) -> dict[tuple[str, str, int, str, int],
                                                    tuple[str, int]]:
    """The entries conntrack(8) lists with a translated destination (reply source not the
    original destination), keyed as nsnet keys them. Parsed here on its own terms: words,
    the first src/dst/sport/dport the original tuple, the second the reply."""
    found = {}
    for line in lines:
        words = line.split()
        proto = words[2]
        if proto not in ("tcp", "udp", "udplite", "sctp", "dccp"):
            continue
        pairs = [w.split("=", 1) for w in words if w.split("=", 1)[0] in
                 ("src", "dst", "sport", "dport")]
        orig, reply = dict(pairs[:4]), dict(pairs[4:8])
        if (reply["src"], reply["sport"]) == (orig["dst"], orig["dport"]):
            continue
        found[(proto, _norm(orig["src"]), int(orig["sport"]), _norm(orig["dst"]),
               int(orig["dport"]))] = (_norm(reply["src"]), int(reply["sport"]))
    return found


def _norm(addr: str) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, addr))


# ---------------------------------------------------------------------- the ctnetlink dump

CTNETLINK_SEQ = 7


def ctnetlink_raw() -> bytes:
    """One ctnetlink dump of the calling namespace's table, the replies as received,
    concatenated (run inside the node namespace: `conntrack_capture.py ctnetlink-raw`)."""
    from nsnet.ctparse import (
        NETLINK_NETFILTER,
        CtDump,
        build_ctnetlink_dump_request,
        parse_ctnetlink_into,
    )

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.settimeout(5)
    received, dump = [], CtDump()
    with sock:
        sock.send(build_ctnetlink_dump_request(CTNETLINK_SEQ))
        while not dump.done:
            chunk = sock.recv(1 << 20)
            received.append(chunk)
            parse_ctnetlink_into(chunk, len(chunk), CTNETLINK_SEQ, dump)
    return b"".join(received)


def capture() -> None:
    if os.geteuid() != 0:
        sys.exit("run me as root: " + __file__ + " capture")
    with scenario("nsctcap") as sc:
        time.sleep(0.2)
        proc_text = Path(f"/proc/{sc.node_pid}/net/nf_conntrack").read_bytes()
        raw = subprocess.run(sc.in_node(sys.executable, __file__, "ctnetlink-raw"),
                             capture_output=True, check=True).stdout
        lines = oracle_lines(sc)
        (DATA / "conntrack_proc_nf_conntrack.txt").write_bytes(proc_text)
        (DATA / "conntrack_ctnetlink.bin").write_bytes(raw)
        record = {
            "kernel": os.uname().release,
            "entries": len(lines),
            "ctnetlink_seq": CTNETLINK_SEQ,
            "oracle": lines,
            "translated": sorted([*key, *value]
                                 for key, value in translated_by_oracle(lines).items()),
            "client_sockets": sorted([*key, *(value or [None, None])]
                                     for key, value in sc.expected.items()),
        }
        (DATA / "conntrack_capture.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["capture"]:
    capture()
elif __name__ == "__main__" and sys.argv[1:] == ["ctnetlink-raw"]:
    sys.stdout.buffer.write(ctnetlink_raw())
