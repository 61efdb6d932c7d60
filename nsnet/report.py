"""Human output: the JSON views rendered as tables for a terminal or a pipe.

Row order (documented in the README): namespaces host first, then by inode; sockets by
namespace, protocol, listeners first, then local and remote endpoint; users by uid;
connection groups by direction, then most connections first.
"""
from __future__ import annotations

import socket as _socket
from functools import lru_cache
from typing import Any

from .sanitize import SafeText, join_cmdline, printable
from .table import Column, heading, render_table
from .views import endpoint

# Addresses are what the table is for: they keep "255.255.255.255:65535" whole, and the command
# column shrinks -- or, on a narrow terminal, goes first (lowest priority is hidden first).
ADDR_WIDTH = 21
STATE_STYLE = {"LISTEN": "green", "ESTABLISHED": "cyan", "TIME_WAIT": "dim",
               "CLOSE_WAIT": "yellow", "SYN_SENT": "yellow", "UNCONN": "blue"}


@lru_cache(maxsize=4096)
def _service(port: int, proto: str) -> str | None:
    try:
        return _socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return None


class Renderer:
    def __init__(self, width: int | None, color: bool, resolve: bool = False):
        self.width = width
        self.color = color
        self.resolve = resolve

    def ep(self, addr: str | None, port: int | None, proto: str = "tcp") -> str:
        if addr is None:
            return ""
        if port is not None and self.resolve and proto in ("tcp", "udp"):
            name = _service(port, proto)
            if name:
                return _named(addr, name)
        return endpoint(addr, port)

    def table(self, columns: list[Column], rows: list, **kw: Any) -> str:
        return render_table(columns, rows, width=self.width, color=self.color, **kw)

    def head(self, text: str) -> str:
        return heading(text, self.color, width=self.width)


def _named(addr: str, name: str) -> str:
    return f"[{addr}]:{name}" if ":" in addr else f"{addr}:{name}"


def _pids(pids: list[int], limit: int = 6) -> str:
    shown = ",".join(str(p) for p in pids[:limit])
    return shown + (f",+{len(pids) - limit}" if len(pids) > limit else "")


def _ns(inode: int | None, key: str = "") -> str:
    return str(inode) if inode is not None else key


def _holders(doc: dict, procs: dict[int, dict]) -> str:
    names = []
    for pid in doc["pids"][:3]:
        p = procs.get(pid)
        if p is not None:
            names.append(f"{pid}:" + (join_cmdline(p["cmdline"]) if p["cmdline"]
                                       else printable(f"[{p['comm']}]")))
    more = len(doc["pids"]) - len(names)
    # every piece is a pid or already escaped: mark the whole as safe, or it is escaped twice
    return SafeText(" ".join(names) + (f" (+{more})" if more > 0 else ""))


def pod_name(ref: dict) -> str:
    """ns/name as the kubelet's log tree names it; the uid when the pod is not in it."""
    if ref.get("namespace") and ref.get("name"):
        return printable(f"{ref['namespace']}/{ref['name']}")
    return printable(f"pod:{ref['uid']}")


def _pods(refs: list[dict], limit: int = 2) -> str:
    shown = ",".join(pod_name(p) for p in refs[:limit])
    return SafeText(shown + (f",+{len(refs) - limit}" if len(refs) > limit else ""))


def _container(c: dict | None) -> str:
    if not c:
        return ""
    return printable(c["name"]) if c.get("name") else c["id"][:12]


GUESS_MARK = "?"
GUESS_LEGEND = ("? a guess: no process holds those sockets, and their namespace has several "
                "owners; each is shown")


def _users(users: list[int], guessed: bool | list[int] = False) -> str:
    """uids, each marked ? when it is a guess (all of them, or those listed)."""
    return ",".join(str(u) + (GUESS_MARK if guessed is True or (guessed and u in guessed)
                              else "") for u in users)


def _peer(s: dict) -> str:
    """local, external, or the name of the namespace at the other end (node:<inode> when it
    has none in this document)."""
    if s["peer"] == "node":
        return printable(s.get("peer_netns_name") or f"node:{s['peer_netns'] or '?'}")
    return s["peer"] or ""


def _names(names: list[str | None]) -> str:
    return printable(",".join(n for n in names if n))


def _legend(out: list[str], guessed: bool) -> None:
    if guessed:
        out.append(GUESS_LEGEND)


def _with_service(endpoint_text: str, doc: dict) -> str:
    """'10.0.0.5:3306 (shared-db)': the operator's name from --services, when it has one."""
    name = doc.get("service")
    return f"{endpoint_text} ({printable(name)})" if name else endpoint_text


def render_sockets(doc: dict, r: Renderer) -> str:
    procs = {p["pid"]: p for p in doc["processes"]}
    cols = [
        Column("NETNS", lambda s: printable(s.get("netns_name") or _ns(s["netns"], s["netns_key"])),
               shrink=True, min_width=10),
        Column("PROTO", lambda s: s["proto"] + ("6" if s["family"] == "inet6" else "")),
        Column("STATE", "state", style=lambda s: STATE_STYLE.get(s["state"])),
        Column("LOCAL", lambda s: printable(s["local_addr"]) if s["proto"] == "unix"
               else r.ep(s["local_addr"], s["local_port"], s["proto"]), shrink=True, min_width=ADDR_WIDTH),
        Column("REMOTE", lambda s: "" if s["proto"] == "unix"
               else r.ep(s["remote_addr"], s["remote_port"], s["proto"]), shrink=True,
               min_width=ADDR_WIDTH),
        Column("DIR", lambda s: s["direction"] or "", priority=2),
        Column("PEER", _peer, shrink=True, min_width=8, priority=3),
        Column("USERS", lambda s: _users(s["users"], s["guess"])),
        Column("PIDS", lambda s: _pids(s["pids"])),
        *([Column("POD", lambda s: _pods(s["pods"]), shrink=True, min_width=12, priority=2)]
          if any(s["pods"] for s in doc["sockets"]) else []),
        Column("PROCESS", lambda s: _holders(s, procs), shrink=True, min_width=16, priority=1),
    ]
    out = [r.table(cols, doc["sockets"], row_style=lambda s: None if s["pids"] else "dim")]
    stats = doc["stats"]
    states = [s["connection"] for s in doc["sockets"]]
    out.append(f"{len(doc['sockets'])} sockets shown ({states.count('open')} open connections, "
               f"{states.count('closed')} closed recently), of {stats['sockets']} in "
               f"{stats['namespaces']} namespaces")
    _legend(out, any(s["guess"] for s in doc["sockets"]))
    return "\n".join(out)


def _ns_title(ns: dict) -> str:
    name = ns.get("name") or _ns(ns["inode"], ns["key"])
    parts = [f"netns {printable(name)}"]
    if ns["inode"] is not None and name != f"netns:{ns['inode']}":
        parts.append(f"inode {ns['inode']}")
    if ns["host"]:
        parts.append("(host)")
    parts.append("found by " + ", ".join(ns["found_by"]))
    if ns["pinned"]:
        parts.append("pinned at " + ", ".join(printable(p) for p in ns["pinned"]))
    owners = [f"{u}({printable(ns['owner_names'][str(u)])})" if ns["owner_names"].get(str(u))
              else str(u) for u in ns["owners"]]
    parts.append("owners " + (",".join(owners) if owners else "none"))
    if ns.get("pods"):
        parts.append("pods " + _pods(ns["pods"], limit=4))
    return SafeText("  ".join(parts))   # pieces are numbers, fixed words or escaped text


def _connection_cols(r: Renderer) -> list[Column]:
    return [
        Column("DIR", "direction"),
        Column("PROTO", "proto"),
        Column("SERVICE", lambda g: _with_service(
            r.ep(g["peer_addr"], g["peer_port"], g["proto"]) if g["direction"] == "outbound"
            else r.ep(g["local_addr"], g["local_port"], g["proto"]), g), shrink=True,
            min_width=12),
        Column("PEER", lambda g: "" if g["direction"] == "outbound" else g["peer_addr"],
               shrink=True, min_width=8),
        Column("OPEN", "count", align="right"),
        Column("CLOSED", "closed", align="right"),
        Column("STATES", lambda g: ",".join(f"{k}:{v}" for k, v in g["states"].items()),
               shrink=True, min_width=8),
        Column("PEER NETNS", _scope, shrink=True, min_width=8),
        Column("USERS", lambda g: _users(g["users"], g["guessed_users"])),
        Column("PIDS", lambda g: _pids(g["pids"])),
    ]


def _scope(g: dict) -> str:
    """Where the other end is: local, external, or the peer namespaces' names."""
    if g["peer"] == "node" and g.get("peer_names"):
        return _names(g["peer_names"])
    return g["peer"] or ""


def render_by_namespace(doc: dict, r: Renderer) -> str:
    out = []
    for ns in doc["namespaces"]:
        out.append(r.head(_ns_title(ns)))
        if ns.get("note"):
            out.append(f"  {printable(ns['note'])}")
        if ns["error"]:
            out.append(f"  tables not read: {printable(ns['error'])}")
        if ns["processes"]:
            out.append(r.table([
                Column("PID", "pid", align="right"), Column("PPID", "ppid", align="right"),
                Column("UID", "uid", align="right"),
                Column("USER", lambda p: printable(p["user"] or "")),
                Column("ROLE", lambda p: "sandbox" if p["sandbox"] else ""),
                *([Column("CONTAINER", lambda p: _container(p["container"]), shrink=True,
                          min_width=8, priority=2)]
                  if any(p["container"] for p in ns["processes"]) else []),
                Column("COMMAND", lambda p: join_cmdline(p["cmdline"]) if p["cmdline"]
                       else printable(f"[{p['comm']}]"), shrink=True, min_width=10),
            ], ns["processes"]))
        if ns["threads"]:
            out.append("  threads living here: " + ", ".join(
                f"tid {t['tid']} of pid {t['pid']}" for t in ns["threads"]))
        listening = ns["listening"] + ns["unix_listening"]
        if listening:
            out.append(r.table([
                Column("LISTEN", lambda s: s["proto"] + ("6" if s["family"] == "inet6" else "")),
                Column("ADDRESS", lambda s: printable(s["addr"]) if s["proto"] == "unix"
                       else r.ep(s["addr"], s["port"], s["proto"]), shrink=True, min_width=12),
                Column("PIDS", lambda s: _pids(s["pids"])),
                Column("COMMAND", lambda s: _holders(s, {p["pid"]: p for p in s["processes"]}),
                       shrink=True, min_width=10),
            ], listening))
        if ns["connections"]:
            out.append(r.table(_connection_cols(r), ns["connections"]))
            _legend(out, any(g["guessed_users"] for g in ns["connections"]))
        counts = "; ".join(f"{proto}: " + ", ".join(f"{st} {n}" for st, n in states.items())
                           for proto, states in ns["counts"].items())
        out.append(f"  {ns['sockets']} sockets" + (f" ({counts})" if counts else ""))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _group_columns(netns_title: str, groups: list[dict]) -> list[Column]:
    """What the by-user and by-pod tables show of a connection group after its endpoint."""
    pods = any(g["pods"] or g["peer_pods"] for g in groups)
    return [
        Column("OPEN", "count", align="right"),
        Column("CLOSED", "closed", align="right"),
        Column("PEER NETNS", _scope, shrink=True, min_width=8),
        Column("PEER USERS", lambda g: ",".join(str(x) for x in g["peer_users"])),
        *([Column("PEER PODS", lambda g: _pods(g["peer_pods"]), shrink=True, min_width=10),
           Column("PODS", lambda g: _pods(g["pods"]), shrink=True, min_width=10, priority=2)]
          if pods else []),
        Column(netns_title, lambda g: _names(g.get("netns_names") or
                                             [str(n) for n in g["netns"]]),
               shrink=True, min_width=8),
        Column("KNOWN BY", _known_by, shrink=True, min_width=6, priority=2),
        Column("PIDS", lambda g: _pids(g["pids"])),
    ]


def _known_by(g: dict) -> str:
    """How the group's users are known (model.EVIDENCE), a guess marked."""
    return ",".join(kind + (GUESS_MARK if kind == "namespace-owners" else "")
                    for kind in g["attribution"])


def _dependency_tables(doc: dict, r: Renderer) -> list[str]:
    """Listeners, what it connects to and who connects to it: by-user's and by-pod's tables."""
    out = []
    if doc["listening"]:
        out.append(r.table([
            Column("LISTEN", lambda s: s["proto"] + ("6" if s["family"] == "inet6" else "")),
            Column("ADDRESS", lambda s: _with_service(r.ep(s["addr"], s["port"], s["proto"]), s),
                   shrink=True),
            Column("NETNS", lambda s: _ns(s["netns"]), align="right"),
            Column("PIDS", lambda s: _pids(s["pids"])),
        ], doc["listening"]))
    if doc["connects_to"]:
        out.append(r.table([
            Column("CONNECTS TO", lambda g: _with_service(
                r.ep(g["peer_addr"], g["peer_port"], g["proto"]), g), shrink=True, min_width=12),
            Column("PROTO", "proto"),
            *_group_columns("FROM NETNS", doc["connects_to"]),
        ], doc["connects_to"]))
    if doc["connected_from"]:
        out.append(r.table([
            Column("CONNECTED FROM", lambda g: g["peer_addr"], shrink=True, min_width=8),
            Column("TO", lambda g: _with_service(
                r.ep(g["local_addr"], g["local_port"], g["proto"]), g), shrink=True, min_width=12),
            *_group_columns("NETNS", doc["connected_from"]),
        ], doc["connected_from"]))
    _legend(out, any(g["guessed_users"] for g in doc["connects_to"] + doc["connected_from"]))
    return out


def render_by_user(doc: dict, r: Renderer) -> str:
    out = []
    for u in doc["users"]:
        name = f" ({printable(u['name'])})" if u["name"] else ""
        owns = ",".join(u.get("namespace_names") or
                        [str(n) if n is not None else k
                         for n, k in zip(u["namespaces"], u["namespace_keys"], strict=True)]) \
            or "none"
        pods = f"  pods {_pods(u['pods'], limit=4)}" if u.get("pods") else ""
        out.append(r.head(SafeText(f"uid {u['uid']}{name}  owns netns {printable(owns)}  "
                                   f"processes {len(u['processes'])}  sockets {u['sockets']}"
                                   + pods)))
        out.extend(_dependency_tables(u, r))
        out.append("")
    return "\n".join(out).rstrip("\n")


def render_by_pod(doc: dict, r: Renderer) -> str:
    out = []
    for pod in doc["pods"]:
        parts = [f"pod {pod_name(pod)}", printable(f"uid {pod['uid']}")]
        if pod["qos"]:
            parts.append(printable(f"qos {pod['qos']}"))
        parts.append("hostNetwork" if pod["host_network"] else
                     "netns " + (",".join(str(n) for n in pod["netns"]) or "?"))
        parts.append("owners " + (",".join(str(u) for u in pod["owners"]) or "none"))
        out.append(r.head(SafeText("  ".join(parts))))
        if pod["containers"]:
            out.append(r.table([
                Column("CONTAINER", lambda c: printable(c["name"]) if c["name"]
                       else ("(sandbox)" if c["sandbox"] else "?"), shrink=True, min_width=8),
                Column("ID", lambda c: c["id"][:12]),
                Column("RUNTIME", lambda c: c["runtime"] or ""),
                Column("ROLE", lambda c: "sandbox" if c["sandbox"] else ""),
                Column("USERS", lambda c: ",".join(str(u) for u in c["users"])),
                Column("PIDS", lambda c: _pids(c["pids"])),
            ], pod["containers"]))
        out.extend(_dependency_tables(pod, r))
        out.append(f"  {pod['sockets']} sockets")
        out.append("")
    if not doc["pods"]:
        out.append("no pods found (no process in a kubelet pod cgroup)")
    return "\n".join(out).rstrip("\n")


def _when(ts: float) -> str:
    import time as _time
    return _time.strftime("%Y-%m-%d %H:%M", _time.localtime(ts))


def _edge_columns(r: Renderer, live: bool = True) -> list[Column]:
    return [
        Column("DIR", "direction"),
        Column("PROTO", "proto"),
        Column("SERVICE", lambda e: _with_service(r.ep(e["peer_addr"], e["port"], e["proto"]), e)
               if e["direction"] == "outbound" else f"port {e['port']} from {e['peer_addr']}",
               shrink=True, min_width=14),
        *([Column("OPEN", lambda e: e["open"], align="right"),
           Column("CLOSED", lambda e: e["closed_recently"], align="right")]
          if live else []),
        Column("MAX", "max_concurrent", align="right"),
        Column("SAMPLES", "samples", align="right"),
        Column("KNOWN BY", lambda e: (e["evidence"] or "unknown")
               + (GUESS_MARK if e["guess"] else ""), priority=2),
        Column("FIRST SEEN", lambda e: _when(e["first_seen"]), priority=2),
        Column("LAST SEEN", lambda e: _when(e["last_seen"]), priority=1),
        Column("NODE", lambda e: printable(e["node"]), priority=3),
    ]


def edge_user(e: dict) -> str:
    """The user of an edge: its name, else its uid, else `unknown` (nothing attributes the
    connection: the host's namespace, where many users live); a guess marked."""
    if e["uid"] is None:
        return "unknown"
    return printable(e["user"] or str(e["uid"])) + (GUESS_MARK if e["guess"] else "")


def _live(doc: dict) -> bool:
    return not str(doc.get("source", "")).startswith("history")


def render_deps(doc: dict, r: Renderer) -> str:
    """Edges by who: a user in a pod or namespace, then what it talks to."""
    cols = [Column("USER", edge_user),
            Column("WHERE", lambda e: printable(e["where"]), shrink=True, min_width=10),
            *_edge_columns(r, _live(doc))]
    if not doc["edges"]:
        return "no dependency edges" + (" in that period" if doc["since"] else "")
    out = [r.table(cols, doc["edges"])]
    _legend(out, any(e["guess"] for e in doc["edges"]))
    return "\n".join(out)


def render_by_user_history(doc: dict) -> str:
    r = Renderer(None, False)
    out = []
    for u in doc["users"]:
        name = f" ({printable(u['name'])})" if u["name"] else ""
        out.append(f"uid {u['uid']}{name}")
        for side in ("connects_to", "connected_from"):
            if u[side]:
                out.append(r.table([Column("WHERE", lambda e: printable(e["where"])),
                                    *_edge_columns(r, _live(doc))], u[side]))
        out.append("")
    return "\n".join(out).rstrip("\n") or "no dependency edges in that period"
