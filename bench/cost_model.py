#!/usr/bin/env python3
"""The cost model for big nodes: per namespace, per socket and per fd, fitted from measured
nodes, then a prediction for a bigger one (and, with --check, that node built and measured).

    .venv/bin/python bench/cost_model.py                           # 5 nodes, ~10 minutes
    .venv/bin/python bench/cost_model.py --check 1000x5x23          # + build the predicted one
    .venv/bin/python bench/cost_model.py --sizes 100x5x10,200x5x10 --predict 1000:250000

Run as root, with the venv's interpreter. For each node of --sizes (NAMESPACESxPROCSxCONNS,
bench/synthnode.py's -n -p -c; built in its own --dir, torn down after), in this order:
  - an in-process `take_snapshot(SnapshotOptions(source="auto"))`, median of --repeat (wall
    and CPU seconds of this process, reader threads included), and the node's size from it:
    namespaces, sockets, processes, socket fds (fd links to sockets);
  - the agent as the DaemonSet runs it (bench_agent.run_agent: `nsnet serve --source auto`,
    back-to-back samples), after --samples samples: its CPU per sample and its RSS.
Each of snapshot wall, snapshot CPU, agent CPU per sample and agent RSS is then fitted
(least squares) as
    c0 + c_ns * namespaces + c_sock * sockets + c_nsxsock * namespaces * sockets
and printed with the coefficients (per 1,000 namespaces, per 1,000 sockets, per 10^6 of the
product), each node's residual, and the prediction for --predict NAMESPACES:SOCKETS. The
product is the kernel's: each namespace's TCP dump (sock_diag or /proc) walks the host-wide
established hash, whose size is every namespace's sockets. Socket fds are reported, not
fitted: here they follow the sockets (1.09-1.3 per socket) and a term of their own would only
split the sockets' cost at random. The sizes vary namespaces (100 -> 400 at the same sockets
per namespace), sockets per namespace (-c 10 -> 20) and processes per socket (-p 10 -c 5).
--from FILE refits the points of an earlier --json-out without measuring.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import bench_agent  # noqa: E402
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-bench-cost"
TERMS = ("namespaces", "sockets", "ns_x_sockets")
SCALE = {"namespaces": 1e3, "sockets": 1e3, "ns_x_sockets": 1e6}   # coefficients printed per
# agent_rss_mib: the agent between samples; agent_tree_peak_mib: it and its sampling child
# together (PSS) at their peak -- what the node pays while a sample runs
FITTED = ("snapshot_wall_s", "snapshot_cpu_s", "agent_cpu_per_sample_s", "agent_rss_mib",
          "agent_tree_peak_mib")


def size_of(text: str) -> tuple[int, int, int]:
    n, p, c = (int(x) for x in text.lower().split("x"))
    return n, p, c


def measure_snapshot(repeat: int) -> dict:
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    walls, cpus, size = [], [], {}
    take_snapshot(SnapshotOptions(source="auto"))       # warm-up
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        snap = take_snapshot(SnapshotOptions(source="auto"))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        size = {"namespaces": len(snap.namespaces), "sockets": len(snap.sockets),
                "processes": len(snap.processes),
                "socket_fds": sum(len(p.socket_fds) for p in snap.processes.values())}
        del snap
    return {**size, "snapshot_wall_s": statistics.median(walls),
            "snapshot_cpu_s": statistics.median(cpus)}


def measure(spec: str, repeat: int, samples: int, base: str) -> dict:
    n, p, c = size_of(spec)
    synthnode.down(base, quiet=True)
    t0 = time.perf_counter()
    synthnode.up(n, p, c, 5, 0, base, quiet=True)
    built = time.perf_counter() - t0
    try:
        point = {"spec": spec, "build_s": built, **measure_snapshot(repeat)}
        with tempfile.TemporaryDirectory(prefix="nsnt-cost-") as tmp:
            agent = bench_agent.run_agent(samples, os.path.join(tmp, "h.db"))
        point.update(agent_cpu_per_sample_s=agent["cpu_per_sample_s"],
                     agent_wall_per_sample_s=agent["wall_per_sample_s"],
                     agent_rss_mib=agent["rss_mib"], agent_peak_rss_mib=agent["peak_rss_mib"],
                     agent_tree_peak_mib=agent["tree_pss_peak_mib"])
        return point
    finally:
        synthnode.down(base, quiet=True)


def solve(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares by the normal equations (a handful of unknowns; Gaussian elimination
    with partial pivoting)."""
    k = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    b = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(k)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(a[r][col]))
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        if abs(a[col][col]) < 1e-12:
            raise SystemExit("cost_model: the sizes do not tell the terms apart (singular fit)")
        for r in range(col + 1, k):
            f = a[r][col] / a[col][col]
            a[r] = [x - f * y for x, y in zip(a[r], a[col], strict=True)]
            b[r] -= f * b[col]
    x = [0.0] * k
    for i in range(k - 1, -1, -1):
        x[i] = (b[i] - sum(a[i][j] * x[j] for j in range(i + 1, k))) / a[i][i]
    return x


def terms(p: dict) -> dict:
    return {"namespaces": p["namespaces"], "sockets": p["sockets"],
            "ns_x_sockets": p["namespaces"] * p["sockets"]}


def fit(points: list[dict], what: str) -> list[float]:
    """Least squares with every coefficient >= 0 (a cost cannot be negative; with a handful
    of points whose terms move together, the plain fit trades one term against another):
    the best plain fit over every subset of the terms whose coefficients all come out
    non-negative (an exhaustive active set: 2^4 subsets)."""
    names = ("c0", *TERMS)
    rows = [[1.0, *(float(terms(p)[t]) for t in TERMS)] for p in points]
    ys = [float(p[what]) for p in points]
    best: tuple[float, list[float]] | None = None
    for mask in range(1, 1 << len(names)):
        cols = [i for i in range(len(names)) if mask >> i & 1]
        if len(cols) > len(points):
            continue
        try:
            sub = solve([[r[i] for i in cols] for r in rows], ys)
        except SystemExit:
            continue
        if any(c < 0 for c in sub):
            continue
        coef = [0.0] * len(names)
        for i, c in zip(cols, sub, strict=True):
            coef[i] = c
        err = sum((y - sum(c * x for c, x in zip(coef, r, strict=True))) ** 2
                  for r, y in zip(rows, ys, strict=True))
        if best is None or err < best[0] - 1e-12:
            best = (err, coef)
    if best is None:
        raise SystemExit(f"cost_model: no non-negative fit of {what}")
    return best[1]


def predict(coef: list[float], size: dict) -> float:
    x = terms(size)
    return coef[0] + sum(c * x[t] for c, t in zip(coef[1:], TERMS, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--sizes", default="100x5x10,200x5x10,400x5x10,400x5x20,100x10x5")
    ap.add_argument("--predict", default="1000:250000", metavar="NAMESPACES:SOCKETS")
    ap.add_argument("--check", metavar="NxPxC", help="also build this node and measure it")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--json-out", metavar="FILE")
    ap.add_argument("--from", dest="source", metavar="FILE",
                    help="refit the points of an earlier --json-out")
    a = ap.parse_args()
    if a.source is None and os.geteuid() != 0:
        sys.exit("cost_model.py: run as root")
    points = []
    if a.source is not None:
        with open(a.source) as f:
            points = json.load(f)["points"]
    for spec in a.sizes.split(",") if a.source is None else ():
        points.append(measure(spec, a.repeat, a.samples, a.dir))
        p = points[-1]
        print(f"{spec}: {p['namespaces']} ns, {p['sockets']} sockets, {p['socket_fds']} socket "
              f"fds, {p['processes']} processes: snapshot {p['snapshot_wall_s']:.3f} s wall "
              f"{p['snapshot_cpu_s']:.3f} s CPU; agent {p['agent_cpu_per_sample_s']:.3f} s "
              f"CPU/sample, RSS {p['agent_rss_mib']:.0f} MiB, with its sampling child at most "
              f"{p['agent_tree_peak_mib']:.0f} MiB", flush=True)
    ns, sockets = (int(x) for x in a.predict.split(":"))
    largest = max(points, key=lambda p: p["sockets"])
    target = {"namespaces": ns, "sockets": sockets,
              "socket_fds": round(sockets * largest["socket_fds"] / largest["sockets"])}
    doc: dict = {"points": points, "target": target, "fits": {}}
    print(f"\nfit: value = c0 + per namespace + per socket + per namespace x socket "
          f"(coefficients per 1,000 namespaces, 1,000 sockets, 10^6 of the product); "
          f"prediction for {ns} namespaces, {sockets} sockets (~{target['socket_fds']} "
          f"socket fds)")
    for what in FITTED:
        if not all(what in p for p in points):
            continue          # points saved before it was measured (--from)
        coef = fit(points, what)
        residuals = [p[what] - predict(coef, p) for p in points]
        doc["fits"][what] = {"c0": coef[0], **{t: c for t, c in zip(TERMS, coef[1:], strict=True)},
                             "residuals": residuals, "predicted": predict(coef, target)}
        print(f"  {what:<24} c0 {coef[0]:8.3f}  ns {coef[1] * SCALE['namespaces']:8.3f}  "
              f"socket {coef[2] * SCALE['sockets']:8.3f}  ns x socket "
              f"{coef[3] * SCALE['ns_x_sockets']:8.4f}  -> {predict(coef, target):9.2f}"
              f"   (residuals {', '.join(f'{r:+.3f}' for r in residuals)})")
    if a.check:
        got = measure(a.check, 1, a.samples, a.dir)
        doc["check"] = got
        print(f"\ncheck {a.check}: {got['namespaces']} ns, {got['sockets']} sockets, "
              f"{got['socket_fds']} socket fds")
        for what in doc["fits"]:
            pred = predict([doc["fits"][what]["c0"], *(doc["fits"][what][t] for t in TERMS)], got)
            print(f"  {what:<24} measured {got[what]:9.2f}, the model says {pred:9.2f} "
                  f"({got[what] / pred:.2f}x)")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
