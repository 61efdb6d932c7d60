"""`nsnet watch` as a live view, on in-memory snapshots (a FixedScanner): rows are the edges
open now, new ones marked + and closed ones - for a few frames; on a terminal each frame is
drawn in place (checked on a real pty through a terminal emulator, pyte); the height is
respected; --json is one object per sample."""
from __future__ import annotations

import fcntl
import io
import json
import os
import select
import struct
import termios

import pyte
from memnode import FixedScanner, MemNode

from nsnet.agent.watch import ENTER, LEAVE, MARK_FRAMES, Watch
from nsnet.model import Snapshot
from nsnet.options import OutputOptions, SamplingOptions, WatchOptions

A, B = 4026532300, 4026532400


def node(*ports: int, unknown: bool = False) -> Snapshot:
    """Tenant 10001 serves each port in A; tenant 10002's client in B holds one connection to
    each. unknown: also an open connection in the host's namespace that nobody holds."""
    n = MemNode()
    n.process(1, uid=0, cmdline=["/sbin/init"])
    n.process(200, uid=10001, netns=A, cmdline=["/srv/api"])
    n.process(300, uid=10002, netns=B, cmdline=["/bin/client"])
    for i, port in enumerate(ports):
        n.socket("tcp", "LISTEN", f"0.0.0.0:{port}", netns=A, holders=[200])
        n.connection(f"10.1.0.2:{40000 + i}", f"10.1.0.1:{port}", client_netns=B,
                     server_netns=A, client_holders=[300], server_holders=[200])
    if unknown:
        n.socket("tcp", "ESTABLISHED", "192.168.1.5:51000", "10.0.0.5:3306")
    return n.build()


def options(**output) -> WatchOptions:
    return WatchOptions(sampling=SamplingOptions(events=False, interval=2.0, max_cpu=0.5),
                        node="n1", output=OutputOptions(columns=200, **output))


def rows(frame: str, marker: str = "10.1.0.1:") -> list[str]:
    return [line for line in frame.splitlines() if marker in line]


def test_rows_are_the_edges_open_now_with_new_and_closed_ones_marked():
    snaps = [node(8080), node(8080, 9090), node(9090)] + [node(9090)] * MARK_FRAMES
    view = Watch(options(), io.StringIO(), io.StringIO(), scanner=FixedScanner(snaps))
    # each connection is two edges: tenant 10002's outbound one, tenant 10001's inbound one
    first = view.frame(view.sampler.sample())
    assert "2 open edges (+0 -0)" in first.splitlines()[0]      # the first frame marks nothing
    [row] = rows(first)
    assert row.split()[0] == "10002" and "10.1.0.1:8080" in row
    assert [r for r in first.splitlines() if "10.1.0.2" in r][0].split()[0] == "10001"

    second = view.frame(view.sampler.sample())
    assert "4 open edges (+2 -0)" in second.splitlines()[0]
    [new] = [r for r in rows(second) if "9090" in r]
    assert new.startswith("+ ")

    third = view.frame(view.sampler.sample())
    assert "2 open edges (+0 -2)" in third.splitlines()[0]
    [gone] = [r for r in rows(third) if "8080" in r]
    assert gone.startswith("- ")                                  # closed, still shown
    [kept] = [r for r in rows(third) if "9090" in r]
    assert kept.startswith("+ ")                                  # still marked new

    for _ in range(MARK_FRAMES):
        last = view.frame(view.sampler.sample())
    assert [r for r in rows(last) if "8080" in r] == []              # faded out
    assert all(not r.startswith(("+", "-")) for r in rows(last))


def test_an_unknown_user_is_said_so_not_none():
    """A connection closing in the host's namespace (TIME_WAIT: no holder, and the table's
    uid is not its user any more) was open in the last frame: its row says `unknown`."""
    n = MemNode()
    n.process(1, uid=0, cmdline=["/sbin/init"])
    n.socket("tcp", "TIME_WAIT", "192.168.1.5:51000", "10.0.0.5:3306")
    closing = n.build()
    view = Watch(options(), io.StringIO(), io.StringIO(), scanner=FixedScanner([closing]))
    sample = view.sampler.sample()
    [(key, seen)] = sample.observed.items()
    seen.open, seen.closed = 1, 0          # as the previous sample saw it: open
    view.frame(sample)
    seen.open = 0
    frame = view.frame(sample)
    [line] = rows(frame, "10.0.0.5:3306")
    assert line.split()[:2] == ["-", "unknown"]
    assert "None" not in frame


def test_a_pipe_gets_one_block_per_sample_and_no_escape_sequences():
    out = io.StringIO()
    view = Watch(options(), out, io.StringIO(), scanner=FixedScanner([node(8080)] * 2))
    assert 0 <= view.step() <= 2.0
    view.step()
    view.close()
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.count("nsnet watch") == 2 and text.endswith("\n\n")


def test_json_streams_one_object_per_sample():
    out = io.StringIO()
    view = Watch(options(json=True), out, io.StringIO(),
                 scanner=FixedScanner([node(8080), node(9090)]))
    view.step()
    view.step()
    view.close()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["type"] == "sample" and first["schema"] == "nsnet/1"
    assert {(e["direction"], e["port"]) for e in first["open"]} == \
        {("outbound", 8080), ("inbound", 8080)}
    assert {e["port"] for e in second["opened"]} == {9090}
    assert {e["port"] for e in second["closed"]} == {8080}
    assert second["new_since_last"] == 2 and second["closed_since_last"] == 2


def test_the_frame_fits_the_terminal_height():
    view = Watch(options(), io.StringIO(), io.StringIO(),
                 scanner=FixedScanner([node(*range(8000, 8030))]), height=lambda _: 12)
    view.tty = True
    frame = view.frame(view.sampler.sample())
    lines = frame.split("\n")
    assert len(lines) == 12
    assert lines[0].startswith("nsnet watch")                      # the header stays
    assert lines[-1].startswith("... ") and "more lines" in lines[-1]


def drain(master: int, quiet: float = 0.2) -> bytes:
    """Everything written to the pty so far: the kernel hands a pty's output to the reader in
    pieces (the line discipline's flush work), so one read() may return part of a frame on
    a busy machine. Read until nothing more comes for `quiet` seconds."""
    got = b""
    while select.select([master], [], [], quiet)[0]:
        chunk = os.read(master, 1 << 20)
        if not chunk:
            break
        got += chunk
    return got


def test_on_a_terminal_each_frame_is_drawn_in_place():
    """A real pty, read through a terminal emulator: after three frames the screen holds
    exactly the last one, header on the first line, nothing scrolled; closing gives the
    terminal back (alternate screen left, cursor shown)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    out = os.fdopen(slave, "w")
    screen = pyte.Screen(100, 30)
    stream = pyte.ByteStream(screen)
    try:
        view = Watch(WatchOptions(sampling=SamplingOptions(events=False), node="n1"), out,
                     io.StringIO(), scanner=FixedScanner(
                         [node(8080, 8081, 8082, 8083), node(8080), node(9090)]))
        assert view.tty
        written = b""
        for _ in range(3):
            view.step()
            written += os.read(master, 1 << 20)
        stream.feed(written)
        shown = [line.rstrip() for line in screen.display]
        # exactly the last frame: its lines from the top, the rest of the screen blank
        # (the first frame was longer: nothing of it is left)
        frame = view.last_frame.split("\n")
        assert shown[:len(frame)] == [line.rstrip() for line in frame]
        assert all(line == "" for line in shown[len(frame):])
        assert shown[0].startswith("nsnet watch") and "(+2 -2)" in shown[0]
        assert [line[:1] for line in shown if "10.1.0.1:9090" in line] == ["+"]
        assert [line[:1] for line in shown if "10.1.0.1:8080" in line] == ["-"]
        assert written.startswith(ENTER.encode()) and written.count(ENTER.encode()) == 1
        view.close()
        assert drain(master).endswith(LEAVE.encode())
    finally:
        out.close()
        os.close(master)
