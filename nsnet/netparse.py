"""Pure parsers for /proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6,unix}.

Input is the raw bytes of one file, output the sockets it lists plus the number of
lines that could not be parsed. No I/O here, so the parsers are tested on captured text.

The kernel prints each 32-bit word of an address with %08X in host byte order
(net/ipv4/tcp_ipv4.c: get_tcp4_sock), so the words are repacked natively before
decoding; ports are printed in host order already.
"""
from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional

from .model import Socket

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}
# Datagram and raw sockets reuse the TCP numbers: 1 when connected, 7 when not.
DGRAM_STATES = {1: "ESTABLISHED", 7: "UNCONN"}

UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
_UNIX_ACCEPTCON = 0x10000          # __SO_ACCEPTCON: a listening stream socket
_SS_CONNECTING, _SS_CONNECTED, _SS_DISCONNECTING = 2, 3, 4

INET_FILES = {   # file -> (proto, family)
    "tcp": ("tcp", "inet"), "tcp6": ("tcp", "inet6"),
    "udp": ("udp", "inet"), "udp6": ("udp", "inet6"),
    "raw": ("raw", "inet"), "raw6": ("raw", "inet6"),
}
NET_FILES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix")


@dataclass(slots=True)
class ParseResult:
    sockets: list[Socket] = field(default_factory=list)
    malformed: int = 0
    examples: list[str] = field(default_factory=list)   # first few bad lines, for diagnostics

    def bad(self, line: bytes) -> None:
        self.malformed += 1
        if len(self.examples) < 3:
            self.examples.append(line[:120].decode("ascii", "backslashreplace"))


_addr_cache: dict[bytes, str] = {}


def decode_address(hexaddr: bytes) -> str:
    """Decode the kernel's hex address; IPv4-mapped IPv6 addresses are shown as IPv4."""
    cached = _addr_cache.get(hexaddr)
    if cached is not None:
        return cached
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


def _endpoint(field_: bytes) -> tuple[str, int]:
    addr, _, port = field_.partition(b":")
    if not port:
        raise ValueError("no port")
    return decode_address(addr), int(port, 16)


def parse_inet(data: bytes, name: str) -> ParseResult:
    """Parse tcp, tcp6, udp, udp6, raw or raw6 (they share one layout).

    For raw sockets the kernel prints the IP protocol number where a port would be.
    """
    proto, family = INET_FILES[name]
    states = TCP_STATES if proto == "tcp" else DGRAM_STATES
    result = ParseResult()
    append = result.sockets.append
    lines = data.split(b"\n")
    for line in lines[1:]:            # the first line is the header
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) < 10 or not fields[0].endswith(b":"):
                raise ValueError("short line")
            local_addr, local_port = _endpoint(fields[1])
            remote_addr, remote_port = _endpoint(fields[2])
            state = states.get(int(fields[3], 16))
            if state is None:
                raise ValueError("unknown state")
            uid = int(fields[7])
            inode = int(fields[9])
        except (ValueError, OSError):
            result.bad(line)
            continue
        append(Socket(proto, family, state, local_addr, local_port, remote_addr,
                      remote_port, inode, uid))
    return result


# "%pK: %08X %08X %08X %04X %02X %5lu" then " <path>" when bound (fs/unix/af_unix.c).
_UNIX_ENTRY = re.compile(
    rb"([0-9a-fA-F]+): ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{8}) ([0-9A-Fa-f]{4}) "
    rb"([0-9A-Fa-f]{2}) +([0-9]+)(?: (.*))?\Z", re.DOTALL)
_UNIX_ENTRY_START = re.compile(rb"[0-9a-fA-F]+: [0-9A-Fa-f]{8} ")


def parse_unix(data: bytes) -> ParseResult:
    """Parse /proc/net/unix.

    Paths are printed raw, so a path may contain spaces or even newlines: a line that
    does not start an entry continues the previous entry's path. Abstract names start
    with '@' and their NUL bytes are printed as '@'.
    """
    result = ParseResult()
    entries: list[bytes] = []
    for line in data.split(b"\n")[1:]:
        if _UNIX_ENTRY_START.match(line):
            entries.append(line)
        elif entries and line:
            entries[-1] += b"\n" + line
        elif line.strip():
            result.bad(line)
    for entry in entries:
        m = _UNIX_ENTRY.match(entry)
        type_ = UNIX_TYPES.get(int(m.group(5), 16)) if m else None
        if m is None or type_ is None:
            result.bad(entry)
            continue
        flags = int(m.group(4), 16)
        st = int(m.group(6), 16)
        path = m.group(8) or b""
        if flags & _UNIX_ACCEPTCON:
            state = "LISTEN"
        elif st == _SS_CONNECTED:
            state = "ESTABLISHED"
        elif st == _SS_CONNECTING:
            state = "SYN_SENT"
        elif st == _SS_DISCONNECTING:
            state = "CLOSING"
        else:
            state = "UNCONN"
        result.sockets.append(Socket(
            "unix", "unix", state, path.decode("utf-8", "surrogateescape"), None, "", None,
            int(m.group(7)), None, unix_type=type_))
    return result


PARSERS: dict[str, Callable[[bytes], ParseResult]] = {
    name: (lambda data, _n=name: parse_inet(data, _n)) for name in INET_FILES
}
PARSERS["unix"] = parse_unix


def parse_net_file(name: str, data: bytes) -> ParseResult:
    return PARSERS[name](data)


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def is_wildcard(addr: str) -> bool:
    return addr in ("0.0.0.0", "::")
