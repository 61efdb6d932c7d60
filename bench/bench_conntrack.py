#!/usr/bin/env python3
"""What reading a node's connection-tracking table costs: nsnet.ctparse.parse_proc_conntrack
on a synthetic /proc/<pid>/net/nf_conntrack of --entries lines (generated here, in the
kernel's format: TCP and UDP, IPv4 and IPv6, --translated of them DNATed to a backend, the
rest not), against a plain bytes.split(b"\\n") of the same buffer measured in the same run
(the floor: any parser looks at every line at least that much); and parse_ctnetlink on the
same table as an unfiltered ctnetlink dump. Median of --repeat, each approach interleaved.
No root, no I/O.

    .venv/bin/python bench/bench_conntrack.py --entries 100000 --translated 0.5 --repeat 7
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsnet.ctparse import IPS_DST_NAT, parse_ctnetlink, parse_proc_conntrack


def _addresses(i: int) -> tuple[bool, bytes, bytes, bytes]:
    """Entry i's IPv6-ness, client, VIP and backend (raw): every 4th entry IPv6 (fd00:c7::/96),
    else IPv4; 2000 clients (pods), 500 VIPs, 3000 backends, as a busy node might have."""
    v6 = i % 4 == 3
    numbers = (i % 2000, i % 500, i % 3000)
    if v6:
        prefix = bytes.fromhex("fd0000c7" + "0" * 16)
        return (True, *(prefix + (n | k << 24).to_bytes(4, "big")
                        for n, k in zip(numbers, (1, 2, 3), strict=True)))
    return (False, bytes([10, 1, numbers[0] >> 8, numbers[0] & 0xFF]),
            bytes([10, 96, numbers[1] >> 8, numbers[1] & 0xFF]),
            bytes([10, 244, numbers[2] >> 8, numbers[2] & 0xFF]))


def _printed(raw: bytes) -> str:
    """%pI4, or %pI6: eight 4-digit groups, uncompressed."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    return ":".join(raw[k:k + 2].hex() for k in range(0, 16, 2))


def _every(translated: float) -> int:
    return max(1, round(1 / translated)) if translated > 0 else 0


def _ports(i: int) -> tuple[int, int, int, int]:
    """Protocol number, client port, Service port, backend port."""
    tcp = i % 2 == 0
    return (6 if tcp else 17, 32768 + i // 2000, 80 if tcp else 53, 8080 if tcp else 5353)


def synthetic(entries: int, translated: float) -> bytes:
    """A table of `entries` lines; every 1/translated-th one DNATed (a VIP to a backend)."""
    lines = []
    every = _every(translated)
    for i in range(entries):
        v6, client, vip, backend = (_printed(a) if isinstance(a, bytes) else a
                                    for a in _addresses(i))
        proto, sport, dport, bport = _ports(i)
        dnat = bool(every) and i % every == 0
        l3 = "ipv6     10" if v6 else "ipv4     2"
        l4 = "tcp      6 431999 ESTABLISHED" if proto == 6 else "udp      17 29"
        lines.append(f"{l3} {l4} src={client} dst={vip if dnat else backend} sport={sport} "
                     f"dport={dport} src={backend} dst={client} "
                     f"sport={bport if dnat else dport} dport={sport} "
                     f"{'[ASSURED] ' if proto == 6 else ''}mark=0 zone=0 use=2\n")
    return "".join(lines).encode()


def _attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind | (0x8000 if nested else 0))
    return head + payload + b"\0" * (-len(payload) % 4)


def _tuple(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    v6 = len(src) == 16
    ip = _attr(3 if v6 else 1, src) + _attr(4 if v6 else 2, dst)
    ports = _attr(1, bytes([proto])) + _attr(2, struct.pack(">H", sport)) + \
        _attr(3, struct.pack(">H", dport))
    return _attr(1, ip, True) + _attr(2, ports, True)


def synthetic_dump(entries: int, translated: float, seq: int = 1) -> bytes:
    """The same table as a ctnetlink dump (the kernel's layout: tuples, status, timeout,
    mark, use, id), in datagrams of about 32 KiB, NLMSG_DONE last."""
    every = _every(translated)
    out = []
    for i in range(entries):
        v6, client, vip, backend = _addresses(i)
        proto, sport, dport, bport = _ports(i)
        dnat = bool(every) and i % every == 0
        body = _attr(1, _tuple(client, vip if dnat else backend, proto, sport, dport), True) \
            + _attr(2, _tuple(backend, client, proto, bport if dnat else dport, sport), True)
        body += _attr(3, struct.pack(">I", 0xE | (IPS_DST_NAT if dnat else 0)))
        body += _attr(7, struct.pack(">I", 431999)) + _attr(8, b"\0" * 4) + \
            _attr(11, struct.pack(">I", 1)) + _attr(12, struct.pack(">I", i))
        msg = bytes([10 if v6 else 2, 0, 0, 0]) + body
        out.append(struct.pack("=IHHII", 16 + len(msg), 0x100, 2, seq, 0) + msg)
    out.append(struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0))
    return b"".join(out)


def _time(fn, data: bytes) -> float:
    start = time.perf_counter()
    fn(data)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--translated", type=float, default=0.5,
                    help="share of the entries DNATed (default 0.5)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = synthetic(args.entries, args.translated)
    check = parse_proc_conntrack(data)
    assert check.seen == args.entries and check.malformed == 0, (check.seen, check.malformed)
    dump = synthetic_dump(args.entries, args.translated)
    check_dump = parse_ctnetlink(dump, 1)
    assert dict(check_dump) == dict(check) and check_dump.malformed == 0
    parse, split, netlink = [], [], []
    for _ in range(args.repeat):
        parse.append(_time(parse_proc_conntrack, data))
        split.append(_time(lambda d: d.split(b"\n"), data))
        netlink.append(_time(lambda d: parse_ctnetlink(d, 1), dump))
    p, s, n = statistics.median(parse), statistics.median(split), statistics.median(netlink)
    result = {"entries": args.entries, "translated": len(check), "bytes": len(data),
              "parse_s": p, "split_s": s, "entries_per_s": args.entries / p,
              "parse_over_split": p / s, "ctnetlink_bytes": len(dump), "ctnetlink_s": n,
              "ctnetlink_entries_per_s": args.entries / n}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.entries} entries ({len(check)} translated), median of {args.repeat}:\n"
              f"  nf_conntrack text ({len(data) / 1e6:.1f} MB): parse {p * 1e3:.1f} ms = "
              f"{args.entries / p / 1e6:.2f} M entries/s; bytes.split {s * 1e3:.1f} ms; "
              f"parse / split = {p / s:.1f}x\n"
              f"  ctnetlink dump, unfiltered ({len(dump) / 1e6:.1f} MB): parse {n * 1e3:.1f} ms"
              f" = {args.entries / n / 1e6:.2f} M entries/s")


if __name__ == "__main__":
    main()
