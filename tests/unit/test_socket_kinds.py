"""Packet, netlink, ping (icmp) and UDP-Lite sockets: the /proc parsers and the sock_diag codec
on captured text and replies, malformed input, and how the views show them.

The captures (tests/data/kinds_*, Linux 6.18, x86-64) were written by
`unshare -n python3 tests/support/link_scenario.py capture` as root: a fresh namespace with the
sockets link_scenario.build() makes, each table of it and each sock_diag reply, byte for byte.
kinds_capture.json holds what the capture knew without parsing: each socket's fstat() inode,
its port id (netlink), what it was bound to. The kernel tier holds every source to the same
scenario live (tests/kernel/test_socket_kinds_live.py).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
from pathlib import Path

import pytest
from diag_scenario import frames
from link_scenario import NLMSGHDR, row

from nsnet import netparse
from nsnet.model import (
    IP_PROTOS,
    PROTOS,
    NetlinkInfo,
    PacketInfo,
    Snapshot,
    Stats,
    ethertype_name,
    netlink_protocol_name,
    netlink_socket,
    packet_socket,
)
from nsnet.sockdiag import (
    build_netlink_request,
    build_packet_request,
    drop_multicast_repeats,
    parse_dump,
)

DATA = Path(__file__).resolve().parents[1] / "data"
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="captures were taken on a little-endian host")


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((DATA / "kinds_capture.json").read_text())


def table(name: str) -> bytes:
    return (DATA / f"kinds_proc_net_{name}.txt").read_bytes()


def reply(name: str) -> bytes:
    return (DATA / f"kinds_diag_{name}.bin").read_bytes()


def expected(record: dict, proto: str) -> set[tuple]:
    return {tuple(r) for r in record["expected"] if r[0] == proto}


# ---------------------------------------------------------------------- /proc tables

def test_packet_table(record: dict) -> None:
    parsed = netparse.parse_packet(table("packet"))
    assert parsed.malformed == 0
    assert {row(s) for s in parsed.sockets} == {
        # unnamed yet: the table gives an index; lo comes from if_inet6 (below)
        r if r[3] == "*" else r[:3] + ("if1",) + r[4:] for r in expected(record, "packet")}
    for s in parsed.sockets:
        type_, proto, ifindex = record["packet"][str(s.inode)]
        assert s.info == PacketInfo(type_, proto, ifindex, None)
    names = netparse.interface_names(table("if_inet6"))
    assert names == {1: "lo"}
    netparse.name_interfaces(parsed.sockets, names)
    assert {row(s) for s in parsed.sockets} == expected(record, "packet")
    assert {s.info.interface for s in parsed.sockets if isinstance(s.info, PacketInfo)} == \
        {"lo", None}   # the unbound one has no interface to name


def test_netlink_table(record: dict) -> None:
    parsed = netparse.parse_netlink(table("netlink"))
    assert parsed.malformed == 0
    got = {row(s) for s in parsed.sockets}
    assert expected(record, "netlink") <= got
    for s in parsed.sockets:
        if str(s.inode) in record["netlink"]:
            assert s.info == NetlinkInfo(*record["netlink"][str(s.inode)])
    # the capture's own sock_diag socket, and the kernel's end of each protocol (port id 0)
    assert ("netlink", "netlink", "UNCONN", "sock_diag", record["diag_portid"], "", None,
            record["diag_inode"], None) in got
    kernel = {s.local_addr for s in parsed.sockets if s.local_port == 0}
    assert {"route", "sock_diag", "generic", "audit"} <= kernel
    assert len(got) == len(parsed.sockets) == len(table("netlink").splitlines()) - 1


@pytest.mark.parametrize("proto, names", [("icmp", ("icmp", "icmp6")),
                                          ("udplite", ("udplite", "udplite6"))])
def test_inet_layout_tables(record: dict, proto: str, names: tuple[str, str]) -> None:
    got = set()
    for name in names:
        parsed = netparse.parse_net_file(name, table(name))
        assert parsed.malformed == 0
        got |= {row(s) for s in parsed.sockets}
    assert got == expected(record, proto)


@pytest.mark.parametrize("text", [
    b"000000000c73a207 3      3    0003   1     1 0      0      \n",       # no inode
    b"000000000c73a207 3      9    0003   1     1 0      0      5\n",      # no such type
    b"000000000c73a207 3      3    zz03   1     1 0      0      5\n",      # not hex
    b"000000000c73a207 3      3    0003   -7    1 0      0      5\n",      # not an ifindex
    b"000000000c73a207 3      3    0003   1     1 0      0      5 \x1b[2J\n",
])
def test_packet_malformed_lines(text: bytes) -> None:
    good = b"000000000c73a207 3      3    0003   1     1 0      0      13879556\n"
    parsed = netparse.parse_packet(table("packet").splitlines(True)[0] + good + text)
    assert (len(parsed.sockets), parsed.malformed) == (1, 1)


def test_packet_of_a_gone_interface() -> None:
    """packet_notifier sets ifindex -1 when the bound interface is unregistered."""
    parsed = netparse.parse_packet(table("packet").splitlines(True)[0]
                                   + b"000000000c73a207 3      3    0003   -1    0 0      0      77\n")
    assert parsed.malformed == 0
    (s,) = parsed.sockets
    assert (s.local_addr, s.info) == ("gone", PacketInfo("raw", 3, -1, None))


def test_cut_tables_count_the_cut_line() -> None:
    for name, parse in (("packet", netparse.parse_packet), ("netlink", netparse.parse_netlink)):
        data = table(name)
        cut = data[:data.rindex(b"\n", 0, len(data) - 1) + 12]    # mid-way into the last line
        parsed = parse(cut)
        assert parsed.malformed == 1
        assert len(parsed.sockets) == len(data.splitlines()) - 2
        assert parse(b"").sockets == [] and parse(b"").malformed == 0
        assert parse(data.splitlines(True)[0]).sockets == []


def test_netlink_malformed_lines() -> None:
    header = table("netlink").splitlines(True)[0]
    bad = [b"00000000b33582a7 0   0          0000000g 0        0        0     2        0        5\n",
           b"00000000b33582a7 0   0          00000000 0        0        0     2        0\n",
           b"garbage\n"]
    parsed = netparse.parse_netlink(header + b"".join(bad))
    assert (parsed.sockets, parsed.malformed) == ([], 3)


# ---------------------------------------------------------------------- sock_diag

def test_link_request_layouts() -> None:
    req = build_packet_request(seq=5)
    assert len(req) == 16 + 20 and NLMSGHDR.unpack_from(req) == (36, 20, 0x301, 5, 0)
    assert struct.unpack_from("=BBHII", req, 16) == (socket.AF_PACKET, 0, 0, 0, 1)
    req = build_netlink_request(seq=6)
    assert len(req) == 16 + 20 and NLMSGHDR.unpack_from(req) == (36, 20, 0x301, 6, 0)
    assert struct.unpack_from("=BBHII", req, 16) == (socket.AF_NETLINK, 255, 0, 0, 2)


@little_endian_only
def test_diag_replies_match_the_tables(record: dict) -> None:
    """packet_diag and netlink_diag list what the tables list, with the same details."""
    for name, proto, parse in (("packet", "packet", netparse.parse_packet),
                               ("netlink", "netlink", netparse.parse_netlink)):
        dump = parse_dump(reply(name), proto, record["seq"][name])
        assert (dump.malformed, dump.done, dump.error, dump.stale) == (0, True, 0, 0)
        # the route socket with groups comes twice from netlink_diag (sockdiag's docstring)
        assert drop_multicast_repeats(dump) == (1 if proto == "netlink" else 0)
        tables = parse(table(name)).sockets
        assert sorted(map(row, dump.sockets)) == sorted(map(row, tables))
        assert {s.inode: s.info for s in dump.sockets} == {s.inode: s.info for s in tables}
    lite = parse_dump(reply("udplite4"), "udplite", record["seq"]["udplite4"])
    assert {row(s) for s in lite.sockets} == \
        {r for r in expected(record, "udplite") if r[1] == "inet"}


def test_ping_has_no_diag_handler(record: dict) -> None:
    dump = parse_dump(reply("icmp_enoent"), "icmp", record["seq"]["icmp_enoent"])
    assert (dump.sockets, dump.done, dump.error) == ([], True, errno.ENOENT)


@little_endian_only
@pytest.mark.parametrize("name, proto", [("packet", "packet"), ("netlink", "netlink")])
def test_diag_replies_cut_or_broken(record: dict, name: str, proto: str) -> None:
    data = reply(name)
    first_len = NLMSGHDR.unpack_from(data)[0]
    cut = parse_dump(data[:first_len - 4], proto, record["seq"][name])
    assert cut.sockets == [] and cut.malformed == 1 and not cut.done
    # an attribute whose length runs past its message: that socket is malformed, the rest read
    broken = bytearray(data)
    fixed = 32 if proto == "packet" else 44
    at, length = next((off, n) for off, n, _ in frames(data) if n > fixed)
    struct.pack_into("=H", broken, at + fixed, length)
    parsed = parse_dump(bytes(broken), proto, record["seq"][name])
    assert parsed.malformed == 1 and parsed.done
    assert len(parsed.sockets) == len(parse_dump(data, proto).sockets) - 1
    # a stale message of another request is skipped, not parsed
    stale = parse_dump(data, proto, record["seq"][name] + 1)
    assert stale.sockets == [] and stale.stale > 0


# ---------------------------------------------------------------------- model and views

def test_kind_names() -> None:
    assert ethertype_name(3) == "all" and ethertype_name(0x88B5) == "0x88b5"
    assert netlink_protocol_name(0) == "route" and netlink_protocol_name(99) == "99"
    assert set(IP_PROTOS) < set(PROTOS)
    from nsnet.cli import KIND_HELP
    assert tuple(KIND_HELP) == PROTOS


def _snap(sockets: list) -> Snapshot:
    return Snapshot("/proc", {}, {}, sockets, Stats())


def test_views_document_the_kinds() -> None:
    from nsnet.views import SocketFilter, socket_doc
    sniff = packet_socket("raw", 3, 4, "eth0\x1b[31m", 11, 1000)
    nl = netlink_socket(0, 0, 0, 12)
    snap = _snap([sniff, nl])
    doc = socket_doc(sniff, snap)
    assert doc["packet"] == {"type": "raw", "protocol": 3, "protocol_name": "all",
                             "ifindex": 4, "interface": "eth0\x1b[31m"}
    assert doc["netlink"] is None
    doc = socket_doc(nl, snap)
    assert doc["netlink"] == {"protocol": 0, "protocol_name": "route", "portid": 0,
                              "groups": 0, "kernel": True}
    # a port filter is about IP ports: a netlink port id 0 is not port 0
    assert not SocketFilter(port=0)(nl)
    assert SocketFilter(protos=frozenset({"packet"}))(sniff)


def test_tables_show_the_kinds_sanitized() -> None:
    from nsnet import report, views
    from nsnet.report import Renderer
    sniff = packet_socket("raw", 3, 4, "eth0\x1b[31m", 11, 1000)
    nl = netlink_socket(0, 0, 0, 12)
    doc = views.sockets_view(_snap([sniff, nl]))
    text = report.render_sockets(doc, Renderer(None, False))
    assert "\x1b" not in text
    assert "eth0\\x1b[31m (all)" in text
    assert "route:0 (kernel)" in text


# ---------------------------------------------------------------------- scope: v6only, interface

@pytest.fixture(scope="module")
def scoped() -> dict:
    return json.loads((DATA / "scoped_capture.json").read_text())


@little_endian_only
def test_diag_says_v6only_and_the_bound_interface(scoped: dict) -> None:
    """INET_DIAG_SKV6ONLY for IPv6 listeners and unconnected sockets, idiag_if for bound ones,
    exactly as each socket was made (link_scenario.build_scoped)."""
    got = {}
    for name, proto in (("tcp6", "tcp"), ("tcp4", "tcp"), ("udp6", "udp")):
        data = (DATA / f"scoped_diag_{name}.bin").read_bytes()
        dump = parse_dump(data, proto, scoped["seq"][name])
        assert (dump.malformed, dump.done, dump.error) == (0, True, 0)
        got.update({s.inode: s for s in dump.sockets if s.inode})
    names = netparse.interface_names((DATA / "scoped_proc_net_if_inet6.txt").read_bytes())
    assert names[scoped["ifindex"]] == "nsnt0"
    assert set(got) == {int(i) for i in scoped["scoped"]}
    for inode, (v6only, bound) in scoped["scoped"].items():
        s = got[int(inode)]
        assert s.v6only is v6only, s
        assert (names.get(s.bound_if) if s.bound_if else None) == bound, s


def test_proc_tables_do_not_say_v6only() -> None:
    parsed = netparse.parse_net_file("tcp6", (DATA / "proc_net_tcp6.txt").read_bytes())
    assert parsed.sockets and all(s.v6only is None and s.bound_if == 0
                                  for s in parsed.sockets)


def test_v6only_attribute_malformed() -> None:
    """An attribute whose length runs past the message: v6only stays unknown, the socket is
    kept (the fixed part was whole)."""
    data = bytearray((DATA / "scoped_diag_tcp6.bin").read_bytes())
    first_len = NLMSGHDR.unpack_from(data)[0]
    assert first_len > 88
    struct.pack_into("=H", data, 88, first_len)      # the first attribute's nla_len
    dump = parse_dump(bytes(data), "tcp", None)
    assert dump.malformed == 0 and dump.sockets[0].v6only is None


def _listener_and_conn(v6only: bool | None) -> list:
    from nsnet.model import Socket
    listener = Socket("tcp", "inet6", "LISTEN", "::", 80, "::", 0, 1, 0, 1, "net:[1]")
    listener.v6only = v6only
    conn = Socket("tcp", "inet", "ESTABLISHED", "10.0.0.1", 80, "10.0.0.2", 5555, 2, 0, 1,
                  "net:[1]")
    conn6 = Socket("tcp", "inet6", "ESTABLISHED", "fd00::1", 80, "fd00::2", 5555, 3, 0, 1,
                   "net:[1]")
    return [listener, conn, conn6]


@pytest.mark.parametrize("v6only, ipv4_direction", [
    (None, "inbound"),      # unknown: the kernel's default, dual-stack
    (False, "inbound"),
    (True, "outbound"),     # an IPv6-only listener accepted no IPv4 connection
])
def test_classifier_uses_v6only(v6only, ipv4_direction) -> None:
    from nsnet.classify import classify
    listener, conn, conn6 = _listener_and_conn(v6only)
    classify([listener, conn, conn6])
    assert (conn.direction, conn6.direction) == (ipv4_direction, "inbound")


@pytest.mark.parametrize("v6only, local", [
    (None, "[::]:80"), (False, "[::]:80 (+IPv4)"), (True, "[::]:80 (v6only)")])
def test_tables_say_v6only_when_known(v6only, local) -> None:
    from nsnet import report, views
    from nsnet.report import Renderer
    listener = _listener_and_conn(v6only)[0]
    listener.direction = "listening"
    text = report.render_sockets(views.sockets_view(_snap([listener])), Renderer(None, False))
    line = next(x for x in text.splitlines() if "LISTEN" in x)
    assert local in line
    assert [m for m in ("(v6only)", "(+IPv4)") if m in line] == \
        [m for m in ("(v6only)", "(+IPv4)") if m in local]


def test_bound_interface_shown_as_ss_does() -> None:
    from nsnet import report, views
    from nsnet.model import Namespace, Socket
    from nsnet.report import Renderer
    s = Socket("tcp", "inet6", "LISTEN", "fe80::1", 4503, "::", 0, 5, 0, 1, "net:[1]")
    s.bound_if, s.direction = 3, "listening"
    v4 = Socket("tcp", "inet", "LISTEN", "0.0.0.0", 4504, "0.0.0.0", 0, 6, 0, 1, "net:[1]")
    v4.bound_if, v4.direction = 9, "listening"
    ns = Namespace("net:[1]", 1, interfaces={3: "nsnt0\x1b]0;x\x07"})
    snap = Snapshot("/proc", {"net:[1]": ns}, {}, [s, v4], Stats())
    doc = views.sockets_view(snap)
    by_inode = {d["inode"]: d for d in doc["sockets"]}
    assert (by_inode[5]["bound_ifindex"], by_inode[5]["bound_interface"]) == (3, "nsnt0\x1b]0;x\x07")
    assert (by_inode[6]["bound_ifindex"], by_inode[6]["bound_interface"]) == (9, "if9")
    text = report.render_sockets(doc, Renderer(None, False))
    assert "\x1b" not in text and "\x07" not in text
    assert "[fe80::1]%nsnt0\\x1b]0;x\\x07:4503" in text
    assert "0.0.0.0%if9:4504" in text


# ---------------------------------------------------------------------- queues, timers, TCP_INFO

@pytest.fixture(scope="module")
def queues() -> dict:
    return json.loads((DATA / "queues_capture.json").read_text())


def _detailed(name: str, proto: str, record: dict) -> dict[int, object]:
    from nsnet.sockdiag import WANT_DETAIL, ParsedDump, parse_into
    data = (DATA / f"queues_diag_{name}.bin").read_bytes()
    res = ParsedDump()
    parse_into(memoryview(data), len(data), proto, record["seq"][name], res, WANT_DETAIL)
    assert (res.malformed, res.done, res.error) == (0, True, 0)
    return {s.inode: s for s in res.sockets if s.inode}


@little_endian_only
def test_diag_queues_and_tcp_info(queues: dict) -> None:
    """Each queue as the scenario made it (link_scenario.build_queues), and the bytes each
    way as TCP_INFO counts them -- the same numbers ss -ti printed at the capture."""
    from link_scenario import ANSWERED, BACKLOG, PENDING, SENT, UNREAD
    ino = queues["inodes"]
    tcp = _detailed("tcp4", "tcp", queues)
    backlog = tcp[ino["backlog"]].detail
    assert (backlog.recv_q, backlog.send_q, backlog.timer) == (PENDING, BACKLOG, "off")
    assert tcp[ino["unread_reader"]].detail.recv_q == UNREAD
    client, server = tcp[ino["traffic_client"]].detail, tcp[ino["traffic_server"]].detail
    # the connecting side counts its SYN among the bytes acked (tcp_ack from SYN_SENT)
    assert (client.tcp.bytes_acked, client.tcp.bytes_received) == (SENT + 1, ANSWERED)
    assert (server.tcp.bytes_acked, server.tcp.bytes_received) == (ANSWERED, SENT)
    assert f"bytes_acked:{SENT + 1} bytes_received:{ANSWERED}" in queues["ss_tcp_info"]
    assert client.tcp.congestion in queues["ss_tcp_info"] and client.tcp.cwnd > 0
    assert client.tcp.rtt_us > 0 and client.cookie and client.cookie != server.cookie
    assert all(s.detail.cookie for s in tcp.values())


@little_endian_only
def test_diag_unix_and_udp_queues(queues: dict) -> None:
    from link_scenario import UNIX_BACKLOG, UNIX_PENDING, UNIX_UNREAD
    ino = queues["inodes"]
    unix = _detailed("unix", "unix", queues)
    assert (unix[ino["unix_backlog"]].detail.recv_q,
            unix[ino["unix_backlog"]].detail.send_q) == (UNIX_PENDING, UNIX_BACKLOG)
    assert unix[ino["unix_right"]].detail.recv_q == UNIX_UNREAD
    udp = _detailed("udp4", "udp", queues)
    assert udp[ino["udp"]].detail.recv_q > 200     # the datagram's memory (truesize)


def test_proc_queues_and_timers(queues: dict) -> None:
    """The tables print a listener's accept queue (not its backlog) and bytes unread."""
    from link_scenario import PENDING, UNREAD
    ino = queues["inodes"]
    parsed = netparse.parse_net_file("tcp", (DATA / "queues_proc_net_tcp.txt").read_bytes(),
                                     queues=True)
    assert parsed.malformed == 0
    by = {s.inode: s.detail for s in parsed.sockets}
    assert (by[ino["backlog"]].recv_q, by[ino["backlog"]].send_q) == (PENDING, None)
    assert by[ino["unread_reader"]].recv_q == UNREAD
    assert all(d.timer == "off" and d.cookie is None and d.tcp is None for d in by.values())
    assert netparse.parse_net_file("tcp", (DATA / "queues_proc_net_tcp.txt").read_bytes()
                                   ).sockets[0].detail is None      # not asked: nothing


def test_proc_timer_line() -> None:
    head = (DATA / "queues_proc_net_tcp.txt").read_bytes().splitlines(True)[0]
    line = (b"   4: 0100007F:11F8 0100007F:B5FE 06 00000000:00000000 03:00000BB8 00000000     0"
            b"        0 0 3 0000000088cd8db0\n")
    keep = (b"   5: 0100007F:11F8 0100007F:B5FF 01 00000010:00000000 02:00001770 00000002     0"
            b"        0 77 3 0000000088cd8db0\n")
    bad = (b"   6: 0100007F:11F8 0100007F:B5FF 01 00000010:00000000 09:00001770 00000002     0"
           b"        0 78 3 0000000088cd8db0\n")
    parsed = netparse.parse_net_file("tcp", head + line + keep + bad, queues=True)
    assert parsed.malformed == 1                    # timer 9: no such timer
    tw, ka = (s.detail for s in parsed.sockets)
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    assert (tw.timer, tw.timer_ms) == ("timewait", round(0xBB8 * tick))
    assert (ka.timer, ka.timer_ms, ka.timer_retransmits, ka.send_q) == \
        ("keepalive", round(0x1770 * tick), 2, 16)


def test_tcp_info_too_short() -> None:
    from nsnet.sockdiag import TCP_INFO_MIN, parse_tcp_info
    assert parse_tcp_info(b"\0" * (TCP_INFO_MIN - 1)) is None
    detail, unacked, sacked = parse_tcp_info(b"\0" * TCP_INFO_MIN, "cubic")
    assert (detail.bytes_acked, detail.delivery_rate, detail.congestion) == (None, None, "cubic")


def test_details_in_json_and_tables() -> None:
    from nsnet import report, views
    from nsnet.model import Socket, SocketDetail, TcpDetail
    from nsnet.report import Renderer
    s = Socket("tcp", "inet", "ESTABLISHED", "10.0.0.1", 5, "10.0.0.2", 80, 9, 0, 1, "net:[1]")
    s.detail = SocketDetail(3, 4, "keepalive", 7_200_000, 0, 0xABC,
                            TcpDetail("cubic\x1b[2J", 1500, 700, 10, 0, 2, 2048, 999, 5, 1, 2))
    doc = views.sockets_view(_snap([s]))
    assert doc["sockets"][0]["detail"]["tcp"]["bytes_acked"] == 2048
    text = report.render_sockets(doc, Renderer(None, False, columns=None))
    line = next(x for x in text.splitlines() if "10.0.0.1" in x)
    assert "keepalive 120min" in line and "1.5ms" in line and "2.0K" in line
    assert "\x1b" not in text
    bare = report.render_sockets(views.sockets_view(_snap([netlink_socket(0, 5, 0, 1)])),
                                 Renderer(None, False))
    assert "RECV-Q" not in bare       # no details asked: no columns for them


# ---------------------------------------------------------------------- which kinds to dump

def test_protocols_say_which_kinds_to_dump() -> None:
    """/proc/net/protocols' in-use counts (captured on this kernel's host namespace, 18
    protocols): a kind with none is not dumped; one the file does not name is."""
    data = (DATA / "proc_net_protocols.txt").read_bytes()
    counts = netparse.parse_protocols(data)
    assert {"TCP", "UDP", "MPTCP", "MPTCPv6", "UDP-Lite", "PING", "PACKET", "NETLINK"} <= set(counts)
    assert all(isinstance(n, int) and n >= 0 for n in counts.values())
    header = data.split(b"\n", 1)[0] + b"\n"
    line = (b"MPTCP     1936      2   -1   NI       0   yes  kernel      y  n  y  y  y  y  y  y  y"
            b"  y  y  y  y  y  y  y  n  n  n\n")
    assert netparse.kinds_in_use(netparse.parse_protocols(header + line)) == \
        {"mptcp", "udplite", "icmp", "raw", "packet"}     # the others unnamed: asked
    zero = b"".join(f"{n} 1 0 -1\n".encode() for names in netparse.PROTOCOL_NAMES.values()
                    for n in names)
    assert netparse.kinds_in_use(netparse.parse_protocols(header + zero)) == set()
    assert netparse.kinds_in_use(None) is None
    # malformed lines are left out (their kinds then count as present: never lost)
    assert netparse.parse_protocols(header + b"garbage\nMPTCP x y\n\x1b[2J\n") == {}


def test_unlisted_line_says_which_and_why() -> None:
    from nsnet.model import unlisted_line
    rows = [{"kind": "AF_VSOCK", "netns_key": "net:[1]", "count": 1},
            {"kind": "TCP", "netns_key": "net:[1]", "count": 2},
            {"kind": "TCP", "netns_key": "net:[2]", "count": 1},
            {"kind": "SMC", "netns_key": "net:[2]", "count": 1}]
    line = unlisted_line(rows)
    assert line.startswith("5 held socket(s) in no table: 3 TCP (bound but neither")
    assert "1 AF_VSOCK (vsock has no table" in line and "1 SMC (a kind nsnet does not list yet)" in line
    assert unlisted_line([]) is None


@little_endian_only
def test_diag_socket_memory(queues: dict) -> None:
    """INET_DIAG_SKMEMINFO and UNIX_DIAG_MEMINFO: the unread bytes' memory is in rmem_alloc,
    and every field is what ss -m printed at the capture (skmem:(r,rb,t,tb,f,w,o,bl,d))."""
    import re

    from link_scenario import QUEUE_PORTS
    ino = queues["inodes"]
    tcp = _detailed("tcp4", "tcp", queues)
    reader = tcp[ino["unread_reader"]].detail.memory
    assert reader.rmem_alloc > 0 and reader.rcvbuf > 0 and reader.drops == 0
    # ss -tmn: the line of the connection to the unread port, local end the port itself
    seen = re.search(r"127\.0\.0\.1:" + str(QUEUE_PORTS["unread"]) + r" +127\.0\.0\.1:\d+\s+"
                     r"skmem:\(r(\d+),rb(\d+),t(\d+),tb(\d+),f(\d+),w(\d+),o(\d+),bl(\d+),d(\d+)\)",
                     queues["ss_skmem"])
    assert seen is not None, queues["ss_skmem"]
    assert tuple(int(x) for x in seen.groups()) == (
        reader.rmem_alloc, reader.rcvbuf, reader.wmem_alloc, reader.sndbuf, reader.fwd_alloc,
        reader.wmem_queued, reader.optmem, reader.backlog, reader.drops)
    unix = _detailed("unix", "unix", queues)
    # a unix stream charges the bytes in flight to the sender (skb owned by it): its
    # wmem_alloc, which is also its Send-Q (unix_outq_len); the reader's rmem_alloc stays 0
    left = unix[ino["unix_left"]].detail
    assert left.memory.wmem_alloc == left.send_q > 0
    assert unix[ino["unix_right"]].detail.memory.rmem_alloc == 0


def test_meminfo_too_short() -> None:
    from nsnet.sockdiag import parse_meminfo
    assert parse_meminfo(b"\0" * 35) is None
    assert parse_meminfo(bytes(range(36))).rmem_alloc == int.from_bytes(bytes(range(4)),
                                                                         sys.byteorder)


def test_skmem_column() -> None:
    from nsnet import report, views
    from nsnet.model import Socket, SocketDetail, SocketMemory
    from nsnet.report import Renderer
    s = Socket("tcp", "inet", "ESTABLISHED", "10.0.0.1", 5, "10.0.0.2", 80, 9, 0, 1, "net:[1]")
    s.detail = SocketDetail(memory=SocketMemory(1, 2, 3, 4, 5, 6, 7, 8, 9))
    doc = views.sockets_view(_snap([s]))
    assert doc["sockets"][0]["detail"]["memory"]["drops"] == 9
    text = report.render_sockets(doc, Renderer(None, False, columns=["LOCAL", "SKMEM"]))
    assert "r1,rb2,t3,tb4,f5,w6,o7,bl8,d9" in text


# ---------------------------------------------------------------- MPTCP subflows, by token

MULTIPATH = json.loads((DATA / "multipath_capture.json").read_text())


def multipath_dump(name: str, links: bool = True):
    from nsnet.sockdiag import parse_dump
    from nsnet.sockdiag import WANT_LINKS
    return parse_dump((DATA / f"multipath_diag_{name}.bin").read_bytes(),
                      "tcp" if name == "tcp4" else "mptcp", MULTIPATH["seq"][name],
                      WANT_LINKS if links else 0)


def test_mptcp_connections_and_subflows_carry_their_tokens() -> None:
    tokens, ino, port = MULTIPATH["tokens"], MULTIPATH["inodes"], MULTIPATH["port"]
    conns = multipath_dump("mptcp4")
    assert conns.malformed == 0
    by_inode = {s.inode: s for s in conns.sockets if port in (s.local_port, s.remote_port)}
    assert by_inode[ino["multipath_client"]].mptcp_token == tokens["client"]
    assert by_inode[ino["multipath_server"]].mptcp_token == tokens["server"]
    assert by_inode[ino["multipath_listener"]].mptcp_token == 0      # a listener: none
    subflows = [s for s in multipath_dump("tcp4").sockets if s.state == "ESTABLISHED"
                and port in (s.local_port, s.remote_port)]
    # two each side, every one with its connection's inode (the kernel grafts subflows
    # onto the MPTCP socket) and its connection's token
    first, second = MULTIPATH["addrs"]
    assert sorted((s.local_addr, s.remote_addr, s.inode, s.mptcp_token) for s in subflows) == \
        sorted([(first, first, ino["multipath_client"], tokens["client"]),
                (second, first, ino["multipath_client"], tokens["client"]),
                (first, first, ino["multipath_server"], tokens["server"]),
                (first, second, ino["multipath_server"], tokens["server"])])
    # what ss -ti says of them: the same tokens (its "token:REM(id)/LOC(id)")
    import re
    ss_local = {int(loc, 16) for loc in re.findall(r"token:[0-9a-f]+\(id:\d+\)/([0-9a-f]+)",
                                                  MULTIPATH["ss"])}
    assert ss_local == {tokens["client"], tokens["server"]}
    # not asked (a namespace without MPTCP): the attributes are not read at all
    assert {s.mptcp_token for s in multipath_dump("tcp4", links=False).sockets} == {None}


def test_a_truncated_ulp_attribute_is_no_token() -> None:
    from nsnet.sockdiag import _mptcp_token
    ulp_name = struct.pack("=HH", 10, 1) + b"mptcp\0" + b"\0\0"        # INET_ULP_INFO_NAME
    token = struct.pack("=HHI", 8, 2, 0xCAFE)                          # TOKEN_LOC
    nested = struct.pack("=HH", 4 + len(token), 3 | 0x8000) + token    # INET_ULP_INFO_MPTCP
    body = ulp_name + nested
    whole = struct.pack("=HH", 4 + len(body), 19 | 0x8000) + body      # INET_DIAG_ULP_INFO
    assert _mptcp_token(whole, 0, len(whole), "tcp") == 0xCAFE
    for cut in range(1, len(whole)):
        assert _mptcp_token(whole[:-cut], 0, len(whole) - cut, "tcp") in (None, 0xCAFE)
    assert _mptcp_token(b"", 0, 0, "tcp") is None
    assert _mptcp_token(b"", 0, 0, "mptcp") is None


def test_one_table_read_keeps_every_subflow_of_a_connection() -> None:
    from nsnet.sources.base import _once_each
    listed = multipath_dump("tcp4").sockets
    kept, repeated = _once_each(listed + listed[:2])     # a dump that listed two twice
    assert repeated == 2 and kept == listed


def test_subflows_are_linked_to_their_connection_in_their_namespace() -> None:
    from nsnet.ownership import link_subflows
    conns = [s for s in multipath_dump("mptcp4").sockets]
    subflows = [s for s in multipath_dump("tcp4").sockets]
    other_ns = multipath_dump("tcp4").sockets          # the same tokens, another namespace
    for s in [*conns, *subflows]:
        s.netns_key = "net:[1]"
    for s in other_ns:
        s.netns_key = "net:[2]"
    conn_of = {s.mptcp_token: s for s in conns if s.mptcp_token}
    conn_of[MULTIPATH["tokens"]["client"]].pids = (4242,)
    link_subflows([*conns, *subflows, *other_ns])
    for s in subflows:
        if s.mptcp_token:
            assert s.mptcp_connection == conn_of[s.mptcp_token].inode
    assert {s.mptcp_connection for s in other_ns} == {None}
    assert {s.mptcp_connection for s in subflows if s.state == "LISTEN"} == {None}
    # a subflow no process was joined to is held by its connection's holders
    client = MULTIPATH["tokens"]["client"]
    assert {tuple(s.pids) for s in subflows if s.mptcp_token == client} == {(4242,)}
    assert {tuple(s.pids) for s in subflows if s.mptcp_token != client} == {()}


def test_traffic_alone_is_read_in_place_and_equals_the_detail(queues: dict) -> None:
    from nsnet.sockdiag import WANT_TRAFFIC, parse_dump
    from nsnet.sockdiag import WANT_DETAIL
    data = (DATA / "queues_diag_tcp4.bin").read_bytes()

    def ends(s):
        return (s.state, s.local_addr, s.local_port, s.remote_addr, s.remote_port)
    detailed = {ends(s): s for s in parse_dump(data, "tcp", queues["seq"]["tcp4"],
                                               WANT_DETAIL).sockets}
    light = parse_dump(data, "tcp", queues["seq"]["tcp4"], WANT_TRAFFIC)
    assert light.malformed == 0
    measured = [s for s in light.sockets if s.traffic is not None]
    assert measured and all(s.detail is None for s in light.sockets)
    for s in measured:
        tcp = detailed[ends(s)].detail.tcp
        assert s.traffic == (tcp.bytes_acked, tcp.bytes_received, tcp.total_retrans, tcp.rtt_us)
    # a tcp_info cut short of the byte counters (a kernel before 4.2) is no traffic
    from nsnet.sockdiag import _traffic
    info = struct.pack("=HH", 4 + 120, 2) + bytes(120)
    assert _traffic(info, 0, len(info)) is None
    whole = struct.pack("=HH", 4 + 136, 2) + bytes(68) + struct.pack("=I", 250) + bytes(28) \
        + struct.pack("=I", 3) + bytes(16) + struct.pack("=QQ", 1000, 2000)
    assert _traffic(whole, 0, len(whole)) == (1000, 2000, 3, 250)
    assert _traffic(whole[:-1], 0, len(whole) - 1) is None      # runs past the message
