"""`nsnet graph`: the dependency map as dot / Mermaid, with hostile names kept inert."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from nsnet.agent.edges import EdgeKey, EdgeState
from nsnet.errors import NsnetError
from nsnet.graph import draw, render
from nsnet.agent.history import deps_view
from nsnet.services import parse_services

SERVICES = parse_services('[[service]]\nname = "shared-db"\nmatch = ["10.0.0.5:3306"]\n')
HOSTILE = 'evil"]; x -> y; \x1b[2J\n#<b>&'


def edges(where_a: str = "pod:shop/cart") -> list[dict]:
    rows = [
        ("n1", EdgeKey(10001, where_a, "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(1.0, 9.0, 3, 4)),
        ("n2", EdgeKey(10001, where_a, "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(2.0, 8.0, 2, 7)),      # the same pair on another node: merged
        ("n1", EdgeKey(10002, "netns:4026532300", "outbound", "tcp", "fd00::6", 6379),
         EdgeState(1.0, 2.0, 1, 1)),
        ("n1", EdgeKey(10002, "netns:4026532300", "inbound", "tcp", "10.0.0.9", 8080),
         EdgeState(1.0, 2.0, 1, 1)),      # inbound: drawn from the client's side only
    ]
    return deps_view(rows, SERVICES, None, "test")["edges"]


def test_dot():
    text = render(edges(), "dot")
    assert '"10001 @ shop/cart" -> "shared-db (10.0.0.5:3306)" [label="tcp x7"];' in text
    assert '"10002 @ netns:4026532300" -> "[fd00::6]:6379" [label="tcp x1"];' in text
    assert text.count("->") == 2 and text.startswith("digraph nsnet {")


def test_mermaid():
    text = render(edges(), "mermaid")
    assert text.startswith("flowchart LR\n")
    assert 'u0("10001 @ shop/cart")' in text and 's3[("shared-db (10.0.0.5:3306)")]' in text
    assert 'u0 -->|"tcp x7"| s3' in text and 'u1 -->|"tcp x1"| s2' in text


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_hostile_names_stay_labels(fmt):
    text = render(edges(f"pod:{HOSTILE}/x"), fmt)
    assert "\x1b" not in text and all(ch == "\n" or 0x20 <= ord(ch) < 0x7f for ch in text)
    lines = text.splitlines()
    assert len(lines) == (13 if fmt == "dot" else 8)   # a newline in a name adds no line
    if fmt == "dot":
        assert '\\"]; x -> y;' in text               # the quote is escaped, not closing
        assert "\\\\x1b[2J\\\\x0a#<b>&" in text     # shown as the text \\x1b, not obeyed
    else:   # entities for what would end a Mermaid label or start markup
        assert 'u0("10001 @ evil#34;]; x -#62; y; \\x1b[2J\\x0a#35;#60;b#62;#38;/x")' in text



def guessed_edges() -> list[dict]:
    rows = [
        # the sidecar is only guessed to use the database: dashed, marked
        ("n1", EdgeKey(10011, "pod:shop/cart", "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(1.0, 9.0, 3, 1, evidence="namespace-owners")),
        # the app: guessed on one node, held on another -- known, drawn solid
        ("n1", EdgeKey(10001, "pod:shop/cart", "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(1.0, 9.0, 3, 1, evidence="namespace-owners")),
        ("n2", EdgeKey(10001, "pod:shop/cart", "outbound", "tcp", "10.0.0.5", 3306),
         EdgeState(1.0, 9.0, 3, 2, evidence="holder")),
    ]
    return deps_view(rows, SERVICES, None, "test")["edges"]


def test_a_guessed_edge_is_dashed_and_explained():
    dot = render(guessed_edges(), "dot")
    assert '"10011 @ shop/cart" -> "shared-db (10.0.0.5:3306)" [label="tcp x1 ?", ' \
           'style=dashed];' in dot
    assert '"10001 @ shop/cart" -> "shared-db (10.0.0.5:3306)" [label="tcp x2"];' in dot
    assert "legend [shape=note" in dot and "a user among a namespace's owners" in dot
    mermaid = render(guessed_edges(), "mermaid")
    assert '-.->|"tcp x1 ?"|' in mermaid and mermaid.count("-.->") == 1
    assert 'legend["' in mermaid
    # the legend is always there: x23 and the arrows need it whether or not anything is guessed
    assert "legend [shape=note" in render(edges(), "dot")
    assert 'legend["' in render(edges(), "mermaid")


def loopback_edges() -> list[dict]:
    """Two pods each talking to their own 127.0.0.1:8080, with their own server; one served
    as a live snapshot says it (served_by), the other's server known only from history."""
    rows = [
        ("n1", EdgeKey(10001, "pod:shop/a", "outbound", "tcp", "127.0.0.1", 8080),
         EdgeState(1.0, 9.0, 3, 2, evidence="holder")),
        ("n1", EdgeKey(10002, "pod:shop/b", "outbound", "tcp", "127.0.0.1", 8080),
         EdgeState(1.0, 9.0, 3, 1, evidence="holder")),
        ("n1", EdgeKey(10011, "pod:shop/a", "inbound", "tcp", "127.0.0.1", 8080),
         EdgeState(1.0, 9.0, 3, 2, evidence="holder")),
        ("n1", EdgeKey(10012, "pod:shop/b", "inbound", "tcp", "127.0.0.1", 8080),
         EdgeState(1.0, 9.0, 3, 1, evidence="holder")),
    ]
    servers = {rows[0][1]: {(10011, "pod:shop/a")}}
    docs = deps_view(rows, SERVICES, None, "test", servers=servers)["edges"]
    for doc in docs:      # the second pod's edge as the history has it: no served_by
        if doc["where"] == "pod:shop/b":
            doc["served_by"] = None
    return docs


def test_loopback_is_one_node_per_namespace_and_services_show_their_servers():
    dot = render(loopback_edges(), "dot")
    assert '"10001 @ shop/a" -> "127.0.0.1:8080 in shop/a" [label="tcp x2"];' in dot
    assert '"10002 @ shop/b" -> "127.0.0.1:8080 in shop/b" [label="tcp x1"];' in dot
    # exact (a snapshot said): dotted; inferred from the inbound edge on the port: dashed, ?
    assert ('"127.0.0.1:8080 in shop/a" -> "10011 @ shop/a" [label="served by", '
            'style=dotted, arrowhead=empty];') in dot
    assert ('"127.0.0.1:8080 in shop/b" -> "10012 @ shop/b" [label="served by ?", '
            'style=dashed, arrowhead=empty];') in dot
    # one font for every label
    assert set(re.findall(r'fontname="([^"]+)"', dot)) == {"Helvetica"}
    mermaid = render(loopback_edges(), "mermaid")
    assert mermaid.count("-.-o") == 2 and '"served by ?"' in mermaid


def test_an_ambiguous_port_is_not_guessed_to_a_server():
    rows = [("n1", EdgeKey(10001, "pod:shop/a", "outbound", "tcp", "10.0.0.9", 8080),
             EdgeState(1.0, 9.0, 3, 1)),
            ("n1", EdgeKey(10005, "pod:x/one", "inbound", "tcp", "10.0.0.1", 8080),
             EdgeState(1.0, 9.0, 3, 1)),
            ("n1", EdgeKey(10006, "pod:x/two", "inbound", "tcp", "10.0.0.1", 8080),
             EdgeState(1.0, 9.0, 3, 1))]
    dot = render(deps_view(rows, SERVICES, None, "test", live=False)["edges"], "dot")
    assert "served by" not in dot.split("legend")[0]


def test_resolve_names_ports():
    rows = [("n1", EdgeKey(10001, "pod:shop/a", "outbound", "tcp", "10.0.0.9", 443),
             EdgeState(1.0, 9.0, 3, 1))]
    docs = deps_view(rows, SERVICES, None, "test")["edges"]
    assert '"10.0.0.9:https"' in render(docs, "dot", resolve=True)
    assert '"10.0.0.9:443"' in render(docs, "dot")


@pytest.mark.parametrize("fmt, magic", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_svg_and_png_are_drawn_by_graphviz(fmt, magic):
    if shutil.which("dot") is None:
        reason = "needs Graphviz's dot (apt-get install graphviz)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    picture = draw(loopback_edges(), fmt)
    assert magic in picture[:400]
    if fmt == "svg":
        text = picture.decode()
        assert "127.0.0.1:8080 in shop/a" in text and "served by ?" in text


def test_without_graphviz_svg_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NsnetError, match="needs Graphviz's dot, which is not installed"):
        draw(loopback_edges(), "svg")
