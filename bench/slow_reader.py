#!/usr/bin/env python3
"""One slow client of the real agent: does a reader that keeps reading get its whole answer?

    .venv/bin/python bench/slow_reader.py                     # 100 namespaces, 4 KiB / 0.1 s
    .venv/bin/python bench/slow_reader.py --bytes 1024 --every 0.2 -n 10

Run as root, with the venv's interpreter. Builds bench/synthnode.py's node in its own --dir
(unless one is up there), starts `python -m nsnet serve --interval 5 --max-cpu 1.0 --source
auto` of this tree, waits for its first sample, then asks `/api/v1/snapshot?view=sockets`
(not gzipped) with a 4 KiB receive buffer, taking --bytes every --every seconds, and prints
how much of the Content-Length it got and in how long. The agent drops a client that takes no
byte for its http_timeout (10 s); a slow one that keeps reading must get all of it, however
large the kernel's send buffer has grown.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import synthnode  # noqa: E402

DEFAULT_DIR = "/tmp/nsnt-bench-slow"


def read_slowly(port: int, size: int, every: float) -> tuple[int, int, float]:
    """(bytes of the body got, its Content-Length, seconds)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/snapshot?view=sockets HTTP/1.0\r\n\r\n")
    s.settimeout(60)
    got, t0 = b"", time.monotonic()
    try:
        while chunk := s.recv(size):
            got += chunk
            time.sleep(every)
    except OSError as exc:
        print(f"slow_reader: {exc}", file=sys.stderr)
    finally:
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    return len(body), int(length.group(1)) if length else -1, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("-n", "--namespaces", type=int, default=100)
    ap.add_argument("--bytes", type=int, default=4096, help="taken at each read")
    ap.add_argument("--every", type=float, default=0.1, help="seconds between reads")
    ap.add_argument("--port", type=int, default=18611)
    ap.add_argument("--dir", default=DEFAULT_DIR)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("slow_reader.py: run as root")
    built = synthnode.is_up(a.dir) is None
    if built:
        synthnode.up(a.namespaces, 5, 10, 5, 0, a.dir, quiet=True)
    tmp = tempfile.mkdtemp(prefix="nsnt-slow-")
    agent = subprocess.Popen([sys.executable, "-m", "nsnet", "serve", "--listen",
                              f"127.0.0.1:{a.port}", "--interval", "5", "--max-cpu", "1.0",
                              "--source", "auto", "--db", os.path.join(tmp, "history.db")],
                             cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/readyz", timeout=5):
                    break
            except OSError:
                if agent.poll() is not None:
                    sys.exit(f"slow_reader.py: the agent ended (exit {agent.returncode})")
                time.sleep(1)
        got, length, seconds = read_slowly(a.port, a.bytes, a.every)
    finally:
        agent.terminate()
        agent.wait()
        if built:
            synthnode.down(a.dir, quiet=True)
    whole = got == length
    print(f"{got:,} of {length:,} bytes in {seconds:.0f} s ({got / seconds / 1024:.1f} KiB/s): "
          + ("whole" if whole else "CUT SHORT"))
    return 0 if whole else 1


if __name__ == "__main__":
    sys.exit(main())
