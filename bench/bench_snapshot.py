#!/usr/bin/env python3
"""bench_snapshot.py: nsnet's full snapshot against what users do today and against the bare cost.

    python3 bench/bench_snapshot.py [--namespaces 100 --procs-per-ns 5 --conns-per-proc 10]
                                    [--repeat 3] [--keep-node] [--json] [--profile]
                                    [--sources proc,auto] [--baseline CHECKOUT]

Builds a busy synthetic node with bench/synthnode.py (unless one is up in --dir), then measures in
the same run, each --repeat times, interleaved, median reported:

  nsnet        take_snapshot(SnapshotOptions(proc="/proc", source=S)), in-process, for each
               --sources S (from nsnet.options import SnapshotOptions;
                            from nsnet.snapshot import take_snapshot); S may name details
               after a +: auto+queues+tcp_info is `nsnet sockets -e -i`'s snapshot
  nsnet CLI    python -m nsnet sockets --json > /dev/null                        (end to end)
  ss loop      ONE bash loop: for p in PIDS; do nsenter -t $p -n ss -tuanp; done > /dev/null
               (one pid per network namespace; the pids are integers this script collected)
  bare         bench/bare_read.c compiled with cc -O2 at run time: the same fd links, ns stats and
               net files read with no parsing (falls back to an equivalent Python reader without cc)
  bare diag    bare_read.c's diag mode (when a source other than proc is measured, and cc is there): the
               same fd links and ns stats, then each namespace's sock_diag dumps (TCP of both
               families in one request, UDP, unix) read with no parsing: the floor under
               netlink/auto, with 1 thread and with nsnet's reader threads

and prints the ratios `ss loop / nsnet` (target >= 10x) and `nsnet / bare` (target <= 1.3x) with
the node's size. The node is torn down at the end unless --keep-node. Run as root.

--baseline CHECKOUT compares this tree with another checkout of nsnet (e.g. a clone at an older
commit) in the same run, on the same node and the same warm caches. Every repeat, for every
source, one snapshot of each tree is timed, each in a fresh `python` (sys.executable) started in
/ without PYTHONPATH, with the tree first on sys.path; it imports nsnet (untimed: nsnet, its
snapshot module, the options and psutil), picks the API the tree has (SnapshotOptions if
nsnet.options imports, else take_snapshot(proc, source=...)), times one snapshot and prints the
seconds, nsnet.__file__ and any nsnet module loaded from outside that tree (the script stops if
there is one: an editable install of the other tree would leak in). The two trees alternate
which goes first. Reported: both medians per source and `current / baseline` (< 1: this tree is faster),
with the commit of each tree.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
import synthnode  # noqa: E402

NET_FILES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix")


# ------------------------------------------------------------------------------ references
def find_util_linux_nsenter() -> str:
    """util-linux's nsenter. A pip-installed `nsenter` package ships a Python CLI of the same name
    (with other options) that can come first on PATH, e.g. as a pyenv shim."""
    cands = ["/usr/bin/nsenter", "/bin/nsenter", shutil.which("nsenter")]
    for c in cands:
        if not c or not os.access(c, os.X_OK):
            continue
        try:
            out = subprocess.run([c, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "util-linux" in out:
            return c
    raise SystemExit("bench: util-linux nsenter not found (needed for the ss loop reference)")


def python_bare_read(proc: str = "/proc") -> dict:
    """the same work as bare_read.c, in Python, for hosts without a C compiler."""
    t0 = time.perf_counter()
    pids = fds = socket_fds = ns_denied = fd_denied = 0
    first: dict[int, int] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        pids += 1
        try:
            dfd = os.open(f"{proc}/{name}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            fd_denied += 1
        else:
            try:
                for ent in os.listdir(dfd):
                    try:
                        link = os.readlink(ent, dir_fd=dfd)
                    except OSError:
                        continue
                    fds += 1
                    socket_fds += link.startswith("socket:[")
            except OSError:
                pass
            finally:
                os.close(dfd)
        try:
            first.setdefault(os.stat(f"{proc}/{name}/ns/net").st_ino, int(name))
        except OSError:
            ns_denied += 1
    t1 = time.perf_counter()
    nbytes = lines = files = failed = 0
    for pid in first.values():
        for f in NET_FILES:
            try:
                fd = os.open(f"{proc}/{pid}/net/{f}", os.O_RDONLY)
            except OSError:
                failed += 1
                continue
            files += 1
            try:
                while True:
                    b = os.read(fd, 256 * 1024)
                    if not b:
                        break
                    nbytes += len(b)
                    lines += b.count(b"\n")
            finally:
                os.close(fd)
    t2 = time.perf_counter()
    return {"elapsed": t2 - t0, "fd_walk": t1 - t0, "net_read": t2 - t1, "pids": pids, "fds": fds,
            "socket_fds": socket_fds, "namespaces": len(first), "net_files": files, "net_failed": failed,
            "net_bytes": nbytes, "net_lines": lines, "ns_denied": ns_denied, "fd_denied": fd_denied,
            "impl": "python"}


class Bare:
    """bare_read.c compiled into a temp dir; the Python reader when there is no compiler."""

    def __init__(self, force_python: bool = False):
        self.tmp = tempfile.mkdtemp(prefix="nsnt-bench-bare-")
        self.exe = None
        self.note = "Python (--bare-python)"
        cc = None if force_python else shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc:
            exe = os.path.join(self.tmp, "bare_read")
            r = subprocess.run([cc, "-O2", "-pthread", "-o", exe, os.path.join(BENCH_DIR, "bare_read.c")],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.exe = exe
                self.note = f"C ({os.path.basename(cc)} -O2)"
            else:
                self.note = f"Python fallback ({cc} failed: {r.stderr.strip()[:200]})"
        elif not force_python:
            self.note = "Python fallback (no C compiler found)"

    def run(self, threads: int = 1) -> dict:
        if self.exe is None:
            return python_bare_read()   # sequential only
        r = subprocess.run([self.exe, "/proc", str(threads)], capture_output=True, text=True,
                           check=True)
        return json.loads(r.stdout)

    def run_diag(self, threads: int = 1) -> dict | None:
        """bare_read.c's diag mode, None without a compiler (there is no Python stand-in)."""
        if self.exe is None:
            return None
        r = subprocess.run([self.exe, "/proc", str(threads), "diag"], capture_output=True,
                           text=True, check=True)
        return json.loads(r.stdout)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def namespace_pids() -> dict[int, int]:
    """netns inode -> one pid in it (the lowest), from a stat() of every /proc/<pid>/ns/net."""
    out: dict[int, int] = {}
    for name in sorted((n for n in os.listdir("/proc") if n.isdigit()), key=int):
        try:
            out.setdefault(os.stat(f"/proc/{name}/ns/net").st_ino, int(name))
        except OSError:
            pass
    return out


SS_LOOP = 'for p in "$@"; do "$NSENTER" -t "$p" -n "$SS" -tuanp; done > /dev/null'


def run_ss_loop(pids: list[int], nsenter: str, ss: str) -> tuple[float, int]:
    """wall time of one bash loop over the pids, and how many lines it wrote to stderr."""
    env = dict(os.environ, NSENTER=nsenter, SS=ss)
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-c", SS_LOOP, "bash", *map(str, pids)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    return dt, len(r.stderr.splitlines())


def run_nsnet_cli() -> tuple[float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    # --source proc: the in-process "nsnet" row's source (the CLI's default is auto now; its
    # start-up and the CLI / in-process ratio of the default are bench_startup.py's)
    r = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--source", "proc"],
                       cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    err = "" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()[-300:]}"
    return dt, err


def default_threads() -> int:   # replaced by nsnet's own when it imports
    return 1


def load_nsnet():
    """snapshot(source) -> Snapshot, from this tree's nsnet, in-process; or None and why not."""
    sys.path.insert(0, REPO)
    global default_threads
    try:
        from nsnet.options import SnapshotOptions
        from nsnet.snapshot import default_threads, take_snapshot
    except Exception as e:  # noqa: BLE001 - the references are still worth measuring
        return None, f"{type(e).__name__}: {e}"

    def snapshot(spec: str = "proc"):
        # "auto+queues+tcp_info": a source and the details asked besides (-e, -i)
        source, *details = spec.split("+")
        return take_snapshot(SnapshotOptions(proc="/proc", source=source,
                                             details=frozenset(details)))
    return snapshot, ""


def profile_snapshot(snapshot, top: int = 25) -> dict[str, str]:
    prof = cProfile.Profile()
    prof.enable()
    snapshot("proc")
    prof.disable()
    out = {}
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(top)
        out[key] = s.getvalue()
    return out


# ------------------------------------------------------------------------------ --baseline
# One timed snapshot in a fresh interpreter: python -c SNAPSHOT_CHILD CHECKOUT SOURCE COUNT, cwd /.
# Nothing of it is timed but take_snapshot() itself; it prints one JSON line.
SNAPSHOT_CHILD = r"""
import json, os, sys, time
checkout, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:] = [checkout] + [p for p in sys.path if p not in ("", ".")]
mine = os.path.join(os.path.realpath(checkout), "nsnet") + os.sep


def foreign(origin):
    return bool(origin) and not os.path.realpath(origin).startswith(mine)


# An editable install (pip install -e) of another tree adds a finder to sys.meta_path that maps
# nsnet.<child> to that tree even when this nsnet comes from the checkout: drop every finder
# that would find an nsnet elsewhere.
for finder in list(sys.meta_path):
    try:
        spec = finder.find_spec("nsnet", None)
    except Exception:
        continue
    if spec is not None and foreign(spec.origin):
        sys.meta_path.remove(finder)
import nsnet
import nsnet.snapshot
try:
    from nsnet.options import SnapshotOptions
except ModuleNotFoundError as e:
    if e.name != "nsnet.options":
        raise
    api = "old"
    def take():
        return nsnet.snapshot.take_snapshot("/proc", source=source)
else:
    api = "new"
    # "auto+queues+tcp_info": a source and the details asked besides (-e, -i)
    source, *details = source.split("+")
    options = SnapshotOptions(proc="/proc", source=source, **(
        {"details": frozenset(details)} if details else {}))
    def take():
        return nsnet.snapshot.take_snapshot(options)
try:
    import psutil  # noqa: F401 - both trees import it lazily at their first snapshot
except ImportError:
    pass
elapsed, cpu, info = [], [], {}
for _ in range(count):
    t0, c0 = time.perf_counter(), time.process_time()
    snap = take()
    elapsed.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)   # every thread of this process: the reader threads too
    info = {"namespaces": len(snap.namespaces), "processes": len(snap.processes),
            "sockets": len(snap.sockets), "source": getattr(snap.stats, "source", None)}
    del snap
others = sorted(f"{name}: {m.__file__}" for name, m in list(sys.modules.items())
                if (name == "nsnet" or name.startswith("nsnet.")) and foreign(getattr(m, "__file__", None)))
print(json.dumps({"nsnet_file": nsnet.__file__, "api": api, "elapsed_s": elapsed, "cpu_s": cpu,
                  "foreign_modules": others, **info}))
"""


def snapshot_in_subprocess(checkout: str, source: str, count: int = 1) -> dict:
    """Time `count` snapshots of `checkout`'s nsnet in a fresh interpreter; check that the
    nsnet it imported is that checkout's. Returns the child's JSON, or {"error": ...}."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", SNAPSHOT_CHILD, checkout, source, str(count)],
                       cwd="/", env=env, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no stderr"])[-1]
        return {"error": f"exit {r.returncode}: {last[-300:]}"}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    want = os.path.join(os.path.realpath(checkout), "nsnet") + os.sep
    if not os.path.realpath(out["nsnet_file"]).startswith(want) or out["foreign_modules"]:
        raise SystemExit(f"bench: the snapshot of {checkout} imported {out['nsnet_file']} "
                         f"{out['foreign_modules']}, not only that tree's nsnet: the comparison "
                         f"would be meaningless")
    return out


def git_state(path: str) -> dict:
    """The commit of a git checkout (None if `path` is not the top of one), and whether its
    nsnet/ has uncommitted changes."""
    def git(*args):
        r = subprocess.run(["git", "-c", "safe.directory=*", "-C", path, *args],
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    top = git("rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != os.path.realpath(path):
        return {"commit": None, "nsnet_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", "nsnet")
    return {"commit": git("rev-parse", "HEAD"),
            "nsnet_dirty": None if status is None else bool(status)}


# ------------------------------------------------------------------------------ the run
def fmt(x) -> str:
    return "—" if x is None else f"{x:.3f} s"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--namespaces", "-n", type=int, default=100)
    ap.add_argument("--procs-per-ns", "-p", type=int, default=5)
    ap.add_argument("--conns-per-proc", "-c", type=int, default=10)
    ap.add_argument("--pin-every", type=int, default=5)
    ap.add_argument("--child-ehash", type=int, default=0, metavar="ENTRIES",
                    help="build the node with private per-netns TCP hash tables (see synthnode.py)")
    ap.add_argument("--repeat", "-r", type=int, default=3)
    ap.add_argument("--sources", default="proc", metavar="LIST",
                    help="nsnet sources to time, comma-separated (proc,netlink,pidfd,auto)")
    ap.add_argument("--ss-repeat", type=int, default=None, metavar="N",
                    help="runs of the (slow) ss loop; default: --repeat")
    ap.add_argument("--keep-node", action="store_true", help="leave the node up at the end")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document")
    ap.add_argument("--json-out", metavar="FILE", help="also write the JSON document to FILE")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one nsnet snapshot (cProfile, top 25 by cumulative and tottime)")
    ap.add_argument("--bare-python", action="store_true",
                    help="use the Python bare reader even when a C compiler is present")
    ap.add_argument("--skip-ss", action="store_true", help="skip the (slow) ss loop reference")
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="another checkout of nsnet (e.g. a clone at an older commit): time both "
                         "trees' snapshots for each --sources, each in a fresh python, "
                         "interleaved, and report current / baseline")
    ap.add_argument("--dir", default=synthnode.DEFAULT_DIR, help="the node's state directory")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_snapshot.py: run as root (it builds namespaces and reads every process's fds)")
    if a.repeat < 1:
        sys.exit("--repeat must be >= 1")
    baseline = None
    if a.baseline:
        baseline = os.path.abspath(a.baseline)
        if not os.path.isfile(os.path.join(baseline, "nsnet", "__init__.py")):
            sys.exit(f"--baseline {a.baseline}: no nsnet/__init__.py there (not an nsnet checkout)")
        for path in (REPO, baseline):     # before the node is built: both trees must import
            out = snapshot_in_subprocess(path, "proc", count=0)
            if "error" in out:
                sys.exit(f"--baseline: {sys.executable} cannot import the nsnet of {path} "
                         f"({out['error']}); run this script with an interpreter that has "
                         f"nsnet's dependencies, e.g. {os.path.join(REPO, '.venv', 'bin', 'python')}")
    log = (lambda *m: print(*m, file=sys.stderr)) if a.json else print

    snapshot, nsnet_err = load_nsnet()
    nsenter, ss = (None, None) if a.skip_ss else (find_util_linux_nsenter(), shutil.which("ss"))
    if not a.skip_ss and not ss:
        sys.exit("bench: `ss` (iproute2) not found")
    bare = Bare(a.bare_python)
    state = synthnode.is_up(a.dir)
    reused = state is not None
    try:
        if reused:
            log(f"node: reusing the node already up in {a.dir}: {state['params']}")
        else:
            t0 = time.perf_counter()
            state = synthnode.up(a.namespaces, a.procs_per_ns, a.conns_per_proc, a.pin_every,
                                 a.child_ehash, a.dir, quiet=True)
            log(f"node: built in {time.perf_counter() - t0:.2f} s: {state['params']}")
        bare.run()      # warm-up, untimed: every method then sees the same warm dentry caches
        ns_pids = namespace_pids()
        pids = sorted(ns_pids.values())
        threads = default_threads() if snapshot else 1
        srcs = [x for x in a.sources.split(",") if x]
        res: dict[str, list] = {"nsnet": [], "nsnet_cli": [], "ss_loop": [], "bare": [],
                                "bare_threads": [], "bare_diag": [], "bare_diag_threads": []}
        diag_runs: list[dict] = []
        with_diag = any(src != "proc" for src in a.sources.split(",") if src)
        for src in srcs:
            if src != "proc":
                res[f"nsnet_{src}"] = []
        bare_runs, snap_info, errors = [], {}, []
        # --baseline: side -> {"runs_s": {source: [...]}, "snapshot": {source: {...}}, ...}
        trees = {}
        if baseline:
            trees = {side: {"path": path, **git_state(path), "api": None, "nsnet_file": None,
                            "runs_s": {src: [] for src in srcs},
                            "cpu_runs_s": {src: [] for src in srcs}, "snapshot": {}}
                     for side, path in (("current", REPO), ("baseline", baseline))}
        for r in range(a.repeat):
            b = bare.run()
            bare_runs.append(b)
            res["bare"].append(b["elapsed"])
            if threads > 1 and bare.exe:
                res["bare_threads"].append(bare.run(threads)["elapsed"])
            d = bare.run_diag() if with_diag else None
            if d is not None:
                diag_runs.append(d)
                res["bare_diag"].append(d["elapsed"])
                if threads > 1:
                    res["bare_diag_threads"].append(bare.run_diag(threads)["elapsed"])
            if snapshot:
                for src in srcs:
                    if src == "proc":
                        continue
                    t0 = time.perf_counter()
                    snap = snapshot(src)
                    res[f"nsnet_{src}"].append(time.perf_counter() - t0)
                    snap_info[src] = {"sockets": len(snap.sockets), "source": snap.stats.source,
                                      "by_source": dict(snap.stats.sockets_by_source),
                                      "unattributed": sum(1 for x in snap.sockets if not x.pids)}
                    del snap
                t0 = time.perf_counter()
                snap = snapshot("proc")
                res["nsnet"].append(time.perf_counter() - t0)
                snap_info.update({"namespaces": len(snap.namespaces),
                                  "processes": len(snap.processes), "sockets": len(snap.sockets)})
                del snap
                dt, err = run_nsnet_cli()
                res["nsnet_cli"].append(dt)
                if err:
                    errors.append(f"nsnet CLI: {err}")
            for i, src in enumerate(srcs if trees else ()):
                # both trees, each in a fresh interpreter; which goes first alternates
                order = ("current", "baseline") if (r + i) % 2 == 0 else ("baseline", "current")
                for side in order:
                    t = trees[side]
                    out = snapshot_in_subprocess(t["path"], src)
                    if "error" in out:
                        t["runs_s"][src].append(None)
                        t["cpu_runs_s"][src].append(None)
                        errors.append(f"{side} ({t['path']}) --source {src}: {out['error']}")
                        continue
                    t["runs_s"][src].append(out["elapsed_s"][0])
                    t["cpu_runs_s"][src].append(out["cpu_s"][0])
                    t["api"], t["nsnet_file"] = out["api"], out["nsnet_file"]
                    t["snapshot"][src] = {k: out[k] for k in
                                          ("namespaces", "processes", "sockets", "source")}
            if not a.skip_ss and r < (a.ss_repeat if a.ss_repeat is not None else a.repeat):
                dt, nerr = run_ss_loop(pids, nsenter, ss)
                res["ss_loop"].append(dt)
                if nerr:
                    errors.append(f"ss loop: {nerr} stderr lines in run {r + 1}")
            vs = [f"{side} {src} {fmt(t['runs_s'][src][-1])}" for src in srcs
                  for side, t in trees.items() if t["runs_s"][src]]
            log(f"  run {r + 1}/{a.repeat}: " + ", ".join(
                [f"{k} {v[-1]:.3f}s" for k, v in res.items() if v] + vs))
        med = {k: median(v) for k, v in res.items()}
        b = bare_runs[-1]
        size = {"namespaces": b["namespaces"], "processes": b["pids"], "fds": b["fds"],
                "socket_fds": b["socket_fds"],
                "sockets": b["net_lines"] - b["net_files"],   # one header line per file
                "net_bytes": b["net_bytes"], "ns_pids_for_ss_loop": len(pids)}
        ratios = {
            "ss_loop_over_nsnet": med["ss_loop"] / med["nsnet"] if med["ss_loop"] and med["nsnet"] else None,
            "nsnet_over_bare": med["nsnet"] / med["bare"] if med["nsnet"] and med["bare"] else None,
            "nsnet_cli_over_bare": med["nsnet_cli"] / med["bare"] if med["nsnet_cli"] and med["bare"] else None,
            # the same parallelism on both sides: nsnet's reader threads vs as many C threads
            "nsnet_over_bare_same_threads": (med["nsnet"] / med["bare_threads"]
                                             if med["nsnet"] and med["bare_threads"] else None),
        }
        for src in srcs:
            if src != "proc" and med.get(f"nsnet_{src}"):
                t = med[f"nsnet_{src}"]
                ratios[f"bare_over_{src}"] = med["bare"] / t if med["bare"] else None
                ratios[f"ss_loop_over_{src}"] = med["ss_loop"] / t if med["ss_loop"] else None
                diag = med["bare_diag_threads"] or med["bare_diag"]
                ratios[f"{src}_over_bare_diag_same_threads"] = t / diag if diag else None
        for t in trees.values():
            t["median_s"] = {src: median(v) for src, v in t["runs_s"].items()}
            t["cpu_median_s"] = {src: median(v) for src, v in t["cpu_runs_s"].items()}
        if trees:
            for src in srcs:
                cur, base = trees["current"]["median_s"][src], trees["baseline"]["median_s"][src]
                ratios[f"current_over_baseline_{src}"] = cur / base if cur and base else None
                cur, base = (trees["current"]["cpu_median_s"][src],
                             trees["baseline"]["cpu_median_s"][src])
                ratios[f"current_over_baseline_cpu_{src}"] = cur / base if cur and base else None
        doc = {
            "node": {"params": state["params"], "reused": reused, "size": size,
                     "bare_phases_s": {"fd_walk": b["fd_walk"], "net_read": b["net_read"]},
                     "bare_diag_phases_s": ({"fd_walk": diag_runs[-1]["fd_walk"],
                                             "diag": diag_runs[-1]["diag"],
                                             "sockets": diag_runs[-1]["sockets"]}
                                            if diag_runs else None)},
            "repeat": a.repeat, "runs_s": res, "median_s": med, "ratios": ratios,
            "targets": {"ss_loop_over_nsnet": ">= 10", "nsnet_over_bare": "<= 1.3"},
            "nsnet_threads": threads, "nsnet_snapshot": snap_info, "nsnet_error": nsnet_err or None,
            "bare_impl": bare.note, "nsenter": nsenter, "python": sys.executable,
            "errors": errors, "loadavg": synthnode.loadavg(),
        }
        if trees:   # each measured in a fresh python, see --baseline
            doc["current_subprocess"] = trees["current"]
            doc["baseline"] = trees["baseline"]
        if a.profile and snapshot:
            doc["profile"] = profile_snapshot(snapshot)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(doc, f, indent=1)
        if a.json:
            print(json.dumps(doc, indent=1))
        else:
            print_table(doc)
        return 0
    finally:
        bare.close()
        if a.keep_node:
            log(f"node: kept up (python3 {os.path.relpath(synthnode.__file__)} down --dir {a.dir})")
        else:
            synthnode.down(a.dir, quiet=True)
            log("node: torn down")


def print_table(doc: dict) -> None:
    m, r, s = doc["median_s"], doc["ratios"], doc["node"]["size"]
    n = doc["repeat"]
    print()
    print(f"node: {s['namespaces']} network namespaces, {s['processes']} processes, {s['fds']} fds "
          f"({s['socket_fds']} socket fds), {s['sockets']} sockets in the tables "
          f"(node built with --child-ehash {doc['node']['params'].get('child_ehash') or 0}, "
          f"load {' '.join(doc['loadavg'])})")
    ph = doc["node"]["bare_phases_s"]
    print(f"bare phases: fd links + ns stats {ph['fd_walk']:.3f} s, net tables {ph['net_read']:.3f} s")
    rows = [
        (f"nsnet: --source proc, in-process, {doc['nsnet_threads']} reader threads",
         m["nsnet"]),
        ("nsnet CLI: python -m nsnet sockets --json >/dev/null", m["nsnet_cli"]),
        (f"ss loop: nsenter -t PID -n ss -tuanp, {s['ns_pids_for_ss_loop']} namespaces", m["ss_loop"]),
        (f"bare: same reads, no parsing [{doc['bare_impl']}], 1 thread", m["bare"]),
        (f"bare: the same with {doc['nsnet_threads']} threads sharing the table reads",
         m["bare_threads"]),
    ]
    if m.get("bare_diag"):
        rows += [("bare diag: fd links, then sock_diag dumps, no parsing, 1 thread",
                  m["bare_diag"]),
                 (f"bare diag: the same with {doc['nsnet_threads']} threads sharing the dumps",
                  m["bare_diag_threads"])]
    for key, v in m.items():
        if key.startswith("nsnet_") and key != "nsnet_cli":
            src = key[len("nsnet_"):]
            rows.insert(1, (f"nsnet --source {src}, in-process", v))
    w = max(len(x[0]) for x in rows)
    print(f"\n{'approach':<{w}}  median of {n}")
    for name, v in rows:
        print(f"{name:<{w}}  {fmt(v)}")
    print()

    def ratio(v, target, ok):
        return "—" if v is None else f"{v:.2f}x  (target {target}: {'met' if ok(v) else 'NOT met'})"
    print(f"ss loop / nsnet : {ratio(r['ss_loop_over_nsnet'], '>= 10x', lambda v: v >= 10)}")
    print(f"nsnet / bare    : {ratio(r['nsnet_over_bare'], '<= 1.3x', lambda v: v <= 1.3)}"
          "  (bare single-threaded)")
    if r["nsnet_over_bare_same_threads"]:
        print(f"nsnet / bare, same threads: "
              f"{ratio(r['nsnet_over_bare_same_threads'], '<= 1.3x', lambda v: v <= 1.3)}")
    for key, v in r.items():
        if key.startswith("bare_over_") and v:
            src = key[len("bare_over_"):]
            ss_ratio = r.get(f"ss_loop_over_{src}")
            print(f"source {src}: {v:.2f}x faster than the bare /proc cost (1 thread)"
                  + (f", {ss_ratio:.1f}x faster than the ss loop" if ss_ratio else ""))
    for key, v in r.items():
        if key.endswith("_over_bare_diag_same_threads") and v:
            src = key[:-len("_over_bare_diag_same_threads")]
            print(f"source {src} / bare diag, same threads: {v:.2f}x  (the sock_diag floor: "
                  "what parsing, joining and Python add to the kernel's work)")
    ph = doc["node"].get("bare_diag_phases_s")
    if ph:
        print(f"bare diag phases (1 thread): fd links + ns stats {ph['fd_walk']:.3f} s, "
              f"sock_diag dumps {ph['diag']:.3f} s ({ph['sockets']} sockets)")
    if r["nsnet_cli_over_bare"]:
        print(f"nsnet CLI / bare: {r['nsnet_cli_over_bare']:.2f}x  (includes interpreter start-up and JSON)")
    if "baseline" in doc:
        print_baseline(doc)
    if doc["nsnet_error"]:
        print(f"nsnet unavailable: {doc['nsnet_error']}")
    for e in doc["errors"]:
        print(f"warning: {e}")
    if "profile" in doc:
        for k in ("cumulative", "tottime"):
            print(f"\n--- nsnet snapshot profile, top 25 by {k} ---")
            print(doc["profile"][k])


def print_baseline(doc: dict) -> None:
    cur, base = doc["current_subprocess"], doc["baseline"]

    def tree(t):
        commit = t["commit"][:12] if t["commit"] else "not a git checkout"
        dirty = " + uncommitted nsnet/ changes" if t["nsnet_dirty"] else ""
        return f"{t['path']} @ {commit}{dirty}, {t['api'] or '?'} API"
    print(f"\nbefore/after: each snapshot in a fresh python, import untimed, the trees interleaved "
          f"(wall, and CPU of all its threads); "
          f"median of {doc['repeat']}")
    print(f"  current : {tree(cur)}")
    print(f"  baseline: {tree(base)}")
    print(f"  {'source':<8}  {'current':>9}  {'baseline':>9}  {'ratio':>6}   "
          f"{'CPU cur.':>9}  {'CPU base':>9}  {'ratio':>6}")
    for src, c in cur["median_s"].items():
        ratio = doc["ratios"].get(f"current_over_baseline_{src}")
        cpu_ratio = doc["ratios"].get(f"current_over_baseline_cpu_{src}")
        socks = [t["snapshot"].get(src, {}).get("sockets") for t in (cur, base)]
        print(f"  {src:<8}  {fmt(c):>9}  {fmt(base['median_s'].get(src)):>9}  "
              + ("     —" if ratio is None else f"{ratio:5.3f}x") + "   "
              + f"{fmt(cur['cpu_median_s'].get(src)):>9}  {fmt(base['cpu_median_s'].get(src)):>9}  "
              + ("     —" if cpu_ratio is None else f"{cpu_ratio:5.3f}x")
              + ("" if socks[0] == socks[1] else f"  (sockets seen: {socks[0]} vs {socks[1]})"))


if __name__ == "__main__":
    sys.exit(main())
