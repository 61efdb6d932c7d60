"""`nsnet watch`: the dependency edges open now on this node, a live view redrawn after every
sample.

On a terminal the view is drawn in place on the alternate screen (as top does): the cursor
goes home, each line overwrites the last frame's and clears what is left of it, so nothing
scrolls and nothing flickers; the header stays on the first line, and rows that do not fit
the terminal's height are counted on the last one. Rows are the edges open now; an edge that
opened since the last frames is marked ``+``, one that closed ``-`` (shown, closed, for a few
frames). Into a pipe each frame is one block followed by a blank line; with ``--json`` each
sample is one JSON object on its own line (NDJSON). Ctrl-C ends it (exit 0) and gives the
terminal back as it was.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from .. import SCHEMA
from ..model import condition_of
from ..options import WatchOptions
from ..report import Renderer, edge_tables
from ..sanitize import json_text
from ..table import Column, fit_line, terminal_width
from .edges import EdgeBook, EdgeKey, EdgeState
from .history import edge_doc
from .sampler import Sample, Sampler, Scanner

ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"   # alternate screen, cursor
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
MARK_FRAMES = 3          # a new or closed edge stays marked for this many frames
MARK_STYLE = {"+": "green", "-": "red"}


def terminal_height(stream: TextIO) -> int | None:
    try:
        rows = os.get_terminal_size(stream.fileno()).lines
    except (AttributeError, OSError, ValueError):
        return None
    return rows or 24


class Watch:
    """The live view's state: which edges were open in the last frame, the marks, and one
    frame per sample."""

    def __init__(self, options: WatchOptions, out: TextIO, err: TextIO, *,
                 scanner: Scanner | None = None,
                 height: Callable[[TextIO], int | None] = terminal_height):
        self.options = options
        self.out, self.err = out, err
        self._said: set[str] = set()
        self.sampler = Sampler(options.sampling, self.say_once, scanner=scanner)
        self.tty = _isatty(out) and not options.output.json
        self.height = height
        self.book = EdgeBook(retention=float("inf"))
        self.open_now: dict[EdgeKey, EdgeState] = {}
        self.marks: dict[EdgeKey, tuple[str, int, EdgeState]] = {}   # key -> mark, frames left
        self.frames = 0
        self.last_frame = ""
        self._entered = False

    def say_once(self, line: str) -> None:
        condition = condition_of(line)
        if condition not in self._said and not self.options.output.quiet:
            self._said.add(condition)
            width = terminal_width(self.err, self.options.output.columns)
            self.err.write(fit_line(f"nsnet: warning: {line}", width) + "\n")
            self.err.flush()

    # ------------------------------------------------------------------ state
    def advance(self, sample: Sample) -> tuple[list[EdgeKey], list[EdgeKey]]:
        """Take a sample's edges: (opened, closed) since the last frame; marks updated."""
        self.book.update(sample.observed, sample.ts)
        now = {k: replace(self.book.edges[k]) for k, seen in sample.observed.items()
               if seen.open > 0 and k in self.book.edges}
        opened = [k for k in now if k not in self.open_now] if self.frames else []
        closed = [k for k in self.open_now if k not in now]
        marks = {}
        for k, (mark, left, state) in self.marks.items():
            # a mark fades after MARK_FRAMES frames; an edge that closed again, or opened
            # again, gets the newer mark below
            if left > 1 and (k in now) == (mark == "+"):
                marks[k] = (mark, left - 1, state)
        for k in opened:
            marks[k] = ("+", MARK_FRAMES, now[k])
        for k in closed:
            marks[k] = ("-", MARK_FRAMES, replace(self.open_now[k], current=0))
        self.marks = marks
        self.open_now = now
        self.frames += 1
        return opened, closed

    def rows(self, sample: Sample) -> list[dict]:
        node, services = self.options.node, self.options.sampling.snapshot.services
        docs = []
        for k, state in self.open_now.items():
            doc = edge_doc(node, k, state, services)
            marked = self.marks.get(k)
            doc["mark"] = marked[0] if marked and marked[0] == "+" else ""
            docs.append(doc)
        for k, (mark, _, state) in self.marks.items():
            if mark == "-":
                doc = edge_doc(node, k, state, services)
                doc["mark"] = "-"
                docs.append(doc)
        docs.sort(key=lambda e: (e["mark"] != "+", e["mark"] == "-", -(e["open"] or 0),
                                 e["uid"] is None, e["uid"] or 0, e["where"], e["peer_addr"],
                                 e["port"]))
        return docs

    # ------------------------------------------------------------------ output
    def frame(self, sample: Sample) -> str:
        """The text of one redraw (the state advanced by this sample)."""
        opened, closed = self.advance(sample)
        return self.draw(sample, self.rows(sample), len(opened), len(closed))

    def draw(self, sample: Sample, rows: list[dict], opened: int, closed: int) -> str:
        output = self.options.output
        stats = sample.snap.stats
        open_edges = sum(1 for e in rows if e["mark"] != "-")
        head = (f"nsnet watch  {time.strftime('%H:%M:%S', time.localtime(sample.ts))}  "
                f"{stats.namespaces} netns  {stats.sockets} sockets  "
                f"{open_edges} open edges (+{opened} -{closed})  "
                f"sample {sample.wall:.2f}s, {sample.cpu:.2f}s CPU"
                + (f"  {sample.closed} closed between samples" if self.sampler.watcher else ""))
        width = None if output.wide else terminal_width(self.out, output.columns)
        r = Renderer(width, output.color, output.resolve, columns=output.fields or None)
        mark = Column("", lambda e: e["mark"], style=lambda e: MARK_STYLE.get(e["mark"]),
                      name="MARK")
        body = edge_tables(rows, r, live=True, extra=[mark],
                           row_style=lambda e: "dim" if e["mark"] == "-" else None) \
            if rows else ["no connection open now"]
        lines = [fit_line(head, width), "", *"\n".join([*body, *r.notes()]).split("\n")]
        height = self.height(self.out) if self.tty else None
        if height is not None and len(lines) > height:
            hidden = len(lines) - (height - 1)
            lines = lines[:height - 1] + [fit_line(
                f"... {hidden} more lines: a taller terminal, or nsnet deps", width)]
        return "\n".join(lines)

    def json_line(self, sample: Sample, opened: int, closed: int) -> str:
        rows = self.rows(sample)
        st = sample.snap.stats
        return json_text({
            "schema": SCHEMA, "type": "sample", "ts": sample.ts, "node": self.options.node,
            "open": [e for e in rows if e["mark"] != "-"],
            "opened": [e for e in rows if e["mark"] == "+"],
            "closed": [e for e in rows if e["mark"] == "-"],
            "new_since_last": opened, "closed_since_last": closed,
            "stats": {"namespaces": st.namespaces, "sockets": st.sockets,
                      "wall_seconds": round(sample.wall, 4), "cpu_seconds": round(sample.cpu, 4),
                      "warnings": st.warnings()}})

    def step(self) -> float:
        """Sample, draw; returns how long to wait before the next sample."""
        sample = self.sampler.sample()
        if self.options.output.json:
            opened, closed = self.advance(sample)
            self.out.write(self.json_line(sample, len(opened), len(closed)) + "\n")
        elif self.tty:
            if not self._entered:
                self.out.write(ENTER)
                self._entered = True
            text = self.last_frame = self.frame(sample)
            self.out.write(HOME + (CLEAR_LINE + "\n").join(text.split("\n")) + CLEAR_LINE
                           + CLEAR_BELOW)
        else:
            self.out.write(self.frame(sample) + "\n\n")
        self.out.flush()
        return self.sampler.wait_after(sample)

    def close(self) -> None:
        if self._entered:
            self.out.write(LEAVE)
            self.out.flush()
            self._entered = False
        self.sampler.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt   # the terminal closed or we were told to stop: leave it clean


def watch(options: WatchOptions, out: TextIO, err: TextIO) -> int:
    view = Watch(options, out, err)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    try:
        while True:
            time.sleep(view.step())
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()
