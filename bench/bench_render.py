#!/usr/bin/env python3
"""What the human output costs on a busy node: `nsnet sockets`, `by-namespace` and `by-user` as
an operator runs them, into a real terminal (a pty of --columns) and into a pipe, timed as the
whole command (a fresh interpreter each time), against `--json` of the same command measured
in the same run (the reference: the same snapshot and view, no table), and against another
checkout (--baseline) run the same way.

Needs a node: bench/synthnode.py (`python3 bench/synthnode.py up ...`, or bench_snapshot.py
--keep-node) or any machine. Run as root.

    .venv/bin/python bench/bench_render.py --repeat 7 --columns 120 --baseline /tmp/nsnet-before
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import statistics
import struct
import subprocess
import sys
import termios
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = ("sockets", "by-namespace", "by-user")


def run(checkout: str, argv: list[str], columns: int | None) -> tuple[float, int]:
    """Wall seconds and bytes of one `python -m nsnet ARGV` of `checkout`, its stdout a pty
    of `columns` (None: a pipe)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "NO_COLOR")}
    env["PYTHONPATH"] = checkout
    cmd = [sys.executable, "-m", "nsnet", *argv]     # stderr (warnings) is discarded
    start = time.perf_counter()
    if columns is None:
        out = subprocess.run(cmd, cwd="/", env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, check=False).stdout
        return time.perf_counter() - start, len(out)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(cmd, cwd="/", env={**env, "TERM": "xterm-256color"},
                            stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    size = 0
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            size += len(chunk)
        elif proc.poll() is not None:
            break
    os.close(master)
    proc.wait()
    return time.perf_counter() - start, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--columns", type=int, default=120, help="the pty's width")
    ap.add_argument("--baseline", metavar="CHECKOUT", help="another nsnet tree, run the same way")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    a = ap.parse_args()
    trees = {"current": REPO, **({"baseline": a.baseline} if a.baseline else {})}
    cases = [(view, mode) for view in VIEWS for mode in ("tty", "pipe", "json")]
    times: dict[tuple[str, str, str], list[float]] = {}
    sizes: dict[tuple[str, str, str], int] = {}
    for _ in range(a.repeat):
        for view, mode in cases:          # interleaved: the trees see the same node state
            for tree, path in trees.items():
                argv = [view, "--json"] if mode == "json" else [view]
                wall, size = run(path, argv, a.columns if mode == "tty" else None)
                times.setdefault((tree, view, mode), []).append(wall)
                sizes[(tree, view, mode)] = size
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"columns": a.columns, "repeat": a.repeat, "median_s": {
        "/".join(k): round(v, 4) for k, v in med.items()},
        "bytes": {"/".join(k): v for k, v in sizes.items()}, "ratios": {}}
    for view in VIEWS:
        for tree in trees:
            for mode in ("tty", "pipe"):
                doc["ratios"][f"{tree}/{view}/{mode}_over_json"] = round(
                    med[(tree, view, mode)] / med[(tree, view, "json")], 3)
        if a.baseline:
            for mode in ("tty", "pipe", "json"):
                doc["ratios"][f"{view}/{mode}/current_over_baseline"] = round(
                    med[("current", view, mode)] / med[("baseline", view, mode)], 3)
    if a.json:
        print(json.dumps(doc))
        return 0
    print(f"median of {a.repeat}, pty {a.columns} columns (s)")
    for k, v in sorted(doc["median_s"].items()):
        print(f"  {k:32} {v:8.3f}  {doc['bytes'][k]:>9} bytes")
    for k, v in sorted(doc["ratios"].items()):
        print(f"  {k:44} {v:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
