"""`nsnet watch`: the dependency edges of this node, live, redrawn after every sample.

On a terminal the screen is redrawn in place; into a pipe each sample is one block, separated
by a blank line. Ctrl-C ends it (exit 0).
"""
from __future__ import annotations

import os
import time

from .edges import EdgeBook
from .history import deps_view, node_name
from .report import Renderer, render_deps
from .sampler import Sampler
from .sanitize import printable
from .table import terminal_width, use_color

CLEAR = "\x1b[H\x1b[2J"


def watch(args, services, out, err) -> int:
    node = node_name(None)
    book = EdgeBook(retention=float("inf"))
    said: set[str] = set()

    def say_once(line: str) -> None:
        if line not in said:
            said.add(line)
            err.write(f"nsnet: warning: {printable(line)}\n")
            err.flush()

    tty = out.isatty()
    color = use_color(out, args.color) and not os.environ.get("NO_COLOR")
    sampler = Sampler(args, services, say_once)
    started = time.time()
    try:
        while True:
            sample = sampler.sample()
            book.update(sample.observed, sample.ts)
            doc = deps_view([(node, k, s) for k, s in book.since(started)], services, started,
                            "watch")
            doc["edges"].sort(key=lambda e: -e["last_seen"])   # the most recent first
            stats = sample.snap.stats
            head = (f"nsnet watch  {time.strftime('%H:%M:%S')}  {stats.namespaces} namespaces"
                    f"  {stats.sockets} sockets  {len(doc['edges'])} edges"
                    f"  sample {sample.wall:.2f} s ({sample.cpu:.2f} s CPU)"
                    + (f"  {sample.closed} closed since last" if sampler.watcher else ""))
            r = Renderer(terminal_width(out), color, args.resolve)
            frame = head + "\n\n" + render_deps(doc, r)
            out.write((CLEAR if tty else "") + frame + "\n" + ("" if tty else "\n"))
            out.flush()
            time.sleep(sampler.wait_after(sample))
    except KeyboardInterrupt:
        return 0
    finally:
        sampler.close()
