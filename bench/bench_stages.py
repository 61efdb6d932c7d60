#!/usr/bin/env python3
"""Where a snapshot's time goes, stage by stage: what is the kernel's and what is nsnet's.

    .venv/bin/python bench/bench_stages.py                 # 100 namespaces, auto, 1 reader
    .venv/bin/python bench/bench_stages.py --threads 2 -r 9

Run as root, with the venv's interpreter. Builds bench/synthnode.py's node in its own --dir
(unless one is up there), then takes in-process `take_snapshot(SnapshotOptions(source=S,
threads=K))` --repeat times after a warm-up, with a timer wrapped around each stage's
function (module attributes replaced in this process only; nsnet itself is unchanged):

  walk              walk.discover: every process's stat, cmdline, status, cgroup, fd links
  enter + diag sock netlink.run_in_namespace: setns in, the sock_diag socket, setns back
  /proc/net reads   proc.read_via_task: each namespace's protocols, fib_trie, if_inet6
  dumps (all)       netlink.dump_namespace: the kernel's dumps and their decoding
    of them: decode netlink.parse_into: Python's share of the dumps
  join              snapshot.Joined.add: holders joined, sockets classified
  conntrack         snapshot.resolve_translations: the host's NAT table, when needed
  assemble          snapshot.assemble: the rest of the join, pods, owners, counts

With --threads 1 (the default) every stage runs in this thread one after the other, so the
stages add up to the snapshot, and the kernel's part (dumps - decode, the setns) is apart
from Python's: what a faster implementation of nsnet could save, and what it could not. With
2 or more reader threads the reader stages overlap the walk and each other, and their sums
exceed the wall time. Medians of the repeats; CPU is this process's (all threads).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-bench-stages"


def instrument(spent: dict[str, float]) -> None:
    """Wrap each stage's function so that its time adds to spent[label] (thread-safe enough:
    a float += under the GIL between two Python calls)."""
    import nsnet.snapshot as snapshot
    import nsnet.sources.netlink as netlink
    import nsnet.sources.proc as proc

    def wrap(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, name, timed)

    wrap(snapshot.walk, "discover", "walk")
    wrap(netlink, "run_in_namespace", "enter + diag sock")
    wrap(proc, "read_via_task", "/proc/net reads")
    wrap(netlink, "dump_namespace", "dumps (all)")
    wrap(netlink, "parse_into", "  of them: decode")
    wrap(snapshot.Joined, "add", "join")
    wrap(snapshot, "resolve_translations", "conntrack")
    wrap(snapshot, "assemble", "assemble")


def measure(source: str, threads: int, repeat: int) -> tuple[dict[str, list[float]], dict]:
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    spent: dict[str, float] = {}
    instrument(spent)
    options = SnapshotOptions(source=source, threads=threads)
    take_snapshot(options)       # warm-up: the source chosen, the caches filled
    runs: dict[str, list[float]] = {}
    size: dict = {}
    for _ in range(repeat):
        spent.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        snap = take_snapshot(options)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for label, seconds in [*spent.items(), ("snapshot (wall)", wall), ("snapshot (CPU)", cpu)]:
            runs.setdefault(label, []).append(seconds)
        size = {"namespaces": len(snap.namespaces), "sockets": len(snap.sockets),
                "processes": len(snap.processes), "source": snap.stats.source}
        del snap
    return runs, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    synthnode.add_node_arguments(ap, DEFAULT_DIR)
    ap.add_argument("-r", "--repeat", type=int, default=7)
    ap.add_argument("--source", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_stages.py: run as root")
    with synthnode.node(a):
        runs, size = measure(a.source, a.threads, a.repeat)
    medians = {label: statistics.median(v) for label, v in runs.items()}
    doc = {"node": size, "threads": a.threads, "repeat": a.repeat,
           "loadavg": synthnode.loadavg(), "median_s": medians}
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"node: {size['namespaces']} namespaces, {size['sockets']} sockets, "
          f"{size['processes']} processes; source {size['source']}, {a.threads} reader "
          f"thread(s); load {' '.join(doc['loadavg'])}; medians of {a.repeat}")
    wall = medians["snapshot (wall)"]
    order = ["walk", "enter + diag sock", "/proc/net reads", "dumps (all)", "  of them: decode",
             "join", "conntrack", "assemble", "snapshot (wall)", "snapshot (CPU)"]
    for label in [x for x in order if x in medians]:
        seconds = medians[label]
        share = f"{seconds / wall:6.1%}" if a.threads == 1 else ""
        print(f"  {label:<20} {seconds * 1e3:8.1f} ms  {share}")
    if a.threads == 1:
        staged = sum(s for label, s in medians.items()
                     if not label.startswith(("  ", "snapshot")))
        print(f"  {'the rest':<20} {(wall - staged) * 1e3:8.1f} ms  {(wall - staged) / wall:6.1%}")
    else:
        print("  (reader stages overlap the walk and each other: no shares, no rest)")
    if "dumps (all)" in medians:
        kernel = medians["dumps (all)"] - medians.get("  of them: decode", 0.0)
        print(f"  the dumps less their decoding (the kernel's, and the receive calls): "
              f"{kernel * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
