"""The `ss -tuanp` oracle of the differential test: a pure parser of ss's output and a pure,
churn-aware comparison of what ss saw against what nsnet reported. No I/O here.

Both sides are brought to one record, `Entry`: (proto, family, local addr:port, remote
addr:port, state) plus the holders {pid: fds}. The normalisations, each for a reason:
- ss prints TCP states its own way (ESTAB, TIME-WAIT, FIN-WAIT-2, UNCONN for a TCP socket in
  CLOSE); nsnet prints the kernel's names (ESTABLISHED, TIME_WAIT, FIN_WAIT2, CLOSE).
- ss prints an unspecified remote port as `*`; nsnet, like the kernel, as 0.
- ss prints the IPv6 wildcard of a dual-stack socket as `*`, of a v6-only one as `[::]`; both
  are `::` of family inet6 to nsnet (/proc/net/tcp6 does not say v6only).
- ss brackets IPv6 addresses and appends `%ifname` when the socket is bound to a device
  (SO_BINDTODEVICE, a link-local scope); /proc/net has no device column, so it is dropped.
- IPv4-mapped IPv6 (`[::ffff:127.0.0.1]`) is shown as IPv4 by nsnet, family staying inet6;
  ss's form is mapped the same way here. nsnet's own text is NOT rewritten: if nsnet printed
  a mapped address, an unbracketed form or a different spelling, the comparison sees it.
- ss prints one `("comm",pid=P,fd=F)` per (pid, fd); holders become {pid: sorted fds}.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

# iproute2 misc/ss.c sstate_name[] -> the kernel's names (include/net/tcp_states.h), which
# nsnet uses. UNCONN is SS_CLOSE: CLOSE for TCP, and the UNCONN convention for UDP.
SS_TCP_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
SS_UDP_STATES = {"ESTAB": "ESTABLISHED", "UNCONN": "UNCONN"}
SS_STATES = {"tcp": SS_TCP_STATES, "udp": SS_UDP_STATES}

# ss reads the name with fscanf("%*d (%[^)] )") from /proc/<pid>/stat: it stops at the first
# ')', so a name never contains one and each entry ends at the first ')' after its `("`.
_USER_ENTRY = re.compile(r'\("([^)]*)",pid=(\d+),fd=(\d+)\)')
_ROW_START = re.compile(r"(tcp|udp)\s")

Holders = dict[int, tuple[int, ...]]   # pid -> sorted fd numbers


class SsParseError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    """One TCP/UDP socket as either side sees it, normalised for comparison."""
    proto: str
    family: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    state: str
    holders: tuple[tuple[int, tuple[int, ...]], ...] = ()   # sorted (pid, fds) pairs
    iface: Optional[str] = field(default=None, compare=False)
    names: tuple[str, ...] = field(default=(), compare=False)
    inode: int = field(default=0, compare=False)        # nsnet's side only; ss -tuanp has none

    @property
    def key(self) -> tuple:
        return (self.proto, self.family, self.local_addr, self.local_port,
                self.remote_addr, self.remote_port, self.state)

    @property
    def holder_map(self) -> Holders:
        return dict(self.holders)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(p for p, _ in self.holders)

    def describe(self) -> str:
        return describe_key(self.key)


def describe_key(key: tuple) -> str:
    proto, family, laddr, lport, raddr, rport, state = key
    def ep(a: str, p: int) -> str:
        return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"
    return f"{proto}/{family} {ep(laddr, lport)} -> {ep(raddr, rport)} {state}"


def _freeze(holders: Holders) -> tuple[tuple[int, tuple[int, ...]], ...]:
    return tuple(sorted((pid, tuple(sorted(fds))) for pid, fds in holders.items()))


# ----------------------------------------------------------------------------- ss side

def parse_address(text: str) -> tuple[str, str, Optional[str]]:
    """ss's address part (`*`, `0.0.0.0`, `[::1]`, `127.0.0.53%lo`, `[fe80::1]%eth0`) ->
    (family, address as nsnet shows it, interface or None)."""
    iface = None
    if text == "*":
        return "inet6", "::", None             # IPv6 wildcard of a dual-stack socket
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise SsParseError(f"unclosed bracket in address {text!r}")
        inner, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith("%") or len(rest) < 2:
                raise SsParseError(f"junk after address {text!r}")
            iface = rest[1:]
        try:
            packed = socket.inet_pton(socket.AF_INET6, inner)
        except OSError:
            raise SsParseError(f"not an IPv6 address: {inner!r}") from None
        mapped = ipaddress.IPv6Address(packed).ipv4_mapped
        if mapped is not None:
            return "inet6", str(mapped), iface
        return "inet6", socket.inet_ntop(socket.AF_INET6, packed), iface
    addr, pct, dev = text.partition("%")
    if pct:
        if not dev:
            raise SsParseError(f"empty interface in {text!r}")
        iface = dev
    try:
        packed = socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise SsParseError(f"not an IPv4 address: {addr!r} (ss run without -n?)") from None
    return "inet", socket.inet_ntop(socket.AF_INET, packed), iface


def parse_endpoint(text: str) -> tuple[str, str, int, Optional[str]]:
    """`ADDR:PORT` -> (family, addr, port, iface); port `*` is 0."""
    addr, colon, port = text.rpartition(":")
    if not colon or not addr:
        raise SsParseError(f"no port in endpoint {text!r}")
    if port == "*":
        num = 0
    elif port.isdigit() and int(port) <= 65535:
        num = int(port)
    else:
        raise SsParseError(f"bad port in endpoint {text!r} (ss run without -n?)")
    family, addr_text, iface = parse_address(addr)
    return family, addr_text, num, iface


def parse_users(text: str) -> tuple[Holders, list[str]]:
    """`users:(("nginx",pid=1,fd=6),("nginx",pid=2,fd=6))` -> ({1: (6,), 2: (6,)}, names).
    An empty text (no process holds the socket, e.g. TIME-WAIT) -> ({}, [])."""
    text = text.strip()
    if not text:
        return {}, []
    if not (text.startswith("users:(") and text.endswith(")")):
        raise SsParseError(f"unexpected process column {text!r}")
    body = text[len("users:("):-1]
    holders: dict[int, set[int]] = defaultdict(set)
    names: list[str] = []
    pos = 0
    while True:
        m = _USER_ENTRY.match(body, pos)
        if m is None:
            raise SsParseError(f"bad users entry at {body[pos:pos + 40]!r} in {text!r}")
        names.append(m.group(1))
        holders[int(m.group(2))].add(int(m.group(3)))
        pos = m.end()
        if pos == len(body):
            break
        if body[pos] != ",":
            raise SsParseError(f"expected ',' at {body[pos:pos + 40]!r} in {text!r}")
        pos += 1
    return {pid: tuple(sorted(fds)) for pid, fds in holders.items()}, names


def _rows(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise SsParseError("empty ss output (not even a header)")
    if not lines[0].startswith("Netid"):
        raise SsParseError(f"no Netid column in header {lines[0]!r}: run ss with both -t and -u")
    rows: list[str] = []
    for line in lines[1:]:
        if _ROW_START.match(line):
            rows.append(line)
        elif line.strip():
            # ss wraps a row that does not fit its screen width; the rest is indented
            if not rows:
                raise SsParseError(f"continuation line before any row: {line!r}")
            rows[-1] += " " + line.strip()
    return rows


def parse_ss_row(row: str) -> Entry:
    parts = row.split(None, 6)
    if len(parts) < 6:
        raise SsParseError(f"short ss row {row!r}")
    netid, state, recvq, sendq, local, peer = parts[:6]
    if not (recvq.isdigit() and sendq.isdigit()):
        raise SsParseError(f"bad queue columns in {row!r}")
    states = SS_STATES.get(netid)
    if states is None:
        raise SsParseError(f"unexpected netid {netid!r}")
    kernel_state = states.get(state)
    if kernel_state is None:
        raise SsParseError(f"unknown {netid} state {state!r}")
    lfam, laddr, lport, iface = parse_endpoint(local)
    rfam, raddr, rport, _ = parse_endpoint(peer)
    # `*` (dual-stack wildcard) is inet6, so both ends of one socket agree on the family
    if lfam != rfam:
        raise SsParseError(f"local and peer families differ in {row!r}")
    holders, names = parse_users(parts[6] if len(parts) == 7 else "")
    return Entry(netid, lfam, laddr, lport, raddr, rport, kernel_state, _freeze(holders),
                 iface, tuple(names))


def parse_ss(text: str) -> list[Entry]:
    """The whole output of `ss -tuanp` (header included) -> entries."""
    return [parse_ss_row(row) for row in _rows(text)]


# --------------------------------------------------------------------------- nsnet side

def nsnet_entry(sock: dict) -> Entry:
    """A socket of `nsnet sockets --json`, as is (its text is not rewritten)."""
    fds = {int(pid): tuple(v) for pid, v in (sock.get("fds") or {}).items()}
    # every pid of either field is a holder: a pid in one field only shows up as a holder
    # with no fds, or as a holder ss did not see (the test also checks the two agree)
    holders = {pid: fds.get(pid, ()) for pid in set(sock["pids"]) | set(fds)}
    return Entry(sock["proto"], sock["family"], sock["local_addr"], sock["local_port"],
                 sock["remote_addr"], sock["remote_port"], sock["state"], _freeze(holders),
                 inode=sock["inode"])


# --------------------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """The result for one namespace. `problems` empty means nsnet agrees with ss."""
    problems: list[str] = field(default_factory=list)
    compared: list[Entry] = field(default_factory=list)        # in before, nsnet and after
    holders_checked: int = 0
    churned: list[str] = field(default_factory=list)            # differences churn explains
    excused: list[str] = field(default_factory=list)            # ... proved by `held_after`

    @property
    def ok(self) -> bool:
        return not self.problems


def _group(entries: Iterable[Entry]) -> dict[tuple, list[Entry]]:
    out: dict[tuple, list[Entry]] = defaultdict(list)
    for e in entries:
        out[e.key].append(e)
    return out


def _fmt_holders(h: Holders) -> str:
    return "{" + ", ".join(f"{p}: fds {list(f)}" for p, f in sorted(h.items())) + "}" if h else "{} (no holder)"


def _gone(e: Entry, held_after: Optional[set[tuple[int, int]]]) -> bool:
    """True when the socket is shown to have died before the check: none of its holders
    still holds its inode. A socket with no file (inode 0: TIME_WAIT, an orphan, a child not
    yet accepted) cannot be checked: gone only when excuses are allowed at all."""
    if held_after is None:
        return False
    if not e.inode:
        return True
    return not any((pid, e.inode) in held_after for pid in e.pids)


def compare(before: Iterable[Entry], nsnet: Iterable[Entry], after: Iterable[Entry],
            held_after: Optional[set[tuple[int, int]]] = None,
            steady_pids: frozenset[int] = frozenset()) -> Comparison:
    """ss ran before and after nsnet's snapshot. Honest under churn:
    - every socket nsnet reports is in before ∪ after (as a multiset: per key, at most
      max(before, after) of them);
    - every socket in before ∩ after is in nsnet (per key, at least min(before, after));
    - for a socket in all three, the holders that ss saw both times are nsnet's holders, and
      nsnet's holders were seen by ss at least once (before∩after ⊆ nsnet ⊆ before∪after);
      the fds of a pid whose fds did not change between the two ss runs must be nsnet's.
      Sockets nobody holds (TIME_WAIT) compare with empty holder sets.
    When a key occurs more than once (SO_REUSEPORT groups), holders are compared as a
    multiset, and only when ss saw the same multiset both times.

    A socket (or a holder pid) that lived only between the two ss runs breaks the first
    rule without any fault of nsnet's. Where such churn is expected (the host, other
    people's namespaces), the caller passes `held_after`: the (pid, socket inode) pairs
    whose fd still pointed at nsnet's socket when checked, AFTER the second ss run. Then an
    nsnet socket ss never saw is excused only if it is gone (no holder still holds it, or it
    has no file), and a holder pid ss never saw only if it no longer holds the socket; a
    socket still alive after the second ss run must have been seen by it. With
    `held_after=None` nothing is excused. A holder pid ss never saw is excused only when it
    came or went during the window: it is not in `steady_pids` (the pids that existed before
    the first ss run and still existed at the check), as a forked child that exited is not;
    a long-lived process that nsnet names as a holder of a socket it never held is not
    excused."""
    b, n, a = _group(before), _group(nsnet), _group(after)
    result = Comparison()
    for key in sorted(set(b) | set(n) | set(a), key=repr):
        nb, nn, na = len(b.get(key, [])), len(n.get(key, [])), len(a.get(key, []))
        what = describe_key(key)
        if nn > max(nb, na):
            live = [e for e in n[key] if not _gone(e, held_after)]
            if len(live) > max(nb, na):
                result.problems.append(
                    f"{what}: nsnet reports {nn} such socket(s), ss saw {nb} before and {na} "
                    f"after; nsnet holders {[_fmt_holders(e.holder_map) for e in n[key]]}"
                    + (f", inodes {[e.inode for e in n[key]]}" if held_after is not None else ""))
            else:
                result.excused.append(f"{what}: seen by nsnet only, gone by the second ss run")
            continue
        if nn < min(nb, na):
            result.problems.append(
                f"{what}: ss saw {nb} before and {na} after, nsnet reports {nn}; ss holders "
                f"{[_fmt_holders(e.holder_map) for e in b[key]]}")
            continue
        if nb != na:
            result.churned.append(what)
        if not (nb and nn and na):
            continue
        if nb == nn == na == 1:
            eb, en, ea = b[key][0], n[key][0], a[key][0]
            result.compared.append(en)
            result.holders_checked += 1
            hb, hn, ha = eb.holder_map, en.holder_map, ea.holder_map
            stable, seen = set(hb) & set(ha), set(hb) | set(ha)
            missing, extra = stable - set(hn), set(hn) - seen
            if held_after is not None and extra:
                gone = {p for p in extra if p not in steady_pids
                        and ((p, en.inode) not in held_after or not en.inode)}
                if gone:
                    result.excused.append(f"{what}: holder(s) {sorted(gone)} seen by nsnet "
                                          "only, gone by the second ss run")
                extra -= gone
            if missing or extra:
                result.problems.append(
                    f"{what}: holder pids differ: ss before {_fmt_holders(hb)}, ss after "
                    f"{_fmt_holders(ha)}, nsnet {_fmt_holders(hn)}"
                    + (f"; nsnet lacks {sorted(missing)}" if missing else "")
                    + (f"; nsnet has {sorted(extra)} that ss never saw" if extra else ""))
                continue
            for pid in sorted(stable & set(hn)):
                if hb[pid] == ha[pid] and hn[pid] != hb[pid]:
                    result.problems.append(
                        f"{what}: pid {pid} holds fds {list(hb[pid])} (ss, twice), nsnet says "
                        f"{list(hn[pid])}")
            if hb != ha:
                result.churned.append(f"{what}: holders changed between the ss runs")
        elif nb == nn == na:
            mb = sorted(e.holders for e in b[key])
            ma = sorted(e.holders for e in a[key])
            mn = sorted(e.holders for e in n[key])
            result.compared.extend(n[key])
            if mb == ma:
                result.holders_checked += nn
                if mn != mb:
                    result.problems.append(
                        f"{what} (x{nn}): holders differ: ss {[_fmt_holders(dict(h)) for h in mb]}, "
                        f"nsnet {[_fmt_holders(dict(h)) for h in mn]}")
            else:
                result.churned.append(f"{what} (x{nn}): holders changed between the ss runs")
    return result
