"""`nsnet watch`: the dependency edges of this node, live, redrawn after every sample.

On a terminal the screen is redrawn in place; into a pipe each sample is one block, separated
by a blank line. Ctrl-C ends it (exit 0).
"""
from __future__ import annotations

import time
from typing import TextIO

from ..options import WatchOptions
from ..report import Renderer, render_deps
from ..sanitize import printable
from ..table import terminal_width
from .edges import EdgeBook
from .history import deps_view
from .sampler import Sample, Sampler, Scanner

CLEAR = "\x1b[H\x1b[2J"


class Watch:
    """The live view's state: the edges seen since it started, and one frame per sample."""

    def __init__(self, options: WatchOptions, out: TextIO, err: TextIO, *,
                 scanner: Scanner | None = None):
        self.options = options
        self.out, self.err = out, err
        self.book = EdgeBook(retention=float("inf"))
        self.started = time.time()
        self._said: set[str] = set()
        self.sampler = Sampler(options.sampling, self.say_once, scanner=scanner)

    def say_once(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.err.write(f"nsnet: warning: {printable(line)}\n")
            self.err.flush()

    def frame(self, sample: Sample) -> str:
        """The text of one redraw, from the edges seen so far."""
        options = self.options
        self.book.update(sample.observed, sample.ts)
        services = options.sampling.snapshot.services
        doc = deps_view([(options.node, k, s) for k, s in self.book.since(self.started)],
                        services, self.started, "watch")
        doc["edges"].sort(key=lambda e: -e["last_seen"])   # the most recent first
        stats = sample.snap.stats
        head = (f"nsnet watch  {time.strftime('%H:%M:%S')}  {stats.namespaces} namespaces"
                f"  {stats.sockets} sockets  {len(doc['edges'])} edges"
                f"  sample {sample.wall:.2f} s ({sample.cpu:.2f} s CPU)"
                + (f"  {sample.closed} closed since last" if self.sampler.watcher else ""))
        r = Renderer(terminal_width(self.out, options.output.columns), options.output.color,
                     options.output.resolve)
        return head + "\n\n" + render_deps(doc, r)

    def step(self) -> float:
        """Sample, draw; returns how long to wait before the next sample."""
        sample = self.sampler.sample()
        tty = self.out.isatty()
        self.out.write((CLEAR if tty else "") + self.frame(sample) + "\n" + ("" if tty else "\n"))
        self.out.flush()
        return self.sampler.wait_after(sample)

    def close(self) -> None:
        self.sampler.close()


def watch(options: WatchOptions, out: TextIO, err: TextIO) -> int:
    view = Watch(options, out, err)
    try:
        while True:
            time.sleep(view.step())
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()
