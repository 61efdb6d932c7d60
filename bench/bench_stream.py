#!/usr/bin/env python3
"""What writing a command's JSON adds to its memory: `nsnet sockets --json` and `--ndjson`
(streamed: each socket encoded and written in turn), against `nsnet sockets --json` of a
checkout that built the whole text first (--baseline).

    .venv/bin/python bench/bench_stream.py                    # on the node bench/synthnode.py has up
    .venv/bin/python bench/bench_stream.py --baseline /tmp/nsnet-before

Each run is a fresh interpreter that calls the CLI's `run` with an output that, at its first
write (the snapshot taken and the document set up: what the command holds before printing),
records VmRSS as the `before` figure and resets the peak (/proc/self/clear_refs 5); at the end
VmHWM is the peak while printing. Prints, per variant: the bytes written, RSS before, peak
while writing, and the peak over before (the issue's measure: "peak <= steady + 50 MiB").
Run as root on a node that is up (bench/synthnode.py up ...).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHILD = r"""
import io, json, sys
sys.path.insert(0, sys.argv[1])
from nsnet import cli

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

class Probe(io.TextIOBase):
    def __init__(self):
        self.before = None
        self.size = 0
    def writable(self):
        return True
    def isatty(self):
        return False
    def write(self, s):
        if self.before is None:
            self.before = kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        self.size += len(s)
        return len(s)

out = Probe()
args = cli.build_parser().parse_args(sys.argv[2:])
cli.run(args, out, io.StringIO())
print(json.dumps({"bytes": out.size, "before_kib": out.before, "peak_kib": kib("VmHWM")}))
"""


def measure(tree: str, argv: list[str]) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, tree, *argv], cwd="/",
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if run.returncode != 0:
        raise SystemExit(f"bench_stream: {tree} {argv}: {run.stderr[-800:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="CHECKOUT")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_stream.py: run as root")
    variants = [("sockets --json", REPO, ["sockets", "--json"]),
                ("sockets --ndjson", REPO, ["sockets", "--ndjson"])]
    if a.baseline:
        variants.append(("baseline sockets --json", a.baseline, ["sockets", "--json"]))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _ in range(a.repeat):
        for name, tree, argv in variants:
            results[name].append(measure(tree, argv))
    doc = {}
    for name, runs in results.items():
        worst = max(runs, key=lambda r: r["peak_kib"] - r["before_kib"])
        doc[name] = {**worst, "added_mib": (worst["peak_kib"] - worst["before_kib"]) / 1024}
    if a.json:
        print(json.dumps(doc, indent=1))
        return 0
    for name, r in doc.items():
        print(f"{name}: {r['bytes'] / 1e6:.1f} MB written; RSS {r['before_kib'] / 1024:.0f} MiB "
              f"before the first byte, peak {r['peak_kib'] / 1024:.0f} MiB while writing: "
              f"+{r['added_mib']:.1f} MiB (worst of {a.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
