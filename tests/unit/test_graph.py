"""`nsnet graph`: the dependency map as dot / Mermaid, with hostile names kept inert."""
from __future__ import annotations

import pytest

from nsnet.agent.edges import EdgeKey, EdgeState
from nsnet.graph import render
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
    assert len(lines) == (10 if fmt == "dot" else 7)   # a newline in a name adds no line
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
    assert "legend [shape=note" in dot and "the user is a guess" in dot
    mermaid = render(guessed_edges(), "mermaid")
    assert '-.->|"tcp x1 ?"|' in mermaid and mermaid.count("-.->") == 1
    assert 'legend["' in mermaid
    # nothing guessed: no legend
    assert "legend" not in render(edges(), "dot") and "legend" not in render(edges(), "mermaid")
