"""Pure parsers for /proc/<pid>/net/{tcp,udp,udplite,icmp,raw}{,6}, unix, packet, netlink.

Input is the raw bytes of one file, output the sockets it lists plus the number of
lines that could not be parsed. No I/O here, so the parsers are tested on captured text.

The kernel prints each 32-bit word of an address with %08X in host byte order
(net/ipv4/tcp_ipv4.c: get_tcp4_sock), so the words are repacked natively before
decoding; ports are printed in host order already.
"""
from __future__ import annotations

import functools
import os
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import field

from .lazyre import LazyPattern
from .model import (
    TIMERS,
    PacketInfo,
    Socket,
    SocketDetail,
    netlink_socket,
    packet_socket,
)
from .records import record

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}
# Datagram and raw sockets reuse the TCP numbers: 1 when connected, 7 when not.
DGRAM_STATES = {1: "ESTABLISHED", 7: "UNCONN"}

UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
_UNIX_ACCEPTCON = 0x10000          # __SO_ACCEPTCON: a listening stream socket
# The St column (unix_seq_show): with a struct socket, SS_CONNECTED (3) or SS_UNCONNECTED (1);
# without one (accepted by the kernel, not yet by the process), SS_CONNECTING (2) when
# established, SS_DISCONNECTING (4) when not.
_UNIX_STATES = {1: "UNCONN", 2: "ESTABLISHED", 3: "ESTABLISHED", 4: "UNCONN"}

INET_FILES = {   # file -> (proto, family); all in one layout (tcp4_seq_show and its kin)
    "tcp": ("tcp", "inet"), "tcp6": ("tcp", "inet6"),
    "udp": ("udp", "inet"), "udp6": ("udp", "inet6"),
    "udplite": ("udplite", "inet"), "udplite6": ("udplite", "inet6"),
    "icmp": ("icmp", "inet"), "icmp6": ("icmp", "inet6"),     # ping sockets (ping_seq_show)
    "raw": ("raw", "inet"), "raw6": ("raw", "inet6"),
}
NET_FILES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "icmp", "icmp6", "raw",
             "raw6", "unix", "packet", "netlink")
# socket type numbers (linux/net.h) of packet sockets
PACKET_TYPES = {3: "raw", 2: "dgram", 10: "packet"}


@record(slots=True)
class ParseResult:
    sockets: list[Socket] = field(default_factory=list)
    malformed: int = 0
    examples: list[str] = field(default_factory=list)   # first few bad lines, for diagnostics

    def bad(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.examples) < 3:
            self.examples.append(line[:120].decode("ascii", "backslashreplace"))


_addr_cache: dict[bytes, str] = {}
# "%08X" (IPv4) or four of them (IPv6): int(x, 16) alone would also take "-1F", "0x1F", "1_F".
_HEX_ADDRESS = LazyPattern(rb"(?:[0-9A-Fa-f]{8}|[0-9A-Fa-f]{32})\Z")


def decode_address(hexaddr: bytes) -> str:
    """Decode the kernel's hex address; IPv4-mapped IPv6 addresses are shown as IPv4."""
    cached = _addr_cache.get(hexaddr)
    if cached is not None:
        return cached
    if not _HEX_ADDRESS.match(hexaddr):
        raise ValueError(f"not an address the kernel prints: {hexaddr[:40]!r}")
    if len(hexaddr) == 8:
        text = socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(hexaddr, 16)))
    elif len(hexaddr) == 32:
        raw = struct.pack("=4I", *(int(hexaddr[i:i + 8], 16) for i in (0, 8, 16, 24)))
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            text = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            text = socket.inet_ntop(socket.AF_INET6, raw)
    else:
        raise ValueError(f"bad address length {len(hexaddr)}")
    if len(_addr_cache) < 65536:
        _addr_cache[hexaddr] = text
    return text


def _complete_lines(data: bytes, result: ParseResult) -> list[bytes]:
    """The table's lines after the header; a last line with no newline was cut short by a
    truncated read and is counted as malformed rather than parsed (its inode may be cut)."""
    lines = data.split(b"\n")
    if len(lines) < 2:
        return []               # nothing but (part of) the header
    tail = lines.pop()          # b"" when the data ends with a newline, as the kernel's does
    if tail.strip():
        result.bad(tail)
    return lines[1:]


# One match validates a whole line and extracts what we use: "%4d: %08X:%04X %08X:%04X %02X
# %08X:%08X %02X:%08lX %08X %5u %8d %lu ..." (IPv6 addresses are four %08X words), and at
# least the two fields every table prints after the inode (ref, pointer) -- so a line cut
# short by a truncated read never passes with a shortened inode.
_H = rb"[0-9A-Fa-f]"


def _inet_line(queues: bytes) -> LazyPattern[bytes]:
    return LazyPattern(
        rb" *[0-9]+: (" + _H + rb"{8}|" + _H + rb"{32}):(" + _H + rb"{4}) (" + _H + rb"{8}|"
        + _H + rb"{32}):(" + _H + rb"{4}) (" + _H + rb"{2}) " + queues + rb" +([0-9]+) "
        rb"+-?[0-9]+ +([0-9]+) +-?[0-9]+ +" + _H + rb"+(?: |\Z)")


_INET_LINE = _inet_line(_H + rb"{8}:" + _H + rb"{8} " + _H + rb"{2}:" + _H + rb"{8,16} "
                        + _H + rb"{8}")
# ... and the queues and the timer, when asked (model.QUEUES): tx_queue:rx_queue tr:tm->when
# retrnsmt (get_tcp4_sock; the datagram tables print the same columns, the timer 0).
_INET_LINE_QUEUES = _inet_line(rb"(" + _H + rb"{8}):(" + _H + rb"{8}) (" + _H + rb"{2}):("
                               + _H + rb"{8,16}) (" + _H + rb"{8})")
# tm->when is in clock ticks (jiffies_delta_to_clock_t: USER_HZ, whatever the kernel's HZ)
_MS_PER_TICK = 1000 / (os.sysconf("SC_CLK_TCK") or 100)


def parse_inet(data: bytes, name: str) -> ParseResult:
    """Parse tcp, tcp6, udp, udp6, udplite{,6}, icmp{,6}, raw or raw6 (one layout).

    For raw sockets the kernel prints the IP protocol number where a port would be; for ping
    sockets the echo id. With the queues and the timer: parse_net_file(queues=True).
    """
    proto, family = INET_FILES[name]
    states = TCP_STATES if proto == "tcp" else DGRAM_STATES
    result = ParseResult()
    append = result.sockets.append
    match = _INET_LINE.compiled.match
    cache = _addr_cache
    for line in _complete_lines(data, result):
        m = match(line)
        if m is None:
            if line.strip():
                result.bad(line)
            continue
        laddr, lport, raddr, rport, st, uid, inode = m.groups()
        state = states.get(int(st, 16))
        if state is None:
            result.bad(line)
            continue
        append(Socket(proto, family, state, cache.get(laddr) or decode_address(laddr),
                      int(lport, 16), cache.get(raddr) or decode_address(raddr),
                      int(rport, 16), int(inode), int(uid)))
    return result


def _parse_inet_queues(data: bytes, name: str) -> ParseResult:
    """parse_inet with the queues and the timer. A listener's rx_queue is its accept queue
    (sk_ack_backlog); the table does not print its backlog: send_q None."""
    proto, family = INET_FILES[name]
    states = TCP_STATES if proto == "tcp" else DGRAM_STATES
    result = ParseResult()
    match = _INET_LINE_QUEUES.compiled.match
    for line in _complete_lines(data, result):
        m = match(line)
        state = states.get(int(m.group(5), 16)) if m else None
        timer = TIMERS.get(int(m.group(8), 16)) if m else None
        if m is None or state is None or timer is None:
            if line.strip():
                result.bad(line)
            continue
        laddr, lport, raddr, rport, _st, tx, rx, _tr, when, retr, uid, inode = m.groups()
        sock = Socket(proto, family, state, decode_address(laddr), int(lport, 16),
                      decode_address(raddr), int(rport, 16), int(inode), int(uid))
        listening = state == "LISTEN"
        sock.detail = SocketDetail(
            recv_q=int(rx, 16), send_q=None if listening else int(tx, 16), timer=timer,
            timer_ms=round(int(when, 16) * _MS_PER_TICK) if timer != "off" else None,
            timer_retransmits=int(retr, 16) if timer != "off" else None)
        result.sockets.append(sock)
    return result


# "%pK: %08X %08X %08X %04X %02X %5lu" then " <path>" when bound (fs/unix/af_unix.c).
_UNIX_ENTRY = LazyPattern(
    rb"([0-9a-fA-F]+): ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{4}) "
    rb"([0-9A-Fa-f]{2}) +([0-9]+)(?: (.*))?\Z", re.DOTALL)
# unix_seq_show prints at most the whole sun_path: 108 bytes, an abstract name's leading NUL
# as '@'. A line that starts within that many bytes of a name's start may be part of it.
UNIX_NAME_MAX = 108
_UNIX_ENTRY_START = LazyPattern(rb"[0-9a-fA-F]+: [0-9A-Fa-f]{8} ")


def parse_unix(data: bytes) -> ParseResult:
    """Parse /proc/net/unix.

    Names are printed raw, so a name may contain spaces or newlines, even empty lines: a
    line that is not a whole entry continues the previous entry's name -- if it has one;
    after an entry without a name it is garbage. Abstract names start with '@' and their NUL
    bytes are printed as '@'.

    A name can also hold a newline and then text shaped like an entry, which the kernel
    prints as one more line indistinguishable from its own. Only an entry starting within
    UNIX_NAME_MAX bytes of a name's start can be such a line (an entry after a nameless
    entry cannot): those are marked `unconfirmed`, for the join stage to check against the
    socket the line names (nsnet.unixcheck).
    """
    result = ParseResult()
    complete = data.endswith(b"\n")
    body = data[:-1] if complete else data
    header_end = body.find(b"\n")
    if header_end < 0:
        return result
    # [offset of the entry in the file, its bytes, offset of its name or -1]
    entries: list[list] = []
    offset = header_end + 1
    lines = body[offset:].split(b"\n")
    last = len(lines) - 1
    entry_match = _UNIX_ENTRY.compiled.match
    for i, line in enumerate(lines):
        m = entry_match(line)
        if m is not None or (i == last and not complete and _UNIX_ENTRY_START.match(line)):
            name_at = offset + m.start(8) if m is not None and m.group(8) is not None else -1
            entries.append([offset, line, name_at])
        elif (entries and entries[-1][2] >= 0
              and offset + len(line) <= entries[-1][2] + UNIX_NAME_MAX):
            entries[-1][1] += b"\n" + line
        elif line.strip():
            result.bad(line)
        offset += len(line) + 1
    if entries and not complete:
        result.bad(entries.pop()[1])    # cut short by a truncated read
    horizon = -1     # entries starting before this offset may be inside an earlier name
    for start, entry, name_at in entries:
        m = entry_match(entry)
        type_ = UNIX_TYPES.get(int(m.group(5), 16)) if m else None
        if m is None or type_ is None:
            result.bad(entry)
            continue
        if int(m.group(4), 16) & _UNIX_ACCEPTCON:
            state = "LISTEN"
        else:
            state = _UNIX_STATES.get(int(m.group(6), 16), "UNCONN")
        path = m.group(8) or b""
        result.sockets.append(Socket(
            "unix", "unix", state, path.decode("utf-8", "surrogateescape"), None, "", None,
            int(m.group(7)), None, unix_type=type_, unconfirmed=start < horizon))
        if name_at >= 0:
            horizon = max(horizon, name_at + UNIX_NAME_MAX + 1)
    return result


# packet_seq_show: "%pK %-6d %-4d %04x   %-5d %1d %-6u %-6u %-8lu": sk, refcount, type,
# protocol (host order), ifindex, running, rmem, uid, inode.
_PACKET_LINE = LazyPattern(
    rb"[0-9a-fA-F]+ +-?[0-9]+ +([0-9]+) +([0-9a-fA-F]{4}) +(-?[0-9]+) +[01] +[0-9]+ +([0-9]+) "
    rb"+([0-9]+) *\Z")
# netlink_seq_show: "%pK %-3d %-10u %08x %-8d %-8d %-5d %-8d %-8u %-8lu": sk, protocol,
# portid, first 32 groups, rmem, wmem, dump running, refcount, drops, inode.
_NETLINK_LINE = LazyPattern(
    rb"[0-9a-fA-F]+ +([0-9]+) +([0-9]+) +([0-9a-fA-F]{8}) +-?[0-9]+ +-?[0-9]+ +-?[0-9]+ "
    rb"+-?[0-9]+ +[0-9]+ +([0-9]+) *\Z")


def parse_packet(data: bytes) -> ParseResult:
    """Parse /proc/net/packet. Interfaces come as indexes: named later (name_interfaces)."""
    result = ParseResult()
    match = _PACKET_LINE.compiled.match
    for line in _complete_lines(data, result):
        m = match(line)
        type_ = PACKET_TYPES.get(int(m.group(1))) if m else None
        if m is None or type_ is None or int(m.group(3)) < -1:
            if line.strip():
                result.bad(line)
            continue
        result.sockets.append(packet_socket(type_, int(m.group(2), 16), int(m.group(3)), None,
                                            int(m.group(5)), int(m.group(4))))
    return result


def parse_netlink(data: bytes) -> ParseResult:
    """Parse /proc/net/netlink."""
    result = ParseResult()
    match = _NETLINK_LINE.compiled.match
    for line in _complete_lines(data, result):
        m = match(line)
        if m is None:
            if line.strip():
                result.bad(line)
            continue
        result.sockets.append(netlink_socket(int(m.group(1)), int(m.group(2)),
                                             int(m.group(3), 16), int(m.group(4))))
    return result


# /proc/<pid>/net/protocols (proto_seq_show): one line per protocol, its name and the
# namespace's count of sockets in use (sock_prot_inuse_get: hashed ones, those a table or
# a dump would list). Kinds whose count is zero need no dump.
PROTOCOL_NAMES = {"udplite": ("UDP-Lite", "UDPLITEv6"), "mptcp": ("MPTCP", "MPTCPv6"),
                  "icmp": ("PING", "PINGv6"), "raw": ("RAW", "RAWv6"), "packet": ("PACKET",)}


def parse_protocols(data: bytes) -> dict[str, int]:
    """protocol name -> sockets in use in the namespace; lines that do not parse are left
    out (a kind not found counts as present: asked for, never lost)."""
    found: dict[str, int] = {}
    for line in data.split(b"\n")[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].lstrip(b"-").isdigit():
            found[fields[0].decode("ascii", "replace")] = int(fields[2])
    return found


def kinds_in_use(counts: dict[str, int] | None) -> set[str] | None:
    """The kinds of PROTOCOL_NAMES with a socket in use; None: counts unknown (ask all)."""
    if counts is None:
        return None
    return {kind for kind, names in PROTOCOL_NAMES.items()
            if any(counts.get(name, 1) != 0 for name in names)}


def interface_names(data: bytes) -> dict[int, str]:
    """ifindex -> name of the interfaces /proc/net/if_inet6 lists (those with an IPv6
    address); lines that do not parse are parse_if_inet6's to count."""
    names: dict[int, str] = {}
    for line in data.split(b"\n"):
        m = _IF_INET6_INDEX.match(line.strip())
        if m is not None:
            names[int(m.group(1), 16)] = m.group(2).decode("utf-8", "surrogateescape")
    return names


def name_interfaces(sockets: list[Socket], names: dict[int, str]) -> None:
    """Give the packet sockets among `sockets` their interface's name, where known."""
    for i, sock in enumerate(sockets):
        info = sock.info
        if isinstance(info, PacketInfo) and info.ifindex and info.interface is None \
                and info.ifindex in names:
            named = packet_socket(info.type, info.protocol, info.ifindex,
                                  names[info.ifindex], sock.inode, sock.uid)
            named.source = sock.source
            sockets[i] = named


PARSERS: dict[str, Callable[[bytes], ParseResult]] = {
    name: functools.partial(parse_inet, name=name) for name in INET_FILES
}
PARSERS["unix"] = parse_unix
PARSERS["packet"] = parse_packet
PARSERS["netlink"] = parse_netlink


def parse_net_file(name: str, data: bytes, queues: bool = False) -> ParseResult:
    """One table; queues: with each inet socket's queues and timer (model.QUEUES)."""
    if queues and name in INET_FILES:
        return _parse_inet_queues(data, name)
    return PARSERS[name](data)


# A namespace's own addresses: what a socket bound elsewhere (IP_FREEBIND, no capability
# needed) is not. /proc/net/fib_trie prints each FIB entry as "|-- <address>" then one
# "/<len> <scope> <type>" line per alias (fib_trie_seq_show); a "host LOCAL" entry is an
# address of this namespace (/32) or a range it answers for ("ip route add local ...").
ADDRESS_FILES = ("fib_trie", "if_inet6")
_FIB_LEAF = re.compile(rb" *\|-- ([0-9.]+)\Z")
_FIB_ALIAS = re.compile(rb" *\/([0-9]+) host LOCAL\Z")
# if_inet6 (if6_seq_show): "%pi6 %02x %02x %02x %02x %8s": address, ifindex, prefix length,
# scope, flags, interface name.
_IF_INET6_INDEX = re.compile(rb"[0-9a-f]{32} ([0-9a-f]{2,}) [0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2} +(\S+)\Z")
_IF_INET6 = re.compile(rb"([0-9a-f]{32}) [0-9a-f]{2,} ([0-9a-f]{2}) [0-9a-f]{2} [0-9a-f]{2} +(\S+)\Z")


@record(frozen=True, slots=True)
class Address:
    addr: str                  # as sockets show it (IPv4 dotted, IPv6 compressed)
    prefix: int                # 32 / 128 for one address; shorter for a local range
    interface: str | None      # IPv6 only: fib_trie does not say which interface


def parse_fib_trie_local(data: bytes) -> tuple[list[Address], int]:
    """The local IPv4 addresses and ranges of a namespace, and the malformed line count."""
    found: dict[tuple[str, int], Address] = {}
    leaf: bytes | None = None
    malformed = 0
    for line in data.split(b"\n"):
        m = _FIB_LEAF.match(line)
        if m is not None:
            leaf = m.group(1)
            continue
        m = _FIB_ALIAS.match(line)
        if m is None or leaf is None:
            continue   # table names, inner nodes, other scopes and types
        try:
            addr = socket.inet_ntop(socket.AF_INET, socket.inet_aton(leaf.decode("ascii")))
            prefix = int(m.group(1))
        except (OSError, ValueError, UnicodeDecodeError):
            malformed += 1
            continue
        if prefix > 32:
            malformed += 1
            continue
        found.setdefault((addr, prefix), Address(addr, prefix, None))
    return sorted(found.values(), key=lambda a: (a.addr, a.prefix)), malformed


def parse_if_inet6(data: bytes) -> tuple[list[Address], int]:
    """A namespace's IPv6 addresses with their interfaces, and the malformed line count."""
    found: list[Address] = []
    malformed = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        m = _IF_INET6.match(line.strip())
        if m is None:
            malformed += 1
            continue
        addr = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(m.group(1).decode("ascii")))
        found.append(Address(addr, int(m.group(2), 16),
                             m.group(3).decode("utf-8", "surrogateescape")))
    return found, malformed


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def is_wildcard(addr: str) -> bool:
    return addr in ("0.0.0.0", "::")
