#!/usr/bin/env python3
"""bench_evidence.py: how nsnet knows who each dependency edge belongs to, on a busy node.

    .venv/bin/python bench/bench_evidence.py [-n 100 -p 5 -c 10] [--baseline CHECKOUT]

Builds the synthetic node of synthnode.py (unless one is up in --dir), takes `nsnet deps --json`
(one live snapshot, --source auto) and prints the edges per kind of evidence (model.EVIDENCE)
and the share that are guesses (namespace-owners), and the open/recently-closed connections
behind them. With --baseline (another checkout), the same command of that tree in the same run:
its edge count, and how many of its edges the current tree no longer has (users a guess or the
kernel's placeholder uid 0 credited). Run as root. The node is torn down unless --keep-node.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
import synthnode  # noqa: E402


def deps(tree: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = tree   # this tree's nsnet first
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import nsnet.cli; sys.exit(nsnet.cli.main(sys.argv[2:]))")
    run = subprocess.run([sys.executable, "-c", code, tree, "deps", "--json", "--source",
                          "auto"], capture_output=True, text=True, cwd="/", env=env, timeout=900)
    if run.returncode != 0:
        raise SystemExit(f"{tree}: nsnet deps failed: {run.stderr.strip()[-300:]}")
    return json.loads(run.stdout)


def key(e: dict) -> tuple:
    # not `where`: namespaces are named now (netns:<pin>) where they were netns:<inode>
    return (e["uid"], e["direction"], e["proto"], e["peer_addr"], e["port"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--namespaces", "-n", type=int, default=100)
    ap.add_argument("--procs-per-ns", "-p", type=int, default=5)
    ap.add_argument("--conns-per-proc", "-c", type=int, default=10)
    ap.add_argument("--baseline", metavar="CHECKOUT", help="another nsnet checkout to compare")
    ap.add_argument("--keep-node", action="store_true")
    ap.add_argument("--dir", default=synthnode.DEFAULT_DIR)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_evidence.py: run as root")
    built = synthnode.is_up(a.dir) is None
    if built:
        synthnode.up(a.namespaces, a.procs_per_ns, a.conns_per_proc, base=a.dir, quiet=True)
    try:
        doc = deps(REPO)
        edges = doc["edges"]
        kinds = collections.Counter(e["evidence"] or "unknown user" for e in edges)
        guesses = sum(1 for e in edges if e["guess"])
        print(f"current tree: {len(edges)} edges; {guesses} guesses "
              f"({100 * guesses / max(len(edges), 1):.1f}%)")
        for kind, n in kinds.most_common():
            print(f"  {kind:18} {n:6}")
        print(f"  open connections {sum(e['open'] for e in edges)}, recently closed "
              f"{sum(e['closed_recently'] for e in edges)}")
        if a.baseline:
            old = deps(a.baseline)["edges"]
            gone = collections.Counter(map(key, old)) - collections.Counter(map(key, edges))
            print(f"baseline {a.baseline}: {len(old)} edges; {sum(gone.values())} of them "
                  "not in the current tree's (by user, direction, peer and port)")
            by_kind = collections.Counter("uid 0" if k[0] == 0 else "other" for k in gone)
            for kind, n in by_kind.most_common():
                print(f"  gone, {kind:12} {n:6}")
        return 0
    finally:
        if built and not a.keep_node:
            synthnode.down(a.dir, quiet=True)


if __name__ == "__main__":
    sys.exit(main())
