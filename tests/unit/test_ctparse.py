"""nsnet.ctparse: the connection-tracking parsers on captured tables, and on broken input.

The captures (Linux 6.18, x86-64, little-endian) were written by
`.venv/bin/python tests/support/conntrack_capture.py capture` as root: a client namespace (a
pod) routed through a node namespace that DNATs Service VIPs with iptables/ip6tables (nat
PREROUTING and OUTPUT, kube-proxy's shape) to a backend namespace; TCP and UDP, IPv4 and IPv6,
one UDP Service whose backend never answers ([UNREPLIED]), one connection without any NAT and
one only MASQUERADEd (source NAT). conntrack_proc_nf_conntrack.txt is the node namespace's
/proc/<pid>/net/nf_conntrack, conntrack_ctnetlink.bin one ctnetlink dump made inside it (the
datagrams as received, concatenated). conntrack_capture.json holds what the capture knew
without these parsers: `conntrack -L -o extended` (the oracle) and what it lists with a
translated destination, and every client socket as getsockname()/getpeername() gave it,
with the backend its connection was sent to.
"""
from __future__ import annotations

import errno
import json
import socket
import struct
import sys

import pytest
from conntrack_capture import DATA, MASQ_PORT, VIP4, VIP6

from nsnet.ctparse import (
    CT_GET,
    IPS_DST_NAT,
    NETLINK_NETFILTER,
    Translations,
    build_ctnetlink_dump_request,
    describe_error,
    parse_ctnetlink,
    parse_proc_conntrack,
)

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="the ctnetlink capture was taken on a little-endian host")

RECORD = json.loads((DATA / "conntrack_capture.json").read_text())
PROC_TEXT = (DATA / "conntrack_proc_nf_conntrack.txt").read_bytes()
DUMP = (DATA / "conntrack_ctnetlink.bin").read_bytes()
SEQ = RECORD["ctnetlink_seq"]
TRANSLATED = {tuple(row[:5]): tuple(row[5:]) for row in RECORD["translated"]}
CLIENTS = {tuple(row[:5]): (tuple(row[5:]) if row[5] is not None else None)
           for row in RECORD["client_sockets"]}
NLMSGHDR = struct.Struct("=IHHII")


def messages(data: bytes) -> list[bytes]:
    """The capture's netlink messages, one each."""
    out, off = [], 0
    while off < len(data):
        length = NLMSGHDR.unpack_from(data, off)[0]
        out.append(data[off:off + length])
        off += (length + 3) & ~3
    return out


# ------------------------------------------------------------------ the captured tables

def test_capture_has_every_case():
    """The scenario's cases are in the record: IPv4 and IPv6, TCP and UDP translations, an
    [UNREPLIED] one, an untranslated and a source-NAT-only connection."""
    assert {(k[0], ":" in k[1]) for k in TRANSLATED} == \
        {("tcp", False), ("tcp", True), ("udp", False), ("udp", True)}
    assert any("[UNREPLIED]" in line and "dport=54 " in line for line in RECORD["oracle"])
    untranslated = [k for k, backend in CLIENTS.items() if backend is None]
    assert {k[4] for k in untranslated} >= {7070, MASQ_PORT}
    assert len(RECORD["oracle"]) == RECORD["entries"] == PROC_TEXT.count(b"\n")


def test_proc_text_gives_what_conntrack_lists():
    got = parse_proc_conntrack(PROC_TEXT)
    assert dict(got) == TRANSLATED
    assert got.seen == RECORD["entries"] and got.malformed == 0 and got.error == 0


@little_endian_only
def test_ctnetlink_dump_gives_what_conntrack_lists():
    got = parse_ctnetlink(DUMP, SEQ)
    assert dict(got) == TRANSLATED
    assert got.seen == RECORD["entries"] and got.malformed == 0 and got.error == 0


@little_endian_only
@pytest.mark.parametrize("parse", [lambda: parse_proc_conntrack(PROC_TEXT),
                                   lambda: parse_ctnetlink(DUMP, SEQ)], ids=["proc", "ctnetlink"])
def test_client_sockets_find_their_backend(parse):
    """Keyed as the client socket sees its connection, in nsnet's address format (IPv6
    compressed, as getsockname gives it): every socket sent to a VIP finds the backend it was
    sent to, the untranslated and the MASQUERADEd ones find nothing."""
    got: Translations = parse()
    for key, backend in CLIENTS.items():
        assert got.backend(*key) == backend, key
    assert all(key[3] in (VIP4, VIP6) for key in got)


def test_unreplied_entry_names_its_backend():
    """NAT alters the reply tuple at the first packet: a Service whose backend never answered
    already names it."""
    unreplied = [line for line in PROC_TEXT.splitlines() if b"[UNREPLIED]" in line]
    got = parse_proc_conntrack(b"\n".join(unreplied) + b"\n")
    assert len(got) == len(unreplied) >= 2
    assert {key[4] for key in got} == {54} and {b[1] for b in got.values()} == {5454}


def test_masquerade_is_not_a_destination_translation():
    masq = [line for line in PROC_TEXT.splitlines() if b"dport=%d " % MASQ_PORT in line]
    assert len(masq) == 2       # IPv4 and IPv6: the reply's destination is the node's
    got = parse_proc_conntrack(b"\n".join(masq) + b"\n")
    assert dict(got) == {} and got.seen == 2 and got.malformed == 0


# ------------------------------------------------------------------ the proc text, by hand

TCP_LINE = (b"ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.1 dst=10.96.0.99 sport=56656 "
            b"dport=80 src=10.1.0.2 dst=10.1.0.1 sport=8080 dport=56656 [ASSURED] mark=0 "
            b"zone=0 use=2\n")
KEY = ("tcp", "10.1.0.1", 56656, "10.96.0.99", 80)


def test_the_briefs_line():
    got = parse_proc_conntrack(TCP_LINE)
    assert dict(got) == {KEY: ("10.1.0.2", 8080)}


@pytest.mark.parametrize("line, key, backend", [
    # port only (the same address): still a translation of the destination
    (b"ipv4     2 udp      17 29 src=10.1.0.1 dst=10.1.0.9 sport=5000 dport=53 src=10.1.0.9 "
     b"dst=10.1.0.1 sport=5353 dport=5000 mark=0 use=1\n",
     ("udp", "10.1.0.1", 5000, "10.1.0.9", 53), ("10.1.0.9", 5353)),
    # IPv6 as %pI6 prints it, compressed as nsnet does; zone-orig, accounting between tuples
    (b"ipv6     10 tcp      6 117 SYN_SENT2 src=fd00:0000:0000:0000:0000:0000:0000:0001 "
     b"dst=fd00:0096:0000:0000:0000:0000:0000:0010 sport=40000 dport=443 zone-orig=4 "
     b"packets=1 bytes=80 [UNREPLIED] src=fd00:00c7:0002:0000:0000:0000:0000:0002 "
     b"dst=fd00:0000:0000:0000:0000:0000:0000:0001 sport=8443 dport=40000 packets=0 bytes=0 "
     b"mark=7 secctx=system_u:object_r:unlabeled_t:s0 zone=0 delta-time=12 use=1\n",
     ("tcp", "fd00::1", 40000, "fd00:96::10", 443), ("fd00:c7:2::2", 8443)),
    # IPv4-mapped IPv6 shown as IPv4, as nsnet shows a socket's address
    (b"ipv6     10 udp      17 29 src=0000:0000:0000:0000:0000:ffff:0a01:0001 "
     b"dst=0000:0000:0000:0000:0000:ffff:0a60:0001 sport=1 dport=2 "
     b"src=0000:0000:0000:0000:0000:ffff:0a01:0002 dst=0000:0000:0000:0000:0000:ffff:0a01:0001 "
     b"sport=3 dport=1 mark=0 use=1\n",
     ("udp", "10.1.0.1", 1, "10.96.0.1", 2), ("10.1.0.2", 3)),
    # an offloaded flow has no timeout; sctp, dccp, udplite are nsnet's names too
    (b"ipv4     2 sctp     132 ESTABLISHED src=10.0.0.1 dst=10.96.0.5 sport=9 dport=38412 "
     b"src=10.0.0.7 dst=10.0.0.1 sport=38413 dport=9 [OFFLOAD] mark=0 use=2\n",
     ("sctp", "10.0.0.1", 9, "10.96.0.5", 38412), ("10.0.0.7", 38413)),
    (b"ipv4     2 dccp     33 3599 OPEN src=10.0.0.1 dst=10.96.0.5 sport=9 dport=5004 "
     b"src=10.0.0.7 dst=10.0.0.1 sport=5005 dport=9 mark=0 use=2\n",
     ("dccp", "10.0.0.1", 9, "10.96.0.5", 5004), ("10.0.0.7", 5005)),
    (b"ipv4     2 udplite  136 29 src=10.0.0.1 dst=10.96.0.5 sport=9 dport=7 "
     b"src=10.0.0.7 dst=10.0.0.1 sport=8 dport=9 mark=0 use=2\n",
     ("udplite", "10.0.0.1", 9, "10.96.0.5", 7), ("10.0.0.7", 8)),
])
def test_kernel_line_shapes(line, key, backend):
    got = parse_proc_conntrack(line)
    assert dict(got) == {key: backend} and got.malformed == 0


@pytest.mark.parametrize("line", [
    # no translation; SNAT only; no ports (icmp, gre): entries, not translations
    b"ipv4     2 tcp      6 10 TIME_WAIT src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 "
    b"dst=10.0.0.1 sport=2 dport=1 [ASSURED] mark=0 use=1\n",
    b"ipv4     2 tcp      6 10 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 "
    b"src=10.0.0.2 dst=192.168.0.1 sport=2 dport=61000 [ASSURED] mark=0 use=1\n",
    b"ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.96.0.1 type=8 code=0 id=7 src=10.0.0.9 "
    b"dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1\n",
    b"ipv4     2 gre      47 179 src=10.0.0.1 dst=10.96.0.1 srckey=0x0 dstkey=0x0 "
    b"src=10.0.0.9 dst=10.0.0.1 srckey=0x0 dstkey=0x0 mark=0 use=1\n",
])
def test_entries_without_a_destination_translation(line):
    got = parse_proc_conntrack(line)
    assert dict(got) == {} and got.seen == 1 and got.malformed == 0


@pytest.mark.parametrize("bad", [
    b"garbage\n",
    b"ipv4 2 tcp\n",
    TCP_LINE[:60] + b"\n",                          # cut in the original tuple
    TCP_LINE[:120] + b"\n",                         # cut in the reply tuple
    TCP_LINE.replace(b"sport=8080", b"sport=99999"),
    TCP_LINE.replace(b"src=10.1.0.2", b"src=10.1.0.256"),
    TCP_LINE.replace(b"dst=10.96.0.99", b"dst=fd00::zz"),
    b"\xff\xfe\x00binary\x00\n",
])
def test_malformed_lines_are_counted(bad):
    data = TCP_LINE + bad + TCP_LINE.replace(b"56656", b"56657")
    got = parse_proc_conntrack(data)
    assert got.malformed == 1 and got.seen == 3
    assert set(got) == {KEY, KEY[:2] + (56657,) + KEY[3:]}


def test_truncated_last_line():
    """A read cut short ends without a newline: that line counts as malformed, even when
    what is there would parse."""
    for cut in (len(TCP_LINE) - 1, 100, 30):
        got = parse_proc_conntrack(TCP_LINE + TCP_LINE[:cut])
        assert dict(got) == {KEY: ("10.1.0.2", 8080)} and got.malformed == 1 and got.seen == 1


def test_every_cut_of_the_capture():
    """Each prefix of the capture: never raises, never invents a translation, and counts
    a cut last line."""
    for n in range(len(PROC_TEXT) + 1):
        got = parse_proc_conntrack(PROC_TEXT[:n])
        assert set(got.items()) <= set(TRANSLATED.items())
        assert got.malformed == (0 if n == 0 or PROC_TEXT[n - 1:n] == b"\n" else 1)


def test_empty_table():
    for data in (b"", b"\n", bytearray()):
        got = parse_proc_conntrack(data)
        assert dict(got) == {} and got.malformed == 0


# ------------------------------------------------------------------ ctnetlink

def test_dump_request():
    req = build_ctnetlink_dump_request(42)
    assert NETLINK_NETFILTER == 12 and CT_GET == 0x0101
    assert struct.unpack("=IHHII", req[:16]) == (20, 0x0101, 0x0301, 42, 0)
    assert req[16:] == b"\0\0\0\0"       # AF_UNSPEC, version 0, res_id 0
    assert build_ctnetlink_dump_request(1, socket.AF_INET6)[16] == socket.AF_INET6
    # the kernel-side filter: CTA_STATUS and CTA_STATUS_MASK (26), both IPS_DST_NAT
    dnat = build_ctnetlink_dump_request(42, dnat_only=True)
    assert struct.unpack("=IHHII", dnat[:16]) == (36, 0x0101, 0x0301, 42, 0)
    assert dnat[20:] == struct.pack("=HH", 8, 3) + struct.pack(">I", IPS_DST_NAT) + \
        struct.pack("=HH", 8, 26) + struct.pack(">I", IPS_DST_NAT)


@little_endian_only
def test_every_cut_of_the_dump():
    """A dump cut anywhere (a lost datagram, a short capture): counted, never raised, and
    what came before the cut stands."""
    for n in range(len(DUMP)):
        got = parse_ctnetlink(DUMP[:n], SEQ)
        assert got.malformed >= 1
        assert set(got.items()) <= set(TRANSLATED.items())


@little_endian_only
def test_another_sequence_is_not_ours():
    got = parse_ctnetlink(DUMP, SEQ + 1)
    assert dict(got) == {} and got.seen == 0
    assert got.malformed == 1       # our request's NLMSG_DONE never came


def _error(code: int, seq: int = SEQ) -> bytes:
    """NLMSG_ERROR: nlmsgerr, the errno then the request's header."""
    return NLMSGHDR.pack(36, 2, 0, seq, 0) + struct.pack("=i", code) + \
        build_ctnetlink_dump_request(seq)[:16]


def test_nlmsg_error_is_said():
    got = parse_ctnetlink(_error(-errno.EPERM), SEQ)
    assert got.error == errno.EPERM and got.malformed == 0 and dict(got) == {}
    assert describe_error(got.error) == "ctnetlink answered EPERM (Operation not permitted)"


def test_error_too_short_for_its_errno():
    got = parse_ctnetlink(NLMSGHDR.pack(18, 2, 0, SEQ, 0) + b"\0\0", SEQ)
    assert got.error == errno.EBADMSG and got.malformed == 1


def test_done_carrying_an_errno():
    done = NLMSGHDR.pack(20, 3, 2, SEQ, 0) + struct.pack("=i", -errno.ENOMEM)
    got = parse_ctnetlink(done, SEQ)
    assert got.error == errno.ENOMEM and got.malformed == 0


def test_garbage():
    for data in (b"", b"\x01", b"\xff" * 40, NLMSGHDR.pack(8, 0x100, 0, SEQ, 0)):
        got = parse_ctnetlink(data, SEQ)
        assert got.malformed >= 1 and dict(got) == {}


def _attr_offsets(msg: bytes, start: int = 20, stop: int | None = None,
                  depth: int = 0) -> list[tuple[int, int, int]]:
    """(offset, type, depth) of each attribute the parser reads: the entry's up to CTA_STATUS
    (type 3: after it, nothing is read), and those nested in its two tuples (CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY: types 1 and 2 at the top)."""
    stop = len(msg) if stop is None else stop
    out = []
    while start + 4 <= stop:
        nla_len, nla_type = struct.unpack_from("=HH", msg, start)
        out.append((start, nla_type & 0x3FFF, depth))
        if nla_type & 0x8000 and (depth > 0 or nla_type & 0x3FFF in (1, 2)):
            out += _attr_offsets(msg, start + 4, start + nla_len, depth + 1)
        if depth == 0 and nla_type & 0x3FFF == 3:
            break
        start += (nla_len + 3) & ~3
    return out


def _translated_messages() -> list[bytes]:
    """The capture's entries whose status has IPS_DST_NAT."""
    found = []
    for msg in messages(DUMP):
        for off, kind, depth in _attr_offsets(msg):
            if kind == 3 and depth == 0 and struct.unpack_from(">I", msg, off + 4)[0] & IPS_DST_NAT:
                found.append(msg)
    return found


@little_endian_only
def test_bad_attribute_lengths_are_counted():
    """Each attribute of a translated entry in turn given a length past its parent, or
    below a header's: that entry is malformed, the others of the dump stand."""
    msgs = messages(DUMP)
    victim = _translated_messages()[0]
    others = dict(parse_ctnetlink(b"".join(m for m in msgs if m != victim), SEQ))
    for off, _kind, _depth in _attr_offsets(victim):
        for length in (2, 0xFFF0):
            bent = bytearray(victim)
            struct.pack_into("=H", bent, off, length)
            data = b"".join(bytes(bent) if m == victim else m for m in msgs)
            got = parse_ctnetlink(data, SEQ)
            assert got.malformed == 1, (off, length)
            assert dict(got) == others
            assert got.seen == RECORD["entries"]


@little_endian_only
def test_short_members_are_counted():
    """Each value the parser reads (the status; in the tuples, the addresses, the protocol
    number, the ports) one byte shorter than its type: that entry is malformed."""
    victim = _translated_messages()[0]
    done = messages(DUMP)[-1]
    read = [(off, kind) for off, kind, depth in _attr_offsets(victim)
            if (depth == 0 and kind == 3) or depth == 2]
    assert len(read) == 11      # status; per tuple: 2 addresses, protocol number, 2 ports
    for off, kind in read:
        bent = bytearray(victim)
        struct.pack_into("=H", bent, off, struct.unpack_from("=H", victim, off)[0] - 1)
        got = parse_ctnetlink(bytes(bent) + done, SEQ)
        assert got.malformed == 1 and dict(got) == {} and got.seen == 1, (off, kind)


@little_endian_only
def test_the_general_walk_agrees(monkeypatch):
    """The tuples are read at the kernel's fixed offsets when their headers say so; the
    attribute walk that reads any layout gives the same."""
    from nsnet import ctparse

    monkeypatch.setattr(ctparse, "_fixed_tuple", lambda buf, start, stop: None)
    got = parse_ctnetlink(DUMP, SEQ)
    assert dict(got) == TRANSLATED and got.malformed == 0


def test_an_entry_without_its_tuples():
    msg = NLMSGHDR.pack(28, 0x100, 2, SEQ, 0) + b"\2\0\0\0" + struct.pack("=HHI", 8, 3, 0)
    done = NLMSGHDR.pack(20, 3, 2, SEQ, 0) + b"\0\0\0\0"
    got = parse_ctnetlink(msg + done, SEQ)
    assert got.seen == 1 and got.malformed == 1
