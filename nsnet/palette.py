"""What each colour of the human output means, in one place: the renderer asks here, and the
legend that `nsnet --help` prints is written from the same table.

Colour carries meaning only; the text never depends on it (NO_COLOR, pipes and `--color never`
lose nothing but the highlighting). Address classes follow the IANA special-purpose registries
as Python's ipaddress module knows them, plus the shared address space 100.64.0.0/10 (RFC 6598),
which CNI plugins and cloud VPCs use as private space.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["LEGEND", "address_class", "address_style", "state_style", "GUESS_STYLE",
           "UNHELD_STYLE", "legend_lines"]

_SHARED = ipaddress.ip_network("100.64.0.0/10")

# class -> style (None: the terminal's own colour)
ADDRESS_STYLES: dict[str, str | None] = {
    "loopback": "blue", "private": None, "public": "magenta", "wildcard": None, "": None,
}
# a public address that matters more: the other end is off this node, or we listen on it
EXPOSED_STYLE = "bold magenta"

STATE_STYLES: dict[str, str] = {
    "LISTEN": "green", "UNCONN": "green",
    "ESTABLISHED": "cyan",
    "SYN_SENT": "yellow", "SYN_RECV": "yellow", "CLOSE_WAIT": "yellow",
    "TIME_WAIT": "dim", "FIN_WAIT1": "dim", "FIN_WAIT2": "dim", "LAST_ACK": "dim",
    "CLOSING": "dim", "CLOSE": "dim",
}
GUESS_STYLE = "dim"       # a user or owner nsnet inferred (also marked "?")
UNHELD_STYLE = "dim"      # a socket no process holds (TIME_WAIT, an orphan)

LEGEND = [
    ("blue", "loopback address (127.0.0.0/8, ::1)"),
    (None, "private address (RFC 1918, 100.64.0.0/10, link-local, fc00::/7): no colour"),
    ("magenta", "public address"),
    (EXPOSED_STYLE, "public address of a peer off this node, or that we listen on"),
    ("green", "LISTEN, UNCONN: serving"),
    ("cyan", "ESTABLISHED"),
    ("yellow", "SYN_SENT, SYN_RECV, CLOSE_WAIT: being set up, or closed by the peer only"),
    ("dim", "closed recently (TIME_WAIT, FIN_WAIT...), held by no process, or a guess (?)"),
]


@lru_cache(maxsize=16384)
def address_class(addr: str | None) -> str:
    """loopback, private, public or wildcard; "" for what is not an IP address (a unix path,
    nothing)."""
    if not addr:
        return ""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "wildcard"
    if ip.is_loopback:
        return "loopback"
    if ip.is_private or ip.is_link_local or (ip.version == 4 and ip in _SHARED):
        return "private"
    return "public"


def address_style(addr: str | None, exposed: bool = False) -> str | None:
    """The style of an endpoint cell; ``exposed``: the peer is off this node, or it is a
    listener's own address."""
    cls = address_class(addr)
    if cls == "public" and exposed:
        return EXPOSED_STYLE
    return ADDRESS_STYLES[cls]


def state_style(state: str | None) -> str | None:
    return STATE_STYLES.get(state or "")


def legend_lines() -> list[str]:
    """The legend, one line per colour, as `--help` prints it (uncoloured: help text goes
    through argparse, which knows nothing of terminals)."""
    return [f"  {style or '(none)':<14} {meaning}" for style, meaning in LEGEND]
