#!/usr/bin/env python3
"""What `nsnet serve` costs on a busy node: CPU seconds per sample and resident memory.

    .venv/bin/python bench/bench_agent.py             # 100 namespaces x 5 x 10, 5 samples
    .venv/bin/python bench/bench_agent.py -n 400 -p 5 -c 20 --samples 5 --keep-node

(the interpreter of nsnet's venv: the agent needs prometheus-client)

Builds the synthetic node of bench/synthnode.py (or reuses one up in --dir), then runs the
agent as the DaemonSet does (`nsnet serve --source auto --db FILE`, destroy events on) with
an unlimited CPU budget so that samples follow each other, and reads from the agent itself:
CPU per sample (its `nsnet_sample_cpu_seconds` histogram), wall per sample, and its resident
memory (VmRSS after the samples, VmHWM the peak) from /proc/<pid>/status. The agent takes each
sample in a child process (and builds each API answer in one): the child's peak RSS is its
`nsnet_sample_peak_resident_memory_bytes`, and the agent's tree -- itself and its children,
their PSS summed (shared pages counted once), polled every 50 ms -- gives the peak the node
really pays while a sample or an answer is built. The reference in the
same run is an in-process `take_snapshot(SnapshotOptions(source="auto"))` (CPU and wall, median
of 3), so the ratio says what the agent adds to a snapshot (edges, events, history).
Run as root. Prints a table (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import synthnode  # noqa: E402


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of a process and its children (the agent's sampling and
    answering children): what the tree holds, shared pages counted once in all."""
    total = 0
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass     # a child that just exited
    return total


class TreePeak:
    """The largest tree_pss_kib seen, polled every `every` seconds on a thread."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, tree_pss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=300) as resp:
        return parse_metrics(resp.read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """The agent's unlabelled nsnet_* samples of a text exposition: name -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith("nsnet_") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def scrape_size(port: int) -> dict:
    """What one scrape of /metrics costs Prometheus: bytes as text, gzipped (what Prometheus
    asks for: Accept-Encoding gzip) and as gzipped OpenMetrics, and the series it carries --
    the edges', the address map's, and the agent's own."""
    def get(accept: str, gzipped: bool) -> bytes:
        headers = {"Accept": accept}
        if gzipped:
            headers["Accept-Encoding"] = "gzip"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=300) as resp:
            return resp.read()
    plain = get("text/plain", False)
    series = [line for line in plain.decode().splitlines() if line and line[0] != "#"]
    edges = sum(1 for line in series if line.startswith("nsnet_edge_"))
    addresses = sum(1 for line in series if line.startswith("nsnet_address_info"))
    return {"scrape_series": len(series), "scrape_edge_series": edges,
            "scrape_address_series": addresses,
            "scrape_other_series": len(series) - edges - addresses,
            "scrape_plain_bytes": len(plain),
            "scrape_gzip_bytes": len(get("text/plain", True)),
            "scrape_openmetrics_gzip_bytes": len(get(
                "application/openmetrics-text; version=1.0.0", True))}


def api_answer(pid: int, port: int) -> dict:
    """One GET /api/v1/snapshot?view=sockets: its size, and the agent's peak memory while it
    built and sent it (the peak RSS is reset first: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = status_kib(pid, "VmRSS")
    tree = TreePeak(pid)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/snapshot?view=sockets",
                                timeout=600) as r:
        size = len(r.read())
    return {"api_bytes": size, "api_rss_before_mib": before / 1024,
            "api_peak_rss_mib": status_kib(pid, "VmHWM") / 1024,
            "api_tree_pss_peak_mib": tree.stop() / 1024}


def run_agent(samples: int, db: str, repo: str = REPO, extra: tuple[str, ...] = (),
              idle_answer: bool = False) -> dict:
    """The agent sampling back to back (--interval 0.1, no CPU budget); idle_answer: one
    sample, then (no sample running) only the API answer and the memory around it. If the
    agent ends before, SystemExit says its exit status and the last of its stderr."""
    interval = "3600" if idle_answer else "0.1"
    agent = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                              "--interval", interval, "--max-cpu", "64", "--source", "auto",
                              "--db", db, *extra], cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        port, said = None, []
        assert agent.stderr is not None
        for line in agent.stderr:
            said.append(line)
            found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        if port is None:
            raise SystemExit("bench_agent: the agent did not start: " + "".join(said)[-500:])
        # read its stderr to the end (a full pipe would stop the agent), keeping the last lines
        drain = threading.Thread(target=_keep_tail, args=(agent.stderr, said), daemon=True)
        drain.start()
        started = time.monotonic()
        tree = TreePeak(agent.pid)
        while True:
            try:
                m = metrics(port)
            except OSError:
                if agent.poll() is None:
                    raise
                m = {}
            if agent.poll() is not None:
                drain.join(timeout=5)
                raise SystemExit(f"bench_agent: the agent ended (exit {agent.returncode}) "
                                 f"after {m.get('nsnet_samples_total', '?')} samples: "
                                 + "".join(said[-20:])[-2000:])
            if m.get("nsnet_samples_total", 0) >= samples:
                break
            if time.monotonic() - started > 1800:
                raise SystemExit("bench_agent: samples too slow")
            time.sleep(0.5)
        tree_peak = tree.stop()
        if idle_answer:
            time.sleep(2)         # the sample's child is gone
            steady = tree_pss_kib(agent.pid)
            answer = api_answer(agent.pid, port)
            return {"idle_tree_pss_mib": steady / 1024, **answer,
                    "idle_answer_over_steady_mib": answer["api_tree_pss_peak_mib"]
                    - steady / 1024}
        rss, hwm = status_kib(agent.pid, "VmRSS"), status_kib(agent.pid, "VmHWM")
        n = m["nsnet_sample_cpu_seconds_count"]
        return {**api_answer(agent.pid, port), **scrape_size(port), "samples": int(n),
                "cpu_per_sample_s": m["nsnet_sample_cpu_seconds_sum"] / n,
                "wall_per_sample_s": m["nsnet_sample_duration_seconds_sum"] / n,
                "rss_mib": rss / 1024, "peak_rss_mib": hwm / 1024,
                "tree_pss_peak_mib": tree_peak / 1024,
                "child_peak_rss_mib": m.get("nsnet_sample_peak_resident_memory_bytes", 0)
                / (1 << 20),
                "namespaces": m["nsnet_namespaces"], "sockets": m["nsnet_sockets"],
                "destroy_namespaces_watched": m.get("nsnet_destroy_namespaces_watched", 0),
                "db_bytes": sum(os.path.getsize(p) for p in (db, db + "-wal")
                                if os.path.exists(p))}
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _keep_tail(stream, said: list[str], keep: int = 200) -> None:
    for line in stream:
        said.append(line)
        del said[:-keep]


def reference_snapshot(repeat: int) -> dict:
    from nsnet.options import SnapshotOptions
    from nsnet.snapshot import take_snapshot

    options = SnapshotOptions(proc="/proc", source="auto")
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        take_snapshot(options)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    walls.sort()
    cpus.sort()
    return {"wall_s": walls[len(walls) // 2], "cpu_s": cpus[len(cpus) // 2]}


def report(doc: dict, state: dict, baseline: str | None) -> None:
    agent, base, ref = doc["agent"], doc.get("baseline"), doc["reference_snapshot"]
    pairs = [(p["no_traffic"], p["traffic"]) for p in doc.get("traffic_pairs", [])]
    print(f"node: {state['params']}: {agent['namespaces']:.0f} namespaces, "
          f"{agent['sockets']:.0f} sockets")
    print(f"take_snapshot(auto), in-process, median of 3: {ref['wall_s']:.3f} s wall, "
          f"{ref['cpu_s']:.3f} s CPU")
    print(f"nsnet serve, {agent['samples']} samples: {agent['wall_per_sample_s']:.3f} s "
          f"wall and {agent['cpu_per_sample_s']:.3f} s CPU per sample "
          f"({doc['agent_cpu_over_snapshot_cpu']:.2f}x the snapshot's CPU)")
    print(f"resident memory: {agent['rss_mib']:.0f} MiB after the samples, "
          f"peak {agent['peak_rss_mib']:.0f} MiB; history {agent['db_bytes'] / 1024:.0f} KiB "
          f"(with its WAL); "
          f"destroy events in {agent['destroy_namespaces_watched']:.0f} namespaces")
    print(f"while sampling: the sampling child's peak RSS {agent['child_peak_rss_mib']:.0f} "
          f"MiB (pages shared with the agent included); the agent and its children "
          f"together (PSS) at most {agent['tree_pss_peak_mib']:.0f} MiB")
    print(f"with the default budget (5% of a core) a sample runs every "
          f"{doc['default_budget_interval_s']:.0f} s")
    print(f"GET /metrics: {agent['scrape_series']} series ({agent['scrape_edge_series']} "
          f"of edges, {agent['scrape_address_series']} addresses, "
          f"{agent['scrape_other_series']} the agent's own); "
          f"{agent['scrape_plain_bytes'] / 1e3:.0f} kB as text, "
          f"{agent['scrape_gzip_bytes'] / 1e3:.0f} kB gzipped "
          f"({agent['scrape_plain_bytes'] / agent['scrape_gzip_bytes']:.1f}x smaller), "
          f"{agent['scrape_openmetrics_gzip_bytes'] / 1e3:.0f} kB gzipped OpenMetrics")
    idle = agent["idle"]
    print(f"GET /api/v1/snapshot?view=sockets with no sample running: the agent and "
          f"its children {idle['idle_tree_pss_mib']:.0f} MiB (PSS) before, at most "
          f"{idle['api_tree_pss_peak_mib']:.0f} MiB while answering: "
          f"+{idle['idle_answer_over_steady_mib']:.0f} MiB"
          + (f" (baseline: +{base['idle']['idle_answer_over_steady_mib']:.0f} MiB from "
             f"{base['idle']['idle_tree_pss_mib']:.0f})" if base is not None else ""))
    print(f"GET /api/v1/snapshot?view=sockets: {agent['api_bytes'] / 1e6:.1f} MB, "
          f"RSS {agent['api_rss_before_mib']:.0f} MiB before, peak "
          f"{agent['api_peak_rss_mib']:.0f} MiB while answering; the agent and its "
          f"children together (PSS) at most {agent['api_tree_pss_peak_mib']:.0f} MiB")
    if base is not None:
        grew = agent["api_peak_rss_mib"] - agent["api_rss_before_mib"]
        base_grew = max(1e-9, base["api_peak_rss_mib"] - base["api_rss_before_mib"])
        print(f"baseline {baseline}: answer peak {base['api_peak_rss_mib']:.0f} MiB "
              f"(from {base['api_rss_before_mib']:.0f}); after samples "
              f"{base['rss_mib']:.0f} MiB, tree peak while sampling "
              f"{base['tree_pss_peak_mib']:.0f} MiB. Ratios now/baseline: RSS after "
              f"samples {agent['rss_mib'] / base['rss_mib']:.2f}x, answer peak "
              f"{agent['api_peak_rss_mib'] / base['api_peak_rss_mib']:.2f}x, growth "
              f"while answering {grew / base_grew:.2f}x, "
              f"CPU per sample {agent['cpu_per_sample_s'] / base['cpu_per_sample_s']:.2f}x")
    for pair in doc.get("fork_pairs", []):
        inproc, forked = pair["in_process"], pair["forked"]
        print(f"--in-process / forked: CPU per sample {inproc['cpu_per_sample_s']:.3f} / "
              f"{forked['cpu_per_sample_s']:.3f} s "
              f"({forked['cpu_per_sample_s'] / inproc['cpu_per_sample_s']:.2f}x), RSS after the "
              f"samples {inproc['rss_mib']:.0f} / {forked['rss_mib']:.0f} MiB, the tree's peak "
              f"while sampling {inproc['tree_pss_peak_mib']:.0f} / "
              f"{forked['tree_pss_peak_mib']:.0f} MiB")
    for off, on in pairs:
        cpu_off, cpu_on = off["cpu_per_sample_s"], on["cpu_per_sample_s"]
        print(f"--no-traffic / traffic: CPU per sample {cpu_off:.3f} / {cpu_on:.3f} s "
              f"({cpu_on / cpu_off:.2f}x), "
              f"RSS {off['rss_mib']:.0f} / {on['rss_mib']:.0f} MiB "
              f"({on['rss_mib'] / off['rss_mib']:.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--namespaces", type=int, default=100)
    ap.add_argument("-p", "--procs-per-ns", type=int, default=5)
    ap.add_argument("-c", "--conns-per-proc", type=int, default=10)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--keep-node", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=synthnode.DEFAULT_DIR)
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="also run the agent of another checkout (git worktree) on the same "
                         "node, and print the ratios")
    ap.add_argument("--fork-cost", action="store_true",
                    help="also run this agent with --in-process, twice each interleaved, and "
                         "print what sampling in a child process costs and saves")
    ap.add_argument("--traffic-cost", action="store_true",
                    help="also run this agent with --no-traffic (no TCP_INFO: edges without "
                         "bytes, rtt, retransmits), and print what the traffic costs")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agent.py: run as root")
    state = synthnode.is_up(a.dir)
    if state is None:
        state = synthnode.up(a.namespaces, a.procs_per_ns, a.conns_per_proc, 0, 0, a.dir,
                             quiet=True)
    try:
        ref = reference_snapshot(3)
        with tempfile.TemporaryDirectory(prefix="nsnt-bench-agent-") as tmp:
            # --traffic-cost: traffic off and on, interleaved (off, on, off, on; the first
            # "on" is the agent reported above): on this VM a run's CPU per sample moves by
            # up to 1.5x from one minute to the next
            pairs: list[tuple[dict, dict]] = []
            off = run_agent(a.samples, os.path.join(tmp, "off0.db"), extra=("--no-traffic",)) \
                if a.traffic_cost else None
            agent = run_agent(a.samples, os.path.join(tmp, "history.db"))
            if off is not None:
                pairs.append((off, agent))
                pairs.append((run_agent(a.samples, os.path.join(tmp, "off1.db"),
                                        extra=("--no-traffic",)),
                              run_agent(a.samples, os.path.join(tmp, "on1.db"))))
            base = run_agent(a.samples, os.path.join(tmp, "base.db"), a.baseline) \
                if a.baseline else None
            # the API's answer with no sample running: what it adds to the agent's steady size
            agent["idle"] = run_agent(1, os.path.join(tmp, "idle.db"), idle_answer=True)
            if base is not None:
                base["idle"] = run_agent(1, os.path.join(tmp, "base-idle.db"), a.baseline,
                                         idle_answer=True)
            doc_fork: list[dict] = []
            if a.fork_cost:
                # in-process and forked, interleaved: (in, fork, in, fork)
                for i in range(2):
                    inproc = run_agent(a.samples, os.path.join(tmp, f"in{i}.db"),
                                       extra=("--in-process",))
                    doc_fork.append({"in_process": inproc,
                                     "forked": run_agent(a.samples,
                                                         os.path.join(tmp, f"fork{i}.db"))})
        doc = {"node": state["params"], "reference_snapshot": ref, "agent": agent,
               "agent_cpu_over_snapshot_cpu": agent["cpu_per_sample_s"] / ref["cpu_s"],
               "default_budget_interval_s": max(15.0, agent["cpu_per_sample_s"] / 0.05)}
        if base is not None:
            doc["baseline"] = base
        if pairs:
            doc["traffic_pairs"] = [{"no_traffic": off, "traffic": on} for off, on in pairs]
        if a.fork_cost:
            doc["fork_pairs"] = doc_fork
        if a.json:
            print(json.dumps(doc, indent=1))
        else:
            report(doc, state, a.baseline)
        return 0
    finally:
        if not a.keep_node:
            synthnode.down(a.dir, quiet=True)


if __name__ == "__main__":
    sys.exit(main())
