"""nsnet.table: fits a terminal, never truncates piped output, colours only when asked,
and detects terminals with a real pty rather than a mocked isatty()."""
from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from typing import Iterator, Optional

import pytest

from nsnet.sanitize import join_cmdline
from nsnet.table import (Column, display_width, heading, paint, render_table,
                         forced_columns, terminal_width, truncate, use_color)

SGR = re.compile(r"\x1b\[[0-9;]*m")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plain(text: str) -> str:
    return SGR.sub("", text)


@dataclass
class Row:
    pid: Optional[int]
    user: str
    state: str
    cmd: str


COLUMNS = [
    Column("PID", "pid", align="right"),
    Column("USER", "user", priority=1),
    Column("STATE", "state", priority=2),
    Column("COMMAND", "cmd", shrink=True, min_width=10),
]

LONG_CMD = "/usr/bin/python3 -m http.server --bind 127.0.0.1 8000 " + "x" * 200
ROWS = [
    Row(1, "root", "LISTEN", LONG_CMD),
    Row(4242, "中文用户", "ESTABLISHED", "nginx: worker process"),
    Row(None, "nobody", "TIME_WAIT", ""),
    Row(77, "mallory", "LISTEN", "evil\x1b[2J\x1b]0;pwned\x07\nPID USER fake row\r\u202e"),
]


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.fixture
def pty_out() -> Iterator[tuple[int, io.TextIOWrapper]]:
    """(master fd, a text stream writing to the pty's slave side)."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)


@pytest.fixture
def pipe_out() -> Iterator[io.TextIOWrapper]:
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    try:
        yield stream
    finally:
        stream.close()
        os.close(r)


# ------------------------------------------------------------------------ widths

@pytest.mark.parametrize("text, cells", [
    ("", 0), ("abc", 3), ("中文", 4), ("ｆｕｌｌ", 8), ("e\u0301", 1), ("é中a", 4), ("🙂", 2)])
def test_display_width(text: str, cells: int) -> None:
    assert display_width(text) == cells


@pytest.mark.parametrize("text, width, out", [
    ("abcdef", 6, "abcdef"), ("abcdef", 5, "abcd…"), ("abcdef", 1, "…"), ("abcdef", 0, ""),
    ("中中中", 6, "中中中"), ("中中中", 5, "中中…"), ("中中中", 4, "中…"), ("中中中", 3, "中…"),
    ("中中中", 2, "…"), ("e\u0301e\u0301e", 2, "e\u0301…")])
def test_truncate(text: str, width: int, out: str) -> None:
    assert truncate(text, width) == out
    assert display_width(truncate(text, width)) <= max(width, 0)


# ------------------------------------------------------------------------ layout

def test_piped_output_is_never_truncated() -> None:
    huge = "java " + " ".join(f"-Dprop{i}=value{i}" for i in range(300))
    rows = ROWS + [Row(9, "app", "LISTEN", huge)]
    out = render_table(COLUMNS, rows, width=None, color=False)
    assert huge in out
    assert LONG_CMD in out
    assert "…" not in out
    assert len(out.splitlines()) == 1 + len(rows)


@pytest.mark.parametrize("width", [300, 120, 80, 60, 45, 30, 20, 12, 8, 5, 2, 1])
@pytest.mark.parametrize("color", [False, True])
def test_every_line_fits_the_terminal(width: int, color: bool) -> None:
    out = render_table(COLUMNS, ROWS, width=width, color=color,
                       row_style=lambda r: "dim" if r.pid is None else None)
    lines = out.split("\n")
    # One line per row whatever the cells contain: the injected \n is an escape.
    assert len(lines) == 1 + len(ROWS)
    for line in lines:
        assert display_width(plain(line)) <= width, (width, line)
        assert line == line.rstrip(" ")


def test_hostile_cells_cannot_inject_rows_or_escapes() -> None:
    out = render_table(COLUMNS, ROWS, width=None, color=False)
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    lines = out.split("\n")
    assert len(lines) == 5
    assert lines[4].endswith("evil\\x1b[2J\\x1b]0;pwned\\x07\\nPID USER fake row\\r\\u202e")


def test_colour_output_has_only_our_sgr_codes() -> None:
    out = render_table(COLUMNS, ROWS, width=None, color=True,
                       row_style=lambda r: "dim" if r.pid is None else None)
    assert "\x1b" not in SGR.sub("", out)
    assert plain(out) == render_table(COLUMNS, ROWS, width=None, color=False)


def test_widest_shrinkable_column_gives_way_first() -> None:
    cols = [Column("A", "a", shrink=True), Column("B", "b", shrink=True),
            Column("C", "c")]
    rows = [{"a": "a" * 50, "b": "b" * 12, "c": "c" * 10}]
    natural = 50 + 12 + 10 + 4
    out = render_table(cols, rows, width=natural - 20, color=False, header=False)
    a, b, c = out.split("  ")
    assert (display_width(a), b, c) == (30, "b" * 12, "c" * 10)
    assert a.endswith("…")
    # Once A is down to B's width, both go down together; C (not shrinkable) never does.
    out = render_table(cols, rows, width=10 + 10 + 10 + 4, color=False, header=False)
    a, b, c = out.split("  ")
    assert (display_width(a), display_width(b), c) == (10, 10, "c" * 10)
    # An odd budget: the spare cell goes to the naturally widest, none is wasted.
    out = render_table(cols, rows, width=11 + 10 + 10 + 4, color=False, header=False)
    a, b, c = out.split("  ")
    assert (display_width(a), display_width(b)) == (11, 10)


def test_min_width_and_priority_hiding() -> None:
    full = render_table(COLUMNS, ROWS, width=None, color=False)
    assert full.split("\n")[0].split() == ["PID", "USER", "STATE", "COMMAND"]
    # 80 columns: the command line shrinks, nothing is hidden.
    head = render_table(COLUMNS, ROWS, width=80, color=False).split("\n")[0]
    assert head.split() == ["PID", "USER", "STATE", "COMMAND"]
    # PID 4 + USER 8 + STATE 11 + COMMAND min 10 + 3 separators = 39 cells.
    out = render_table(COLUMNS, ROWS, width=39, color=False).split("\n")
    assert out[0].split() == ["PID", "USER", "STATE", "COMMAND"]
    assert out[1] == "   1  root      LISTEN       /usr/bin/…"
    # One cell less: USER (priority 1) goes first, and COMMAND gets the room back.
    out = render_table(COLUMNS, ROWS, width=38, color=False).split("\n")
    assert out[0].split() == ["PID", "STATE", "COMMAND"]
    assert display_width(out[1]) == 38
    # Then STATE; PID and COMMAND have no priority and stay.
    head = render_table(COLUMNS, ROWS, width=25, color=False).split("\n")[0]
    assert head.split() == ["PID", "COMMAND"]


def test_tiny_width_clips_lines_with_ellipsis() -> None:
    out = render_table(COLUMNS, ROWS, width=8, color=True).split("\n")
    assert [display_width(plain(line)) for line in out] == [8, 8, 8, 0, 8]
    assert all(plain(line).endswith("…") for line in out if display_width(plain(line)) == 8)
    assert render_table(COLUMNS, ROWS, width=1, color=False).split("\n") == ["…", "…", "…", "", "…"]


def test_wide_chars_keep_columns_aligned() -> None:
    cols = [Column("NAME", "name"), Column("N", "n", align="right"), Column("X", "x")]
    rows = [{"name": "中文名", "n": 1, "x": "a"}, {"name": "abc", "n": 100, "x": "b"},
            {"name": "ｆｕｌｌwidth", "n": None, "x": "c"}]
    lines = render_table(cols, rows, width=None, color=False).split("\n")
    # The last column starts at the same display column on every line.
    starts = {display_width(line[:-1]) for line in lines}
    assert len(starts) == 1
    assert lines[1] == "中文名           1  a"
    # Shrinking a wide-char column never leaves a half character.
    cols[0].shrink = True
    for width in range(8, 22):
        for line in render_table(cols, rows, width=width, color=False).split("\n"):
            assert display_width(line) <= width


def test_header_bold_and_styles_only_with_colour() -> None:
    cols = [Column("PID", "pid", align="right"),
            Column("STATE", "state",
                   style=lambda r: {"LISTEN": "green", "TIME_WAIT": "yellow"}.get(r.state))]
    on = render_table(cols, ROWS, width=None, color=True,
                      row_style=lambda r: "dim" if r.pid is None else None)
    header, listen, est, tw, _ = on.split("\n")
    assert header == " \x1b[1mPID\x1b[0m  \x1b[1mSTATE\x1b[0m"
    assert "\x1b[32mLISTEN\x1b[0m" in listen
    assert "\x1b" not in est
    assert tw == "      \x1b[2;33mTIME_WAIT\x1b[0m"   # row dim + cell yellow; empty pid unpainted
    off = render_table(cols, ROWS, width=None, color=False,
                       row_style=lambda r: "dim" if r.pid is None else None)
    assert "\x1b" not in off


def test_keys_mappings_attributes_callables_and_safe_text() -> None:
    cols = [Column("CMD", lambda r: join_cmdline(r["argv"])), Column("N", "n")]
    rows = [{"argv": ["sh", "-c", "a b\n"], "n": 0}]
    # join_cmdline's output is already escaped: the table must not double backslashes.
    assert render_table(cols, rows, width=None, color=False, header=False) \
        == 'sh -c "a b\\n"  0'
    with pytest.raises(ValueError):
        Column("X", "x", align="center")
    with pytest.raises(ValueError):
        paint("x", "blink", True)


def test_empty_table_and_heading() -> None:
    assert render_table(COLUMNS, [], width=None, color=False) == "PID  USER  STATE  COMMAND"
    assert heading("netns 4026531840 (host)", False) == \
        "netns 4026531840 (host)\n" + "=" * 23
    assert heading("\x1b[2Jns", True) == "\x1b[1m\\x1b[2Jns\x1b[0m\n" + "=" * 9
    assert heading("中文 namespace", False, width=6) == "中文 …\n======"


# --------------------------------------------------------------- terminal detection

def test_terminal_width_of_a_real_pty(pty_out) -> None:
    master, stream = pty_out
    set_winsize(master, 24, 37)
    assert terminal_width(stream) == 37
    set_winsize(master, 24, 0)          # a pty nobody sized yet
    assert terminal_width(stream) == 80
    assert terminal_width(stream, forced_columns("55")) == 55
    set_winsize(master, 24, 132)
    for garbage in ("wide", "0", "-5", "²", "", None):   # ignored, never fatal
        assert forced_columns(garbage) is None
        assert terminal_width(stream, forced_columns(garbage)) == 132


def test_terminal_width_not_a_tty(pipe_out, tmp_path) -> None:
    forced = forced_columns("55")   # COLUMNS must not make a pipe look like a terminal
    assert terminal_width(pipe_out, forced) is None
    assert terminal_width(io.StringIO(), forced) is None
    with open(tmp_path / "f", "w") as f:
        assert terminal_width(f, forced) is None
    closed = open(tmp_path / "g", "w")
    closed.close()
    assert terminal_width(closed, forced) is None


def test_use_color_auto_on_a_real_pty(pty_out) -> None:
    _, tty = pty_out
    assert use_color(tty, term="xterm-256color") is True
    assert use_color(tty, no_color="") is True     # empty means unset (no-color.org)
    assert use_color(tty, no_color="1") is False
    assert use_color(tty, "always", no_color="1") is True   # an explicit flag beats NO_COLOR
    assert use_color(tty, term="dumb") is False
    assert use_color(tty, "never", term="xterm") is False


def test_use_color_when_piped(pipe_out) -> None:
    assert use_color(pipe_out) is False
    assert use_color(io.StringIO()) is False
    assert use_color(pipe_out, "always") is True
    with pytest.raises(ValueError):
        use_color(pipe_out, "sometimes")


PROBE = ("import sys; from nsnet.table import terminal_width, use_color; "
         "print(terminal_width(sys.stdout), use_color(sys.stdout, term='xterm'))")


def probe_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    env.update(TERM="xterm", PYTHONPATH=REPO)
    return env


def test_a_child_writing_to_a_pty_or_a_pipe(pty_out) -> None:
    """What the CLI will see on sys.stdout, in a separate process: terminal vs pipe."""
    master, tty = pty_out
    set_winsize(master, 30, 91)
    subprocess.run([sys.executable, "-c", PROBE], stdout=tty, env=probe_env(),
                   check=True, timeout=30)
    got = b""
    while b"\n" not in got:
        got += os.read(master, 1024)
    assert got.split()[:2] == [b"91", b"True"]
    piped = subprocess.run([sys.executable, "-c", PROBE], capture_output=True,
                           env=probe_env(), check=True, timeout=30, text=True)
    assert piped.stdout.split() == ["None", "False"]


def test_render_restores_the_garbage_collector() -> None:
    import gc
    assert gc.isenabled()
    render_table(COLUMNS, ROWS, width=40, color=False)
    assert gc.isenabled()
    gc.disable()
    try:
        render_table(COLUMNS, ROWS, width=40, color=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(AttributeError):
        render_table([Column("X", "missing")], ROWS, width=None, color=False)
    assert gc.isenabled()
