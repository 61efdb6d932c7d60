"""Connection-tracking NAT translations: which backend a connection to a Service VIP reaches.
Pure, on bytes: /proc/<pid>/net/nf_conntrack text, ctnetlink dump requests and replies.

A conntrack entry holds two tuples: the original one (the connection as its first packet
had it: as the client socket sees it) and the reply one (what the answers carry). When a
DNAT rule rewrote the destination, the reply tuple comes from the new destination: its
source is the backend, not the VIP (nf_nat_setup_info alters the reply tuple at the first
packet, before any answer: an [UNREPLIED] entry already names its backend). Only those
entries are kept: reply source address or port different from the original destination's.
A source-only rewrite (SNAT, MASQUERADE) changes the reply's destination, never its source:
not a translation of the destination.

Keys are formatted as nsnet formats sockets (Socket.local_addr / remote_addr): IPv4 dotted
quad, IPv6 as inet_ntop compresses it, IPv4-mapped IPv6 as IPv4 (sockdiag._addr6), so that
a client socket's (proto, local, local port, remote, remote port) looks its backend up as is.
The I/O is nsnet.conntrack's. Malformed input is counted, never raised.
"""
from __future__ import annotations

import errno as _errno
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import field

from .lazyre import LazyPattern
from .records import record
from .sockdiag import (
    NLA_TYPE_MASK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    Buffer,
    _addr6,
    control_status,
)

# (proto, src_addr, src_port, dst_addr, dst_port): the connection as its client socket
# sees it (the original tuple) -> (backend_addr, backend_port) (the reply tuple's source)
Key = tuple[str, str, int, str, int]
Backend = tuple[str, int]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
# a dump's entries come as IPCTNL_MSG_CT_NEW (as events do: captured on Linux 6.18,
# tests/data/conntrack_ctnetlink.bin); CT_GET is taken as an entry too
_CT_ENTRY_TYPES = frozenset({NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW, CT_GET})
# include/uapi/linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS = 1, 2, 3
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_DST_NAT = 1 << 5     # set by nf_nat_setup_info when a DNAT changed the tuple

# IP protocol number -> nsnet's name; the kernel's /proc names are the same words.
# ICMP, GRE and the rest have no ports: no socket to look up by port, skipped.
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite", 33: "dccp"}

_NLMSGHDR = struct.Struct("=IHHII")                 # len, type, flags, seq, pid
_REQUEST = struct.Struct("=IHHII BBH")              # nlmsghdr + struct nfgenmsg
_NFGENMSG_LEN = 4
_NLATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


class Translations(dict[Key, Backend]):
    """The destination translations of one connection-tracking table: Key -> Backend.

    seen: entries read (lines of the proc file, entry messages of a dump), translated or not;
    malformed: lines or messages that could not be read; error: the errno a ctnetlink dump
    was answered with (0: none); interrupted: the kernel flagged the dump inconsistent.
    """

    __slots__ = ("error", "interrupted", "malformed", "seen")
    seen: int
    malformed: int
    error: int
    interrupted: bool

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.malformed = 0
        self.error = 0
        self.interrupted = False

    def backend(self, proto: str, local_addr: str, local_port: int, remote_addr: str,
                remote_port: int) -> Backend | None:
        """Where a client socket's connection really goes; None: its peer is not translated."""
        return self.get((proto, local_addr, local_port, remote_addr, remote_port))


# ---------------------------------------------------------------------- addresses

_CACHE_MAX = 65536
_text_cache: dict[bytes, str] = {}      # the proc file's text -> nsnet's form
_raw_cache: dict[bytes, str] = {}       # 4 or 16 raw bytes -> nsnet's form


def _from_raw(raw: bytes) -> str:
    text = _raw_cache.get(raw)
    if text is None:
        if len(raw) == 4:
            text = socket.inet_ntop(socket.AF_INET, raw)
        else:
            text = _addr6(raw)
        if len(_raw_cache) < _CACHE_MAX:
            _raw_cache[raw] = text
    return text


def _from_text(printed: bytes) -> str | None:
    """An address as the kernel prints it (%pI4; %pI6: eight uncompressed 4-digit groups)
    in nsnet's form; None when it is not an address."""
    text = _text_cache.get(printed)
    if text is None:
        family = socket.AF_INET6 if b":" in printed else socket.AF_INET
        try:
            raw = socket.inet_pton(family, printed.decode("ascii"))
        except (OSError, UnicodeDecodeError):
            return None
        text = _from_raw(raw)
        if len(_text_cache) < _CACHE_MAX:
            _text_cache[printed] = text
    return text


# ------------------------------------------------------------ /proc/<pid>/net/nf_conntrack

# One line (net/netfilter/nf_conntrack_standalone.c, ct_seq_show):
#   "%-8s %u %-8s %u " l3 name and number, l4 name and number; "%ld " seconds left (not for
#   an offloaded flow); the l4 state (tcp, sctp, dccp); the original tuple "src=%pI4 dst=%pI4
#   " (%pI6 for IPv6: full, uncompressed) then "sport=%hu dport=%hu " for port protocols
#   (icmp: type, code, id; gre: keys); zone-orig=, packets=/bytes= (nf_conntrack_acct);
#   [UNREPLIED] until an answer; the reply tuple the same way; then [ASSURED] or [OFFLOAD],
#   mark=, secctx=, zone=, delta-time= (nf_conntrack_timestamp), and "use=%u\n" last.
# One search runs over the whole buffer, in C; it stops (a match: a Python object) only at a
# translated line or a malformed one, so an untranslated entry costs no Python at all. Each
# line after a newline (a literal prefix: the engine looks for it, it does not try the
# pattern at every byte):
#   * the head, up to the original addresses, atomic: a line with it is an entry, and the
#     match can no longer fall back to the empty alternative;
#   * with a head (conditional on group 1): the ports and the reply tuple, whose source must
#     not be the original destination and port (backreferences \4, \6): a translation;
#     else, unless the rest is an untranslated entry's or has no ports (icmp, gre): the line
#     was cut (group 10, malformed); an untranslated entry yields no match at all;
#   * without a head, the line is malformed (group 11).
# Possessive quantifiers: nothing backtracks into an address or a number.
_BETWEEN = rb"(?:[a-z-]++=\d++ |\[UNREPLIED\] )*+"    # zone-orig=, packets=, bytes=
_LINE_BODY = (
    rb"(?>(ipv[46] ++\d++ ([a-z0-9-]++) ++\d++ (?:\d++ )?+(?:[A-Z0-9_]++ )?+"
    rb"src=(\S++) dst=(\S++) )|)"
    rb"(?(1)"
    rb"(?:sport=(\d++) dport=(\d++) " + _BETWEEN +
    rb"src=(?!\4 dst=\S++ sport=\6 )(\S++) dst=\S++ sport=(\d++) dport=\d++ "
    rb"|(?!sport=\d++ dport=(\d++) " + _BETWEEN + rb"src=\4 dst=\S++ sport=\9 dport=\d++ "
    rb"|(?!sport=))())"
    rb"|([^\n]++))"
)
_LINE = LazyPattern(rb"\n" + _LINE_BODY)
_FIRST = LazyPattern(_LINE_BODY)     # the first line has no newline before it
_PROTO_TEXT = {name.encode(): name for name in PROTO_NAMES.values()}


def parse_proc_conntrack(data: bytes | bytearray) -> Translations:
    """The destination translations in /proc/<pid>/net/nf_conntrack (the table of that
    process's network namespace). seen counts its lines. A last line without its newline
    was cut short: counted as malformed, like every line that is not an entry."""
    res = Translations()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        res.malformed += 1
    res.seen = data.count(b"\n", 0, end)
    first = _FIRST.compiled.match(data, 0, end)
    if first is not None:
        _collect((first,), res)
    _collect(_LINE.compiled.finditer(data, 0, end), res)
    return res


def _collect(matches: Iterable[re.Match[bytes]], res: Translations) -> None:
    """The matches of _LINE: a translation each, or a malformed line. (The loop that runs
    once per translated entry of the node: local names, no call but the caches' misses.)"""
    names, address, port = _PROTO_TEXT, _text_cache.get, _port_cache.get
    for m in matches:
        _head, proto, osrc, odst, osport, odport, rsrc, rsport, _dport, cut, bad = m.groups()
        if cut is not None or bad is not None:
            res.malformed += 1
            continue
        name = names.get(proto)
        if name is None:
            continue        # a protocol with ports that nsnet does not name
        src = address(osrc) or _from_text(osrc)
        dst = address(odst) or _from_text(odst)
        backend = address(rsrc) or _from_text(rsrc)
        sport = port(osport) or _port(osport)
        dport = port(odport) or _port(odport)
        bport = port(rsport) or _port(rsport)
        if src is None or dst is None or backend is None or sport is None or dport is None \
                or bport is None:
            res.malformed += 1
            continue
        res[(name, src, sport, dst, dport)] = (backend, bport)


# "%hu" -> int: int() of bytes costs more than a lookup, and a table has few distinct ports
_port_cache: dict[bytes, int] = {}


def _port(digits: bytes) -> int | None:
    """A port as printed (the regex took digits only); None above 65535."""
    number = int(digits)
    if number > 0xFFFF:
        return None
    if len(_port_cache) < _CACHE_MAX + 1024:    # "%hu": 65536 spellings (garbage aside)
        _port_cache[digits] = number
    return number


# ------------------------------------------------------------------------------ ctnetlink

def build_ctnetlink_dump_request(seq: int, family: int = 0, *, dnat_only: bool = False) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of the namespace's table (family
    AF_UNSPEC: IPv4 and IPv6; ctnetlink_dump_table skips entries of another l3num only when
    one is given). Needs CAP_NET_ADMIN over the namespace (nfnetlink_rcv answers EPERM).

    dnat_only: ask the kernel for the entries with IPS_DST_NAT only (CTA_STATUS and
    CTA_STATUS_MASK: ctnetlink_filter_match; measured on Linux 6.18). A kernel without that
    filter ignores the two attributes (nfnetlink parses a request's attributes liberally:
    unknown types are skipped) and sends every entry; the parser compares the tuples anyway.
    The reader does not ask for it: the entries IPVS translates lack the bit (conntrack.py).
    """
    attrs = _DNAT_FILTER if dnat_only else b""
    return _REQUEST.pack(_REQUEST.size + len(attrs), CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq,
                         0, family, 0, 0) + attrs   # nfgenmsg: family, NFNETLINK_V0, res_id 0


CTA_STATUS_MASK = 26
_DNAT_FILTER = b"".join(struct.pack("=HH", 8, kind) + _BE32.pack(IPS_DST_NAT)
                        for kind in (CTA_STATUS, CTA_STATUS_MASK))


@record(slots=True)
class CtDump:
    """The state of one dump read recv by recv (parse_ctnetlink_into)."""
    translations: Translations = field(default_factory=Translations)
    done: bool = False          # NLMSG_DONE or NLMSG_ERROR of our request ended the dump
    stale: int = 0              # messages of another sequence number (an abandoned dump)


def describe_error(code: int) -> str:
    name = _errno.errorcode.get(code, str(code))
    return f"ctnetlink answered {name} ({os.strerror(code)})"


def parse_ctnetlink(data: Buffer, seq: int | None) -> Translations:
    """Decode captured reply bytes (several datagrams concatenated frame as one) of one dump.
    A dump without its NLMSG_DONE (cut short) counts one malformed."""
    dump = CtDump()
    view = memoryview(data)
    parse_ctnetlink_into(view, len(view), seq, dump)
    if not dump.done:
        dump.translations.malformed += 1
    return dump.translations


def parse_ctnetlink_into(buf: Buffer, end: int, seq: int | None, dump: CtDump) -> None:
    """Decode the netlink messages in buf[:end] (one recv) into dump. Messages with another
    sequence number than `seq` (None: any) are counted as stale; a message whose length runs
    past the data is malformed, and ends what can be framed."""
    res = dump.translations
    unpack_hdr = _NLMSGHDR.unpack_from
    off = 0
    while off + _NLMSGHDR.size <= end:
        length, mtype, flags, mseq, _pid = unpack_hdr(buf, off)
        if length < _NLMSGHDR.size or off + length > end:
            res.malformed += 1
            return
        if seq is not None and mseq != seq:
            dump.stale += 1
        elif mtype in _CT_ENTRY_TYPES:
            res.seen += 1
            if flags & NLM_F_DUMP_INTR:
                res.interrupted = True
            if length < _NLMSGHDR.size + _NFGENMSG_LEN or \
                    not _entry(buf, off + _NLMSGHDR.size + _NFGENMSG_LEN, off + length, res):
                res.malformed += 1
        elif mtype in (NLMSG_DONE, NLMSG_ERROR):
            _control(buf, off, length, mtype, dump)
            return
        elif mtype != NLMSG_NOOP:
            res.malformed += 1
        off += (length + 3) & ~3
    if off < end:
        res.malformed += 1      # bytes too few for a header: a cut datagram


def _control(buf: Buffer, off: int, length: int, mtype: int, dump: CtDump) -> None:
    """NLMSG_DONE (its payload: an int, negative errno when the dump failed) or NLMSG_ERROR
    (nlmsgerr: the errno first; 0 is an acknowledgement)."""
    dump.done = True
    res = dump.translations
    error, malformed = control_status(buf, off, length, mtype)
    if error:
        res.error = error
    res.malformed += malformed


def _entry(buf: Buffer, start: int, stop: int, res: Translations) -> bool:
    """One entry's attributes; False when malformed. Only an entry with IPS_DST_NAT in its
    status has its tuples decoded (CTA_STATUS follows the tuples: ctnetlink_fill_info)."""
    orig = reply = None
    status = -1
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            return False
        kind = nla_type & NLA_TYPE_MASK
        if kind == CTA_TUPLE_ORIG:
            orig = (start + 4, start + nla_len)
        elif kind == CTA_TUPLE_REPLY:
            reply = (start + 4, start + nla_len)
        elif kind == CTA_STATUS:
            if nla_len < 8:
                return False
            status = _BE32.unpack_from(buf, start + 4)[0]
            if orig is not None and reply is not None:
                break           # the rest (timeout, counters, ids ...) is not read
        start += (nla_len + 3) & ~3
    if orig is None or reply is None:
        return False
    if status >= 0 and not status & IPS_DST_NAT:
        return True             # no DNAT: the reply comes from the original destination
    return _translation(buf, orig, reply, res)


def _translation(buf: Buffer, orig: tuple[int, int], reply: tuple[int, int],
                 res: Translations) -> bool:
    """The entry's tuples (start, stop each) compared: a translation kept; False when one
    is malformed."""
    o = _fixed_tuple(buf, *orig) or _tuple(buf, *orig)
    r = _fixed_tuple(buf, *reply) or _tuple(buf, *reply)
    if o is None or r is None:
        return False
    proto_num, src, dst, sport, dport = o
    if r[1] == dst and r[3] == dport:
        return True
    proto = PROTO_NAMES.get(proto_num)
    if proto is not None:
        res[(proto, _from_raw(src), sport, _from_raw(dst), dport)] = (_from_raw(r[1]), r[3])
    return True


def _layout(width: int, src: int, dst: int) -> tuple[struct.Struct, tuple[int, ...],
                                                      tuple[int, ...], struct.Struct]:
    """A tuple as ctnetlink_dump_tuples writes it for a protocol with ports: CTA_TUPLE_IP
    {source, destination}, then CTA_TUPLE_PROTO {number, source port, destination port}
    (ctnetlink_dump_tuples_ip, nf_ct_port_tuple_to_nlattr). Its attribute headers, what they
    must be (nests flagged NLA_F_NESTED, as nla_nest_start does, or not), and its values
    (ports big-endian)."""
    headers = struct.Struct(f"=HHHH{width}xHH{width}xHHHH4xHH4xHH4x")
    plain = (4 + 2 * (4 + width), CTA_TUPLE_IP, 4 + width, src, 4 + width, dst,
             28, CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT, 6, CTA_PROTO_DST_PORT)
    flagged = (plain[0], CTA_TUPLE_IP | _NLA_F_NESTED, *plain[2:6], plain[6],
               CTA_TUPLE_PROTO | _NLA_F_NESTED, *plain[8:])
    values = struct.Struct(f">8x{width}s4x{width}s8xB3x4xH2x4xH2x")
    return headers, flagged, plain, values


_NLA_F_NESTED = 0x8000
_FIXED = (_layout(4, CTA_IP_V4_SRC, CTA_IP_V4_DST), _layout(16, CTA_IP_V6_SRC, CTA_IP_V6_DST))


def _fixed_tuple(buf: Buffer, start: int, stop: int
                 ) -> tuple[int, bytes, bytes, int, int] | None:
    """_tuple's answer in two unpacks, when the tuple has the kernel's layout (its headers
    all checked); None: it has not, let _tuple walk it."""
    for headers, flagged, plain, values in _FIXED:
        if stop - start >= headers.size:
            found = headers.unpack_from(buf, start)
            if found in (flagged, plain):
                src, dst, num, sport, dport = values.unpack_from(buf, start)
                return num, src, dst, sport, dport
    return None


def _nested(buf: Buffer, start: int, stop: int) -> dict[int, tuple[int, int]] | None:
    """A nested attribute's members: type -> (payload offset, payload length); None when
    one runs past its parent."""
    found = {}
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            return None
        found[nla_type & NLA_TYPE_MASK] = (start + 4, nla_len - 4)
        start += (nla_len + 3) & ~3
    return found


def _tuple(buf: Buffer, start: int, stop: int) -> tuple[int, bytes, bytes, int, int] | None:
    """CTA_TUPLE_*: (protocol number, source, destination (4 or 16 raw bytes), source port,
    destination port; ports 0 for a protocol without); None when malformed."""
    parts = _nested(buf, start, stop)
    if parts is None or CTA_TUPLE_IP not in parts or CTA_TUPLE_PROTO not in parts:
        return None
    ip = _nested(buf, *_span(parts[CTA_TUPLE_IP]))
    proto = _nested(buf, *_span(parts[CTA_TUPLE_PROTO]))
    if ip is None or proto is None:
        return None
    if CTA_IP_V4_SRC in ip:
        src, dst, width = ip.get(CTA_IP_V4_SRC), ip.get(CTA_IP_V4_DST), 4
    else:
        src, dst, width = ip.get(CTA_IP_V6_SRC), ip.get(CTA_IP_V6_DST), 16
    num = proto.get(CTA_PROTO_NUM)
    if src is None or dst is None or src[1] != width or dst[1] != width or num is None \
            or num[1] < 1:
        return None
    ports = []
    for kind in (CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT):
        port = proto.get(kind)
        if port is not None and port[1] < 2:
            return None
        ports.append(_BE16.unpack_from(buf, port[0])[0] if port is not None else 0)
    return (buf[num[0]], bytes(buf[src[0]:src[0] + width]), bytes(buf[dst[0]:dst[0] + width]),
            ports[0], ports[1])


def _span(part: tuple[int, int]) -> tuple[int, int]:
    """(payload offset, length) -> (start, stop)."""
    return part[0], part[0] + part[1]
