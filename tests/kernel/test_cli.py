"""The command line as a user meets it: exit codes, one-line errors, output formats,
and text from /proc that tries to attack the terminal."""
from __future__ import annotations

import json
import re
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTILE_ARG = "evil\x1b]0;pwned\x07\x1b[2J\nFAKE ROW\r\u202e"


def nsnet(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsnet", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, **kw)


def assert_one_line_error(run: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert run.returncode == code, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsnet: error: "), run.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("argv,code,words", [
    (["sockets", "--bogus"], 2, ["--bogus"]),
    (["frobnicate"], 2, ["frobnicate"]),
    (["--bogus"], 2, ["--bogus"]),       # no command: the summary, which has no such flag
    (["--proc", "/tmp"], 1, ["/tmp", "procfs"]),
    (["sockets", "--state", "SLEEPY"], 2, ["SLEEPY", "LISTEN"]),
    (["sockets", "--port", "70000"], 2, ["70000"]),
    (["sockets", "--pid", "-3"], 2, []),
    (["by-user", "--user", "no-such-user-xyz"], 2, ["no-such-user-xyz"]),
    (["deps", "--user", "no-such-user-xyz"], 2, ["no-such-user-xyz"]),
    # an unknown namespace or pod, in every command that takes one: before any warning
    (["sockets", "--netns", "netns:no-such-pin"], 2, ["netns:no-such-pin", "by-namespace"]),
    (["by-namespace", "--netns", "123"], 2, ["'123'"]),
    (["by-pod", "--pod", "shop/no-such-pod"], 2, ["shop/no-such-pod"]),
    (["sockets", "--proc", "/tmp"], 1, ["/tmp", "procfs"]),
    (["by-namespace", "--proc", "/does/not/exist"], 1, ["/does/not/exist"]),
])
def test_bad_input_is_one_line_and_nonzero(argv, code, words):
    assert_one_line_error(nsnet(*argv), code, *words)


def test_nsnet_proc_environment_variable():
    run = nsnet("sockets", env=dict(os.environ, NSNET_PROC="/tmp"))
    assert_one_line_error(run, 1, "/tmp")


def test_json_document_and_trailing_slash_proc():
    run = nsnet("sockets", "--json", "--proc", "/proc/")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] == "nsnet/1" and doc["view"] == "sockets"
    assert set(doc) >= {"namespaces", "sockets", "stats", "processes"}
    assert sum(1 for ns in doc["namespaces"] if ns["host"]) == 1
    run.stdout.encode("ascii")    # JSON output is pure ASCII


def test_ndjson_stream():
    run = nsnet("sockets", "--ndjson", "--all-kinds")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[-1] == "stats" and kinds.count("stats") == 1
    assert kinds == sorted(kinds, key=["namespace", "socket", "stats"].index)
    assert all(line["schema"] == "nsnet/1" for line in lines)
    stats = lines[-1]["stats"]
    assert kinds.count("socket") == stats["sockets"] == sum(stats["sockets_by_kind"].values())
    # no kind asked: every kind but netlink (the kernel's own in every namespace)
    default = [json.loads(line) for line in nsnet("sockets", "--ndjson").stdout.splitlines()]
    shown = {line["proto"] for line in default if line["type"] == "socket"}
    assert "netlink" not in shown and "netlink" in stats["sockets_by_kind"]


def test_closed_pipe_is_not_an_error():
    proc = subprocess.Popen([sys.executable, "-m", "nsnet", "sockets", "--ndjson"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()               # like `| head -1`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert b"Traceback" not in err and b"Broken pipe" not in err


@pytest.fixture
def hostile_process(tmp_path):
    """A real process with a hostile argv and comm, holding a TCP listener and a unix
    socket bound at a path with a newline and an escape sequence."""
    unix_path = tmp_path / "sock\nESC\x1b[31mred"
    code = (
        "import socket, sys, ctypes, time\n"
        "ctypes.CDLL(None).prctl(15, b'\\x1b[2Jcomm\\n', 0, 0, 0)\n"   # PR_SET_NAME
        "t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen()\n"
        "u = socket.socket(socket.AF_UNIX); u.bind(sys.argv[2]); u.listen()\n"
        "print(t.getsockname()[1], flush=True)\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, HOSTILE_ARG, str(unix_path)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield proc.pid, port, str(unix_path)
    proc.kill()
    proc.wait()


def test_hostile_names_never_reach_the_terminal(hostile_process):
    pid, port, unix_path = hostile_process
    for view in (["sockets", "--pid", str(pid)], ["by-namespace"]):
        run = nsnet(*view)
        assert run.returncode == 0, run.stderr
        assert "\x1b" not in run.stdout and "\r" not in run.stdout and "\u202e" not in run.stdout
        assert "\\x1b]0;pwned\\x07\\x1b[2J\\nFAKE ROW\\r\\u202e" in run.stdout
    rows = nsnet("sockets", "--pid", str(pid)).stdout.splitlines()
    assert not any(r.startswith("FAKE ROW") for r in rows)
    assert any(f"127.0.0.1:{port}" in r for r in rows)
    assert any("sock\\nESC\\x1b[31mred" in r for r in rows)


def test_hostile_names_are_exact_in_json(hostile_process):
    pid, port, unix_path = hostile_process
    doc = json.loads(nsnet("sockets", "--pid", str(pid), "--json").stdout)
    [proc] = doc["processes"]
    assert proc["cmdline"][-2:] == [HOSTILE_ARG, unix_path]
    assert proc["comm"] == "\x1b[2Jcomm\n"
    paths = [s["local_addr"] for s in doc["sockets"] if s["proto"] == "unix"]
    assert paths == [unix_path]
    [tcp] = [s for s in doc["sockets"] if s["proto"] == "tcp"]
    assert (tcp["local_addr"], tcp["local_port"], tcp["state"], tcp["pids"]) == \
        ("127.0.0.1", port, "LISTEN", [pid])


def _read_pty(fd: int, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.parametrize("no_color,expect_escape", [("", True), ("1", False)])
def test_colour_only_on_a_terminal_and_never_with_no_color(no_color, expect_escape):
    main, child = pty.openpty()
    env = dict(os.environ, NO_COLOR=no_color, TERM="xterm", COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "nsnet", "sockets", "--tcp"], cwd=REPO,
                            stdout=child, stderr=subprocess.DEVNULL, env=env)
    os.close(child)
    out = _read_pty(main, time.monotonic() + 60)
    proc.wait(timeout=60)
    os.close(main)
    assert (b"\x1b[" in out) is expect_escape
    lines = out.decode("utf-8", "replace").replace("\r", "").split("\n")
    visible = [line for line in lines if line and not line.startswith("\x1b")]
    assert all(len(line) <= 100 for line in visible if "\x1b" not in line)


def test_piped_output_has_no_colour_and_is_not_cut(hostile_process):
    pid, _, _ = hostile_process
    run = nsnet("sockets", "--pid", str(pid), env=dict(os.environ, COLUMNS="40"))
    assert "\x1b[" not in run.stdout
    assert "FAKE ROW" in run.stdout and "…" not in run.stdout   # full width when piped


def test_bytes_that_are_not_utf8_give_valid_json(tmp_path):
    """A command line with bytes that are not UTF-8 (a real process's argv): the JSON is
    valid for a strict parser (no lone surrogate escape), the bytes shown as \\xNN text."""
    holder = subprocess.Popen([sys.executable.encode(), b"-c",
                               b"import socket, time; s = socket.socket(); "
                               b"s.bind(('127.0.0.1', 0)); s.listen(); time.sleep(120)",
                               b"bad\xff\xfe-\xc3\xa9"])
    try:
        time.sleep(0.5)
        run = nsnet("sockets", "--pid", str(holder.pid), "--json")
        assert run.returncode == 0, run.stderr
        assert not re.search(r"\\ud[89a-f][0-9a-f]{2}", run.stdout)   # no surrogate escape
        [proc] = json.loads(run.stdout)["processes"]
        assert proc["cmdline"][-1] == "bad\\xff\\xfe-é"
        json.dumps(proc, ensure_ascii=False).encode("utf-8")        # strict UTF-8 throughout
    finally:
        holder.kill()
        holder.wait()
