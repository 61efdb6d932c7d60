"""Human output: the JSON views rendered as tables for a terminal or a pipe.

One vocabulary in every table, said once in VOCABULARY below (`nsnet --help` prints it; the
README's "Reading the tables" explains it at length).

Row order (documented in the README): namespaces host first, then by inode; sockets by
namespace, protocol, listeners first, then local and remote endpoint; users by uid;
connection groups most open connections first.

What is never cut on a terminal (nsnet.table): endpoints, ports, states, names. Lists of pids
and users become "first +count" when the table does not fit; command lines are cut last;
columns that do not fit even then are hidden and the output says which (``-o wide`` shows
everything).
"""
from __future__ import annotations

import socket as _socket
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from .model import LINK_PROTOS, NOT_IP
from .palette import GUESS_STYLE, UNHELD_STYLE, address_style, state_style
from .sanitize import SafeText, join_cmdline, printable
from .table import (
    Column,
    display_width,
    heading,
    paint,
    render_table,
    select_columns,
    wrap_text,
)
from .views import endpoint

VOCABULARY = """words (the same in every table):
  SERVICE     the server's end, ADDRESS:PORT (Connects to: theirs; Connected from: ours)
  CLIENT      the address a connection to one of our services comes from
  OTHER END   same netns | the other namespace's name (host, pod:NS/NAME, netns:PIN) |
              off node (no namespace of this node has that address)
  OPEN/CLOSED connections open now / closed recently (TIME_WAIT, FIN_WAIT...)
  USERS       a user's name, else its uid; ? marks a guess (no process holds the socket)
  KNOWN BY    holder, table-uid, listener, namespace-owner, namespace-owners? (a guess)
  DIR         in (accepted), out (connected), listen
  [::]:P (+IPv4) / (v6only)   an IPv6 wildcard that takes IPv4 too / only IPv6 (the /proc
              tables do not say: then neither is written)
  ADDR%IF     bound to interface IF (SO_BINDTODEVICE, a link-local address's scope)"""
V6ONLY_MARK = " (v6only)"
DUAL_STACK_MARK = " (+IPv4)"
GUESS_MARK = "?"
GUESS_LEGEND = ("? a guess: no process holds those sockets, and their namespace has several "
                "owners; each is shown")
DIRECTION_LEGEND = ("? after a protocol: which end served is inferred from the ports only (no "
                    "listener was seen: only the other end's port is an ephemeral one)")
UNCONFIRMED_LEGEND = ("? after a unix state or name: its /proc/net/unix line may be part of a "
                      "bound name (which can hold newlines) and nothing could confirm it")
DIRECTION = {"inbound": "in", "outbound": "out", "listening": "listen"}
OTHER_END = {"local": "same netns", "external": "off node"}


@lru_cache(maxsize=4096)
def _service(port: int, proto: str) -> str | None:
    try:
        return _socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return None


class Renderer:
    """How one command's output is drawn: the terminal's width (None: a pipe or ``-o wide``,
    nothing cut), colour, port names, the columns chosen with ``-o``; and what it had to
    leave out, said once at the end (:meth:`notes`)."""

    def __init__(self, width: int | None, color: bool, resolve: bool = False, *,
                 columns: Sequence[str] | None = None,
                 user_names: dict[str, str | None] | None = None):
        self.width = width
        self.color = color
        self.resolve = resolve
        self.columns = list(columns) if columns else None
        self.user_names = user_names or {}
        self.hidden: list[str] = []

    # ------------------------------------------------------------------ cells
    def ep(self, addr: str | None, port: int | None, proto: str = "tcp",
           scope: str | None = None) -> str:
        if addr is None:
            return ""
        if port is not None and self.resolve and proto in ("tcp", "udp"):
            name = _service(port, proto)
            if name:
                return endpoint(addr, 0, scope)[:-1] + name
        return endpoint(addr, port, scope)

    def local(self, addr: str, port: int | None, doc: dict) -> str:
        """A socket's own end: its bound interface after the address, and for an IPv6
        wildcard whether it takes IPv4 too -- where the source could tell (not /proc)."""
        text = self.ep(addr, port, doc["proto"], doc.get("bound_interface"))
        if addr == "::" and doc.get("v6only") is not None:
            text += V6ONLY_MARK if doc["v6only"] else DUAL_STACK_MARK
        return text

    def user(self, uid: int | None) -> str:
        """A user as every table shows it: its name, else its uid."""
        if uid is None:
            return "unknown"
        return printable(self.user_names.get(str(uid)) or str(uid))

    def users(self, uids: Sequence[int], guessed: bool | Sequence[int] = False) -> str:
        """Users, each marked ? when it is a guess (all of them, or those listed)."""
        return SafeText(",".join(
            self.user(u) + (GUESS_MARK if guessed is True or (guessed and u in guessed) else "")
            for u in uids))

    def users_short(self, uids: Sequence[int], guessed: bool | Sequence[int] = False) -> str:
        """'10601 +1?': the first user, how many more, and ? when one of those is a guess."""
        text = _first_more(self.users(uids[:1], guessed), len(uids))
        rest_guessed = guessed is True or any(u in guessed for u in uids[1:]) \
            if guessed else False
        return SafeText(text + (GUESS_MARK if len(uids) > 1 and rest_guessed else ""))

    # ------------------------------------------------------------------ blocks
    def table(self, columns: list[Column], rows: list, **kw: Any) -> str:
        if self.columns:
            columns = select_columns(columns, self.columns)
        return render_table(columns, rows, width=self.width, color=self.color,
                            on_hidden=self._hidden, **kw)

    def titled(self, title: str, columns: list[Column], rows: list, **kw: Any) -> list[str]:
        """A blank line, the title, the table; nothing when ``-o`` chose none of its
        columns (a view of several tables shows those that have some)."""
        if self.columns and not select_columns(columns, self.columns):
            return []
        return ["", self.title(title), self.table(columns, rows, **kw)]

    def _hidden(self, titles: list[str]) -> None:
        self.hidden.extend(t for t in titles if t not in self.hidden)

    def head(self, text: str) -> str:
        """A section heading; on a terminal a long one continues on the next lines, whole."""
        if self.width is None or display_width(printable(text)) <= self.width:
            return heading(text, self.color)
        lines = wrap_text(printable(text), self.width)
        return "\n".join(paint(line, "bold", self.color) for line in lines) + "\n" + \
            "=" * self.width

    def title(self, text: str) -> str:
        """A table's title: the blank line before it is the caller's."""
        return paint(text, "bold", self.color)

    def facts(self, pairs: Sequence[tuple[str, str]], indent: str = "  ") -> list[str]:
        """'label value' pairs on as few lines as the width allows, none cut."""
        items = [f"{label} {value}" for label, value in pairs if value]
        if self.width is None:
            return [indent + "   ".join(items)] if items else []
        lines: list[str] = []
        line = ""
        for item in items:
            if line and display_width(line + "   " + item) <= self.width - len(indent):
                line += "   " + item
                continue
            if line:
                lines.append(indent + line)
            pieces = wrap_text(item, max(self.width - len(indent), 8))
            lines.extend(indent + p for p in pieces[:-1])
            line = pieces[-1]
        if line:
            lines.append(indent + line)
        return lines

    def notes(self) -> list[str]:
        """What the terminal had no room for: said once, after everything."""
        if not self.hidden:
            return []
        return [f"(not shown at {self.width} columns: {', '.join(self.hidden)}; "
                "-o wide shows every column)"]


def _first_more(first: str, count: int) -> str:
    return SafeText(first + (f" +{count - 1}" if count > 1 else ""))


def _pids(pids: Sequence[int]) -> str:
    return ",".join(str(p) for p in pids)


def _pids_short(pids: Sequence[int]) -> str:
    return _first_more(str(pids[0]), len(pids)) if pids else ""


def _ns(inode: int | None, key: str = "") -> str:
    return str(inode) if inode is not None else key


def _command(p: dict) -> str:
    return join_cmdline(p["cmdline"]) if p["cmdline"] else printable(f"[{p['comm']}]")


def _holders(doc: dict, procs: dict[int, dict]) -> str:
    """'pid:command' of every holder (a pipe gets them all; a terminal cuts the cell)."""
    names = [f"{pid}:" + _command(procs[pid]) for pid in doc["pids"] if pid in procs]
    # every piece is a pid or already escaped: mark the whole as safe, or it is escaped twice
    return SafeText(" ".join(names))


def pod_name(ref: dict) -> str:
    """ns/name as the kubelet's log tree names it; the uid when the pod is not in it."""
    if ref.get("namespace") and ref.get("name"):
        return printable(f"{ref['namespace']}/{ref['name']}")
    return printable(f"pod:{ref['uid']}")


def _pods(refs: list[dict]) -> str:
    return SafeText(",".join(pod_name(p) for p in refs))


def _pods_short(refs: list[dict]) -> str:
    return _first_more(pod_name(refs[0]), len(refs)) if refs else ""


def _container(c: dict | None) -> str:
    if not c:
        return ""
    return printable(c["name"]) if c.get("name") else c["id"][:12]


def _proto(s: dict) -> str:
    return s["proto"] + ("6" if s.get("family") == "inet6" else "")


def _link_local(s: dict) -> str:
    """A packet socket's interface and what it receives ("eth0 (all)": every frame; "*":
    every interface); a netlink socket's protocol and port id ("route:0": the kernel's)."""
    if s.get("packet"):
        return printable(f"{s['local_addr']} ({s['packet']['protocol_name']})")
    if s.get("netlink"):
        kernel = " (kernel)" if s["netlink"]["kernel"] else ""
        return printable(f"{s['local_addr']}:{s['local_port']}{kernel}")
    return printable(s["local_addr"])


def _names(names: Sequence[str | None]) -> str:
    return printable(",".join(n for n in names if n))


def other_end(peer: str | None, names: Sequence[str | None]) -> str:
    """same netns, the other namespace's name, or off node (see the module docstring)."""
    if peer == "node":
        return _names(names) or "this node, netns unknown"
    return OTHER_END.get(peer or "", peer or "")


def _socket_other_end(s: dict) -> str:
    name = s.get("peer_netns_name") or (f"netns:{s['peer_netns']}" if s["peer_netns"] else None)
    return other_end(s["peer"], [name])


def _group_other_end(g: dict) -> str:
    return other_end(g["peer"], g.get("peer_names") or [])


def _with_service(endpoint_text: str, doc: dict) -> str:
    """'10.0.0.5:3306 (shared-db)': the operator's name from --services, when it has one."""
    name = doc.get("service")
    return f"{endpoint_text} ({printable(name)})" if name else endpoint_text


def _legend(out: list[str], guessed: bool, unconfirmed: bool = False) -> None:
    if guessed:
        out.append(GUESS_LEGEND)
    if unconfirmed:
        out.append(UNCONFIRMED_LEGEND)


def _finish(out: list[str], r: Renderer) -> str:
    text = "\n".join(out).rstrip("\n")
    notes = r.notes()
    text += "\n" + "\n".join(notes) if notes and text else "\n".join(notes)
    if r.width is None:
        return text
    return "\n".join(piece for line in text.split("\n") for piece in prose(line, r.width))


def prose(line: str, width: int) -> list[str]:
    """A line of ours (a count, a note, a legend) on a terminal: broken at blanks into lines
    of at most ``width`` cells, continued with an indent; nothing cut. Tables and headings
    come fitted already (and carry our colour codes: left alone)."""
    if "\x1b" in line or display_width(line) <= width:
        return [line]
    indent = "  " if width > 20 else ""
    lines: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if display_width((indent if lines else "") + candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        room = width - (len(indent) if lines or current else 0)
        pieces = wrap_text(word, max(room, 1))
        lines.extend(pieces[:-1])
        current = pieces[-1]
    if current:
        lines.append(current)
    return [lines[0], *(indent + rest for rest in lines[1:])]


def _ep_column(title: str, r: Renderer, addr: Callable[[dict], str | None],
               port: Callable[[dict], int | None], *, exposed: Callable[[dict], bool],
               with_service: bool = False, **kw: Any) -> Column:
    """An endpoint column: never cut (wraps whole on a tiny terminal), coloured by the
    address's class (nsnet.palette)."""
    def text(row: dict) -> str:
        shown = r.ep(addr(row), port(row), row["proto"])
        return _with_service(shown, row) if with_service else shown
    return Column(title, text, wrap=True, min_width=kw.pop("min_width", 21),
                  style=lambda row: address_style(addr(row), exposed(row)), **kw)


def _users_column(title: str, r: Renderer, users: Callable[[dict], list[int]],
                  guessed: Callable[[dict], bool | list[int]], **kw: Any) -> Column:
    return Column(title, lambda g: r.users(users(g), guessed(g)),
                  short=lambda g: r.users_short(users(g), guessed(g)),
                  style=lambda g: GUESS_STYLE if guessed(g) else None, wrap=True,
                  min_width=8, **kw)


def _pids_column(key: str = "pids", **kw: Any) -> Column:
    return Column("PIDS", lambda row: _pids(row[key]), short=lambda row: _pids_short(row[key]),
                  wrap=True, min_width=8, **kw)


def _counts_columns() -> list[Column]:
    return [Column("OPEN", "count", align="right"), Column("CLOSED", "closed", align="right")]


def _states_column() -> Column:
    return Column("STATES", lambda g: ",".join(f"{k}:{v}" for k, v in g["states"].items()),
                  wrap=True, min_width=14, priority=2)


def _known_by(g: dict) -> str:
    """How the group's users are known (model.EVIDENCE), a guess marked."""
    return ",".join(kind + (GUESS_MARK if kind == "namespace-owners" else "")
                    for kind in g["attribution"])


# ---------------------------------------------------------------------------- sockets

def _timer(d: dict | None) -> str:
    """ss -o's timer:(keepalive,119sec,0): the kind, when it fires, its retransmits."""
    if not d or d["timer"] in (None, "off"):
        return ""
    ms = d["timer_ms"]
    when = "" if ms is None else f" {ms / 1000:.1f}s" if ms < 60_000 else f" {ms // 60_000}min"
    retrans = f"/{d['timer_retransmits']}" if d["timer_retransmits"] else ""
    return f"{d['timer']}{when}{retrans}"


def _tcp(d: dict | None, field: str) -> Any:
    tcp = d.get("tcp") if d else None
    return None if not tcp else tcp[field]


def _bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def _traffic(e: dict) -> str:
    """An edge's bytes sent and received (TCP_INFO), '4.0K/1.2M'; empty when not measured."""
    if e["bytes_sent"] is None:
        return ""
    return f"{_bytes(e['bytes_sent'])}/{_bytes(e['bytes_received'])}"


def _detail_columns() -> list[Column]:
    """-e and -i (shown when the document has details; -o names them too)."""
    def q(key: str) -> Callable[[dict], str]:
        return lambda s: "" if not s.get("detail") or s["detail"][key] is None \
            else str(s["detail"][key])
    return [
        Column("RECV-Q", q("recv_q"), align="right"),
        Column("SEND-Q", q("send_q"), align="right"),
        Column("TIMER", lambda s: _timer(s.get("detail")), priority=2),
        Column("RTT", lambda s: "" if _tcp(s.get("detail"), "rtt_us") is None else
               f"{_tcp(s['detail'], 'rtt_us') / 1000:.1f}ms", align="right", priority=2),
        Column("CWND", lambda s: str(_tcp(s.get("detail"), "cwnd") or ""), align="right",
               priority=3),
        Column("RETRANS", lambda s: str(_tcp(s.get("detail"), "total_retrans") or ""),
               align="right", priority=2),
        Column("SENT", lambda s: _bytes(_tcp(s.get("detail"), "bytes_acked")), align="right",
               priority=3),
        Column("RCVD", lambda s: _bytes(_tcp(s.get("detail"), "bytes_received")),
               align="right", priority=3),
        Column("CONG", lambda s: printable(_tcp(s.get("detail"), "congestion") or ""),
               priority=3),
        Column("COOKIE", lambda s: "" if not s.get("detail") or s["detail"]["cookie"] is None
               else f"{s['detail']['cookie']:x}", priority=0),
        Column("SKMEM", lambda s: _skmem(s.get("detail")), wrap=True, min_width=12,
               priority=2),
        Column("OPTIONS", lambda s: _options(s.get("detail")), wrap=True, min_width=20,
               priority=2),
    ]


SKMEM_FIELDS = (("r", "rmem_alloc"), ("rb", "rcvbuf"), ("t", "wmem_alloc"), ("tb", "sndbuf"),
                ("f", "fwd_alloc"), ("w", "wmem_queued"), ("o", "optmem"), ("bl", "backlog"),
                ("d", "drops"))


def _skmem(d: dict | None) -> str:
    """ss -m's skmem:(r0,rb131072,t0,tb16384,f0,w0,o0,bl0,d0)."""
    memory = d.get("memory") if d else None
    if not memory:
        return ""
    return ",".join(f"{short}{memory[name]}" for short, name in SKMEM_FIELDS)


def _options(d: dict | None) -> str:
    """knetstat's SO_REUSEADDR=1,SO_KEEPALIVE=0,...; SO_LINGER=off when it is."""
    options = d.get("options") if d else None
    if not options:
        return ""
    return printable(",".join(f"{k}={'off' if v is None else v}" for k, v in options.items()))


DETAIL_COLUMN_NAMES = [c.name for c in _detail_columns()]
TCP_INFO_COLUMNS = frozenset({"RTT", "CWND", "RETRANS", "SENT", "RCVD", "CONG"})
OPTION_COLUMNS = frozenset({"OPTIONS"})
MEMORY_COLUMNS = frozenset({"SKMEM"})


def socket_columns(r: Renderer, procs: dict[int, dict], *, netns: bool,
                   detail: bool = False, tcp_info: bool = False, options: bool = False,
                   memory: bool = False) -> list[Column]:
    """The columns of `nsnet sockets` (``-o`` chooses among them by name); detail: -e's,
    tcp_info: -i's, options: --options', memory: -m's."""
    extra = [c for c in _detail_columns()
             if (tcp_info if c.name in TCP_INFO_COLUMNS
                 else options if c.name in OPTION_COLUMNS
                 else memory if c.name in MEMORY_COLUMNS else detail)]
    return [
        *([Column("NETNS", lambda s: printable(s.get("netns_name") or
                                               _ns(s["netns"], s["netns_key"])), wrap=True,
                  min_width=10)] if netns else []),
        Column("PROTO", _proto),
        Column("STATE", lambda s: s["state"] + (GUESS_MARK if s.get("unconfirmed") else ""),
               style=lambda s: GUESS_STYLE if s.get("unconfirmed") else state_style(s["state"])),
        Column("LOCAL", lambda s: printable(s["local_addr"]) if s["proto"] == "unix"
               else _link_local(s) if s["proto"] in LINK_PROTOS
               else _with_service(r.local(s["local_addr"], s["local_port"], s), s)
               if s["direction"] == "listening"
               else r.local(s["local_addr"], s["local_port"], s),
               wrap=True, min_width=21,
               style=lambda s: address_style(s["local_addr"], s["direction"] == "listening")),
        Column("REMOTE", lambda s: "" if s["proto"] in NOT_IP or s["direction"] == "listening"
               else r.ep(s["remote_addr"], s["remote_port"], s["proto"]), wrap=True,
               min_width=21,
               style=lambda s: address_style(s["remote_addr"], s["peer"] == "external")),
        Column("DIR", lambda s: DIRECTION.get(s["direction"] or "", ""), priority=2),
        Column("OTHER END", _socket_other_end, wrap=True, min_width=10, priority=3),
        _users_column("USERS", r, lambda s: s["users"], lambda s: s["guess"]),
        _pids_column(),
        *extra,
        Column("INODE", "inode", align="right", priority=0),
        Column("PROCESS", lambda s: _holders(s, procs), shrink=True, min_width=16,
               priority=1),
    ]


SOCKET_COLUMN_NAMES = [c.name for c in socket_columns(Renderer(None, False), {}, netns=True,
                                                      detail=True, tcp_info=True,
                                                      options=True, memory=True)]


def render_sockets(doc: dict, r: Renderer) -> str:
    """One table per namespace, under its name; with ``-o`` naming NETNS, one flat table."""
    procs = {p["pid"]: p for p in doc["processes"]}
    unheld = {"row_style": lambda s: None if s["pids"] else UNHELD_STYLE}
    out: list[str] = []
    flat = r.columns is not None and "NETNS" in (c.upper() for c in r.columns)
    details = [s["detail"] for s in doc["sockets"] if s.get("detail")]
    chosen = {c.upper() for c in r.columns or ()}
    kw = {"detail": bool(details) or bool(chosen & set(DETAIL_COLUMN_NAMES)),
          "tcp_info": any(d["tcp"] for d in details) or bool(chosen & TCP_INFO_COLUMNS),
          "options": any(d["options"] for d in details) or bool(chosen & OPTION_COLUMNS),
          "memory": any(d["memory"] for d in details) or bool(chosen & MEMORY_COLUMNS)}
    if flat:
        out.append(r.table(socket_columns(r, procs, netns=True, **kw), doc["sockets"],
                           **unheld))
    else:
        names = {ns["key"]: ns for ns in doc["namespaces"]}
        groups: dict[str, list[dict]] = {}
        for s in doc["sockets"]:
            groups.setdefault(s["netns_key"], []).append(s)
        cols = socket_columns(r, procs, netns=False, **kw)
        if r.columns is None:
            cols = [c for c in cols if c.name != "INODE"]   # -o INODE asks for it
        for key, socks in groups.items():
            ns = names.get(key)
            out.append(r.head(SafeText(f"{_ns_label(ns, key)}  {len(socks)} sockets")))
            out.append(r.table(cols, socks, **unheld))
            out.append("")
    out.append(_socket_summary(doc))
    _legend(out, any(s["guess"] for s in doc["sockets"]),
            any(s["unconfirmed"] for s in doc["sockets"]))
    return _finish(out, r)


def _ns_label(ns: dict | None, key: str) -> str:
    if ns is None:
        return printable(f"netns {key}")
    name = printable(ns.get("name") or _ns(ns["inode"], ns["key"]))
    inode = f"  inode {ns['inode']}" if ns["inode"] is not None and \
        name != f"netns:{ns['inode']}" else ""
    return (name if name.startswith("netns:") else f"netns {name}") + inode


def _socket_summary(doc: dict) -> str:
    stats = doc["stats"]
    states = [s["connection"] for s in doc["sockets"]]
    return (f"{len(doc['sockets'])} sockets shown ({states.count('open')} open connections, "
            f"{states.count('closed')} closed recently), of {stats['sockets']} in "
            f"{stats['namespaces']} namespaces")


# ---------------------------------------------------------------------------- by-namespace

def _owners(r: Renderer, uids: Sequence[int]) -> str:
    return r.users(uids) or "none"


def _ns_facts(ns: dict, r: Renderer) -> list[tuple[str, str]]:
    return [("owners", _owners(r, ns["owners"])),
            ("pods", _pods(ns.get("pods") or [])),
            ("pinned at", ", ".join(printable(p) for p in ns["pinned"])),
            ("found by", ", ".join(ns["found_by"]))]


def _process_columns(r: Renderer, processes: list[dict]) -> list[Column]:
    return [
        Column("PID", "pid", align="right"), Column("PPID", "ppid", align="right"),
        Column("USER", lambda p: r.user(p["uid"])),
        Column("ROLE", lambda p: "sandbox" if p["sandbox"] else ""),
        *([Column("CONTAINER", lambda p: _container(p["container"]), wrap=True, min_width=8,
                  priority=3)]
          if any(p["container"] for p in processes) else []),
        Column("COMMAND", _command, shrink=True, min_width=10),
    ]


def _listening_columns(r: Renderer, *, netns: bool = False) -> list[Column]:
    return [
        Column("PROTO", _proto),
        Column("ADDRESS", lambda s: printable(s["addr"]) + (GUESS_MARK if s.get("unconfirmed")
                                                              else "")
               if s["proto"] == "unix"
               else _with_service(r.local(s["addr"], s["port"], s), s), wrap=True,
               min_width=21, style=lambda s: GUESS_STYLE if s.get("unconfirmed")
               else address_style(s["addr"], True)),
        *([Column("NETNS", lambda s: printable(s.get("netns_name") or _ns(s["netns"])),
                  wrap=True, min_width=10)] if netns else []),
        _users_column("USERS", r, lambda s: s["users"], lambda s: False),
        _pids_column(),
        Column("COMMAND", lambda s: _holders(s, {p["pid"]: p for p in s["processes"]}),
               shrink=True, min_width=10, priority=1),
    ]


def _group_columns(r: Renderer, groups: list[dict], *, peers: str | None,
                   netns: str | None) -> list[Column]:
    """What a connection group shows after its endpoints: counts, states, the other end, the
    users and pods there (peers: their word, "SERVED BY" or "CLIENT"), our namespace when the
    heading does not say it (netns: the column's title), our users, evidence, pids."""
    there = []
    if peers is not None:
        word = "SERVED BY" if peers == "SERVED BY" else f"{peers} USERS"
        there.append(_users_column(word, r, lambda g: g["peer_users"], lambda g: False,
                                   priority=3))
        if any(g["peer_pods"] for g in groups):
            there.append(Column("SERVING PODS" if peers == "SERVED BY" else f"{peers} PODS",
                                lambda g: _pods(g["peer_pods"]),
                                short=lambda g: _pods_short(g["peer_pods"]), wrap=True,
                                min_width=10, priority=3))
    return [
        Column("PROTO", "proto"),
        *_counts_columns(),
        _states_column(),
        Column("OTHER END", _group_other_end, wrap=True, min_width=10),
        *there,
        *([Column(netns, lambda g: _names(g["netns_names"]), wrap=True, min_width=10)]
          if netns else []),
        _users_column("USERS", r, lambda g: g["users"], lambda g: g["guessed_users"]),
        Column("KNOWN BY", _known_by, wrap=True, min_width=8, priority=1),
        _pids_column(priority=5),
    ]


def _connects_to_columns(r: Renderer, groups: list[dict], *, from_netns: bool,
                         served_by: bool) -> list[Column]:
    return [
        _ep_column("SERVICE", r, lambda g: g["peer_addr"], lambda g: g["peer_port"],
                   exposed=lambda g: g["peer"] == "external", with_service=True),
        *_via_column(groups),
        *_group_columns(r, groups, peers="SERVED BY" if served_by else None,
                        netns="FROM NETNS" if from_netns else None),
    ]


def _via_column(rows: list[dict]) -> list[Column]:
    """VIA: the Service VIP a connection went through (its SERVICE is then the backend the
    node's conntrack says it reached), when some row has one."""
    if not any(row.get("via") for row in rows):
        return []
    return [Column("VIA", lambda row: printable(row.get("via") or ""), wrap=True,
                   min_width=len("VIA"), priority=3)]


def _connected_from_columns(r: Renderer, groups: list[dict], *, netns: bool,
                            clients: bool) -> list[Column]:
    return [
        _ep_column("CLIENT", r, lambda g: g["peer_addr"], lambda g: None,
                   exposed=lambda g: g["peer"] == "external", min_width=15),
        _ep_column("SERVICE", r, lambda g: g["local_addr"], lambda g: g["local_port"],
                   exposed=lambda g: False, with_service=True),
        *_group_columns(r, groups, peers="CLIENT" if clients else None,
                        netns="NETNS" if netns else None),
    ]


def _connection_tables(r: Renderer, groups: list[dict], *, own_netns: Sequence[str] | None,
                       peers: bool) -> list[str]:
    """'Connects to' and 'Connected from', each with its title and a blank line before it.
    own_netns: the namespaces the heading already names (their column is left out when
    every row is in them); peers: show the users and pods at the other end."""
    out: list[str] = []
    outbound = [g for g in groups if g["direction"] == "outbound"]
    inbound = [g for g in groups if g["direction"] == "inbound"]

    def elsewhere(rows: list[dict]) -> bool:
        return own_netns is not None and any(set(g["netns_names"]) - set(own_netns)
                                             for g in rows)
    if outbound:
        out += r.titled("Connects to", _connects_to_columns(
            r, outbound, from_netns=elsewhere(outbound), served_by=peers), outbound)
    if inbound:
        out += r.titled("Connected from", _connected_from_columns(
            r, inbound, netns=elsewhere(inbound), clients=peers), inbound)
    _legend(out, any(g["guessed_users"] for g in groups))
    return out


def render_by_namespace(doc: dict, r: Renderer) -> str:
    out: list[str] = []
    for ns in doc["namespaces"]:
        out.append(r.head(SafeText(_ns_label(ns, ns["key"]) + ("  (host)" if ns["host"]
                                                                else ""))))
        out.extend(r.facts(_ns_facts(ns, r)))
        if ns.get("note"):
            out.append(f"  {printable(ns['note'])}")
        if ns["error"]:
            out.append(f"  tables not read: {printable(ns['error'])}")
        if ns["processes"]:
            out += r.titled("Processes", _process_columns(r, ns["processes"]),
                            ns["processes"])
        if ns["threads"]:
            out.append("  threads living here: " + ", ".join(
                f"tid {t['tid']} of pid {t['pid']}" for t in ns["threads"]))
        listening = ns["listening"] + ns["unix_listening"]
        if listening:
            out += r.titled("Listening", _listening_columns(r), listening)
        out.extend(_connection_tables(r, ns["connections"], own_netns=None, peers=False))
        _legend(out, False, any(s["unconfirmed"] for s in listening))
        counts = "; ".join(f"{proto}: " + ", ".join(f"{st} {n}" for st, n in states.items())
                           for proto, states in ns["counts"].items())
        out += ["", f"{ns['sockets']} sockets" + (f" ({counts})" if counts else ""), ""]
    return _finish(out, r)


# ---------------------------------------------------------------------------- by-user, by-pod

def render_by_user(doc: dict, r: Renderer) -> str:
    out: list[str] = []
    for u in doc["users"]:
        label = f"user {printable(u['name'])} (uid {u['uid']})" if u["name"] \
            else f"user {u['uid']}"
        owns = u.get("namespace_names") or [
            str(n) if n is not None else k
            for n, k in zip(u["namespaces"], u["namespace_keys"], strict=True)]
        out.append(r.head(SafeText(label)))
        out.extend(r.facts([("owns", printable(", ".join(owns)) or "no namespace"),
                            ("pods", _pods(u.get("pods") or [])),
                            ("processes", str(len(u["processes"]))),
                            ("sockets", str(u["sockets"]))]))
        if u["listening"]:
            out += r.titled("Listening", _listening_columns(r, netns=len(owns) != 1),
                            u["listening"])
            _legend(out, False, any(s["unconfirmed"] for s in u["listening"]))
        out.extend(_connection_tables(r, u["connects_to"] + u["connected_from"],
                                      own_netns=owns, peers=True))
        out.append("")
    return _finish(out, r)


def _container_columns(r: Renderer) -> list[Column]:
    return [
        Column("CONTAINER", lambda c: printable(c["name"]) if c["name"]
               else ("(sandbox)" if c["sandbox"] else "?"), wrap=True, min_width=8),
        Column("ID", lambda c: c["id"][:12]),
        Column("RUNTIME", lambda c: c["runtime"] or "", priority=1),
        Column("ROLE", lambda c: "sandbox" if c["sandbox"] else ""),
        _users_column("USERS", r, lambda c: c["users"], lambda c: False),
        _pids_column(),
    ]


def render_by_pod(doc: dict, r: Renderer) -> str:
    out: list[str] = []
    for pod in doc["pods"]:
        out.append(r.head(SafeText(f"pod {pod_name(pod)}")))
        netns = "hostNetwork" if pod["host_network"] else \
            ",".join(str(n) for n in pod["netns"]) or "?"
        out.extend(r.facts([("uid", printable(pod["uid"])), ("qos", printable(pod["qos"] or "")),
                            ("netns", netns), ("owners", _owners(r, pod["owners"])),
                            ("sockets", str(pod["sockets"]))]))
        if pod["containers"]:
            out += r.titled("Containers", _container_columns(r), pod["containers"])
        if pod["listening"]:
            out += r.titled("Listening", _listening_columns(r), pod["listening"])
            _legend(out, False, any(s["unconfirmed"] for s in pod["listening"]))
        own = [f"pod:{pod['namespace']}/{pod['name']}"] if pod.get("name") else None
        out.extend(_connection_tables(r, pod["connects_to"] + pod["connected_from"],
                                      own_netns=own, peers=True))
        out.append("")
    if not doc["pods"]:
        out.append("no pods found (no process in a kubelet pod cgroup)")
    return _finish(out, r)


# ---------------------------------------------------------------------------- summary

def _summary_columns(r: Renderer) -> list[Column]:
    return [
        Column("NETNS", lambda n: printable(n["name"] or n["key"]), wrap=True, min_width=12),
        Column("INODE", lambda n: n["inode"] if n["inode"] is not None else "?",
               align="right", priority=2),
        Column("OWNERS", lambda n: r.users(n["owners"]),
               short=lambda n: r.users_short(n["owners"]), wrap=True, min_width=8),
        Column("PROCS", "processes", align="right"),
        Column("LISTEN", "listening", align="right"),
        Column("OPEN", "open", align="right"),
        Column("CLOSED", "closed", align="right"),
        Column("SOCKETS", lambda n: n["sockets"] if n["tables_read"] else "unread",
               align="right"),
        Column("PID", "pid", align="right", priority=1),
        Column("COMMAND", lambda n: join_cmdline(n["command"]), shrink=True, min_width=10,
               priority=1),
    ]


def render_summary(doc: dict, r: Renderer) -> str:
    """`nsnet` with no command: one row per namespace, then what to type next."""
    rows = doc["namespaces"]
    opened = sum(n["open"] for n in rows)
    counted = sum(n["sockets"] for n in rows)      # netlink not counted (views.UNCOUNTED_KINDS)
    out = [r.head(f"{len(rows)} network namespaces, {doc['processes']} processes, "
                  f"{doc['pods']} pods, {counted} sockets, {opened} open connections"),
           r.table(_summary_columns(r), rows,
                   row_style=lambda n: None if n["tables_read"] else UNHELD_STYLE),
           "",
           "nsnet by-namespace   processes, listeners, connections of each namespace",
           "nsnet by-user        who talks to whom, per user   (by-pod: per Kubernetes pod)",
           "nsnet sockets        every socket, like ss -tuanp for the whole node",
           "nsnet deps | graph | watch | serve      dependency edges, map, live view, agent",
           "nsnet COMMAND --help for its options; -o wide: nothing cut; --json: a document"]
    return _finish(out, r)


# ---------------------------------------------------------------------------- edges

def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def edge_user(e: dict) -> str:
    """The user of an edge: its name, else its uid, else `unknown` (nothing attributes the
    connection: the host's namespace, where many users live); a guess marked."""
    if e["uid"] is None:
        return "unknown"
    return printable(e["user"] or str(e["uid"])) + (GUESS_MARK if e["guess"] else "")


def edge_columns(r: Renderer, direction: str, live: bool,
                 traffic: bool = False, via: bool = False) -> list[Column]:
    """The columns of `nsnet deps` (and watch): outbound edges name the service connected
    to, inbound ones the client and our port; traffic: the bytes, rtt and retransmits of
    edges measured from TCP_INFO."""
    where = Column("WHERE" if direction == "outbound" else "NETNS",
                   lambda e: printable(e["where"]), wrap=True, min_width=10)
    if direction == "outbound":
        ends = [where, _ep_column("SERVICE", r, lambda e: e["peer_addr"], lambda e: e["port"],
                                  exposed=lambda e: False, with_service=True),
                *(_via_column([{"via": "-"}]) if via else [])]
    else:
        ends = [_ep_column("CLIENT", r, lambda e: e["peer_addr"], lambda e: None,
                           exposed=lambda e: False, min_width=15),
                Column("PORT", lambda e: e["port"], align="right"), where]
    return [
        Column("USER", edge_user, style=lambda e: GUESS_STYLE if e["guess"] else None),
        *ends,
        Column("PROTO", lambda e: e["proto"] + (GUESS_MARK if e.get("direction_inferred")
                                                else ""),
               style=lambda e: GUESS_STYLE if e.get("direction_inferred") else None),
        *([Column("OPEN", lambda e: e["open"], align="right"),
           Column("CLOSED", lambda e: e["closed_recently"], align="right")] if live else []),
        Column("MAX", "max_concurrent", align="right", priority=3),
        # one column for both ways: a table cut to the terminal never shows half the pair
        *([Column("SENT/RECV", _traffic, align="right", priority=3),
           Column("RTT", lambda e: None if e["rtt_ms"] is None else f"{e['rtt_ms']:.2f}ms",
                  align="right", priority=2),
           Column("RETRANS", "retransmits", align="right", priority=1)] if traffic else []),
        Column("SAMPLES", "samples", align="right", priority=2),
        Column("KNOWN BY", lambda e: (e["evidence"] or "unknown")
               + (GUESS_MARK if e["guess"] else ""), priority=4),
        Column("FIRST SEEN", lambda e: _when(e["first_seen"]), priority=1),
        Column("LAST SEEN", lambda e: _when(e["last_seen"]), priority=2),
        Column("NODE", lambda e: printable(e["node"]), priority=0),
    ]


EDGE_COLUMN_NAMES = sorted({c.name for d in ("outbound", "inbound")
                            for c in edge_columns(Renderer(None, False), d, True, True, True)})


def _names_of(*tables: list[Column]) -> list[str]:
    return list(dict.fromkeys(c.name for cols in tables for c in cols))


def _column_names() -> dict[str, list[str]]:
    """Every column name each command's tables have (what -o COL,COL may name)."""
    r = Renderer(None, False)
    every: list[dict] = [{"peer_pods": [{}], "container": {"id": ""},
                          "via": "-"}]   # optional columns
    groups = [*_connects_to_columns(r, every, from_netns=True, served_by=True),
              *_connected_from_columns(r, every, netns=True, clients=True)]
    return {
        "summary": _names_of(_summary_columns(r)),
        "by-namespace": _names_of(_process_columns(r, every), _listening_columns(r),
                                  _connects_to_columns(r, every, from_netns=False,
                                                       served_by=False),
                                  _connected_from_columns(r, every, netns=False,
                                                          clients=False)),
        "by-user": _names_of(_listening_columns(r, netns=True), groups),
        "by-pod": _names_of(_container_columns(r), _listening_columns(r), groups),
        "sockets": SOCKET_COLUMN_NAMES,
        "deps": EDGE_COLUMN_NAMES, "watch": ["MARK", *EDGE_COLUMN_NAMES], "graph": [],
    }


def _live(doc: dict) -> bool:
    return not str(doc.get("source", "")).startswith("history")


def edge_tables(edges: list[dict], r: Renderer, live: bool,
                row_style: Callable[[dict], str | None] | None = None,
                extra: list[Column] | None = None) -> list[str]:
    out: list[str] = []
    traffic = any(e.get("bytes_sent") is not None for e in edges)
    for direction, title in (("outbound", "Connects to"), ("inbound", "Connected from")):
        rows = [e for e in edges if e["direction"] == direction]
        if rows:
            via = any(e.get("via") for e in rows)
            out += r.titled(title, [*(extra or []),
                                    *edge_columns(r, direction, live, traffic, via)],
                            rows, row_style=row_style)
    _legend(out, any(e["guess"] for e in edges))
    if any(e.get("direction_inferred") for e in edges):
        out.append(DIRECTION_LEGEND)
    return out[1:] if out and out[0] == "" else out


def render_deps(doc: dict, r: Renderer) -> str:
    """Edges by who: a user in a pod or namespace, then what it talks to."""
    if not doc["edges"]:
        return "no dependency edges" + (" in that period" if doc["since"] else "")
    return _finish(edge_tables(doc["edges"], r, _live(doc)), r)


def render_by_user_history(doc: dict, r: Renderer) -> str:
    out: list[str] = []
    live = _live(doc)
    for u in doc["users"]:
        label = f"user {printable(u['name'])} (uid {u['uid']})" if u["name"] else \
            ("unknown user" if u["uid"] is None else f"user {u['uid']}")
        out += [r.head(label), ""]
        out.extend(edge_tables(u["connects_to"] + u["connected_from"], r, live))
        out.append("")
    return _finish(out, r) or "no dependency edges in that period"


COLUMN_NAMES = _column_names()
