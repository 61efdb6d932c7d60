"""nsnet.sockdiag: the NETLINK_SOCK_DIAG codec on captured replies, and a live namespace.

Captured files (tests/data/sockdiag_*.bin, Linux 6.18, x86-64, little-endian) were written by
`python3 tests/support/diag_scenario.py capture` as root: it builds the Scenario below in a scratch
namespace (`ip netns add`), creates a sock_diag socket inside, sends one request per file with
a fixed sequence number and writes every reply datagram, byte for byte, until NLMSG_DONE (or
NLMSG_ERROR). sockdiag_capture.json records what the capture knew without parsing a reply:
the fstat() inode of every socket it held, the unix directory, each file's sequence number and
how many datagrams the kernel sent. The expectations below come from that record and from what
each socket was made to do, not from running the parser.

The kernel tier (tests/kernel/test_netlink_live.py) builds the same Scenario in a fresh namespace and compare dump_namespace()
with nsnet.netparse over the namespace's /proc/thread-self/net/* files opened inside it. The
differences the kernel causes are asserted exactly (see nsnet/sockdiag.py's docstring):
unix_diag skips the not-yet-accepted unix socket (inode 0), a TCP request socket has uid 0 in
sock_diag but its listener's uid in /proc, and raw sockets are missing when the kernel has no
raw_diag (this one: CONFIG_INET_RAW_DIAG is not set).
"""
from __future__ import annotations

import collections
import errno
import json
import socket
import struct
import sys

import pytest

from diag_scenario import DATA, NLMSGHDR, expected_rows, frames, row, rows
from nsnet import netparse
from nsnet.sockdiag import (
    ALL, TCPF, TCPF_BOUND_INACTIVE, UNHELD, build_inet_request,
    build_tcp_legacy_request, build_unix_request, parse_dump, unix_name,
)

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="captures were taken on a little-endian host")


# ============================================================== pure codec tests

def test_inet_request_layout() -> None:
    req = build_inet_request(socket.AF_INET6, socket.IPPROTO_UDP, 0x82, seq=77)
    assert len(req) == 16 + 56                      # nlmsghdr + inet_diag_req_v2
    assert NLMSGHDR.unpack_from(req) == (72, 20, 0x301, 77, 0)   # SOCK_DIAG_BY_FAMILY, DUMP
    assert req[16:20] == bytes([socket.AF_INET6, socket.IPPROTO_UDP, 0, 0])
    assert struct.unpack_from("=I", req, 20) == (0x82,)
    assert req[24:] == bytes(48)                    # the socket id: match anything
    raw = build_inet_request(socket.AF_INET, 255, seq=1, raw_protocol=1)
    assert raw[16:20] == bytes([socket.AF_INET, 255, 0, 1])      # sdiag_raw_protocol in pad
    mptcp = build_inet_request(socket.AF_INET, 262, seq=1)      # does not fit a byte
    assert len(mptcp) == 80 and NLMSGHDR.unpack_from(mptcp)[0] == 80
    assert mptcp[17] == 0 and struct.unpack_from("=HHI", mptcp, 72) == (8, 3, 262)


def test_legacy_and_unix_request_layout() -> None:
    req = build_tcp_legacy_request(TCPF["LISTEN"], seq=5)
    assert len(req) == 16 + 60                      # nlmsghdr + struct inet_diag_req
    assert NLMSGHDR.unpack_from(req) == (76, 18, 0x301, 5, 0)    # TCPDIAG_GETSOCK
    assert struct.unpack_from("=II", req, 16 + 4 + 48) == (1 << 10, 0)
    req = build_unix_request(seq=9)
    assert len(req) == 16 + 24
    assert NLMSGHDR.unpack_from(req) == (40, 20, 0x301, 9, 0)
    assert struct.unpack_from("=BBHIII", req, 16) == (socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, 1)


def test_state_masks() -> None:
    assert ALL & TCPF_BOUND_INACTIVE == 0           # /proc never lists those
    assert all(ALL & TCPF[n] for n in netparse.TCP_STATES.values() if n != "BOUND_INACTIVE")
    assert UNHELD == (1 << 6) | (1 << 3) | (1 << 12)


def test_unix_name_as_proc_prints_it() -> None:
    assert unix_name(b"/run/x.sock\0") == "/run/x.sock"
    assert unix_name(b"\0nsnt\0abs\0") == "@nsnt@abs@"
    assert unix_name(b"\0") == "@"
    # a non-UTF-8 byte decodes as netparse decodes the same bytes from /proc/net/unix
    line = (b"Num       RefCount Protocol Flags    Type St Inode Path\n"
            b"0000000000000000: 00000002 00000000 00010000 0001 01 12345 /tmp/caf\xe9.sock\n")
    assert unix_name(b"/tmp/caf\xe9.sock\0") == \
        netparse.parse_net_file("unix", line).sockets[0].local_addr


# ---------------------------------------------------------------- captured replies

CAPTURED = ("tcp_legacy", "tcp4", "tcp6", "udp4", "udp6", "unix")
PROTO_OF = {"tcp_legacy": "tcp", "tcp4": "tcp", "tcp6": "tcp", "udp4": "udp", "udp6": "udp",
            "unix": "unix", "raw_enoent": "raw"}


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((DATA / "sockdiag_capture.json").read_text())


def captured(name: str) -> bytes:
    return (DATA / f"sockdiag_{name}.bin").read_bytes()


@little_endian_only
@pytest.mark.parametrize("name", CAPTURED)
def test_captured_reply_exact(name: str, record: dict) -> None:
    parsed = parse_dump(captured(name), PROTO_OF[name], record["seq"][name])
    expected = expected_rows(record["inodes"], record["unix_dir"])[name]
    assert rows(parsed.sockets) == collections.Counter(expected)
    assert len(parsed.sockets) == len(expected)
    assert (parsed.malformed, parsed.done, parsed.error, parsed.stale, parsed.interrupted) == \
        (0, True, 0, 0, False)


def test_captures_end_with_one_done(record: dict) -> None:
    # A dump that found sockets sends them, and NLMSG_DONE only on the next round: the
    # reader must go on receiving after the first datagram.
    for name in CAPTURED:
        assert record["datagrams"][name] >= 2
        types = [t for _, _, t in frames(captured(name))]
        assert types[-1] == 3 and types.count(3) == 1      # one NLMSG_DONE, last


@little_endian_only
def test_legacy_request_covers_both_families(record: dict) -> None:
    legacy = parse_dump(captured("tcp_legacy"), "tcp", record["seq"]["tcp_legacy"]).sockets
    per_family = (parse_dump(captured("tcp4"), "tcp", record["seq"]["tcp4"]).sockets
                  + parse_dump(captured("tcp6"), "tcp", record["seq"]["tcp6"]).sockets)
    assert rows(legacy) == rows(per_family)
    assert {s.family for s in legacy} == {"inet", "inet6"}


def test_captured_enoent(record: dict) -> None:
    """The kernel's answer to a raw dump without raw_diag: the dump starts, finds no handler,
    and ends at once: a lone NLMSG_DONE carrying -ENOENT (not an NLMSG_ERROR)."""
    data = captured("raw_enoent")
    assert [t for _, _, t in frames(data)] == [3]
    parsed = parse_dump(data, "raw", record["seq"]["raw_enoent"])
    assert (parsed.sockets, parsed.malformed, parsed.done, parsed.error) == \
        ([], 0, True, errno.ENOENT)


@little_endian_only
def test_raw_port_fields(record: dict) -> None:
    """No raw capture exists (this kernel has no raw_diag), but raw_diag fills the same
    inet_diag_msg as udp_diag: read as raw, the local "port" is what the kernel put there (the
    protocol, for a raw socket) and the remote one is 0, as /proc/net/raw prints it."""
    parsed = parse_dump(captured("udp4"), "raw", record["seq"]["udp4"])
    assert sorted((s.proto, s.state, s.local_port, s.remote_addr, s.remote_port)
                  for s in parsed.sockets) == sorted([
        ("raw", "UNCONN", 5301, "0.0.0.0", 0), ("raw", "UNCONN", 5303, "0.0.0.0", 0),
        ("raw", "ESTABLISHED", 40010, "127.0.0.1", 0)])


@little_endian_only
@pytest.mark.parametrize("name", ["tcp_legacy", "unix"])
def test_truncated_at_every_byte(name: str, record: dict) -> None:
    """A reply cut anywhere never raises: the whole messages before the cut are decoded, a
    cut inside a message counts one malformed, and the dump is done only if DONE survived."""
    data = captured(name)
    seq = record["seq"][name]
    full = parse_dump(data, PROTO_OF[name], seq).sockets
    ends = {off + length: i for i, (off, length, _) in enumerate(frames(data))}
    whole = 0                      # messages wholly inside data[:cut]
    for cut in range(len(data)):
        parsed = parse_dump(data[:cut], PROTO_OF[name], seq)
        if cut in ends:
            whole = ends[cut] + 1
        on_boundary = cut == 0 or cut in ends
        assert parsed.malformed == (0 if on_boundary else 1), cut
        assert [row(s) for s in parsed.sockets] == [row(s) for s in full[:whole]], cut
        assert not parsed.done
    assert parse_dump(data, PROTO_OF[name], seq).done


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@little_endian_only
def test_malformed_messages_are_counted_and_skipped(record: dict) -> None:
    data = captured("tcp_legacy")
    seq = record["seq"]["tcp_legacy"]
    msgs = frames(data)
    n = len(msgs) - 1                                  # socket messages before DONE
    second = msgs[1][0]

    def check(bad: bytes, malformed: int, decoded: int, done: bool = True) -> None:
        parsed = parse_dump(bad, "tcp", seq)
        assert (parsed.malformed, len(parsed.sockets), parsed.done) == (malformed, decoded, done)

    check(data, 0, n)
    # a length that cannot be framed: nothing after it can be read
    check(_patch(data, second, "=I", 0), 1, 1, done=False)
    check(_patch(data, second, "=I", 15), 1, 1, done=False)
    check(_patch(data, second, "=I", len(data)), 1, 1, done=False)
    # framed but broken messages: skipped one by one
    check(_patch(data, second + 16, "=B", 99), 1, n - 1)          # unknown address family
    check(_patch(data, second + 17, "=B", 99), 1, n - 1)          # unknown TCP state
    check(_patch(data, second + 4, "=H", 99), 1, n - 1)           # unknown message type
    # a message shorter than inet_diag_msg, re-framed so everything after it still parses
    off, length, _ = msgs[1]
    short = data[:off] + _patch(data[off:off + 80], 0, "=I", 80) + data[off + length:]
    check(short, 1, n - 1)
    # trailing bytes too few for a header
    check(data[:msgs[-1][0]] + b"\0" * 7, 1, n, done=False)


@little_endian_only
def test_unix_attribute_errors(record: dict) -> None:
    data = captured("unix")
    seq = record["seq"]["unix"]
    msgs = frames(data)
    n = len(msgs) - 1
    # the first message that carries a UNIX_DIAG_NAME attribute
    off = next(o for o, length, _ in msgs[:-1]
               if length > 32 and struct.unpack_from("=H", data, o + 34)[0] == 0)
    bad_len = _patch(data, off + 32, "=H", 2)                     # nla_len < header
    parsed = parse_dump(bad_len, "unix", seq)
    assert (parsed.malformed, len(parsed.sockets)) == (1, n - 1)
    past_end = _patch(data, off + 32, "=H", 4000)                 # runs past the message
    parsed = parse_dump(past_end, "unix", seq)
    assert (parsed.malformed, len(parsed.sockets)) == (1, n - 1)
    bad_type = _patch(data, off + 17, "=B", 3)                    # SOCK_RAW: not a unix type
    parsed = parse_dump(bad_type, "unix", seq)
    assert (parsed.malformed, len(parsed.sockets)) == (1, n - 1)


@little_endian_only
def test_other_requests_messages_are_stale(record: dict) -> None:
    data = captured("udp4")
    seq = record["seq"]["udp4"]
    other = parse_dump(data, "udp", seq + 1)
    assert (other.sockets, other.malformed, other.done) == ([], 0, False)
    assert other.stale == len(frames(data)) and other.stale_done
    assert len(parse_dump(data, "udp", None).sockets) == len(frames(data)) - 1


def test_control_messages() -> None:
    done_err = NLMSGHDR.pack(20, 3, 2, 1, 0) + struct.pack("=i", -errno.EINTR)
    parsed = parse_dump(done_err, "tcp", 1)
    assert (parsed.done, parsed.error, parsed.malformed) == (True, errno.EINTR, 0)
    short_err = NLMSGHDR.pack(16, 2, 0, 1, 0)                     # NLMSG_ERROR without errno
    parsed = parse_dump(short_err, "tcp", 1)
    assert (parsed.done, parsed.error, parsed.malformed) == (True, errno.EBADMSG, 1)
    positive = NLMSGHDR.pack(20, 2, 0, 1, 0) + struct.pack("=i", 5)
    parsed = parse_dump(positive, "tcp", 1)
    assert (parsed.done, parsed.error, parsed.malformed) == (True, 0, 1)
    noop = NLMSGHDR.pack(16, 1, 0, 1, 0)
    parsed = parse_dump(noop + done_err, "tcp", 1)
    assert (parsed.done, parsed.malformed) == (True, 0)


@little_endian_only
def test_dump_interrupted_flag(record: dict) -> None:
    data = captured("udp4")
    parsed = parse_dump(_patch(data, 6, "=H", 0x12), "udp", record["seq"]["udp4"])
    assert parsed.interrupted and parsed.malformed == 0
