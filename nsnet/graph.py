"""The dependency map as a picture: users and pods on the left, the services they connect to
on the right. Graphviz dot or Mermaid text; both escape every label (names come from /proc, the
kubelet's log tree and the operator's file)."""
from __future__ import annotations

import re
from collections.abc import Iterable

FORMATS = ("dot", "mermaid")
LEGEND = ("tcp x23: the most connections open at once; dashed, ?: the user is a guess (the "
          "owners of a namespace with several)")


def _who(edge: dict) -> str:
    user = edge["user"] or (str(edge["uid"]) if edge["uid"] is not None else "unknown")
    if edge["pod"]:
        return f"{user} @ {edge['pod_namespace']}/{edge['pod']}"
    if edge["pod_uid"]:
        return f"{user} @ pod {edge['pod_uid'][:8]}"
    return f"{user} @ {edge['netns']}"


def _service(edge: dict) -> str:
    addr = f"[{edge['peer_addr']}]" if ":" in edge["peer_addr"] else edge["peer_addr"]
    endpoint = f"{addr}:{edge['port']}"
    return f"{edge['service']} ({endpoint})" if edge["service"] else endpoint


def _pairs(edges: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """Outbound edges merged per (who, service) across nodes."""
    pairs: dict[tuple[str, str], dict] = {}
    for e in edges:
        if e["direction"] != "outbound":
            continue   # an inbound edge is the other side of someone's outbound one
        key = (_who(e), _service(e))
        p = pairs.setdefault(key, {"max_concurrent": 0, "samples": 0, "proto": e["proto"],
                                   "guess": True})
        p["max_concurrent"] = max(p["max_concurrent"], e["max_concurrent"])
        p["samples"] += e["samples"]
        p["guess"] = p["guess"] and bool(e.get("guess"))   # one edge known for sure: known
    return pairs


def _edge_label(p: dict) -> str:
    """'tcp x23': the protocol and the most connections open at once; '?' when the user is
    only a guess (the edge is also dashed)."""
    return f"{p['proto']} x{p['max_concurrent']}" + (" ?" if p["guess"] else "")


def _label_text(text: str) -> str:
    # printable ASCII only: control characters and anything exotic become \\xNN / \\uNNNN
    return "".join(ch if 0x20 <= ord(ch) < 0x7f else
                   (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
                   for ch in text)


def to_dot(edges: Iterable[dict]) -> str:
    pairs = _pairs(edges)

    def quote(text: str) -> str:
        return '"' + _label_text(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph nsnet {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for who in sorted({w for w, _ in pairs}):
        lines.append(f"  {quote(who)} [style=rounded];")
    for svc in sorted({s for _, s in pairs}):
        lines.append(f"  {quote(svc)} [shape=cylinder];")
    for (who, svc), p in sorted(pairs.items()):
        style = ", style=dashed" if p["guess"] else ""
        lines.append(f"  {quote(who)} -> {quote(svc)} [label={quote(_edge_label(p))}{style}];")
    if any(p["guess"] for p in pairs.values()):
        lines.append(f"  legend [shape=note, label={quote(LEGEND)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(edges: Iterable[dict]) -> str:
    pairs = _pairs(edges)
    ids: dict[str, str] = {}

    def node(text: str, service: bool) -> str:
        if text not in ids:
            ids[text] = f"{'s' if service else 'u'}{len(ids)}"
        return ids[text]

    def label(text: str) -> str:
        # Mermaid's quoted labels take HTML entities; quotes and brackets would end them
        return re.sub(r'["<>#&]', lambda m: f"#{ord(m.group())};", _label_text(text))

    lines = ["flowchart LR"]
    for who in sorted({w for w, _ in pairs}):
        lines.append(f'  {node(who, False)}("{label(who)}")')
    for svc in sorted({s for _, s in pairs}):
        lines.append(f'  {node(svc, True)}[("{label(svc)}")]')
    for (who, svc), p in sorted(pairs.items()):
        arrow = "-.->" if p["guess"] else "-->"
        lines.append(f'  {ids[who]} {arrow}|"{label(_edge_label(p))}"| {ids[svc]}')
    if any(p["guess"] for p in pairs.values()):
        lines.append(f'  legend["{label(LEGEND)}"]')
    return "\n".join(lines) + "\n"


def render(edges: list[dict], fmt: str) -> str:
    return to_dot(edges) if fmt == "dot" else to_mermaid(edges)
