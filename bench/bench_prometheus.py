#!/usr/bin/env python3
"""What one node's agent costs the Prometheus that scrapes it, measured on a real Prometheus,
and the paper for a cluster of --cluster-nodes such nodes.

    .venv/bin/python bench/bench_prometheus.py -n 100            # builds the 100-namespace node
    .venv/bin/python bench/bench_prometheus.py -n 400 -p 5 -c 20 --keep-node

Builds the synthetic node of bench/synthnode.py (or reuses one up in --dir), runs `nsnet serve`
on it (source auto, the DaemonSet's interval shortened to --interval), and a real Prometheus
(Debian's binary, a private data directory on 127.0.0.1) scraping it every --scrape-interval.
Measured in the same run: the series and bytes of one scrape (text, gzipped -- what
Prometheus asks for); Prometheus' own head series, its resident memory before the agent's
series arrived (the reference: Prometheus scraping only itself) and after --scrapes scrapes,
hence bytes of Prometheus memory per series; its samples appended per second. The paper then
multiplies: series, memory, ingestion, network and disk (at --bytes-per-sample, Prometheus'
documented 1-2 bytes per compressed sample) for --cluster-nodes nodes at a 15 s scrape.
Run as root. Prints a table (or --json).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import synthnode  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=300) as resp:
        return resp.read()


def query(port: int, promql: str) -> float:
    body = get(f"http://127.0.0.1:{port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def start_agent() -> tuple[subprocess.Popen, int]:
    agent = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                              "--interval", "5", "--max-cpu", "64", "--source", "auto"],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert agent.stderr is not None
    for line in agent.stderr:
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        if found:
            return agent, int(found.group(1))
    raise SystemExit("bench_prometheus: the agent did not start")


def wait_samples(port: int, samples: int) -> None:
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        text = get(f"http://127.0.0.1:{port}/metrics").decode()
        found = re.search(r"^nsnet_samples_total (\S+)$", text, re.M)
        if found and float(found.group(1)) >= samples:
            return
        time.sleep(1)
    raise SystemExit("bench_prometheus: samples too slow")


def start_prometheus(workdir: str, targets: list[str], interval: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    jobs = [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    if targets:
        jobs.append({"job_name": "nsnet", "static_configs": [{"targets": targets}]})
    config = os.path.join(workdir, "prometheus.yml")
    with open(config, "w") as f:
        # a busy node's scrape takes seconds: the timeout is the whole interval
        f.write(f"global:\n  scrape_interval: {interval:g}s\n  scrape_timeout: {interval:g}s\n"
                "  evaluation_interval: 15s\n"
                "scrape_configs:\n" + "".join(f"  - {json.dumps(j)}\n" for j in jobs))
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("bench_prometheus: no prometheus binary (apt-get install prometheus)")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if query(port, "up") >= 0 and query(port, 'up{job="prometheus"}') == 1:
                return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("bench_prometheus: prometheus did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def measure(a: argparse.Namespace) -> dict:
    agent, agent_port = start_agent()
    workdir = tempfile.mkdtemp(prefix="nsnet-bench-prom-")
    prom = None
    try:
        wait_samples(agent_port, 2)
        url = f"http://127.0.0.1:{agent_port}/metrics"
        plain = get(url, {"Accept": "text/plain"})
        zipped = get(url, {"Accept": "text/plain", "Accept-Encoding": "gzip"})
        series = sum(1 for line in plain.decode().splitlines() if line and line[0] != "#")
        assert gzip.decompress(zipped)[:1] == plain[:1]
        # the reference: the same Prometheus, scraping only itself, settled
        prom, prom_port = start_prometheus(workdir, [], a.scrape_interval)
        time.sleep(3 * a.scrape_interval)
        base_rss = rss_kib(prom.pid)
        base_series = query(prom_port, "prometheus_tsdb_head_series")
        stop(prom)
        shutil.rmtree(workdir)
        os.mkdir(workdir)
        prom, prom_port = start_prometheus(workdir, [f"127.0.0.1:{agent_port}"],
                                           a.scrape_interval)
        started = time.monotonic()
        while query(prom_port, 'sum_over_time(up{job="nsnet"}[1h])') < a.scrapes:
            if time.monotonic() - started > 1800:
                raise SystemExit("bench_prometheus: scrapes too slow")
            time.sleep(a.scrape_interval)
        time.sleep(a.scrape_interval)      # Prometheus' own metrics scraped after them
        head = query(prom_port, "prometheus_tsdb_head_series")
        rss = rss_kib(prom.pid)
        scraped = query(prom_port, 'scrape_samples_scraped{job="nsnet"}')
        duration = query(prom_port, 'scrape_duration_seconds{job="nsnet"}')
        agent_series = head - base_series
        return {"namespaces": a.namespaces, "series_per_scrape": series,
                "scrape_samples": scraped, "scrape_plain_bytes": len(plain),
                "scrape_gzip_bytes": len(zipped), "scrape_duration_s": duration,
                "prometheus_rss_base_mib": base_rss / 1024, "prometheus_rss_mib": rss / 1024,
                "head_series_base": base_series, "head_series": head,
                "prometheus_bytes_per_series": (rss - base_rss) * 1024 / max(agent_series, 1),
                "scrapes": a.scrapes}
    finally:
        if prom is not None:
            stop(prom)
        stop(agent)
        shutil.rmtree(workdir, ignore_errors=True)


def paper(m: dict, nodes: int, interval: float, bytes_per_sample: float) -> dict:
    series = m["series_per_scrape"] * nodes
    return {"cluster_nodes": nodes, "cluster_series": series,
            "prometheus_memory_gib": series * m["prometheus_bytes_per_series"] / 2**30,
            "samples_per_second": series / interval,
            "scrape_traffic_mbit_s": m["scrape_gzip_bytes"] * nodes * 8 / interval / 1e6,
            "disk_gib_per_day": series * 86400 / interval * bytes_per_sample / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--namespaces", type=int, default=100)
    ap.add_argument("-p", "--procs-per-ns", type=int, default=5)
    ap.add_argument("-c", "--conns-per-proc", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=10,
                    help="successful scrapes before measuring")
    ap.add_argument("--scrape-interval", type=float, default=5.0, metavar="SECONDS")
    ap.add_argument("--cluster-nodes", type=int, default=1000)
    ap.add_argument("--cluster-interval", type=float, default=15.0, metavar="SECONDS",
                    help="the scrape interval of the paper cluster (the DaemonSet's default)")
    ap.add_argument("--bytes-per-sample", type=float, default=1.5)
    ap.add_argument("--keep-node", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=synthnode.DEFAULT_DIR)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_prometheus.py: run as root")
    state = synthnode.is_up(a.dir)
    if state is None:
        synthnode.up(a.namespaces, a.procs_per_ns, a.conns_per_proc, 0, 0, a.dir, quiet=True)
    try:
        m = measure(a)
    finally:
        if not a.keep_node:
            synthnode.down(a.dir, quiet=True)
    p = paper(m, a.cluster_nodes, a.cluster_interval, a.bytes_per_sample)
    if a.json:
        print(json.dumps({**m, **p}, indent=1))
        return 0
    print(f"one node ({a.namespaces} namespaces): {m['series_per_scrape']} series per scrape, "
          f"{m['scrape_plain_bytes'] / 1e3:.0f} kB as text, {m['scrape_gzip_bytes'] / 1e3:.0f} kB "
          f"gzipped ({m['scrape_plain_bytes'] / m['scrape_gzip_bytes']:.1f}x smaller); "
          f"Prometheus scraped it in {m['scrape_duration_s'] * 1000:.0f} ms")
    print(f"Prometheus: {m['head_series_base']:.0f} head series and "
          f"{m['prometheus_rss_base_mib']:.0f} MiB scraping itself (the reference), "
          f"{m['head_series']:.0f} and {m['prometheus_rss_mib']:.0f} MiB after {m['scrapes']} "
          f"scrapes of the agent: {m['prometheus_bytes_per_series'] / 1024:.1f} KiB per series")
    print(f"paper, {p['cluster_nodes']} such nodes scraped every {a.cluster_interval:g} s: "
          f"{p['cluster_series'] / 1e6:.1f} M series, ~{p['prometheus_memory_gib']:.0f} GiB of "
          f"Prometheus memory, {p['samples_per_second'] / 1e3:.0f} k samples/s, "
          f"{p['scrape_traffic_mbit_s']:.0f} Mbit/s of gzipped scrapes, "
          f"~{p['disk_gib_per_day']:.0f} GiB/day on disk at {a.bytes_per_sample:g} bytes/sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
