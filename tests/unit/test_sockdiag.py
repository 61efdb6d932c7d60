"""nsnet.sockdiag: the NETLINK_SOCK_DIAG codec on captured replies, and a live namespace.

Captured files (tests/data/sockdiag_*.bin, Linux 6.18, x86-64, little-endian) were written by
`python3 tests/test_sockdiag.py capture` as root: it builds the Scenario below in a scratch
namespace (`ip netns add`), creates a sock_diag socket inside, sends one request per file with
a fixed sequence number and writes every reply datagram, byte for byte, until NLMSG_DONE (or
NLMSG_ERROR). sockdiag_capture.json records what the capture knew without parsing a reply:
the fstat() inode of every socket it held, the unix directory, each file's sequence number and
how many datagrams the kernel sent. The expectations below come from that record and from what
each socket was made to do, not from running the parser.

The live tests build the same Scenario in a fresh namespace and compare dump_namespace()
with nsnet.netparse over the namespace's /proc/thread-self/net/* files opened inside it. The
differences the kernel causes are asserted exactly (see nsnet/sockdiag.py's docstring):
unix_diag skips the not-yet-accepted unix socket (inode 0), a TCP request socket has uid 0 in
sock_diag but its listener's uid in /proc, and raw sockets are missing when the kernel has no
raw_diag (this one: CONFIG_INET_RAW_DIAG is not set).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
import pytest

if __name__ == "__main__":      # `python3 tests/test_sockdiag.py capture` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nsnet import netparse, sockdiag  # noqa: E402
from nsnet.sources import netlink  # noqa: E402
from nsnet.sockdiag import (  # noqa: E402
    ALL, ANY_STATE as ANY, TCPF, TCPF_BOUND_INACTIVE, UNHELD, build_inet_request,
    build_tcp_legacy_request, build_unix_request, parse_dump, unix_name,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TENANT = 12345           # some sockets are created with this effective uid
V6 = "fd7d::1"           # an extra IPv6 address on lo
ABSTRACT = b"\0nsnt-diag\0tail"

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="captures were taken on a little-endian host")


# ============================================================== the scenario (live + capture)

@contextlib.contextmanager
def effective_uid(uid: int):
    """Sockets record the creator's fsuid: create some as another user (root can come back)."""
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


def _proc_rows(names=netparse.NET_FILES) -> list[netparse.Socket]:
    out = []
    for name in names:
        with open(f"/proc/thread-self/net/{name}", "rb") as f:
            out.extend(netparse.parse_net_file(name, f.read()).sockets)
    return out


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Scenario:
    """Known sockets, built inside the current thread's (scratch) namespace.

    inodes maps a name to the fstat() inode of a socket this process holds; the expected
    rows below refer to those names (None: no process holds it, inode 0).
    """
    unix_dir: str
    inodes: dict[str, int] = field(default_factory=dict)
    keep: list[socket.socket] = field(default_factory=list)

    def hold(self, name: str, sock: socket.socket) -> socket.socket:
        self.keep.append(sock)
        self.inodes[name] = os.fstat(sock.fileno()).st_ino
        return sock

    def close(self) -> None:
        for s in self.keep:
            s.close()
        self.keep.clear()

    def tcp_listener(self, name, family, addr, port, *, v6only=None, defer=False):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if defer:   # the handshake's last ACK is dropped: the request socket stays SYN_RECV
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 60)
        s.bind((addr, port))
        s.listen(16)
        return self.hold(name, s)

    def tcp_client(self, name, family, local, remote):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(local)
        c.connect(remote)
        return self.hold(name, c)

    def build(self) -> None:
        INET, INET6 = socket.AF_INET, socket.AF_INET6
        # --- TCP
        l4 = self.tcp_listener("l4", INET, "127.0.0.1", 7001)
        with effective_uid(TENANT):
            self.tcp_listener("lt", INET, "0.0.0.0", 7002)
            self.tcp_listener("ldefer", INET, "127.0.0.1", 7005, defer=True)
        l6 = self.tcp_listener("l6", INET6, V6, 7003, v6only=True)
        ld = self.tcp_listener("ldual", INET6, "::", 7004, v6only=False)
        self.tcp_client("c4", INET, ("127.0.0.1", 40001), ("127.0.0.1", 7001))
        self.hold("c4.acc", l4.accept()[0])
        self.tcp_client("c6", INET6, ("::1", 40002), (V6, 7003))
        self.hold("c6.acc", l6.accept()[0])
        self.tcp_client("cmap", INET, ("127.0.0.1", 40003), ("127.0.0.1", 7004))
        self.hold("cmap.acc", ld.accept()[0])          # ::ffff:127.0.0.1 on both ends
        self.tcp_client("cdefer", INET, ("127.0.0.1", 40006), ("127.0.0.1", 7005))
        # connected to lt, never accepted
        self.tcp_client("cqueued", INET, ("127.0.0.1", 40007), ("127.0.0.1", 7002))
        half = self.tcp_client("chalf", INET, ("127.0.0.1", 40009), ("127.0.0.1", 7001))
        self.hold("chalf.acc", l4.accept()[0])
        half.shutdown(socket.SHUT_WR)                  # FIN_WAIT2 here, CLOSE_WAIT there
        for family, local, remote, listener in (
                (INET, ("127.0.0.1", 40004), ("127.0.0.1", 7001), l4),
                (INET6, ("::1", 40005), (V6, 7003), l6)):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.bind(local)
            c.connect(remote)
            a = listener.accept()[0]
            c.close()                                  # the client closes first ...
            assert a.recv(1) == b""
            a.close()                                  # ... so it ends in TIME_WAIT
        synsent = socket.socket(INET, socket.SOCK_STREAM)
        synsent.bind(("10.254.0.1", 40008))
        synsent.setblocking(False)
        assert synsent.connect_ex(("10.254.255.1", 9)) == errno.EINPROGRESS   # nobody answers ARP
        self.hold("csynsent", synsent)
        self.hold("bound", socket.socket(INET, socket.SOCK_STREAM)).bind(("127.0.0.1", 7006))
        # --- UDP
        u4 = self.hold("u4", socket.socket(INET, socket.SOCK_DGRAM))
        u4.bind(("127.0.0.1", 5301))
        u6 = self.hold("u6dual", socket.socket(INET6, socket.SOCK_DGRAM))
        u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u6.bind(("::", 5302))
        uc4 = self.hold("uc4", socket.socket(INET, socket.SOCK_DGRAM))
        uc4.bind(("127.0.0.1", 40010))
        uc4.connect(("127.0.0.1", 5301))
        uc6 = self.hold("uc6", socket.socket(INET6, socket.SOCK_DGRAM))
        uc6.bind(("::1", 40011))
        uc6.connect(("::1", 5302))
        ucm = self.hold("ucmap", socket.socket(INET6, socket.SOCK_DGRAM))
        ucm.bind(("::", 40012))
        ucm.connect(("::ffff:127.0.0.1", 5301))
        with effective_uid(TENANT):
            self.hold("ut", socket.socket(INET, socket.SOCK_DGRAM)).bind(("0.0.0.0", 5303))
        # --- raw (the port columns hold the protocol)
        self.hold("r4", socket.socket(INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        self.hold("r6", socket.socket(INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
        # --- unix
        d = self.unix_dir
        srv = self.hold("us", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        srv.bind(f"{d}/srv.sock")
        srv.listen(8)
        self.hold("ua", socket.socket(socket.AF_UNIX)).connect(f"{d}/srv.sock")
        self.hold("ua.acc", srv.accept()[0])
        self.hold("ue", socket.socket(socket.AF_UNIX)).connect(f"{d}/srv.sock")  # not accepted
        ab = self.hold("uabs", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        ab.bind(ABSTRACT)
        ab.listen(1)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.hold("upair.a", a)
        self.hold("upair.b", b)
        dg = self.hold("udg", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        dg.bind(f"{d}/dgram.sock")
        self.hold("udgc", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)).connect(
            f"{d}/dgram.sock")
        self.hold("udgu", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sq = self.hold("useq", socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        sq.bind(f"{d}/seq.sock")
        sq.listen(1)
        # --- settle: the closes above end in TIME_WAIT, nothing still in flight
        def settled():
            states = collections.Counter(s.state for s in _proc_rows(("tcp", "tcp6")))
            return states["TIME_WAIT"] == 2 and states["SYN_RECV"] == 1 and \
                not (states["LAST_ACK"] or states["FIN_WAIT1"] or states["CLOSING"])
        _wait_for(settled, "two TIME_WAIT sockets and one SYN_RECV request")


def make_namespace(name: str) -> str:
    """ip netns add NAME with lo up, V6 on lo, and a veth pair whose two ends both stay
    inside (10.254.0.1/16 on one end: nothing answers there, so a connect stays SYN_SENT)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["addr", "add", f"{V6}/128", "dev", "lo", "nodad"],
                    ["link", "add", "nsntd0", "type", "veth", "peer", "name", "nsntd1"],
                    ["addr", "add", "10.254.0.1/16", "dev", "nsntd0"],
                    ["link", "set", "nsntd0", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False)
        raise
    return f"/run/netns/{name}"


def expected_rows(inodes: dict[str, int], unix_dir: str) -> dict[str, list[tuple]]:
    """What the Scenario must look like through sock_diag, per captured file:
    (proto, family, state, laddr, lport, raddr, rport, inode, uid, unix_type)."""
    def ino(name):
        return 0 if name is None else inodes[name]

    def tcp(family, rows):
        return [("tcp", family, st, la, lp, ra, rp, ino(n), uid, None)
                for st, la, lp, ra, rp, n, uid in rows]
    tcp4 = tcp("inet", [
        ("LISTEN", "127.0.0.1", 7001, "0.0.0.0", 0, "l4", 0),
        ("LISTEN", "0.0.0.0", 7002, "0.0.0.0", 0, "lt", TENANT),
        ("LISTEN", "127.0.0.1", 7005, "0.0.0.0", 0, "ldefer", TENANT),
        ("ESTABLISHED", "127.0.0.1", 40001, "127.0.0.1", 7001, "c4", 0),
        ("ESTABLISHED", "127.0.0.1", 7001, "127.0.0.1", 40001, "c4.acc", 0),
        ("ESTABLISHED", "127.0.0.1", 40003, "127.0.0.1", 7004, "cmap", 0),
        ("ESTABLISHED", "127.0.0.1", 40006, "127.0.0.1", 7005, "cdefer", 0),
        # sock_diag reports a request socket with uid 0 (/proc: its listener's, TENANT)
        ("SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, None, 0),
        ("ESTABLISHED", "127.0.0.1", 40007, "127.0.0.1", 7002, "cqueued", 0),
        ("ESTABLISHED", "127.0.0.1", 7002, "127.0.0.1", 40007, None, TENANT),  # not accepted
        ("FIN_WAIT2", "127.0.0.1", 40009, "127.0.0.1", 7001, "chalf", 0),
        ("CLOSE_WAIT", "127.0.0.1", 7001, "127.0.0.1", 40009, "chalf.acc", 0),
        ("TIME_WAIT", "127.0.0.1", 40004, "127.0.0.1", 7001, None, 0),
        ("SYN_SENT", "10.254.0.1", 40008, "10.254.255.1", 9, "csynsent", 0),
    ])
    tcp6 = tcp("inet6", [
        ("LISTEN", V6, 7003, "::", 0, "l6", 0),
        ("LISTEN", "::", 7004, "::", 0, "ldual", 0),
        ("ESTABLISHED", "::1", 40002, V6, 7003, "c6", 0),
        ("ESTABLISHED", V6, 7003, "::1", 40002, "c6.acc", 0),
        ("ESTABLISHED", "127.0.0.1", 7004, "127.0.0.1", 40003, "cmap.acc", 0),  # mapped
        ("TIME_WAIT", "::1", 40005, V6, 7003, None, 0),
    ])

    def dgram(proto, family, rows):
        return [(proto, family, st, la, lp, ra, rp, ino(n), uid, None)
                for st, la, lp, ra, rp, n, uid in rows]
    udp4 = dgram("udp", "inet", [
        ("UNCONN", "127.0.0.1", 5301, "0.0.0.0", 0, "u4", 0),
        ("ESTABLISHED", "127.0.0.1", 40010, "127.0.0.1", 5301, "uc4", 0),
        ("UNCONN", "0.0.0.0", 5303, "0.0.0.0", 0, "ut", TENANT),
    ])
    udp6 = dgram("udp", "inet6", [
        ("UNCONN", "::", 5302, "::", 0, "u6dual", 0),
        ("ESTABLISHED", "::1", 40011, "::1", 5302, "uc6", 0),
        ("ESTABLISHED", "127.0.0.1", 40012, "127.0.0.1", 5301, "ucmap", 0),    # mapped
    ])
    raw4 = dgram("raw", "inet", [("UNCONN", "0.0.0.0", 1, "0.0.0.0", 0, "r4", 0)])
    raw6 = dgram("raw", "inet6", [("UNCONN", "::", 58, "::", 0, "r6", 0)])
    d = unix_dir
    unix = [("unix", "unix", st, path, None, "", None, ino(n), None, kind)
            for st, kind, path, n in [
                ("LISTEN", "stream", f"{d}/srv.sock", "us"),
                ("ESTABLISHED", "stream", "", "ua"),
                ("ESTABLISHED", "stream", f"{d}/srv.sock", "ua.acc"),
                ("ESTABLISHED", "stream", "", "ue"),
                # (ue's peer, still in srv.sock's queue, has no inode: unix_diag skips it)
                ("LISTEN", "stream", "@nsnt-diag@tail", "uabs"),
                ("ESTABLISHED", "stream", "", "upair.a"),
                ("ESTABLISHED", "stream", "", "upair.b"),
                # connect() on a datagram socket marks both ends established (6.18)
                ("ESTABLISHED", "dgram", f"{d}/dgram.sock", "udg"),
                ("ESTABLISHED", "dgram", "", "udgc"),
                ("UNCONN", "dgram", "", "udgu"),
                ("LISTEN", "seqpacket", f"{d}/seq.sock", "useq"),
            ]]
    return {"tcp4": tcp4, "tcp6": tcp6, "tcp_legacy": tcp4 + tcp6, "udp4": udp4,
            "udp6": udp6, "raw4": raw4, "raw6": raw6, "unix": unix}


def row(s) -> tuple:
    return (s.proto, s.family, s.state, s.local_addr, s.local_port, s.remote_addr,
            s.remote_port, s.inode, s.uid, s.unix_type)


def rows(sockets) -> collections.Counter:
    return collections.Counter(row(s) for s in sockets)


# ============================================================== pure codec tests

NLMSGHDR = struct.Struct("=IHHII")


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, nlmsg_len, nlmsg_type) of each message, framed independently of the parser."""
    out, off = [], 0
    while off < len(data):
        length, mtype = NLMSGHDR.unpack_from(data, off)[:2]
        out.append((off, length, mtype))
        off += (length + 3) & ~3
    assert off == len(data)
    return out


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


# ============================================================== live namespace

@dataclass
class Live:
    path: str
    inode: int
    scenario: Scenario
    diag: socket.socket
    proc_fds: dict[str, int]

    def proc(self) -> collections.Counter:
        out = collections.Counter()
        for name, fd in self.proc_fds.items():
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            parsed = netparse.parse_net_file(name, b"".join(chunks))
            assert parsed.malformed == 0
            out.update(row(s) for s in parsed.sockets)
        return out


def _open_proc_fds() -> dict[str, int]:
    return {name: os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
            for name in netparse.NET_FILES}


@contextlib.contextmanager
def live_namespace(build: bool = True):
    from conftest import require_root

    require_root("ip")
    from nsnet.setns import run_in_namespace
    name = f"nsnt-diag-{secrets.token_hex(4)}"
    path = make_namespace(name)
    unix_dir = tempfile.mkdtemp(prefix="nsnt-diag-")
    scenario = Scenario(unix_dir)
    opened: list = []
    try:
        def inside():
            if build:
                scenario.build()
            opened.append(netlink.open_diag_socket())
            opened.append(_open_proc_fds())
        run_in_namespace(path, os.stat(path).st_ino, inside)
        yield Live(path, os.stat(path).st_ino, scenario, opened[0], opened[1])
    finally:
        if opened:
            opened[0].close()
        if len(opened) > 1:
            for fd in opened[1].values():
                os.close(fd)
        scenario.close()
        shutil.rmtree(unix_dir, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def live():
    with live_namespace() as ns:
        yield ns


def stable_compare(live: Live, **kwargs):
    """/proc, then sock_diag, then /proc again; retried while /proc changed in between."""
    for _ in range(5):
        before = live.proc()
        result = netlink.dump_namespace(live.diag, **kwargs)
        if live.proc() == before:
            return before, result
        time.sleep(0.05)
    raise AssertionError("the namespace kept changing under the comparison")


def test_dump_equals_proc(live: Live) -> None:
    proc, result = stable_compare(live)
    diag = rows(result.sockets)
    assert result.malformed == 0
    inodes = live.scenario.inodes
    d = live.scenario.unix_dir

    raw_missing = any(e.startswith("raw:") and "ENOENT" in e for e in result.errors)
    assert result.errors == ([result.errors[0]] if raw_missing else [])
    # The differences the kernel makes, and nothing else:
    proc_only = collections.Counter({
        # the not-yet-accepted server end of ue: no inode, so unix_diag skips it
        ("unix", "unix", "ESTABLISHED", f"{d}/srv.sock", None, "", None, 0, None, "stream"): 1,
        # /proc prints a request socket with its listener's uid
        ("tcp", "inet", "SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, 0, TENANT, None): 1,
    })
    diag_only = collections.Counter({
        ("tcp", "inet", "SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, 0, 0, None): 1,
    })
    if raw_missing:
        proc_only.update({
            ("raw", "inet", "UNCONN", "0.0.0.0", 1, "0.0.0.0", 0, inodes["r4"], 0, None): 1,
            ("raw", "inet6", "UNCONN", "::", 58, "::", 0, inodes["r6"], 0, None): 1,
        })
    assert proc - diag == proc_only
    assert diag - proc == diag_only

    # ... and independently of /proc: what the scenario built, exactly.
    expected = expected_rows(inodes, d)
    want = collections.Counter()
    for name in ("tcp_legacy", "udp4", "udp6", "unix") + (() if raw_missing else ("raw4", "raw6")):
        want.update(expected[name])
    assert diag == want


def test_any_thread_reads_the_namespace_it_was_opened_in(live: Live) -> None:
    here = rows(netlink.dump_namespace(live.diag).sockets)
    box = []
    t = threading.Thread(target=lambda: box.append(netlink.dump_namespace(live.diag)))
    t.start()
    t.join()
    assert rows(box[0].sockets) == here
    # a socket opened in our own namespace sees none of the scenario's sockets
    with contextlib.closing(netlink.open_diag_socket()) as home:
        mine = {s.inode for s in netlink.dump_namespace(home).sockets}
    assert not mine & set(live.scenario.inodes.values())


def test_tcp_state_filter(live: Live) -> None:
    unheld = netlink.dump_namespace(live.diag, tcp_states=UNHELD, protos=("tcp",))
    assert sorted((s.state, s.local_port, s.remote_port, s.inode) for s in unheld.sockets) == [
        ("SYN_RECV", 7005, 40006, 0), ("TIME_WAIT", 40004, 7001, 0),
        ("TIME_WAIT", 40005, 7003, 0)]
    listen = netlink.dump_namespace(live.diag, tcp_states=TCPF["LISTEN"], protos=("tcp",))
    assert sorted(s.local_port for s in listen.sockets) == [7001, 7002, 7003, 7004, 7005]
    assert unheld.errors == listen.errors == []


def test_legacy_request_equals_one_request_per_family(live: Live) -> None:
    legacy = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=True)
    per_family = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=False)
    assert legacy.errors == per_family.errors == []
    assert rows(legacy.sockets) == rows(per_family.sockets)
    assert len(legacy.sockets) == 20


def test_falls_back_when_the_kernel_refuses_the_legacy_request(live: Live, monkeypatch) -> None:
    """A kernel without TCPDIAG_GETSOCK answers like this one does for DCCPDIAG_GETSOCK (19),
    whose handler is gone: dump_namespace must then ask per family, and remember."""
    dccp = lambda states, *, seq: _patch(build_tcp_legacy_request(states, seq=seq), 4, "=H", 19)
    seq = 777
    refused = netlink.run_dump(live.diag, dccp(ALL, seq=seq), seq, "tcp")
    assert refused.error in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP) and not refused.sockets
    monkeypatch.setattr(netlink, "build_tcp_legacy_request", dccp)
    monkeypatch.setattr(netlink, "_legacy_tcp", None)
    result = netlink.dump_namespace(live.diag, protos=("tcp",))
    assert netlink._legacy_tcp is False and result.errors == []
    per_family = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=False)
    assert rows(result.sockets) == rows(per_family.sockets) and len(result.sockets) == 20


def test_bound_inactive_only_on_request(live: Live) -> None:
    # asked for with TCPF_BOUND_INACTIVE, the kernel reports them with their sk_state, CLOSE
    bound = ("tcp", "inet", "CLOSE", "127.0.0.1", 7006, "0.0.0.0", 0,
             live.scenario.inodes["bound"], 0, None)
    assert bound not in rows(netlink.dump_namespace(live.diag, protos=("tcp",)).sockets)
    asked = netlink.dump_namespace(live.diag, protos=("tcp",),
                                    tcp_states=ALL | TCPF_BOUND_INACTIVE)
    assert bound in rows(asked.sockets)
    assert all(r[6] != 7006 and r[4] != 7006 for r in live.proc())   # /proc never lists it


@pytest.fixture
def fd_room():
    """Room for ~1,500 descriptors, whatever the soft limit was."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


V4_UDP, V6_UDP, PAIRS = 1000, 100, 100


def test_many_sockets_multipart_and_an_abandoned_dump(fd_room) -> None:
    """Over a thousand sockets span several reply datagrams (each at most ~32 KiB); a dump
    abandoned after its first datagram leaves the kernel busy (EBUSY) until it is read out:
    the next request must skip its leftovers, be sent again, and still return everything."""
    with live_namespace(build=False) as ns:
        held = []

        def create():
            for i in range(V4_UDP + V6_UDP):
                v6 = i >= V4_UDP
                u = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
                held.append(u)
                u.bind(("::1" if v6 else "127.0.0.1", 20000 + i))
            for _ in range(PAIRS):
                held.extend(socket.socketpair())
        from nsnet.setns import run_in_namespace
        try:
            run_in_namespace(ns.path, ns.inode, create)
            # multi-part, counted by hand
            seq = 4242
            ns.diag.send(build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, ANY, seq=seq))
            datagrams = []
            while True:
                datagrams.append(ns.diag.recv(1 << 20))
                if parse_dump(datagrams[-1], "udp", seq).done:
                    break
            assert len(datagrams) >= 4 and max(map(len, datagrams)) <= 32768
            whole = parse_dump(b"".join(datagrams), "udp", seq)
            assert (len(whole.sockets), whole.malformed) == (V4_UDP, 0)
            # abandon a dump after its first datagram: the next request is refused (EBUSY)
            # until the old one is read out, then sent again
            def abandon(seq):
                ns.diag.send(build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, ANY, seq=seq))
                assert not parse_dump(ns.diag.recv(1 << 20), "udp", seq).done
            abandon(4243)
            parsed = netlink.run_dump(ns.diag, build_inet_request(
                socket.AF_INET6, socket.IPPROTO_UDP, ANY, seq=4244), 4244, "udp")
            assert parsed.busy_retries == 1 and parsed.stale > 100 and parsed.stale_done
            assert (parsed.error, parsed.malformed, len(parsed.sockets)) == (0, 0, V6_UDP)
            abandon(4245)
            proc, result = stable_compare(ns)
            diag = rows(result.sockets)
            proc_raw = collections.Counter({r: c for r, c in proc.items() if r[0] == "raw"})
            assert not proc_raw
            assert diag == proc and sum(diag.values()) == V4_UDP + V6_UDP + 2 * PAIRS
            assert result.malformed == 0
        finally:
            for s in held:
                s.close()


# ============================================================== capture (run by hand)

def capture() -> None:
    """Rebuild tests/data/sockdiag_*.bin and sockdiag_capture.json (as root)."""
    from nsnet.setns import run_in_namespace

    name = f"nsnt-diag-cap-{secrets.token_hex(3)}"
    path = make_namespace(name)
    unix_dir = tempfile.mkdtemp(prefix="nsnt-diag-cap-")
    scenario = Scenario(unix_dir)
    requests = {
        "tcp_legacy": build_tcp_legacy_request(ALL, seq=1001),
        "tcp4": build_inet_request(socket.AF_INET, socket.IPPROTO_TCP, ALL, seq=1002),
        "tcp6": build_inet_request(socket.AF_INET6, socket.IPPROTO_TCP, ALL, seq=1003),
        "udp4": build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, 0xFFFFFFFF, seq=1004),
        "udp6": build_inet_request(socket.AF_INET6, socket.IPPROTO_UDP, 0xFFFFFFFF, seq=1005),
        "raw_enoent": build_inet_request(socket.AF_INET, socket.IPPROTO_RAW, 0xFFFFFFFF,
                                         seq=1006, raw_protocol=socket.IPPROTO_RAW),
        "unix": build_unix_request(seq=1007),
    }
    record = {"kernel": os.uname().release, "unix_dir": unix_dir, "seq": {}, "datagrams": {}}
    try:
        diag = run_in_namespace(path, os.stat(path).st_ino,
                                lambda: (scenario.build(), netlink.open_diag_socket())[1])
        with diag:
            for key, request in requests.items():
                seq = NLMSGHDR.unpack_from(request)[3]
                diag.send(request)
                datagrams = []
                while True:
                    datagrams.append(diag.recv(1 << 20))
                    types = [t for _, _, t in frames(datagrams[-1])]
                    if 2 in types or 3 in types:
                        break
                (DATA / f"sockdiag_{key}.bin").write_bytes(b"".join(datagrams))
                record["seq"][key] = seq
                record["datagrams"][key] = len(datagrams)
        record["inodes"] = scenario.inodes
        (DATA / "sockdiag_capture.json").write_text(json.dumps(record, indent=1, sort_keys=True)
                                                    + "\n")
    finally:
        scenario.close()
        shutil.rmtree(unix_dir, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


if __name__ == "__main__":
    if sys.argv[1:] != ["capture"]:
        sys.exit("usage: python3 tests/test_sockdiag.py capture   (as root)")
    capture()
