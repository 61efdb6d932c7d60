"""Unit tests of nsnet.netparse on /proc/net text captured from a real kernel.

How tests/data/proc_net_*.txt were captured (Linux 6.18, x86-64, so the kernel's
host-order address words are little-endian). A throwaway script ran as root under
`unshare -n` (a fresh, empty network namespace), brought lo up, added
2001:db8::1234:5678/128 to lo, and created a veth pair whose both ends stay in that
namespace (10.255.0.1/16 and 2001:db8:ff::1/48 on nsntv0, nothing answers ARP/ND on
nsntv1). It then opened the sockets below and copied /proc/<its pid>/net/{tcp,tcp6,
udp,udp6,raw,raw6,unix} byte for byte. Socket inodes were recorded with fstat() at
capture time; the expectations below come from that record and from what each socket
was made to do, not from running the parser.

tcp:  listeners 127.0.0.1:5000, 0.0.0.0:5001, 127.0.0.1:5002 (small receive buffer),
      127.0.0.1:5003 (TCP_DEFER_ACCEPT);
      127.1.2.3:40001 <-> 127.0.0.1:5000 established and accepted;
      127.0.0.1:40008 -> :5001 connected, never accepted (server side has inode 0);
      127.0.0.1:40002 -> :5000, client closed first: TIME_WAIT (inode 0);
      127.0.0.1:40003 -> :5000, client shutdown(SHUT_WR): FIN_WAIT2 / CLOSE_WAIT;
      127.0.0.1:40004 -> :5002, client filled the peer's zero window then closed:
      FIN_WAIT1 (orphan, inode 0);
      127.0.0.1:40005 -> :5002, client shut down writing, the server filled the
      client's window then closed: LAST_ACK (orphan, inode 0);
      10.255.0.1:40006 -> 10.255.255.1:9 non-blocking connect over the veth: SYN_SENT;
      127.0.0.1:40007 -> :5003 (deferred accept keeps the request sock): SYN_RECV;
      127.0.0.1:41002 -> 127.0.0.1:7000 (the dual-stack listener below).
tcp6: listeners [2001:db8::1234:5678]:6000 and [::1]:6001 (v6only), [::]:7000
      (dual-stack); [::1]:41001 <-> [2001:db8::1234:5678]:6000; the IPv4 client
      above accepted by [::]:7000 (::ffff:127.0.0.1 on both ends); [::1]:41003 TIME_WAIT;
      [::1]:41004 FIN_WAIT2 / CLOSE_WAIT; [2001:db8:ff::1]:41006 SYN_SENT.
udp / udp6: bound 127.0.0.1:5353, 0.0.0.0:6868, [::]:5354 (dual-stack),
      [2001:db8::1234:5678]:5355; connected 127.1.2.3:40010 -> 127.0.0.1:5353,
      [::1]:41010 -> [::1]:5356, and a dual-stack socket connected to
      ::ffff:127.0.0.1:5353.
raw / raw6: ICMP (1), ICMP connected to 127.1.2.3, IPPROTO_RAW (255); ICMPv6 (58)
      unbound and bound to ::1.
unix: in /tmp/nsnt-cap-1d5de8: stream listener srv.sock with one accepted and one
      not-yet-accepted client; stream listeners "with space.sock", "new<LF>line.sock"
      and abstract "\\0nsnt\\0abs\\0tract"; a stream socketpair; dgram.sock bound and an
      unbound dgram socket connected to it; an unbound dgram socket; seqpacket
      listener seq.sock with one accepted client.
unix_path_edges (a second run, in /tmp/nsnt-cap-ef7b8a): paths with two consecutive
      newlines, ending in a newline, with a non-UTF-8 byte (0xE9); abstract names
      "\\0" and "\\0nsnt-tail\\0"; a plain path last.

Files named *_malformed.txt were written by hand from those captured lines: bad lines
are inserted between good captured lines, or the file is cut short.

States that cannot be produced live on loopback (CLOSE, CLOSING) or that /proc never
prints (NEW_SYN_RECV is shown as SYN_RECV, BOUND_INACTIVE sockets are not listed) are
tested by editing the st field of a captured line.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nsnet.netparse import TCP_STATES, ParseResult, decode_address, parse_net_file

DATA = Path(__file__).resolve().parents[1] / "data"
UNIX_DIR = "/tmp/nsnt-cap-1d5de8"
EDGE_DIR = "/tmp/nsnt-cap-ef7b8a"

# The captured inet text holds little-endian words; on a big-endian host the same
# bytes would mean other addresses, and decoding them differently would be correct.
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="inet captures were taken on a little-endian host")


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def lines(name: str) -> list[bytes]:
    return data(name).split(b"\n")


def inet_rows(result: ParseResult) -> list[tuple]:
    return [(s.proto, s.family, s.state, s.local_addr, s.local_port, s.remote_addr,
             s.remote_port, s.inode, s.uid) for s in result.sockets]


def unix_rows(result: ParseResult) -> list[tuple]:
    return [(s.state, s.unix_type, s.local_addr, s.inode) for s in result.sockets]


def inet(proto: str, family: str, rows: list[tuple]) -> list[tuple]:
    """Expand (state, laddr, lport, raddr, rport, inode) with the columns every row shares."""
    return [(proto, family, st, la, lp, ra, rp, ino, 0) for st, la, lp, ra, rp, ino in rows]


# ---------------------------------------------------------------- expectations

EXPECTED = {
    "tcp": inet("tcp", "inet", [
        ("LISTEN", "0.0.0.0", 5001, "0.0.0.0", 0, 7462),
        ("LISTEN", "127.0.0.1", 5002, "0.0.0.0", 0, 7463),
        ("LISTEN", "127.0.0.1", 5003, "0.0.0.0", 0, 7464),
        ("LISTEN", "127.0.0.1", 5000, "0.0.0.0", 0, 7461),
        ("ESTABLISHED", "127.0.0.1", 5001, "127.0.0.1", 40008, 0),
        ("FIN_WAIT1", "127.0.0.1", 40004, "127.0.0.1", 5002, 0),
        ("FIN_WAIT2", "127.0.0.1", 40005, "127.0.0.1", 5002, 7474),
        ("ESTABLISHED", "127.1.2.3", 40001, "127.0.0.1", 5000, 7465),
        ("ESTABLISHED", "127.0.0.1", 40008, "127.0.0.1", 5001, 7467),
        ("ESTABLISHED", "127.0.0.1", 40007, "127.0.0.1", 5003, 7477),
        ("ESTABLISHED", "127.0.0.1", 41002, "127.0.0.1", 7000, 7483),
        ("LAST_ACK", "127.0.0.1", 5002, "127.0.0.1", 40005, 0),
        ("SYN_SENT", "10.255.0.1", 40006, "10.255.255.1", 9, 7476),
        ("ESTABLISHED", "127.0.0.1", 5002, "127.0.0.1", 40004, 7473),
        ("SYN_RECV", "127.0.0.1", 5003, "127.0.0.1", 40007, 0),
        ("CLOSE_WAIT", "127.0.0.1", 5000, "127.0.0.1", 40003, 7471),
        ("ESTABLISHED", "127.0.0.1", 5000, "127.1.2.3", 40001, 7466),
        ("TIME_WAIT", "127.0.0.1", 40002, "127.0.0.1", 5000, 0),
        ("FIN_WAIT2", "127.0.0.1", 40003, "127.0.0.1", 5000, 7470),
    ]),
    "tcp6": inet("tcp", "inet6", [
        ("LISTEN", "::", 7000, "::", 0, 7480),
        ("LISTEN", "2001:db8::1234:5678", 6000, "::", 0, 7478),
        ("LISTEN", "::1", 6001, "::", 0, 7479),
        ("SYN_SENT", "2001:db8:ff::1", 41006, "2001:db8:ff::ffff:1", 9, 7489),
        ("ESTABLISHED", "2001:db8::1234:5678", 6000, "::1", 41001, 7482),
        ("ESTABLISHED", "::1", 41001, "2001:db8::1234:5678", 6000, 7481),
        ("ESTABLISHED", "127.0.0.1", 7000, "127.0.0.1", 41002, 7484),   # ::ffff:127.0.0.1
        ("CLOSE_WAIT", "::1", 6001, "::1", 41004, 7488),
        ("TIME_WAIT", "::1", 41003, "::1", 6001, 0),
        ("FIN_WAIT2", "::1", 41004, "::1", 6001, 7487),
    ]),
    "udp": inet("udp", "inet", [
        ("UNCONN", "127.0.0.1", 5353, "0.0.0.0", 0, 7490),
        ("UNCONN", "0.0.0.0", 6868, "0.0.0.0", 0, 7491),
        ("ESTABLISHED", "127.1.2.3", 40010, "127.0.0.1", 5353, 7492),
    ]),
    "udp6": inet("udp", "inet6", [
        ("UNCONN", "::", 5354, "::", 0, 7493),
        ("UNCONN", "2001:db8::1234:5678", 5355, "::", 0, 7494),
        ("ESTABLISHED", "::1", 41010, "::1", 5356, 7495),
        ("ESTABLISHED", "127.0.0.1", 41011, "127.0.0.1", 5353, 7496),   # ::ffff:127.0.0.1
    ]),
    # Raw sockets: the "port" columns hold the IP protocol number.
    "raw": inet("raw", "inet", [
        ("UNCONN", "0.0.0.0", 255, "0.0.0.0", 0, 7499),
        ("ESTABLISHED", "127.0.0.1", 1, "127.1.2.3", 0, 7498),
        ("UNCONN", "0.0.0.0", 1, "0.0.0.0", 0, 7497),
    ]),
    "raw6": inet("raw", "inet6", [
        ("UNCONN", "::1", 58, "::", 0, 7501),
        ("UNCONN", "::", 58, "::", 0, 7500),
    ]),
}

UNIX_EXPECTED = [
    ("ESTABLISHED", "seqpacket", "", 7515),
    ("LISTEN", "stream", f"{UNIX_DIR}/with space.sock", 7506),
    ("LISTEN", "stream", f"{UNIX_DIR}/new\nline.sock", 7507),
    # Connecting a datagram socket marks both ends established on this kernel; ss says ESTAB too.
    ("ESTABLISHED", "dgram", f"{UNIX_DIR}/dgram.sock", 7511),
    ("LISTEN", "seqpacket", f"{UNIX_DIR}/seq.sock", 7514),
    ("ESTABLISHED", "seqpacket", f"{UNIX_DIR}/seq.sock", 7516),   # accepted: listener's address
    ("ESTABLISHED", "stream", f"{UNIX_DIR}/srv.sock", 7504),
    ("ESTABLISHED", "dgram", "", 7512),
    ("ESTABLISHED", "stream", "", 7510),
    ("LISTEN", "stream", f"{UNIX_DIR}/srv.sock", 7502),
    ("ESTABLISHED", "stream", "", 7505),
    # Connected, still in srv.sock's accept queue: the kernel prints St 02 (SS_CONNECTING)
    # for a connected socket that has no struct socket yet (af_unix.c unix_seq_show).
    ("ESTABLISHED", "stream", f"{UNIX_DIR}/srv.sock", 0),
    ("UNCONN", "dgram", "", 7513),
    ("ESTABLISHED", "stream", "", 7509),
    ("ESTABLISHED", "stream", "", 7503),
    ("LISTEN", "stream", "@nsnt@abs@tract", 7508),
]

# include/net/tcp_states.h, written out independently of netparse.TCP_STATES.
KERNEL_TCP_STATES = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING", 0x0C: "NEW_SYN_RECV",
    0x0D: "BOUND_INACTIVE",
}


# ---------------------------------------------------------------- captured files

@little_endian_only
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_inet_file_exact(name: str) -> None:
    result = parse_net_file(name, data(f"proc_net_{name}.txt"))
    assert inet_rows(result) == EXPECTED[name]
    assert result.malformed == 0
    assert result.examples == []


def test_captured_unix_file_exact() -> None:
    result = parse_net_file("unix", data("proc_net_unix.txt"))
    assert unix_rows(result) == UNIX_EXPECTED
    assert result.malformed == 0
    for s in result.sockets:
        assert (s.proto, s.family, s.local_port, s.remote_addr, s.remote_port, s.uid) == \
            ("unix", "unix", None, "", None, None)


@little_endian_only
def test_live_capture_covers_these_tcp_states() -> None:
    """Guards the capture itself: these states came from real sockets, not edits."""
    states = {s.state for name in ("tcp", "tcp6")
              for s in parse_net_file(name, data(f"proc_net_{name}.txt")).sockets}
    assert states == {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
                      "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK", "LISTEN"}


@little_endian_only
def test_orphans_and_unaccepted_keep_inode_zero() -> None:
    result = parse_net_file("tcp", data("proc_net_tcp.txt"))
    zero = sorted(s.state for s in result.sockets if s.inode == 0)
    # TIME_WAIT, the two orphans, the half-open request and the unaccepted connection.
    assert zero == ["ESTABLISHED", "FIN_WAIT1", "LAST_ACK", "SYN_RECV", "TIME_WAIT"]


# ---------------------------------------------------------------- addresses

@little_endian_only
@pytest.mark.parametrize("hexaddr, text", [
    (b"0100007F", "127.0.0.1"),
    (b"0302017F", "127.1.2.3"),                  # byte order is visible: 3.2.1.127 if wrong
    (b"00000000", "0.0.0.0"),
    (b"0100FF0A", "10.255.0.1"),
    (b"01FFFF0A", "10.255.255.1"),
    (b"0100007f", "127.0.0.1"),                  # lower case hex is still hex
    (b"00000000000000000000000000000000", "::"),
    (b"00000000000000000000000001000000", "::1"),
    (b"B80D0120000000000000000078563412", "2001:db8::1234:5678"),
    (b"B80D01200000FF00000000000100FFFF", "2001:db8:ff::ffff:1"),
    (b"0000000000000000FFFF00000100007F", "127.0.0.1"),            # IPv4-mapped
    (b"0000000000000000FFFF00000302017F", "127.1.2.3"),
])
def test_decode_address(hexaddr: bytes, text: str) -> None:
    assert decode_address(hexaddr) == text
    assert decode_address(hexaddr) == text       # a second call goes through the cache


@pytest.mark.parametrize("hexaddr", [
    pytest.param(b"0100007G", id="non-hex-digit"),
    pytest.param(b"100007F", id="7-digits"),
    pytest.param(b"", id="empty"),
    pytest.param(b"0100007F00", id="10-digits"),
    pytest.param(b"B80D012000000000000000007856341", id="31-digits"),
    pytest.param(b"-100007F", id="minus-sign"),
    pytest.param(b"0x00007F", id="0x-prefix"),
    pytest.param(b"0100_07F", id="underscore"),
    pytest.param(b"0000000000000000FFFF0000-100007F", id="v6-minus-sign"),
])
def test_decode_address_rejects_non_kernel_text(hexaddr: bytes) -> None:
    """The kernel prints exactly 8 or 32 hex digits; anything else is not an address."""
    with pytest.raises(ValueError):
        decode_address(hexaddr)


# ---------------------------------------------------------------- states

def test_tcp_state_table_matches_kernel() -> None:
    assert TCP_STATES == KERNEL_TCP_STATES


@little_endian_only
@pytest.mark.parametrize("number, name", sorted(KERNEL_TCP_STATES.items()))
def test_every_tcp_state_name(number: int, name: str) -> None:
    # Synthesized: the st field of a captured ESTABLISHED line set to each state,
    # for both files, since tcp6 shares the table.
    v4 = lines("proc_net_tcp.txt")
    v6 = lines("proc_net_tcp6.txt")
    for file, header, line in (("tcp", v4[0], v4[8]), ("tcp6", v6[0], v6[5])):
        assert b" 01 00000000:" in line
        edited = line.replace(b" 01 00000000:", b" %02X 00000000:" % number, 1)
        result = parse_net_file(file, header + b"\n" + edited + b"\n")
        assert result.malformed == 0
        assert [s.state for s in result.sockets] == [name]


@little_endian_only
@pytest.mark.parametrize("file", ["udp", "udp6", "raw", "raw6"])
@pytest.mark.parametrize("st, state", [(b"07", "UNCONN"), (b"01", "ESTABLISHED"),
                                       (b"0A", None), (b"06", None), (b"00", None)])
def test_datagram_states(file: str, st: bytes, state: str | None) -> None:
    """Datagram and raw sockets are only ever unconnected (7) or connected (1)."""
    header, line = lines(f"proc_net_{file}.txt")[:2]
    fields = line.split(b" ")
    index = [i for i, f in enumerate(fields) if f == b"07"][0]
    fields[index] = st
    result = parse_net_file(file, header + b"\n" + b" ".join(fields) + b"\n")
    if state is None:
        assert (result.sockets, result.malformed) == ([], 1)
    else:
        assert ([s.state for s in result.sockets], result.malformed) == ([state], 0)


@little_endian_only
def test_uid_column() -> None:
    # Synthesized: every captured socket belonged to root, so one uid is edited.
    header, line = lines("proc_net_udp.txt")[:2]
    edited = line.replace(b"00000000     0        0 7490", b"00000000 65534        0 7490")
    assert edited != line
    result = parse_net_file("udp", header + b"\n" + edited + b"\n")
    assert [(s.uid, s.inode) for s in result.sockets] == [(65534, 7490)]


# ---------------------------------------------------------------- unix details

def unix_by_inode() -> dict[int, tuple]:
    return {row[3]: row for row in unix_rows(parse_net_file("unix", data("proc_net_unix.txt")))}


@pytest.mark.parametrize("inode, state, type_, path", [
    pytest.param(7502, "LISTEN", "stream", f"{UNIX_DIR}/srv.sock", id="listener-with-path"),
    pytest.param(7506, "LISTEN", "stream", f"{UNIX_DIR}/with space.sock", id="space-in-path"),
    pytest.param(7507, "LISTEN", "stream", f"{UNIX_DIR}/new\nline.sock", id="newline-in-path"),
    pytest.param(7508, "LISTEN", "stream", "@nsnt@abs@tract", id="abstract-embedded-nul"),
    pytest.param(7509, "ESTABLISHED", "stream", "", id="socketpair-unnamed"),
    pytest.param(7504, "ESTABLISHED", "stream", f"{UNIX_DIR}/srv.sock", id="accepted-has-path"),
    pytest.param(7505, "ESTABLISHED", "stream", "", id="client-unnamed"),
    pytest.param(7513, "UNCONN", "dgram", "", id="dgram-unbound"),
    pytest.param(7512, "ESTABLISHED", "dgram", "", id="dgram-connected"),
    pytest.param(7514, "LISTEN", "seqpacket", f"{UNIX_DIR}/seq.sock", id="seqpacket-listener"),
    pytest.param(7515, "ESTABLISHED", "seqpacket", "", id="seqpacket-client"),
    pytest.param(0, "ESTABLISHED", "stream", f"{UNIX_DIR}/srv.sock", id="not-yet-accepted"),
])
def test_unix_socket(inode: int, state: str, type_: str, path: str) -> None:
    assert unix_by_inode()[inode] == (state, type_, path, inode)


def test_unix_states_are_only_listen_established_unconn() -> None:
    states = {s.state for s in parse_net_file("unix", data("proc_net_unix.txt")).sockets}
    assert states == {"LISTEN", "ESTABLISHED", "UNCONN"}


@pytest.mark.parametrize("inode, state, type_, path", [
    pytest.param(9109, "LISTEN", "stream", f"{EDGE_DIR}/double\n\nnewline.sock", id="two-newlines"),
    pytest.param(9110, "LISTEN", "stream", f"{EDGE_DIR}/trailing\n", id="trailing-newline"),
    pytest.param(9111, "UNCONN", "dgram", f"{EDGE_DIR}/caf\udce9.sock", id="non-utf8-byte"),
    pytest.param(9114, "LISTEN", "stream", f"{EDGE_DIR}/plain.sock", id="plain"),
    pytest.param(9112, "UNCONN", "dgram", "@", id="abstract-single-nul"),
    pytest.param(9113, "LISTEN", "seqpacket", "@nsnt-tail@", id="abstract-trailing-nul"),
])
def test_unix_path_edges(inode: int, state: str, type_: str, path: str) -> None:
    result = parse_net_file("unix", data("proc_net_unix_path_edges.txt"))
    assert result.malformed == 0
    assert {row[3]: row for row in unix_rows(result)}[inode] == (state, type_, path, inode)


def test_unix_path_edges_count() -> None:
    result = parse_net_file("unix", data("proc_net_unix_path_edges.txt"))
    assert sorted(s.inode for s in result.sockets) == [9109, 9110, 9111, 9112, 9113, 9114]


def test_unix_path_bytes_round_trip() -> None:
    """surrogateescape keeps the exact bytes, so the path can still be opened."""
    result = parse_net_file("unix", data("proc_net_unix_path_edges.txt"))
    path = next(s.local_addr for s in result.sockets if s.inode == 9111)
    assert path.encode("utf-8", "surrogateescape") == f"{EDGE_DIR}/caf".encode() + b"\xe9.sock"


# ---------------------------------------------------------------- malformed input

TCP = lines("proc_net_tcp.txt")
GOOD_BEFORE, GOOD_AFTER = TCP[1], TCP[19]       # LISTEN 0.0.0.0:5001, FIN_WAIT2 :40003
VICTIM = TCP[8]                                  # ESTABLISHED 127.1.2.3:40001 -> :5000


def edit(old: bytes, new: bytes) -> bytes:
    assert old in VICTIM
    return VICTIM.replace(old, new, 1)


@little_endian_only
@pytest.mark.parametrize("bad", [
    pytest.param(VICTIM[:40], id="truncated"),
    pytest.param(b" ".join(VICTIM.split()[:9]), id="nine-fields"),
    pytest.param(b"   5: 0100007F:9C44", id="short"),
    pytest.param(edit(b"0302017F:9C41", b"0302017G:9C41"), id="address-non-hex"),
    pytest.param(edit(b"0302017F:9C41", b"302017F:9C41"), id="address-7-digits"),
    pytest.param(edit(b"0302017F:9C41", b"-302017F:9C41"), id="address-minus-sign"),
    pytest.param(edit(b"0302017F:9C41", b"0x02017F:9C41"), id="address-0x-prefix"),
    pytest.param(edit(b"0302017F:9C41", b"0302017F"), id="no-port"),
    pytest.param(edit(b"0302017F:9C41", b"0302017F:9G41"), id="port-non-hex"),
    pytest.param(edit(b"0302017F:9C41", b"0302017F:-C41"), id="port-minus-sign"),
    pytest.param(edit(b" 01 00000000:", b" 0E 00000000:"), id="unknown-state-0E"),
    pytest.param(edit(b" 01 00000000:", b" 00 00000000:"), id="unknown-state-00"),
    pytest.param(edit(b" 01 00000000:", b" ZZ 00000000:"), id="state-not-hex"),
    pytest.param(edit(b" 7465 ", b" 74x5 "), id="inode-not-a-number"),
    pytest.param(edit(b"00000000     0 ", b"00000000  root "), id="uid-not-a-number"),
    pytest.param(edit(b"   7: ", b"   7  "), id="slot-without-colon"),
    pytest.param(b"this is not a socket line at all, though it has more than ten fields",
                 id="text-garbage"),
    pytest.param(b"\x00\xff\x1b[31mbinary garbage\x07", id="binary-garbage"),
])
def test_bad_inet_line_is_counted_and_neighbours_kept(bad: bytes) -> None:
    text = b"\n".join([TCP[0], GOOD_BEFORE, bad, GOOD_AFTER, b""])
    result = parse_net_file("tcp", text)
    assert [s.inode for s in result.sockets] == [7462, 7470]
    assert result.malformed == 1
    assert result.examples == [bad[:120].decode("ascii", "backslashreplace")]


@little_endian_only
def test_tcp_malformed_file() -> None:
    result = parse_net_file("tcp", data("proc_net_tcp_malformed.txt"))
    assert inet_rows(result) == [EXPECTED["tcp"][i] for i in (0, 7, 17, 18)]
    # truncated, bad hex, unknown state, short, text garbage, binary garbage
    assert result.malformed == 6
    bad = lines("proc_net_tcp_malformed.txt")
    # Only the first three bad lines are kept, cut to 120 characters.
    assert result.examples == [bad[i][:120].decode("ascii", "backslashreplace") for i in (2, 4, 5)]


@little_endian_only
def test_tcp6_malformed_file() -> None:
    result = parse_net_file("tcp6", data("proc_net_tcp6_malformed.txt"))
    assert inet_rows(result) == [EXPECTED["tcp6"][i] for i in (0, 6, 8)]
    # 31 hex digits, a non-hex digit, an endpoint without a port
    assert result.malformed == 3


@little_endian_only
def test_udp_malformed_file() -> None:
    result = parse_net_file("udp", data("proc_net_udp_malformed.txt"))
    assert inet_rows(result) == [EXPECTED["udp"][i] for i in (0, 2)]
    # a datagram socket in LISTEN, a uid that is not a number
    assert result.malformed == 2


def test_unix_malformed_file() -> None:
    result = parse_net_file("unix", data("proc_net_unix_malformed.txt"))
    assert unix_rows(result) == [UNIX_EXPECTED[i] for i in (1, 2, 15)]
    # garbage before the first entry; an entry of socket type 3 -- with the cut-short entry
    # after it, which only its name can hold: the kernel prints entries whole
    assert result.malformed == 2


def test_unix_garbage_after_unnamed_entry_keeps_the_entry() -> None:
    """A socket without a path has nothing a following line could continue, so a
    stray line after it is malformed on its own and the socket is kept."""
    x = lines("proc_net_unix.txt")
    unnamed, abstract = x[16], x[17]
    assert unnamed.endswith(b" 7503") and abstract.endswith(b"@nsnt@abs@tract")
    result = parse_net_file("unix", b"\n".join([x[0], unnamed, b"garbage", abstract, b""]))
    assert [s.inode for s in result.sockets] == [7503, 7508]
    assert result.malformed == 1


@pytest.mark.parametrize("name", ["tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"])
def test_empty_input(name: str) -> None:
    result = parse_net_file(name, b"")
    assert (result.sockets, result.malformed, result.examples) == ([], 0, [])


def test_empty_file() -> None:
    result = parse_net_file("tcp", data("proc_net_tcp_empty_malformed.txt"))
    assert (result.sockets, result.malformed) == ([], 0)


@pytest.mark.parametrize("name", ["tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"])
@pytest.mark.parametrize("newline", [b"\n", b""], ids=["with-newline", "without-newline"])
def test_header_only(name: str, newline: bytes) -> None:
    header = lines(f"proc_net_{name}.txt")[0]
    result = parse_net_file(name, header + newline)
    assert (result.sockets, result.malformed) == ([], 0)


@pytest.mark.parametrize("name, file", [
    ("tcp6", "proc_net_tcp6_header_only_malformed.txt"),
    ("unix", "proc_net_unix_header_only_malformed.txt"),
])
def test_header_only_files(name: str, file: str) -> None:
    result = parse_net_file(name, data(file))
    assert (result.sockets, result.malformed) == ([], 0)


@little_endian_only
def test_truncated_read_mid_address() -> None:
    """The read stopped inside the remote address of the sixth entry."""
    raw = data("proc_net_tcp_truncated_malformed.txt")
    assert not raw.endswith(b"\n")
    result = parse_net_file("tcp", raw)
    assert inet_rows(result) == EXPECTED["tcp"][:5]
    assert result.malformed == 1


@little_endian_only
def test_truncated_read_mid_inode() -> None:
    """The read stopped inside the inode column (7482 cut to 748). Every line the
    kernel prints has at least 12 fields and ends in a newline; this last one has
    neither, so it must not become a socket with a wrong inode."""
    raw = data("proc_net_tcp6_truncated_malformed.txt")
    assert raw.endswith(b" 748")
    result = parse_net_file("tcp6", raw)
    assert inet_rows(result) == EXPECTED["tcp6"][:4]
    assert result.malformed == 1


def test_truncated_read_unix() -> None:
    raw = data("proc_net_unix_truncated_malformed.txt")
    assert not raw.endswith(b"\n")
    result = parse_net_file("unix", raw)
    assert unix_rows(result) == UNIX_EXPECTED[:4]
    assert result.malformed == 1


def test_examples_are_capped() -> None:
    header = lines("proc_net_tcp.txt")[0]
    bad = [b"garbage %d " % i + b"x" * 200 for i in range(5)]
    result = parse_net_file("tcp", b"\n".join([header, *bad, b""]))
    assert result.malformed == 5
    assert result.examples == [b[:120].decode() for b in bad[:3]]


# A line as unix_seq_show prints it: "%pK: %08X %08X %08X %04X %02X %5lu" and " <name>".
def unix_line(inode: int, name: bytes = b"", *, listening: bool = False) -> bytes:
    flags = b"00010000" if listening else b"00000000"
    line = b"0000000000000000: 00000002 00000000 " + flags + b" 0001 01 %5d" % inode
    return line + (b" " + name if name else b"")


HEADER = b"Num       RefCount Protocol Flags    Type St Inode Path"


def test_a_line_inside_a_bound_name_is_parsed_but_unconfirmed() -> None:
    """A tenant binds an abstract name holding a newline and a line-shaped text: the kernel
    prints a line indistinguishable from its own. The parser cannot tell it from a real
    entry, so it marks it for the join stage to check; entries a name cannot reach are not."""
    forged = unix_line(777, b"/run/db.sock", listening=True)
    name = b"@x\n" + forged
    assert len(name) <= 108                  # what bind() accepts
    text = b"\n".join([HEADER, unix_line(100), unix_line(101, name), unix_line(102), b""])
    result = parse_net_file("unix", text)
    assert [(s.inode, s.state, s.local_addr, s.unconfirmed) for s in result.sockets] == [
        (100, "UNCONN", "", False),
        (101, "UNCONN", "@x", False),      # follows a nameless entry: the kernel's own line
        (777, "LISTEN", "/run/db.sock", True),
        (102, "UNCONN", "", True),         # within 108 bytes of the name's start
    ]
    assert result.malformed == 0


def test_only_entries_a_name_can_reach_are_unconfirmed() -> None:
    long_name = b"@" + b"n" * 100
    text = b"\n".join([HEADER, unix_line(1, long_name), unix_line(2), unix_line(3),
                       unix_line(4, b"@a"), unix_line(5), unix_line(6), b""])
    result = parse_net_file("unix", text)
    # 2 starts right after a name; 3 starts past the 108 bytes any name can hold; 5 and 6
    # are both within 108 bytes of "@a" (two short lines fit in one name)
    assert [(s.inode, s.unconfirmed) for s in result.sockets] == [
        (1, False), (2, True), (3, False), (4, False), (5, True), (6, True)]


def test_a_continuation_longer_than_any_name_is_malformed() -> None:
    """A name is at most 108 bytes: text beyond that cannot be part of it."""
    text = b"\n".join([HEADER, unix_line(1, b"@a"), b"x" * 120, unix_line(2), b""])
    result = parse_net_file("unix", text)
    assert [(s.inode, s.local_addr) for s in result.sockets] == [(1, "@a"), (2, "")]
    assert result.malformed == 1
    text = b"\n".join([HEADER, unix_line(1, b"@a"), b"x" * 100, unix_line(2), b""])
    result = parse_net_file("unix", text)
    assert [(s.inode, s.local_addr) for s in result.sockets] == [(1, "@a\n" + "x" * 100),
                                                                 (2, "")]
    assert result.malformed == 0


def test_fib_trie_gives_the_namespace_own_addresses() -> None:
    """Captured here: lo and one address on eth0; Main and Local both list them."""
    from nsnet.netparse import Address, parse_fib_trie_local
    found, malformed = parse_fib_trie_local(data("proc_net_fib_trie.txt"))
    assert found == [Address("127.0.0.0", 8, None), Address("127.0.0.1", 32, None),
                     Address("192.0.2.2", 32, None)]
    assert malformed == 0


def test_fib_trie_malformed_entries_are_counted_not_taken() -> None:
    from nsnet.netparse import Address, parse_fib_trie_local
    text = (b"Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.999\n        /32 host LOCAL\n"
            b"     |-- 10.0.0.7\n        /33 host LOCAL\n     |-- 10.0.0.8\n"
            b"        /32 link BROADCAST\n        /32 host LOCAL\n  garbage\n")
    found, malformed = parse_fib_trie_local(text)
    assert found == [Address("10.0.0.8", 32, None)] and malformed == 2
    assert parse_fib_trie_local(b"") == ([], 0)


def test_if_inet6_gives_addresses_with_their_interfaces() -> None:
    from nsnet.netparse import Address, parse_if_inet6
    found, malformed = parse_if_inet6(data("proc_net_if_inet6.txt"))
    assert found == [Address("fd00::2", 64, "eth0"), Address("fe80::fc:ff:fe00:1", 64, "eth0"),
                     Address("::1", 128, "lo")]
    assert malformed == 0
    found, malformed = parse_if_inet6(b"zz 01 80 10 80 lo\n00000000000000000000000000000001 01 80 10 80       lo\n")
    assert found == [Address("::1", 128, "lo")] and malformed == 1
