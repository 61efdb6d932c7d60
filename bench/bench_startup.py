#!/usr/bin/env python3
"""Start-up: what running the CLI costs beyond the work itself.

    .venv/bin/python bench/bench_startup.py                  # builds the 100-namespace node
    .venv/bin/python bench/bench_startup.py --no-node        # this machine as it is
    .venv/bin/python bench/bench_startup.py -n 400 -r 7 --imports
    .venv/bin/python bench/bench_startup.py --baseline /tmp/nsnet-before   # before/after

Run as root, with the venv's interpreter. Measured in one run, interleaved, medians of
--repeat, every command in a fresh interpreter (`sys.executable`, not a shim):

  bare        python -c pass: the interpreter's own start-up, the reference
  version     python -m nsnet --version
  help        python -m nsnet sockets --help
  cli         python -m nsnet sockets --json > /dev/null (the default source)
  work        the same work in a fresh interpreter, timed after its imports: take_snapshot
              with the CLI's default options, the sockets view streamed as JSON to /dev/null

--baseline CHECKOUT (another checkout of nsnet) times the same commands from that tree too,
interleaved (each tree's `python -m nsnet` run with the tree as its working directory, so
that its own package is the one imported), and prints both and their ratio.

Every tree's package is byte-compiled first (compileall, into its __pycache__): an installed
nsnet starts from its bytecode (pip compiles it at install time), while this checkout's
editable install under PYTHONDONTWRITEBYTECODE=1 (set on these machines) would compile every
module from source at every start -- measured: ~60-100 ms more, in every command.
--no-compile measures that instead.

Printed: each median, `nsnet --version` against its 0.1 s target and as a multiple of the
bare interpreter, the start-up overhead (cli - work) against 0.15 s, and cli / work against
1.3x. --imports adds the slowest imports of `nsnet sockets --json` (python -X importtime,
cumulative, top-level modules only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-bench-startup"

# the CLI's work, timed after the imports it needs (run in a fresh interpreter)
WORK = r"""
import json, os, sys, time
from nsnet.options import SnapshotOptions
from nsnet.snapshot import take_snapshot
from nsnet.views import SocketFilter, sockets_stream
from nsnet.sanitize import json_chunks
t0 = time.perf_counter()
snap = take_snapshot(SnapshotOptions())
with open(os.devnull, "w") as out:
    for chunk in json_chunks(sockets_stream(snap, SocketFilter())):
        out.write(chunk)
print(json.dumps({"s": time.perf_counter() - t0, "sockets": len(snap.sockets),
                  "source": snap.stats.source}))
"""


def timed(argv: list[str], cwd: str = REPO) -> tuple[float, str]:
    t0 = time.perf_counter()
    run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if run.returncode not in (0, 1):     # 1: a namespace could not be read; still measured
        sys.exit(f"bench_startup: {' '.join(argv[1:])}: exit {run.returncode}: "
                 f"{run.stderr.strip()[-300:]}")
    return dt, run.stdout


def imports(top: int = 12) -> list[tuple[float, str]]:
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "nsnet", "sockets",
                          "--json"], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    rows = []
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if cumulative.strip().isdigit() and not name.startswith("  "):
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def compile_trees(a: argparse.Namespace) -> None:
    """Each tree's package as installed: with its bytecode (unless --no-compile)."""
    import compileall

    for tree in [] if a.no_compile else [REPO, *([a.baseline] if a.baseline else [])]:
        compileall.compile_dir(os.path.join(tree, "nsnet"), quiet=1)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("-n", "--namespaces", type=int, default=100)
    ap.add_argument("-p", "--procs-per-ns", type=int, default=5)
    ap.add_argument("-c", "--conns-per-proc", type=int, default=10)
    ap.add_argument("-r", "--repeat", type=int, default=7)
    ap.add_argument("--no-node", action="store_true", help="measure on the machine as it is")
    ap.add_argument("--imports", action="store_true", help="also list the slowest imports")
    ap.add_argument("--dir", default=DEFAULT_DIR)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline", metavar="CHECKOUT")
    ap.add_argument("--no-compile", action="store_true",
                    help="leave the packages without bytecode (every module compiled at start)")
    return ap.parse_args()


def main() -> int:
    a = parse_args()
    compile_trees(a)
    if os.geteuid() != 0:
        sys.exit("bench_startup.py: run as root (the snapshot reads every process's fds)")
    py = sys.executable
    commands = {
        "bare": [py, "-c", "pass"],
        "version": [py, "-m", "nsnet", "--version"],
        "help": [py, "-m", "nsnet", "sockets", "--help"],
        "cli": [py, "-m", "nsnet", "sockets", "--json"],
    }
    built = False
    try:
        if not a.no_node and synthnode.is_up(a.dir) is None:
            synthnode.up(a.namespaces, a.procs_per_ns, a.conns_per_proc, 5, 0, a.dir, quiet=True)
            built = True
        runs: dict[str, list[float]] = {k: [] for k in (*commands, "work")}
        base_runs: dict[str, list[float]] = {k: [] for k in (*commands, "work") if k != "bare"}
        info: dict = {}
        timed(commands["cli"])                  # warm-up: caches, the interpreter's pages
        for _ in range(a.repeat):
            for name, argv in commands.items():
                runs[name].append(timed(argv)[0])
                if a.baseline and name in base_runs:
                    base_runs[name].append(timed(argv, a.baseline)[0])
            _, out = timed([py, "-c", WORK])
            info = json.loads(out)
            runs["work"].append(info["s"])
            if a.baseline:      # the baseline's own work, for its start-up overhead
                base_runs["work"].append(json.loads(timed([py, "-c", WORK], a.baseline)[1])["s"])
        slow = imports() if a.imports else []
    finally:
        if built:
            synthnode.down(a.dir, quiet=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    base_med = {k: statistics.median(v) for k, v in base_runs.items() if v}
    overhead = med["cli"] - med["work"]
    # the same, run by run (cli and work alternate): steadier than the medians' difference
    paired = statistics.median(c - w for c, w in zip(runs["cli"], runs["work"], strict=True))
    base_overhead = (base_med["cli"] - base_med["work"]) if "work" in base_med else None
    base_paired = statistics.median(c - w for c, w in zip(base_runs["cli"], base_runs["work"],
                                                            strict=True)) \
        if base_runs.get("work") else None
    doc = {"median_s": med, "runs_s": runs, "repeat": a.repeat, "sockets": info.get("sockets"),
           "source": info.get("source"), "startup_overhead_s": overhead,
           "startup_overhead_paired_s": paired, "baseline_startup_overhead_s": base_overhead,
           "baseline_startup_overhead_paired_s": base_paired,
           "cli_over_work": med["cli"] / med["work"], "version_over_bare": med["version"] / med["bare"],
           "imports_s": slow, "loadavg": synthnode.loadavg(), "baseline": a.baseline,
           "baseline_median_s": base_med}
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"node: {info.get('sockets')} sockets, source {info.get('source')}, load "
          f"{' '.join(doc['loadavg'])}; medians of {a.repeat}")
    labels = {"bare": "python -c pass", "version": "nsnet --version",
              "help": "nsnet sockets --help", "cli": "nsnet sockets --json >/dev/null",
              "work": "the same work, in-process after imports"}
    for key, label in labels.items():
        print(f"  {label:<42} {med[key]:.3f} s")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"
    print(f"nsnet --version: {med['version']:.3f} s (target <= 0.1 s: "
          f"{verdict(med['version'] <= 0.1)}), {doc['version_over_bare']:.2f}x the bare interpreter")
    print(f"start-up overhead of nsnet sockets (cli - work): {overhead:.3f} s, run by run "
          f"{paired:.3f} s (target <= 0.15 s: {verdict(paired <= 0.15)})")
    if base_overhead is not None and base_paired is not None:
        print(f"  baseline start-up overhead: {base_overhead:.3f} s, run by run {base_paired:.3f} s")
    print(f"cli / in-process work: {doc['cli_over_work']:.2f}x (target <= 1.3x: "
          f"{verdict(doc['cli_over_work'] <= 1.3)})")
    for key, base in base_med.items():
        print(f"  baseline {labels[key]:<33} {base:.3f} s; now / baseline {med[key] / base:.2f}x")
    for seconds, name in slow:
        print(f"  import {name:<34} {seconds * 1000:6.1f} ms cumulative")
    return 0


if __name__ == "__main__":
    sys.exit(main())
