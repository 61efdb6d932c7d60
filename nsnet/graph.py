"""The dependency map as a picture: who connects (a user in a pod or namespace) on the left,
the services in the middle, who serves them on the right. Graphviz dot or Mermaid text, or an
SVG/PNG drawn by Graphviz's own `dot` when it is installed; every label is escaped (names come
from /proc, the kubelet's log tree and the operator's file).

What is drawn, and how it is known:

* ``user @ where -> service``: outbound edges, merged across nodes; ``tcp x23`` is the most
  connections open at once; dashed and ``?`` when the user is a guess (a namespace with
  several owners).
* a loopback service is one node per namespace (``127.0.0.1:8080 in pod:shop/a``): the same
  address in two namespaces is two unrelated services.
* ``service -> user @ where`` "served by": who holds the listening end. From a live snapshot
  it is exact (the connection's other end is in that namespace); from the history it is
  inferred from inbound edges on the same port, drawn dashed with ``?``, and only when one
  place serves that port.
"""
from __future__ import annotations

import re
import shutil
import socket as _socket
import subprocess
from collections.abc import Iterable
from dataclasses import field

from .errors import NsnetError
from .records import record

FONT = "Helvetica"
LEGEND = ("arrow from user @ where to a service: connects to it (tcp x23: the most "
          "connections open at once) | from a service to user @ where: served by it | "
          "dashed, ?: a guess (a user among a namespace's owners; a direction or a server "
          "inferred from the ports only)")
_LOOPBACK = re.compile(r"^(127\.|::1$|::ffff:127\.)")


@record
class Link:
    proto: str = "tcp"
    max_concurrent: int = 0
    guess: bool = True


@record
class Map:
    """The graph: clients and servers are `user @ where` nodes, services endpoint nodes."""
    uses: dict[tuple[str, str], Link] = field(default_factory=dict)     # (who, service)
    served: dict[tuple[str, str], bool] = field(default_factory=dict)   # (service, who): guess

    def people(self) -> list[str]:
        return sorted({w for w, _ in self.uses} | {w for _, w in self.served})

    def services(self) -> list[str]:
        return sorted({s for _, s in self.uses} | {s for s, _ in self.served})


def _where(where: str) -> str:
    return where[4:] if where.startswith("pod:") and "/" in where else where


def _who(user: str | None, uid: int | None, where: str) -> str:
    return f"{user or (str(uid) if uid is not None else 'unknown')} @ {_where(where)}"


def _port(port: int, proto: str, resolve: bool) -> str:
    if resolve:
        try:
            return _socket.getservbyport(port, proto)
        except (OSError, OverflowError):
            pass
    return str(port)


def _service(edge: dict, resolve: bool) -> str:
    addr = f"[{edge['peer_addr']}]" if ":" in edge["peer_addr"] else edge["peer_addr"]
    endpoint = f"{addr}:{_port(edge['port'], edge['proto'], resolve)}"
    if _LOOPBACK.match(edge["peer_addr"]):
        endpoint += f" in {_where(edge['where'])}"   # one per namespace: unrelated otherwise
    return f"{edge['service']} ({endpoint})" if edge["service"] else endpoint


def build(edges: Iterable[dict], resolve: bool = False) -> Map:
    graph = Map()
    edges = list(edges)
    inbound: dict[tuple[str, int], set[tuple[str, int | None, str]]] = {}
    for e in edges:
        if e["direction"] == "inbound":
            inbound.setdefault((e["proto"], e["port"]), set()).add(
                (e["user"] or "", e["uid"], e["where"]))
    for e in edges:
        if e["direction"] != "outbound":
            continue   # an inbound edge is the other side of someone's outbound one
        svc = _service(e, resolve)
        link = graph.uses.setdefault((_who(e["user"], e["uid"], e["where"]), svc),
                                     Link(e["proto"]))
        link.max_concurrent = max(link.max_concurrent, e["max_concurrent"])
        # known on one node: known; a direction inferred from the ports is a guess too
        link.guess = link.guess and bool(e.get("guess") or e.get("direction_inferred"))
        for who, guess in _servers(e, inbound):
            graph.served[(svc, who)] = graph.served.get((svc, who), True) and guess
    return graph


def _servers(edge: dict, inbound: dict) -> list[tuple[str, bool]]:
    """(server, inferred) for an outbound edge: exact when the snapshot said, else inferred
    from the inbound edges on that port when they are all in one place."""
    if edge.get("served_by") is not None:
        return [(_who(s["user"], s["uid"], s["where"]), False) for s in edge["served_by"]]
    candidates = inbound.get((edge["proto"], edge["port"]), set())
    if _LOOPBACK.match(edge["peer_addr"]):
        candidates = {c for c in candidates if c[2] == edge["where"]}
    if len({c[2] for c in candidates}) != 1:
        return []
    return [(_who(user or None, uid, where), True) for user, uid, where in sorted(
        candidates, key=lambda c: (c[1] is None, c[1] or 0))]


def _edge_label(link: Link) -> str:
    """'tcp x23': the protocol and the most connections open at once; '?' when the user is
    only a guess (the edge is also dashed)."""
    return f"{link.proto} x{link.max_concurrent}" + (" ?" if link.guess else "")


def _label_text(text: str) -> str:
    # printable ASCII only: control characters and anything exotic become \\xNN / \\uNNNN
    return "".join(ch if 0x20 <= ord(ch) < 0x7f else
                   (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
                   for ch in text)


def to_dot(edges: Iterable[dict], resolve: bool = False) -> str:
    graph = build(edges, resolve)

    def quote(text: str) -> str:
        return '"' + _label_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph nsnet {", "  rankdir=LR;", f'  graph [fontname="{FONT}"];',
             f'  node [shape=box, fontname="{FONT}"];', f'  edge [fontname="{FONT}"];']
    for who in graph.people():
        lines.append(f"  {quote(who)} [style=rounded];")
    for svc in graph.services():
        lines.append(f"  {quote(svc)} [shape=cylinder];")
    for (who, svc), link in sorted(graph.uses.items()):
        style = ", style=dashed" if link.guess else ""
        lines.append(f"  {quote(who)} -> {quote(svc)} [label={quote(_edge_label(link))}{style}];")
    for (svc, who), guess in sorted(graph.served.items()):
        label = "served by ?" if guess else "served by"
        lines.append(f"  {quote(svc)} -> {quote(who)} [label={quote(label)}, "
                     f"style={'dashed' if guess else 'dotted'}, arrowhead=empty];")
    lines.append(f"  legend [shape=note, label={quote(LEGEND)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(edges: Iterable[dict], resolve: bool = False) -> str:
    graph = build(edges, resolve)
    ids: dict[str, str] = {}

    def node(text: str, service: bool) -> str:
        if text not in ids:
            ids[text] = f"{'s' if service else 'u'}{len(ids)}"
        return ids[text]

    def label(text: str) -> str:
        # Mermaid's quoted labels take HTML entities; quotes and brackets would end them
        return re.sub(r'["<>#&]', lambda m: f"#{ord(m.group())};", _label_text(text))

    lines = ["flowchart LR"]
    for who in graph.people():
        lines.append(f'  {node(who, False)}("{label(who)}")')
    for svc in graph.services():
        lines.append(f'  {node(svc, True)}[("{label(svc)}")]')
    for (who, svc), link in sorted(graph.uses.items()):
        arrow = "-.->" if link.guess else "-->"
        lines.append(f'  {ids[who]} {arrow}|"{label(_edge_label(link))}"| {ids[svc]}')
    for (svc, who), guess in sorted(graph.served.items()):
        lines.append(f'  {ids[svc]} -.-o|"{"served by ?" if guess else "served by"}"| {ids[who]}')
    lines.append(f'  legend["{label(LEGEND)}"]')
    return "\n".join(lines) + "\n"


def render(edges: list[dict], fmt: str, resolve: bool = False) -> str:
    """dot or mermaid text (svg and png: see :func:`draw`)."""
    return to_mermaid(edges, resolve) if fmt == "mermaid" else to_dot(edges, resolve)


def draw(edges: list[dict], fmt: str, resolve: bool = False) -> bytes:
    """An SVG or PNG drawn by Graphviz's `dot` from our dot text (given on its stdin, never
    through a shell); NsnetError when Graphviz is not installed or fails."""
    dot = shutil.which("dot")
    if dot is None:
        raise NsnetError(f"--format {fmt} needs Graphviz's dot, which is not installed here: "
                         f"install graphviz, or run 'nsnet graph | dot -T{fmt}' where it is")
    try:
        run = subprocess.run([dot, f"-T{fmt}"], input=to_dot(edges, resolve).encode(),
                             capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NsnetError(f"Graphviz's dot failed: {exc}") from exc
    if run.returncode != 0:
        first = run.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise NsnetError(f"Graphviz's dot failed (exit {run.returncode})"
                         + (f": {first[0]}" if first else ""))
    return run.stdout
