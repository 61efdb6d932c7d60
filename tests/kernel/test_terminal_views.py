"""The terminal views as an operator sees them: nsnet run in a real pseudo-terminal of 80, 120
and 200 columns on the dependency node (support/depnode.py: a services namespace, two pods, a
sidecar), its output read through a terminal emulator (pyte). At every width no line is wider
than the terminal, every endpoint, port and state of the fixture appears whole, the colours are
where the legend says, and `watch` redraws in place.

One more connection is added for the colours: pod B's app user sends a SYN to a public
address (1.1.1.1:443) through a default route to a gateway that does not exist, where nothing
answers: a SYN_SENT to an external peer, which must stand out."""
from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

from conftest import require_root
from depnode import APP_B, POD_A_IP, POD_B_IP, SVC_A, SVC_B, DepNode
from realnode import interpreter_for, ip_tool, util_linux

REPO = Path(__file__).resolve().parents[2]
SGR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTHS = (80, 120, 200)
PUBLIC = ("1.1.1.1", 443)
GATEWAY = "10.91.2.99"
SYN_HOLDER = f"""
import socket, sys, time
s = socket.socket()
s.setblocking(False)
s.connect_ex(("{PUBLIC[0]}", {PUBLIC[1]}))
print("ready", flush=True)
time.sleep(3600)
"""


def pty_run(argv: list[str], cols: int, rows: int = 1000, *, stderr_to_pty: bool = False,
            until: float | None = None) -> tuple[bytes, str, int]:
    """Run argv with its stdout (and stderr, if asked) on a fresh pty of cols x rows; what it
    wrote, its stderr when not on the pty, its exit status. until: send SIGINT after that
    many seconds (a live view)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave if stderr_to_pty else subprocess.PIPE, cwd=REPO,
                            env=env, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + (until if until is not None else 120)
    sent = False
    while True:
        if until is not None and not sent and time.monotonic() >= deadline:
            proc.send_signal(signal.SIGINT)
            sent = True
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:       # EIO: the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    err = proc.stderr.read().decode() if proc.stderr else ""
    return out, err, proc.wait(timeout=60)


def nsnet_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "nsnet", *args]


def screen_of(raw: bytes, cols: int, rows: int = 1000) -> pyte.Screen:
    screen = pyte.Screen(cols, rows)
    pyte.ByteStream(screen).feed(raw.replace(b"\n", b"\r\n") if b"\r\n" not in raw else raw)
    return screen


def lines_of(screen: pyte.Screen) -> list[str]:
    return [line.rstrip() for line in screen.display]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_root("ip", "setpriv", "ss")
    root = tmp_path_factory.mktemp("host")
    with DepNode.build(root) as dep:
        ip, ns = ip_tool(), dep.netns["b"]
        # a gateway nobody is: a permanent neighbour entry with a MAC no interface has, so
        # the SYN leaves and is dropped unanswered (no ICMP, no ARP failure to end it)
        dev = f"nsd{dep.tag}b1"
        for cmd in (["neigh", "add", GATEWAY, "lladdr", "02:00:00:00:00:99", "dev", dev,
                     "nud", "permanent"],
                    ["route", "add", "default", "via", GATEWAY]):
            subprocess.run([ip, "-n", ns, *cmd], check=True, capture_output=True)
        holder = subprocess.Popen(
            [ip, "netns", "exec", ns, util_linux("setpriv"), "--reuid", str(APP_B), "--regid",
             str(APP_B), "--clear-groups", "--", interpreter_for(APP_B), "-c", SYN_HOLDER],
            stdout=subprocess.PIPE, text=True, cwd="/")
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            yield dep, root
        finally:
            holder.kill()
            holder.wait()


def endpoints(dep: DepNode) -> dict[str, set[str]]:
    """What each view must show whole: the services, the clients, and in `sockets` both ends
    of every connection of the plan that is still there."""
    services = {f"{SVC_A}:8080", f"{SVC_A}:8081", f"{SVC_A}:6379", f"{SVC_A}:10053",
                f"{SVC_B}:5432"}
    ends = {f"{c.local_addr}:{c.local_port}" for c in dep.conn.values()
            if c.name in ("a_keep", "a_redis", "a_unacc", "a_dns", "b_pg")}
    return {"by-namespace": services | {POD_A_IP, POD_B_IP},
            "by-user": services | {POD_A_IP, POD_B_IP},
            "by-pod": services - {f"{SVC_A}:10053"} | {f"{SVC_A}:10053"},
            "sockets": services | ends | {f"{PUBLIC[0]}:{PUBLIC[1]}"}}


@pytest.mark.parametrize("cols", WIDTHS)
@pytest.mark.parametrize("view", ["by-namespace", "by-user", "by-pod", "sockets"])
def test_every_endpoint_whole_and_no_line_wider_than_the_terminal(node, view, cols):
    dep, root = node
    raw, err, rc = pty_run(nsnet_argv(view, "--host-root", str(root)), cols)
    assert rc == 0, err
    text = raw.decode()
    for line in SGR.sub("", text).replace("\r", "").split("\n"):
        assert len(line) <= cols, (cols, line)
    shown = lines_of(screen_of(raw, cols))
    for endpoint in sorted(endpoints(dep)[view]):
        assert any(re.search(rf"(^|[\s(]){re.escape(endpoint)}($|[\s:)])", line)
                   for line in shown), f"{endpoint} not whole in {view} at {cols} columns"
    if view == "sockets":
        for state in ("ESTABLISHED", "CLOSE_WAIT", "TIME_WAIT", "FIN_WAIT2", "SYN_SENT"):
            assert any(re.search(rf"\b{state}\b", line) for line in shown), state
    if "not shown at" in text:      # what a narrow terminal hides is said, with the way out
        assert "-o wide shows every column" in re.sub(r"\s+", " ", SGR.sub("", text))
    # -o wide: nothing hidden or cut, even at this width
    wide, _, _ = pty_run(nsnet_argv(view, "--host-root", str(root), "-o", "wide"), cols)
    assert "not shown at" not in wide.decode() and "…" not in wide.decode()


def cells(screen: pyte.Screen, text: str) -> list[pyte.screens.Char]:
    """The character cells where `text` is drawn on the screen (first occurrence per line)."""
    found = []
    for y, line in enumerate(screen.display):
        x = line.find(text)
        if x >= 0:
            found.append([screen.buffer[y][x + i] for i in range(len(text))])
    return [c for group in found for c in group]


@pytest.mark.parametrize("cols", WIDTHS)
def test_colours_are_where_the_legend_says(node, cols):
    dep, root = node
    raw, err, rc = pty_run(nsnet_argv("sockets", "--host-root", str(root)), cols)
    assert rc == 0, err
    screen = screen_of(raw, cols)
    public = cells(screen, f"{PUBLIC[0]}:{PUBLIC[1]}")
    assert public and all(c.fg == "magenta" and c.bold for c in public)   # an external peer
    listen = cells(screen, "LISTEN")
    assert listen and all(c.fg == "green" for c in listen)
    established = cells(screen, "ESTABLISHED")
    assert established and all(c.fg == "cyan" for c in established)
    private = cells(screen, f"{SVC_A}:6379")
    assert private and all(c.fg == "default" for c in private)           # private: no colour
    heading = cells(screen, "netns pod:shop/tenant-a  inode")
    assert heading and heading[0].bold
    # NO_COLOR: the same text, no colour at all
    plain, _, _ = pty_run(["env", "NO_COLOR=1", *nsnet_argv("sockets", "--host-root",
                                                            str(root))], cols)
    assert b"\x1b[" not in plain
    # the fixture's rows are the same text (the host's own sockets come and go meanwhile)
    def fixture_rows(text: str) -> list[str]:
        return [line for line in text.replace("\r", "").split("\n") if "10.91." in line]
    assert fixture_rows(SGR.sub("", raw.decode())) == fixture_rows(plain.decode())
    assert fixture_rows(plain.decode())


def test_nsnet_alone_is_the_node_summary_and_warnings_fit(node):
    dep, root = node
    raw, _, rc = pty_run(nsnet_argv("--host-root", str(root)), 80, stderr_to_pty=True)
    assert rc == 0
    text = SGR.sub("", raw.decode()).replace("\r", "")
    for line in text.split("\n"):
        assert len(line) <= 80, line
    for name in (f"netns:{dep.netns['svc']}", "pod:shop/tenant-a", "pod:shop/tenant-b"):
        assert any(line.startswith(name + " ") for line in text.split("\n")), name
    assert "nsnet by-namespace" in text and "--help" in text
    warnings = [line for line in text.split("\n") if line.startswith("nsnet: warning: ")]
    quiet, err, _ = pty_run(nsnet_argv("-q", "--host-root", str(root)), 80)
    assert "warning" not in SGR.sub("", quiet.decode()) and err == ""
    assert len(warnings) <= 3     # one line each, not one per process


def test_watch_redraws_in_place(node):
    dep, root = node
    raw, err, rc = pty_run(nsnet_argv("watch", "--interval", "0.5", "--host-root", str(root)),
                           80, rows=40, until=4.0)
    assert rc == 0, err
    assert raw.count(b"\x1b[?1049h") == 1 and raw.rstrip().endswith(b"\x1b[?1049l")
    assert raw.count(b"\x1b[H") >= 3                    # several frames, each from the top
    screen = pyte.Screen(80, 40)
    pyte.ByteStream(screen).feed(raw.rsplit(b"\x1b[?25h", 1)[0])   # before leaving
    shown = lines_of(screen)
    assert shown[0].startswith("nsnet watch")           # the header stays on the first line
    assert sum(line.startswith("nsnet watch") for line in shown) == 1
    assert any(f"{SVC_A}:8080" in line for line in shown)
    assert all(len(line) <= 80 for line in shown)
