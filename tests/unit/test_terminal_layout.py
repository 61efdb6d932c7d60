"""What a terminal gets (nsnet.table's priorities, nsnet.palette's colours, the report's
vocabulary), on rows and snapshots built in memory: endpoints and names are never cut, lists
become "first +N" before anything is cut, command lines are cut, then columns hidden -- and
said -- and a cell too long for any room continues on the next line, whole."""
from __future__ import annotations

import re

import pytest
from memnode import MemNode

from nsnet.palette import LEGEND, address_class, address_style, legend_lines, state_style
from nsnet.report import Renderer, render_by_namespace, render_by_user, render_sockets
from nsnet.table import (Column, display_width, render_table, select_columns,
                         unknown_columns, wrap_text)
from nsnet.views import by_namespace_view, by_user_view, sockets_view

SGR = re.compile(r"\x1b\[([0-9;]*)m")

ROWS = [{"ep": "10.91.1.1:8080", "pids": [4101, 4102, 4103], "cmd": "/usr/bin/python3 " + "x" * 80,
         "opt": "holder"},
        {"ep": "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:443", "pids": [7], "cmd": "nginx",
         "opt": "listener"}]


def columns() -> list[Column]:
    return [Column("ENDPOINT", "ep", wrap=True, min_width=21),
            Column("PIDS", lambda r: ",".join(map(str, r["pids"])),
                   short=lambda r: f"{r['pids'][0]}" + (f" +{len(r['pids']) - 1}"
                                                        if len(r["pids"]) > 1 else "")),
            Column("KNOWN BY", "opt", priority=1),
            Column("COMMAND", "cmd", shrink=True, min_width=10)]


def test_a_pipe_gets_every_cell_whole():
    out = render_table(columns(), ROWS, width=None, color=False)
    assert "4101,4102,4103" in out and ROWS[0]["cmd"] in out and ROWS[1]["ep"] in out


def test_lists_become_first_plus_count_before_anything_is_cut():
    hidden: list[list[str]] = []
    wide_enough = 44 + 2 + 14 + 2 + 8 + 2 + len(ROWS[0]["cmd"])
    out = render_table(columns(), ROWS, width=wide_enough - 5, color=False,
                       on_hidden=hidden.append)
    assert "4101 +2" in out and "4101,4102" not in out
    assert ROWS[0]["cmd"] in out                       # the room it freed was enough
    assert hidden == []


def test_commands_are_cut_then_columns_hidden_and_said():
    hidden: list[list[str]] = []
    out = render_table(columns(), ROWS, width=80, color=False, on_hidden=hidden.append)
    lines = out.split("\n")
    assert all(display_width(line) <= 80 for line in lines)
    assert "…" in lines[1]                             # the command line, cut
    assert ROWS[1]["ep"] in out and "10.91.1.1:8080" in out   # endpoints whole
    assert hidden == []                                # KNOWN BY still fits at 80
    out = render_table(columns(), ROWS, width=60, color=False, on_hidden=hidden.append)
    assert hidden == [["KNOWN BY"]] and "holder" not in out
    assert all(display_width(line) <= 60 for line in out.split("\n"))


def test_an_endpoint_too_long_for_any_room_continues_on_the_next_line_whole():
    out = render_table(columns(), ROWS, width=40, color=False)
    lines = out.split("\n")
    assert all(display_width(line) <= 40 for line in lines)
    assert "…" not in "".join(line[:23] for line in lines)      # the ENDPOINT column
    joined = "".join(line[:23].strip() for line in lines[2:])
    assert ROWS[1]["ep"] in joined                     # its pieces, read in order
    assert len(lines) > 3                              # the v6 row took several lines


@pytest.mark.parametrize("text, width, pieces", [
    ("[2001:db8::1]:443", 8, ["[2001:", "db8::1]:", "443"]),
    ("/run/nsnt/sidecar/sidecar.sock", 12, ["/run/nsnt/", "sidecar/", "sidecar.sock"]),
    ("abcdefgh", 3, ["abc", "def", "gh"]),
    ("short", 10, ["short"]),
    ("中文中文", 3, ["中", "文", "中", "文"])])
def test_wrap_text(text, width, pieces):
    assert wrap_text(text, width) == pieces
    assert "".join(pieces) == text


def test_column_choice_by_name():
    cols = columns()
    assert [c.title for c in select_columns(cols, ["command", "ENDPOINT"])] == \
        ["COMMAND", "ENDPOINT"]
    assert [c.name for c in cols] == ["ENDPOINT", "PIDS", "KNOWN-BY", "COMMAND"]
    assert unknown_columns(["known-by", "nope"], [c.name for c in cols]) == ["nope"]


@pytest.mark.parametrize("addr, cls", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.91.1.1", "private"), ("172.16.0.1", "private"), ("192.168.1.5", "private"),
    ("100.64.0.1", "private"), ("169.254.1.1", "private"), ("fd00::5", "private"),
    ("fe80::1", "private"), ("1.1.1.1", "public"), ("2606:4700::1111", "public"),
    ("0.0.0.0", "wildcard"), ("::", "wildcard"), ("/run/x.sock", ""), (None, "")])
def test_address_classes(addr, cls):
    assert address_class(addr) == cls


def test_styles_follow_the_legend():
    assert address_style("127.0.0.1") == "blue"
    assert address_style("10.0.0.1", exposed=True) is None
    assert address_style("1.1.1.1") == "magenta"
    assert address_style("1.1.1.1", exposed=True) == "bold magenta"
    assert state_style("LISTEN") == "green" and state_style("TIME_WAIT") == "dim"
    styles = {style for style, _ in LEGEND}
    assert {"blue", "magenta", "bold magenta", "green", "cyan", "yellow", "dim"} <= styles
    assert len(legend_lines()) == len(LEGEND)


A, B = 4026532300, 4026532400


def node():
    n = MemNode()
    n.process(1, uid=0, cmdline=["/sbin/init"])
    n.process(200, uid=10001, netns=A, cmdline=["/srv/api", "--port", "8080"])
    n.process(300, uid=10002, netns=B, cmdline=["/bin/client"])
    n.socket("tcp", "LISTEN", "0.0.0.0:8080", netns=A, holders=[200])
    n.connection("10.1.0.2:40000", "10.1.0.1:8080", client_netns=B, server_netns=A,
                 client_holders=[300], server_holders=[200])
    n.socket("tcp", "SYN_SENT", "10.1.0.2:40001", "1.1.1.1:443", netns=B, holders=[300])
    n.socket("tcp", "LISTEN", "127.0.0.1:9000", netns=A, holders=[200])
    return n.build()


def painted(text: str, fragment: str) -> set[str]:
    """The SGR codes in effect where `fragment` is printed."""
    found = set()
    for m in re.finditer(r"\x1b\[([0-9;]*)m([^\x1b]*)\x1b\[0m", text):
        if fragment in m.group(2):
            found.add(m.group(1))
    return found


def test_colours_are_where_the_legend_says():
    snap = node()
    text = render_sockets(sockets_view(snap), Renderer(200, True))
    assert painted(text, "1.1.1.1:443") == {"1;35"}       # an off-node public peer: bold magenta
    assert painted(text, "127.0.0.1:9000") == {"34"}      # loopback: blue
    assert painted(text, "LISTEN") == {"32"} and painted(text, "SYN_SENT") == {"33"}
    assert painted(text, "10.1.0.1:8080") == set()        # private: the terminal's colour
    assert "\x1b" not in render_sockets(sockets_view(snap), Renderer(200, False))


def test_one_vocabulary_and_no_python_none():
    snap = node()
    texts = [render_sockets(sockets_view(snap), Renderer(None, False)),
             render_by_namespace(by_namespace_view(snap), Renderer(None, False)),
             render_by_user(by_user_view(snap), Renderer(None, False))]
    for text in texts:
        assert "None" not in text
        assert "PEER " not in text and "SCOPE" not in text
    by_ns = texts[1]
    assert "Connects to\nSERVICE" in by_ns and "Connected from\nCLIENT" in by_ns
    assert "off node" in texts[0]                       # the SYN_SENT to 1.1.1.1
    assert "same netns" not in texts[0]
    # the client's row says where the server is, by name
    [row] = [line for line in texts[0].splitlines() if "10.1.0.2:40000" in line
             and " out " in line]
    assert "netns:4026532300" in row


def test_a_heading_too_long_for_the_terminal_continues_whole():
    r = Renderer(30, False)
    text = r.head("netns pod:some-namespace/a-very-long-pod-name-indeed  inode 4026532300")
    lines = text.split("\n")
    assert all(display_width(line) <= 30 for line in lines)
    assert "a-very-long-pod-name-indeed" in "".join(lines)


@pytest.mark.parametrize("argv, message", [
    (["sockets", "-o", "PIDS,NOPE"], "unknown column 'NOPE' for nsnet sockets; one of NETNS,"),
    (["by-user", "-o", "USERS,STATE"], "unknown column 'STATE' for nsnet by-user; one of"),
    (["graph", "-o", "USER"], "nsnet graph draws no table: -o takes wide, json or ndjson"),
    (["deps", "--columns", "USER;rm"], "argument --columns: not wide, json, ndjson or COL,COL"),
    (["sockets", "-o", ""], "not wide, json, ndjson or COL,COL"),
])
def test_a_bad_column_choice_is_one_line_and_exit_2(argv, message, capsys):
    from nsnet.cli import main
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_help_lists_the_words_the_colours_and_the_columns(capsys):
    from nsnet.cli import main
    with pytest.raises(SystemExit):
        main(["sockets", "--help"])
    text = capsys.readouterr().out
    assert "OTHER END" in text and "bold magenta" in text
    assert "columns for -o / --columns: NETNS,PROTO,STATE,LOCAL,REMOTE" in text


def test_a_column_choice_applies_to_every_table_that_has_the_columns():
    snap = node()
    r = Renderer(None, False, columns=["SERVICE", "OPEN"])
    text = render_by_namespace(by_namespace_view(snap), r)
    assert "Processes" not in text and "Listening" not in text     # none of their columns
    tables = [line for line in text.splitlines() if line.startswith("SERVICE")]
    assert tables and all(line.split() == ["SERVICE", "OPEN"] for line in tables)
