"""The NETLINK_SOCK_DIAG codec: dump requests built, replies decoded. Pure, on bytes.

The replies become the same Socket objects nsnet.netparse builds from /proc/<pid>/net/* for a
namespace (netns and pids left empty), without the host-wide text formatting: uid and inode
come straight from inet_diag_msg. The I/O (a sock_diag socket made inside each namespace, the
dumps) is the netlink source's (nsnet/sources/netlink.py); the agent's destroy events decode
their messages here too. Tested on captured replies: a malformed or truncated reply is counted,
never raised.

Where sock_diag and /proc disagree, for reasons in the kernel, not here (the kernel tests of
the netlink source prove each on a live namespace):
  * unix_diag skips sockets without an inode: the server half of a unix connection that is
    not accepted yet (/proc/net/unix lists it with inode 0 and the listener's path).
  * a TCP request socket (SYN_RECV, e.g. under TCP_DEFER_ACCEPT) has uid 0 in sock_diag;
    /proc/net/tcp prints its listener's uid.
  * raw sockets need raw_diag (CONFIG_INET_RAW_DIAG), packet sockets packet_diag, netlink
    sockets netlink_diag; without one the kernel ends the dump with ENOENT (in NLMSG_DONE).
    Ping sockets (icmp) have no sock_diag handler in any kernel: always ENOENT. The netlink
    source reads what ENOENT refused from the namespace's /proc tables.
  * UDP-Lite sockets come from udp_diag, asked for IPPROTO_UDPLITE.
  * TCP sockets bound but neither listening nor connecting are in no /proc table; sock_diag
    lists them (Linux >= 6.5) only when TCPF_BOUND_INACTIVE is asked for, which ALL leaves
    out (asking walks the whole bind hash). The kernel then reports their sk_state, CLOSE.
"""
from __future__ import annotations

import errno as _errno
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import field

from .model import (
    PORTLESS,
    STREAM_PROTOS,
    TIMERS,
    Socket,
    SocketDetail,
    SocketMemory,
    TcpDetail,
    netlink_socket,
    packet_socket,
)
from .netparse import DGRAM_STATES, PACKET_TYPES, TCP_STATES, UNIX_TYPES
from .records import record

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18            # legacy request: one walk for TCP over IPv4 and IPv6
SOCK_DIAG_BY_FAMILY = 20
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST = 0x01
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300              # NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_REQ_PROTOCOL = 3      # u32 protocol, for protocols that do not fit sdiag_protocol
UNIX_DIAG_NAME, UNIX_DIAG_RQLEN, UNIX_DIAG_MEMINFO = 0, 4, 5
UDIAG_SHOW_NAME, UDIAG_SHOW_RQLEN, UDIAG_SHOW_MEMINFO = 0x01, 0x10, 0x20
NLA_TYPE_MASK = 0x3FFF          # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
_DIAG_TYPES = frozenset({SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK})   # an inet_diag_msg reply
Buffer = bytes | bytearray | memoryview

TCPF = {name: 1 << number for number, name in TCP_STATES.items()}
TCPF_BOUND_INACTIVE = TCPF["BOUND_INACTIVE"]
# Every state a /proc table can show. NEW_SYN_RECV is implied by SYN_RECV in the kernel.
ALL = sum(TCPF.values()) & ~TCPF_BOUND_INACTIVE
# What no process holds, the complement of a per-fd source (those entries have inode 0;
# FIN_WAIT1/2, CLOSING, LAST_ACK orphans also exist but share their states with held sockets).
UNHELD = TCPF["TIME_WAIT"] | TCPF["SYN_RECV"] | TCPF["NEW_SYN_RECV"]
# Orphans: closed by their process before the end of the close handshake (an nginx
# keep-alive closed server side leaves FIN_WAIT2); a held socket can be in these states
# too (after shutdown()), so a per-fd source asks for them all and drops the held ones.
ORPHAN_STATES = TCPF["FIN_WAIT1"] | TCPF["FIN_WAIT2"] | TCPF["CLOSING"] | TCPF["LAST_ACK"]

ANY_STATE = 0xFFFFFFFF          # UDP, raw and unix requests
PROTOS = ("tcp", "udp", "udplite", "icmp", "raw", "mptcp", "unix", "packet", "netlink")
IPPROTO_UDPLITE = 136
IPPROTO_MPTCP = 262     # asked in an INET_DIAG_REQ_PROTOCOL attribute (mptcp_diag)
# inet_diag_msg_attrs_fill sends INET_DIAG_SKV6ONLY for every IPv6 socket in LISTEN or CLOSE
# (a listener, an unconnected datagram socket): whether it takes IPv4 too
INET_DIAG_SKV6ONLY = 11
V6ONLY_STATES = frozenset({10, 7})
# An MPTCP connection and its TCP subflows share a token (net/mptcp/diag.c, mptcp_diag.c):
# the connection's is mptcp_info.mptcpi_token (offset 12) in its INET_DIAG_INFO; a
# subflow's, MPTCP_SUBFLOW_ATTR_TOKEN_LOC inside INET_DIAG_ULP_INFO > INET_ULP_INFO_MPTCP,
# which tcp_diag sends only to a dumper with CAP_NET_ADMIN over the namespace.
INET_DIAG_ULP_INFO = 19
INET_ULP_INFO_MPTCP = 3
MPTCP_SUBFLOW_ATTR_TOKEN_LOC = 2
_MPTCP_TOKEN = struct.Struct("=I")
MPTCP_INFO_TOKEN_AT = 12

# What a parse reads besides each socket's fixed part (parse_into's `want`, bits):
WANT_DETAIL = 1    # a SocketDetail: queues, timer, cookie and the attributes the dump asked
WANT_LINKS = 2     # each TCP socket's MPTCP token (always read for MPTCP sockets)
WANT_TRAFFIC = 4   # a TCP socket's TCP_INFO counters and rtt only (Socket.traffic)
# packet_diag (linux/packet_diag.h): show the ifindex (PACKET_DIAG_INFO) and the uid
PACKET_SHOW_INFO = 0x01
PACKET_DIAG_INFO, PACKET_DIAG_UID = 0, 5
# netlink_diag (linux/netlink_diag.h): every protocol, with the groups bitmap
NDIAG_PROTO_ALL = 0xFF
NDIAG_SHOW_GROUPS = 0x02
NETLINK_DIAG_GROUPS = 1


_NLMSGHDR = struct.Struct("=IHHII")                    # len, type, flags, seq, pid
_INET_REQ = struct.Struct("=IHHII BBBBI 48x")          # nlmsghdr + inet_diag_req_v2
_LEGACY_REQ = struct.Struct("=IHHII BBBB 48x II")      # nlmsghdr + inet_diag_req
_UNIX_REQ = struct.Struct("=IHHII BBHIII8x")           # nlmsghdr + unix_diag_req
# nlmsghdr + packet_diag_req / netlink_diag_req: family, protocol, pad, ino, show, cookie
_LINK_REQ = struct.Struct("=IHHII BBHII8x")
_PACKET_MSG = struct.Struct("=xBHI8x")   # packet_diag_msg: type, num (host order), ino
PACKET_MSG_LEN = _NLMSGHDR.size + _PACKET_MSG.size      # 32
_PACKET_INFO = struct.Struct("=i")       # packet_diag_info: pdi_index first (-1: gone)
# netlink_diag_msg: type, protocol, state, portid, dst portid, dst group, ino, cookie
_NETLINK_MSG = struct.Struct("=xxBxIIII8x")
NETLINK_MSG_LEN = _NLMSGHDR.size + _NETLINK_MSG.size    # 44
_U32 = struct.Struct("=I")
_RQLEN = struct.Struct("=II")
_LONG = struct.calcsize("@L")            # the groups bitmap's word
_NLATTR_U32 = struct.Struct("=HHI")
# inet_diag_msg after the header: family, state, (timer, retrans), sport, dport (network
# order, read natively and swapped), src[16], dst[16], if (sk_bound_dev_if), (cookie,
# expires, rqueue, wqueue), uid, inode.
_INET_MSG = struct.Struct("=BB2xHH16s16sI20xII")
INET_MSG_LEN = _NLMSGHDR.size + _INET_MSG.size          # 88
_INET_FULL = struct.Struct("=IHHII" + _INET_MSG.format[1:])
_UNIX_MSG = struct.Struct("=xBBxIII")       # unix_diag_msg: type, state, ino, cookie (lo, hi)
UNIX_MSG_LEN = _NLMSGHDR.size + _UNIX_MSG.size          # 32
_NLATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")

_UNIX_SK_STATES = {10: "LISTEN", 1: "ESTABLISHED", 7: "UNCONN"}
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"   # shown as IPv4, as netparse.decode_address does



@record(slots=True)
class ParsedDump:
    """What one or more reply datagrams of one dump held."""
    sockets: list[Socket] = field(default_factory=list)
    malformed: int = 0
    done: bool = False          # NLMSG_DONE or NLMSG_ERROR ended the dump
    error: int = 0              # errno the kernel answered with (NLMSG_ERROR, or in NLMSG_DONE)
    interrupted: bool = False   # NLM_F_DUMP_INTR: the kernel says the walk was inconsistent
    stale: int = 0              # messages of another request (an abandoned dump)
    stale_done: bool = False    # ... and that dump ended
    busy_retries: int = 0       # sent again after EBUSY (an abandoned dump was read out)


# ----------------------------------------------------------------------------- requests

def build_inet_request(family: int, protocol: int, states: int = ALL, *, seq: int = 1,
                       raw_protocol: int = 0, ext: int = 0) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump request (inet_diag_req_v2) for one family and protocol.

    raw_protocol fills sdiag_raw_protocol (the `pad` byte); raw_diag's dump ignores it (it
    matters for single-socket lookups). A protocol above 255 (MPTCP) goes into an
    INET_DIAG_REQ_PROTOCOL attribute, as the kernel expects.
    """
    attr = b""
    if protocol > 0xFF:
        attr = _NLATTR_U32.pack(_NLATTR_U32.size, INET_DIAG_REQ_PROTOCOL, protocol)
        protocol = 0
    length = _INET_REQ.size + len(attr)
    return _INET_REQ.pack(length, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
                          family, protocol, ext, raw_protocol, states & 0xFFFFFFFF) + attr


def build_tcp_legacy_request(states: int = ALL, *, seq: int = 1, ext: int = 0) -> bytes:
    """TCPDIAG_GETSOCK dump request (struct inet_diag_req): the kernel treats it as family
    AF_UNSPEC, so one walk of the TCP hashes returns both IPv4 and IPv6 sockets."""
    return _LEGACY_REQ.pack(_LEGACY_REQ.size, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP,
                            seq, 0, socket.AF_INET, 0, 0, ext, states & 0xFFFFFFFF, 0)


def build_unix_request(states: int = ANY_STATE, *, seq: int = 1,
                       show: int = UDIAG_SHOW_NAME) -> bytes:
    return _UNIX_REQ.pack(_UNIX_REQ.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                          seq, 0, socket.AF_UNIX, 0, 0, states & 0xFFFFFFFF, 0, show)


def build_packet_request(*, seq: int = 1) -> bytes:
    """Every packet socket of the namespace, with its interface and uid."""
    return _LINK_REQ.pack(_LINK_REQ.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                          seq, 0, socket.AF_PACKET, 0, 0, 0, PACKET_SHOW_INFO)


def build_netlink_request(*, seq: int = 1) -> bytes:
    """Every netlink socket of the namespace (all protocols), with its groups."""
    return _LINK_REQ.pack(_LINK_REQ.size, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                          seq, 0, socket.AF_NETLINK, NDIAG_PROTO_ALL, 0, 0, NDIAG_SHOW_GROUPS)


# ------------------------------------------------------------------------------ replies

_addr4_cache: dict[bytes, str] = {}
_addr6_cache: dict[bytes, str] = {}


def _addr4(raw16: bytes) -> str:
    text = socket.inet_ntop(socket.AF_INET, raw16[:4])
    if len(_addr4_cache) < 65536:
        _addr4_cache[raw16] = text
    return text


def _addr6(raw16: bytes) -> str:
    if raw16[:12] == _V4_MAPPED:
        text = socket.inet_ntop(socket.AF_INET, raw16[12:])
    else:
        text = socket.inet_ntop(socket.AF_INET6, raw16)
    if len(_addr6_cache) < 65536:
        _addr6_cache[raw16] = text
    return text


def unix_name(raw: bytes) -> str:
    """UNIX_DIAG_NAME as /proc/net/unix prints it: a path without its terminating NUL, or an
    abstract name as '@' followed by the name with every NUL shown as '@'."""
    if raw[:1] == b"\0":
        raw = b"@" + raw[1:].replace(b"\0", b"@")
    elif raw[-1:] == b"\0":
        raw = raw[:-1]
    return raw.decode("utf-8", "surrogateescape")


def control_status(buf: Buffer, off: int, length: int, mtype: int) -> tuple[int, int]:
    """(errno, malformed) of the NLMSG_DONE / NLMSG_ERROR that ends a dump: NLMSG_DONE's
    payload is an int, a negative errno when the dump failed; nlmsgerr's first field is the
    errno (0: an acknowledgement). Shared by every netlink dump nsnet parses."""
    if length >= _NLMSGHDR.size + _ERRNO.size:
        code = _ERRNO.unpack_from(buf, off + _NLMSGHDR.size)[0]
        if code < 0:
            return -code, 0
        return 0, int(code > 0)  # a positive code: not what the kernel sends
    if mtype == NLMSG_ERROR:     # an error message too short to carry its errno
        return _errno.EBADMSG, 1
    return 0, 0


def _control(buf: Buffer, off: int, length: int, mtype: int, res: ParsedDump) -> None:
    """NLMSG_DONE / NLMSG_ERROR of our own request: the dump is over."""
    res.done = True
    error, malformed = control_status(buf, off, length, mtype)
    if error:
        res.error = error
    res.malformed += malformed


def parse_into(buf: Buffer, end: int, proto: str, seq: int | None, res: ParsedDump,
               want: int = 0) -> None:
    """Decode the netlink messages in buf[:end] (one recv) into res.

    proto is what the request asked for (tcp, udp, raw, unix): inet_diag_msg does not say.
    Messages with another sequence number than `seq` (None: accept any) are counted as
    stale. A message whose length runs past the data, or that is too short for what its type
    needs, is counted as malformed; after a broken length nothing more can be framed.
    """
    if proto == "unix":
        _parse_unix(buf, end, seq, res, bool(want & WANT_DETAIL))
    elif proto == "packet" or proto == "netlink":
        _parse_link(buf, end, proto, seq, res)
    else:
        _parse_inet(buf, end, proto, seq, res, want)


def _other(buf: Buffer, off: int, length: int, mtype: int, mseq: int, seq: int | None,
           res: ParsedDump) -> bool:
    """A message that is not one of our sockets; True when it ends our dump."""
    if seq is not None and mseq != seq:
        res.stale += 1
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            res.stale_done = True
    elif mtype in (NLMSG_DONE, NLMSG_ERROR):
        _control(buf, off, length, mtype, res)
        return True
    elif mtype != NLMSG_NOOP:
        res.malformed += 1
    return False


def _parse_inet(buf: Buffer, end: int, proto: str, seq: int | None, res: ParsedDump,
                want: int = 0) -> None:
    """want: WANT_* bits. An MPTCP socket's token is always read; a TCP socket's only where
    asked (a namespace with MPTCP sockets: the attributes of every TCP socket of a namespace
    are otherwise never looked at); traffic is TCP's alone."""
    want = _wanted(want, proto)
    extras = bool(want)
    states = TCP_STATES if proto in STREAM_PROTOS else DGRAM_STATES
    raw = proto in PORTLESS     # /proc prints 0 as a raw or ping socket's remote "port"
    append = res.sockets.append
    unpack_hdr = _NLMSGHDR.unpack_from
    unpack_full = _INET_FULL.unpack_from
    ntohs = socket.ntohs
    c4, c6 = _addr4_cache, _addr6_cache
    families = {socket.AF_INET: ("inet", c4, _addr4, True),
                socket.AF_INET6: ("inet6", c6, _addr6, False)}
    diag_types = _DIAG_TYPES
    off = 0
    while off + 16 <= end:
        # one unpack for header and inet_diag_msg when the bytes are there (the common case);
        # the body fields are used only after the length says they belong to this message
        if off + INET_MSG_LEN <= end:
            length, mtype, flags, mseq, _pid, fam, st, sport, dport, src, dst, ifindex, uid, \
                inode = unpack_full(buf, off)
        else:
            length, mtype, flags, mseq, _pid = unpack_hdr(buf, off)
        if length < 16 or off + length > end:
            res.malformed += 1
            return
        if mtype in diag_types and (seq is None or mseq == seq):
            if flags & NLM_F_DUMP_INTR:
                res.interrupted = True
            state = states.get(st) if length >= INET_MSG_LEN else None
            if state is None or (known := families.get(fam)) is None:
                res.malformed += 1
            else:
                family, cache, decode, v4 = known
                sock = Socket(proto, family, state,
                              cache.get(src) or decode(src), ntohs(sport),
                              cache.get(dst) or decode(dst), 0 if raw else ntohs(dport),
                              inode, uid)
                append(sock)
                if ifindex:
                    sock.bound_if = ifindex
                # (a function call only where there is something to read: the hot path)
                if extras or (not v4 and st in V6ONLY_STATES):
                    _inet_extras(buf, off, length, sock, st, want)
        elif _other(buf, off, length, mtype, mseq, seq, res):
            return
        off += (length + 3) & ~3
    if off < end:
        res.malformed += 1      # bytes too few for a header: a cut datagram


# struct tcp_info (include/uapi/linux/tcp.h), native order: retransmits (2), unacked and
# sacked (24, 28: a listener's accept queue and backlog), last_data_sent (44),
# last_data_recv (52), rtt, rttvar (68, 72, us), snd_cwnd (80), total_retrans (100); then
# bytes_acked, bytes_received (120, 128: Linux >= 4.1/4.2), delivery_rate (160: >= 4.9).
_TCP_INFO_BASE = struct.Struct("=2xB21xII12xI4xI12xII4xI16xI")
_TCP_INFO_BYTES = struct.Struct("=QQ")       # at 120
_TCP_INFO_RATE = struct.Struct("=Q")         # at 160
TCP_INFO_MIN = _TCP_INFO_BASE.size           # 104


def parse_tcp_info(data: Buffer, congestion: str | None = None, at: int = 0,
                   size: int | None = None) -> tuple[TcpDetail, int, int] | None:
    """A struct tcp_info (TCP_INFO, INET_DIAG_INFO) as a TcpDetail, with tcpi_unacked and
    tcpi_sacked (a listener's accept queue and backlog); None when too short to be one.
    at, size: where it is in data (a dump's buffer, read in place)."""
    if size is None:
        size = len(data) - at
    if size < TCP_INFO_MIN:
        return None
    (retransmits, unacked, sacked, last_send, last_recv, rtt, rttvar, cwnd,
     total_retrans) = _TCP_INFO_BASE.unpack_from(data, at)
    acked = received = rate = None
    if size >= 136:
        acked, received = _TCP_INFO_BYTES.unpack_from(data, at + 120)
    if size >= 168:
        rate = _TCP_INFO_RATE.unpack_from(data, at + 160)[0]
    return (TcpDetail(congestion, rtt, rttvar, cwnd, retransmits, total_retrans, acked,
                      received, rate, last_send, last_recv), unacked, sacked)


# inet_diag_msg's timer (2), retrans (3), cookie (44, two u32: low, high), expires (52, ms),
# rqueue, wqueue (56, 60; a listener: accept queue, backlog)
_INET_DETAIL = struct.Struct("=2xBB40xIIIII")
INET_DIAG_INFO, INET_DIAG_CONG, INET_DIAG_SKMEMINFO = 2, 4, 7
# idiag_ext bits: ask for tcp_info and the congestion algorithm (model.TCP_INFO), and for
# the socket's memory (model.MEMORY)
EXT_TCP_INFO = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_CONG - 1))
# ... INET_DIAG_INFO alone: the agent's traffic counters; mptcp_diag's mptcp_info (the token)
EXT_INFO = 1 << (INET_DIAG_INFO - 1)
EXT_MEMORY = 1 << (INET_DIAG_SKMEMINFO - 1)
_MEMINFO = struct.Struct("=9I")      # SK_MEMINFO_VARS u32s, the order SocketMemory has


def parse_meminfo(data: bytes) -> SocketMemory | None:
    """sk_meminfo (SO_MEMINFO, INET_DIAG_SKMEMINFO, UNIX_DIAG_MEMINFO); None: too short."""
    if len(data) < _MEMINFO.size:
        return None
    return SocketMemory(*_MEMINFO.unpack_from(data))


def _wanted(want: int, proto: str) -> int:
    """What is read of a kind's sockets: an MPTCP socket's token always; links and traffic
    are TCP's alone."""
    if proto == "mptcp":
        return (want | WANT_LINKS) & ~WANT_TRAFFIC
    if proto != "tcp":
        return want & ~(WANT_LINKS | WANT_TRAFFIC)
    return want


def _inet_extras(buf: Buffer, off: int, length: int, sock: Socket, st: int, want: int) -> None:
    """What a socket's attributes say besides the fixed part: IPV6_V6ONLY, what `want`
    asks (WANT_*)."""
    if sock.family == "inet6" and st in V6ONLY_STATES and length > INET_MSG_LEN:
        sock.v6only = _v6only(buf, off + INET_MSG_LEN, off + length)
    if want & WANT_DETAIL:
        sock.detail = detail = _inet_detail(buf, off, length, sock.proto)
        tcp = detail.tcp
        if want & WANT_TRAFFIC and tcp is not None and tcp.bytes_acked is not None \
                and tcp.bytes_received is not None:
            sock.traffic = (tcp.bytes_acked, tcp.bytes_received, tcp.total_retrans, tcp.rtt_us)
    elif want & WANT_TRAFFIC:
        sock.traffic = _traffic(buf, off + INET_MSG_LEN, off + length)
    if want & WANT_LINKS and length > INET_MSG_LEN:
        sock.mptcp_token = _mptcp_token(buf, off + INET_MSG_LEN, off + length, sock.proto)


# tcp_info's tcpi_rtt (68), tcpi_total_retrans (100), tcpi_bytes_acked, tcpi_bytes_received
# (120, 128; Linux >= 4.1/4.2: a shorter tcp_info gives no traffic)
_TRAFFIC_RTT = struct.Struct("=68xI28xI16xQQ")
TRAFFIC_INFO_MIN = _TRAFFIC_RTT.size       # 136


def _traffic(buf: Buffer, start: int, stop: int) -> tuple[int, int, int, int] | None:
    """A TCP socket's (bytes_acked, bytes_received, total_retrans, rtt_us) from the
    INET_DIAG_INFO among its attributes, read in place; None: not there, or too short."""
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            return None
        if nla_type & NLA_TYPE_MASK == INET_DIAG_INFO:
            if nla_len - 4 < TRAFFIC_INFO_MIN:
                return None
            rtt, retrans, acked, received = _TRAFFIC_RTT.unpack_from(buf, start + 4)
            return (acked, received, retrans, rtt)
        start += (nla_len + 3) & ~3
    return None


def _mptcp_token(buf: Buffer, start: int, stop: int, proto: str) -> int | None:
    """An MPTCP connection's token (proto mptcp), or the token of the connection a TCP
    subflow belongs to; None: not there (a plain TCP socket)."""
    attrs = _attributes(buf, start, stop) or {}
    if proto == "mptcp":
        info = attrs.get(INET_DIAG_INFO)
        if info is None or len(info) < MPTCP_INFO_TOKEN_AT + 4:
            return None
        return _MPTCP_TOKEN.unpack_from(info, MPTCP_INFO_TOKEN_AT)[0]
    ulp = attrs.get(INET_DIAG_ULP_INFO)
    mptcp = (_attributes(ulp, 0, len(ulp)) or {}).get(INET_ULP_INFO_MPTCP) if ulp else None
    token = (_attributes(mptcp, 0, len(mptcp)) or {}).get(MPTCP_SUBFLOW_ATTR_TOKEN_LOC) \
        if mptcp else None
    return _MPTCP_TOKEN.unpack_from(token)[0] if token is not None and len(token) >= 4 \
        else None


def _inet_detail(buf: Buffer, off: int, length: int, proto: str = "tcp") -> SocketDetail:
    timer_no, retrans, cookie_lo, cookie_hi, expires, rqueue, wqueue = \
        _INET_DETAIL.unpack_from(buf, off + _NLMSGHDR.size)
    timer = TIMERS.get(timer_no, str(timer_no))
    detail = SocketDetail(rqueue, wqueue, timer, expires if timer_no else None,
                          retrans if timer_no else None, cookie_lo | cookie_hi << 32)
    # the attributes, read in place (no copy of each: with -i this runs once per TCP socket
    # of the node)
    start, stop = off + INET_MSG_LEN, off + length
    info_at = info_size = 0
    congestion: str | None = None
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            break       # runs past the message: what came before it stands
        kind = nla_type & NLA_TYPE_MASK
        if kind == INET_DIAG_INFO:
            info_at, info_size = start + 4, nla_len - 4
        elif kind == INET_DIAG_CONG:
            congestion = _congestion_name(bytes(buf[start + 4:start + nla_len]))
        elif kind == INET_DIAG_SKMEMINFO:
            detail.memory = parse_meminfo(bytes(buf[start + 4:start + nla_len]))
        start += (nla_len + 3) & ~3
    # an MPTCP socket's INET_DIAG_INFO is an mptcp_info, not a tcp_info
    if info_at and proto != "mptcp":
        parsed = parse_tcp_info(buf, congestion, info_at, info_size)
        if parsed is not None:
            detail.tcp = parsed[0]
    return detail


_congestion_names: dict[bytes, str] = {}


def _congestion_name(raw: bytes) -> str:
    """INET_DIAG_CONG's NUL-terminated name, one str per algorithm (a node has a few)."""
    name = _congestion_names.get(raw)
    if name is None:
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if len(_congestion_names) < 64:
            _congestion_names[raw] = name
    return name


def _v6only(buf: Buffer, start: int, stop: int) -> bool | None:
    """INET_DIAG_SKV6ONLY among an inet6 socket's attributes (None: not there)."""
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            return None
        if nla_type & NLA_TYPE_MASK == INET_DIAG_SKV6ONLY and nla_len >= 5:
            return buf[start + 4] != 0
        start += (nla_len + 3) & ~3
    return None


def _parse_unix(buf: Buffer, end: int, seq: int | None, res: ParsedDump,
                detail: bool = False) -> None:
    _parse_each(buf, end, seq, res, lambda off, length: _unix(buf, off, length, detail)
                if length >= UNIX_MSG_LEN else None)


def _parse_each(buf: Buffer, end: int, seq: int | None, res: ParsedDump,
                decode: Callable[[int, int], Socket | None]) -> None:
    """Frame the messages in buf[:end]; each SOCK_DIAG_BY_FAMILY reply of ours goes to
    decode(offset, length), a Socket or None (malformed). The unix, packet and netlink
    parsers' loop (the inet one is its own: it runs once per TCP socket of the node)."""
    off = 0
    while off + 16 <= end:
        length, mtype, flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < 16 or off + length > end:
            res.malformed += 1
            return
        if mtype == SOCK_DIAG_BY_FAMILY and (seq is None or mseq == seq):
            if flags & NLM_F_DUMP_INTR:
                res.interrupted = True
            sock = decode(off, length)
            if sock is None:
                res.malformed += 1
            else:
                res.sockets.append(sock)
        elif _other(buf, off, length, mtype, mseq, seq, res):
            return
        off += (length + 3) & ~3
    if off < end:
        res.malformed += 1


def _unix(buf: Buffer, off: int, length: int, detail: bool) -> Socket | None:
    """One unix_diag_msg and its attributes (UNIX_DIAG_NAME, UNIX_DIAG_RQLEN, ...); None
    when its type is unknown or an attribute runs past it."""
    type_, st, inode, cookie_lo, cookie_hi = _UNIX_MSG.unpack_from(buf, off + 16)
    kind = UNIX_TYPES.get(type_)
    if kind is None:
        return None
    name = ""
    queues = memory = None
    a, stop = off + UNIX_MSG_LEN, off + length
    while a + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, a)
        if nla_len < 4 or a + nla_len > stop:
            return None
        if nla_type & NLA_TYPE_MASK == UNIX_DIAG_NAME:
            name = unix_name(bytes(buf[a + 4:a + nla_len]))
        elif nla_type & NLA_TYPE_MASK == UNIX_DIAG_RQLEN and nla_len >= 12:
            # unix_diag_rqlen: a listener's accept queue and backlog, else the bytes queued
            # each way (unix_inq_len, unix_outq_len)
            queues = _RQLEN.unpack_from(buf, a + 4)
        elif nla_type & NLA_TYPE_MASK == UNIX_DIAG_MEMINFO:
            memory = parse_meminfo(bytes(buf[a + 4:a + nla_len]))
        a += (nla_len + 3) & ~3
    # sk_state is LISTEN, ESTABLISHED or CLOSE for every unix socket; anything else would
    # be new: shown as UNCONN, as netparse does with the St column.
    sock = Socket("unix", "unix", _UNIX_SK_STATES.get(st, "UNCONN"), name, None, "", None,
                  inode, None, unix_type=kind)
    if detail:
        recv_q, send_q = queues if queues else (None, None)
        sock.detail = SocketDetail(recv_q, send_q, cookie=cookie_lo | cookie_hi << 32,
                                   memory=memory)
    return sock


def _attributes(buf: Buffer, start: int, stop: int) -> dict[int, bytes] | None:
    """A message's attributes after its fixed part (type -> payload); None when one runs
    past the message."""
    found: dict[int, bytes] = {}
    while start + 4 <= stop:
        nla_len, nla_type = _NLATTR.unpack_from(buf, start)
        if nla_len < 4 or start + nla_len > stop:
            return None
        found[nla_type & NLA_TYPE_MASK] = bytes(buf[start + 4:start + nla_len])
        start += (nla_len + 3) & ~3
    return found


def _parse_link(buf: Buffer, end: int, proto: str, seq: int | None, res: ParsedDump) -> None:
    """packet_diag or netlink_diag replies."""
    fixed = PACKET_MSG_LEN if proto == "packet" else NETLINK_MSG_LEN
    one = _packet if proto == "packet" else _netlink

    def decode(off: int, length: int) -> Socket | None:
        attrs = _attributes(buf, off + fixed, off + length) if length >= fixed else None
        return None if attrs is None else one(buf, off, attrs)
    _parse_each(buf, end, seq, res, decode)


def _packet(buf: Buffer, off: int, attrs: dict[int, bytes]) -> Socket | None:
    type_no, protocol, inode = _PACKET_MSG.unpack_from(buf, off + _NLMSGHDR.size)
    type_ = PACKET_TYPES.get(type_no)
    info, uid = attrs.get(PACKET_DIAG_INFO, b""), attrs.get(PACKET_DIAG_UID, b"")
    if type_ is None or len(info) < _PACKET_INFO.size or len(uid) < _U32.size:
        return None     # asked with PACKET_SHOW_INFO: the kernel always sends both
    return packet_socket(type_, protocol, _PACKET_INFO.unpack_from(info)[0], None, inode,
                         _U32.unpack_from(uid)[0])


def _netlink(buf: Buffer, off: int, attrs: dict[int, bytes]) -> Socket | None:
    protocol, portid, _dst_portid, _dst_group, inode = \
        _NETLINK_MSG.unpack_from(buf, off + _NLMSGHDR.size)
    groups = attrs.get(NETLINK_DIAG_GROUPS, b"")   # absent: no groups joined
    # the bitmap is an array of unsigned longs: its first 32 bits are /proc/net/netlink's
    first = int.from_bytes(groups[:_LONG], sys.byteorder) & 0xFFFFFFFF \
        if len(groups) >= _LONG else 0
    return netlink_socket(protocol, portid, first, inode)


def drop_multicast_repeats(res: ParsedDump) -> int:
    """netlink_diag lists a socket that joined multicast groups twice: from the protocol's
    port-id hash, then again from its multicast list, whose walk skips only sockets
    sk_hashed() says are hashed -- never a netlink socket, which is hashed elsewhere
    (rhashtable). Seen on Linux 6.18 (tests/data/kinds_diag_netlink.bin). Keeps the first
    of each inode; returns how many were dropped."""
    seen: set[int] = set()
    kept = []
    for sock in res.sockets:
        if sock.inode not in seen:
            seen.add(sock.inode)
            kept.append(sock)
    dropped = len(res.sockets) - len(kept)
    res.sockets = kept
    return dropped


def parse_dump(data: bytes, proto: str, seq: int | None = None, want: int = 0) -> ParsedDump:
    """Decode captured reply bytes (one recv, or several concatenated) of one dump (want:
    WANT_* bits, what to read besides the sockets)."""
    res = ParsedDump()
    view = memoryview(data)
    # Concatenated datagrams frame like one: each ends where the next header starts.
    parse_into(view, len(view), proto, seq, res, want)
    return res
