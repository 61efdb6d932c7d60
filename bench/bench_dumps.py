#!/usr/bin/env python3
"""What each sock_diag dump costs one namespace: which request is the floor under `auto`.

    .venv/bin/python bench/bench_dumps.py                  # 100 namespaces, every pod's
    .venv/bin/python bench/bench_dumps.py -n 400 -p 5 -c 20 -r 3

Run as root, with the venv's interpreter. Builds bench/synthnode.py's node in its own --dir
(unless one is up there), opens one NETLINK_SOCK_DIAG socket in each pod's namespace (setns
to /proc/<root pid>/ns/net and back; a sock_diag socket answers for the namespace it was
created in), then sends each request below to every namespace in turn, --repeat rounds, and
prints the median per namespace of each round's time. The requests are built and read by
nsnet's own code (nsnet.sockdiag, nsnet.sources.netlink.run_dump), so decoding is included;
the kernel's share is the rest. The first row reads /proc/<pid>/net/tcp and tcp6 (the proc
source's TCP: two walks) for comparison; the next is what nsnet asks for TCP; the LISTEN-only row
is the same request without the established-hash walk (inet_diag_dump_icsk skips it when
nothing but LISTEN is asked), so the difference between the two is that walk.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-bench-dumps"
CLONE_NEWNET = 0x40000000


def requests() -> dict[str, tuple[str, object]]:
    """label -> (nsnet's protocol name for the decoder, build(seq) -> bytes)."""
    from nsnet import sockdiag as sd
    inet = sd.build_inet_request
    return {
        "TCP, both families, every state (TCPDIAG_GETSOCK: nsnet's)":
            ("tcp", lambda seq: sd.build_tcp_legacy_request(sd.ALL, seq=seq)),
        "the same with tcp_info (INET_DIAG_INFO, -i)":
            ("tcp", lambda seq: sd.build_tcp_legacy_request(sd.ALL, seq=seq,
                                                            ext=sd.EXT_TCP_INFO)),
        "TCP, LISTEN only (no established-hash walk)":
            ("tcp", lambda seq: sd.build_tcp_legacy_request(sd.TCPF["LISTEN"], seq=seq)),
        "UDP": ("udp", lambda seq: inet(socket.AF_INET, socket.IPPROTO_UDP, sd.ANY_STATE,
                                        seq=seq)),
        "UDP6": ("udp", lambda seq: inet(socket.AF_INET6, socket.IPPROTO_UDP, sd.ANY_STATE,
                                         seq=seq)),
        "raw": ("raw", lambda seq: inet(socket.AF_INET, socket.IPPROTO_RAW, sd.ANY_STATE,
                                        seq=seq, raw_protocol=socket.IPPROTO_RAW)),
        "unix": ("unix", lambda seq: sd.build_unix_request(sd.ANY_STATE, seq=seq)),
        "packet": ("packet", lambda seq: sd.build_packet_request(seq=seq)),
        "netlink": ("netlink", lambda seq: sd.build_netlink_request(seq=seq)),
    }


def open_sockets(pids: list[int]) -> list[socket.socket]:
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks = []
    try:
        for pid in pids:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns to pid {pid}'s namespace")
            finally:
                os.close(fd)
            socks.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4))
    finally:
        if libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back home")
        os.close(home)
    return socks


def read_all(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def measure(socks: list[socket.socket], pids: list[int], repeat: int) -> dict[str, dict]:
    from nsnet.sources.netlink import _next_seq, run_dump
    out = {}
    # the proc source's TCP, for comparison: /proc/<pid>/net/tcp and tcp6, a walk each
    rounds, found = [], 0
    for _ in range(repeat):
        found = 0
        t0 = time.perf_counter()
        for pid in pids:
            for name in ("tcp", "tcp6"):
                found += read_all(f"/proc/{pid}/net/{name}").count(b"\n") - 1
        rounds.append((time.perf_counter() - t0) / len(pids))
    out["/proc/<pid>/net/tcp and tcp6 (the proc source: two walks)"] = {
        "ms_per_namespace": statistics.median(rounds) * 1e3, "sockets_per_round": found}
    for label, (proto, build) in requests().items():
        rounds, found = [], 0
        for _ in range(repeat):
            found = 0
            t0 = time.perf_counter()
            for s in socks:
                seq = _next_seq()
                found += len(run_dump(s, build(seq), seq, proto).sockets)
            rounds.append((time.perf_counter() - t0) / len(socks))
        out[label] = {"ms_per_namespace": statistics.median(rounds) * 1e3,
                      "sockets_per_round": found}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    synthnode.add_node_arguments(ap, DEFAULT_DIR)
    ap.add_argument("-r", "--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_dumps.py: run as root")
    with synthnode.node(a) as state:
        pids = [pod["root_pid"] for pod in state["pods"]]
        socks = open_sockets(pids)
        try:
            results = measure(socks, pids, a.repeat)
        finally:
            for s in socks:
                s.close()
    doc = {"namespaces": len(socks), "repeat": a.repeat, "loadavg": synthnode.loadavg(),
           "requests": results}
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{len(socks)} pod namespaces; medians of {a.repeat} rounds; load "
          f"{' '.join(doc['loadavg'])}")
    print(f"  {'request':<62} {'ms / namespace':>14} {'sockets / round':>16}")
    for label, r in results.items():
        print(f"  {label:<62} {r['ms_per_namespace']:14.3f} {r['sockets_per_round']:16,}")
    tcp = [r for label, r in results.items() if label.startswith(("TCP", "the same"))]
    walk = tcp[0]["ms_per_namespace"] - tcp[2]["ms_per_namespace"]
    print(f"the established-hash walk (every state less LISTEN only): {walk:.3f} ms per namespace, "
          f"{walk * len(socks):.0f} ms for the node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
