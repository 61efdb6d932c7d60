#!/usr/bin/env python3
"""Reader threads: how the snapshot time scales with 1, 2 .. N readers, and what that
predicts for a node with more cores.

    .venv/bin/python bench/bench_threads.py                      # 100 namespaces, auto
    .venv/bin/python bench/bench_threads.py -n 400 --sources auto,proc --readers 1,2,4

Run as root, with the venv's interpreter. Builds bench/synthnode.py's node in its own --dir
(unless one is up there), then times in-process `take_snapshot(SnapshotOptions(source=S,
threads=K))` for each source S and each K of --readers (default 1, 2 and N = the CPUs this
process may use, as nsnet counts them: affinity mask and cgroup quota), interleaved,
--repeat times; medians, wall and CPU seconds.

A snapshot has a part no reader thread shortens (the process walk, the join, Python's parse
under the GIL) and a part the readers share (the kernel's table walks, GIL released). With
the measured times T(K) the model T(K) = serial + parallel / min(K, cores) is fitted (least
squares) and printed with the predicted time at 8, 16, 32 and 64 readers on a node with that
many cores -- nsnet itself uses at most nsnet.snapshot.MAX_READERS. A machine with 2 cores
can only show K <= 2; the fit says how much of the time is serial, which is what bounds a
64-core node (Amdahl).
"""
from __future__ import annotations

import argparse
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

DEFAULT_DIR = "/tmp/nsnt-bench-threads"


def fit(points: list[tuple[int, float]], cores: int) -> tuple[float, float]:
    """T(K) = serial + parallel / min(K, cores), least squares over the points."""
    xs = [1.0 / min(k, cores) for k, _ in points]
    ys = [t for _, t in points]
    if len(set(xs)) < 2:
        return ys[0], 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def measure(sources: list[str], readers: list[int], repeat: int
            ) -> tuple[dict[tuple[str, int], list[float]], dict[tuple[str, int], list[float]], dict]:
    """Wall and CPU seconds of each (source, readers), interleaved; the node's size."""
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    wall: dict[tuple[str, int], list[float]] = {(s, k): [] for s in sources for k in readers}
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in wall}
    size: dict = {}
    for src in sources:      # warm-up, untimed
        take_snapshot(SnapshotOptions(source=src, threads=1))
    for r in range(repeat):
        for src in sources:
            for k in (readers if r % 2 == 0 else readers[::-1]):
                c0, t0 = time.process_time(), time.perf_counter()
                snap = take_snapshot(SnapshotOptions(source=src, threads=k))
                wall[(src, k)].append(time.perf_counter() - t0)
                cpu[(src, k)].append(time.process_time() - c0)
                size = {"namespaces": len(snap.namespaces), "sockets": len(snap.sockets),
                        "source": snap.stats.source}
                del snap
    return wall, cpu, size


def main() -> int:
    from nsnet.cpus import available_cpus
    from nsnet.snapshot import MAX_READERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    synthnode.add_node_arguments(ap, DEFAULT_DIR)
    ap.add_argument("-r", "--repeat", type=int, default=5)
    ap.add_argument("--sources", default="auto")
    ap.add_argument("--readers", default=None, help="comma-separated (default 1,2,N)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_threads.py: run as root")
    budget = available_cpus()
    readers = sorted({int(k) for k in a.readers.split(",")} if a.readers
                     else {1, 2, budget.cpus})
    sources = [s for s in a.sources.split(",") if s]
    with synthnode.node(a):
        wall, cpu, size = measure(sources, readers, a.repeat)
    doc: dict = {"cpus": budget.describe(), "max_readers": MAX_READERS, "node": size,
                 "repeat": a.repeat, "loadavg": synthnode.loadavg(),
                 "sources": {}}
    for src in sources:
        med = {k: statistics.median(wall[(src, k)]) for k in readers}
        serial, parallel = fit(sorted(med.items()), budget.cpus)
        doc["sources"][src] = {
            "wall_s": med, "cpu_s": {k: statistics.median(cpu[(src, k)]) for k in readers},
            "speedup": {k: med[readers[0]] / med[k] for k in readers},
            "fit": {"serial_s": serial, "parallel_s": parallel},
            "predicted_s": {n: serial + parallel / n for n in (1, 2, 4, 8, 16, 32, 64)},
        }
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"node: {size.get('namespaces')} namespaces, {size.get('sockets')} sockets; "
          f"{doc['cpus']}; load {' '.join(doc['loadavg'])}; medians of {a.repeat}")
    for src, d in doc["sources"].items():
        print(f"\nsource {src} ({size.get('source') if len(sources) == 1 else src}):")
        print("  readers   wall s   CPU s   speed-up vs 1")
        for k in readers:
            print(f"  {k:7d}   {d['wall_s'][k]:6.3f}   {d['cpu_s'][k]:5.3f}   "
                  f"{d['speedup'][k]:.2f}x")
        f = d["fit"]
        total = f["serial_s"] + f["parallel_s"]
        print(f"  fit: T(K) = {f['serial_s']:.3f} s serial + {f['parallel_s']:.3f} s / K "
              f"({f['serial_s'] / total:.0%} serial)" if total > 0 else "  fit: -")
        print("  predicted with K cores and K readers: " + ", ".join(
            f"{n}: {t:.3f} s" for n, t in d["predicted_s"].items()))
        print(f"  (nsnet uses at most {MAX_READERS} readers: the 16-64-core figures show what "
              "more would buy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
