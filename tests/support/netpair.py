"""Two fresh named network namespaces joined by a veth pair, each end addressed and up (lo
too): the two sides of a connection that crosses namespaces, as two pods on a node."""
from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from realnode import ip_tool


@contextlib.contextmanager
def veth_pair(prefix: str, a_ip: str, b_ip: str) -> Iterator[tuple[str, str]]:
    """Namespaces `<prefix>-<tag>-a` (a_ip/24) and `...-b` (b_ip/24); yields their names and
    deletes them afterwards (the veth goes with them)."""
    tag = secrets.token_hex(3)
    a, b = f"{prefix}-{tag}-a", f"{prefix}-{tag}-b"
    dev = f"nsv{tag}"
    ip = ip_tool()
    made = []
    try:
        for name in (a, b):
            subprocess.run([ip, "netns", "add", name], check=True)
            made.append(name)
        subprocess.run([ip, "link", "add", f"{dev}a", "netns", a, "type", "veth", "peer",
                        "name", f"{dev}b", "netns", b], check=True)
        for name, end, addr in ((a, f"{dev}a", a_ip), (b, f"{dev}b", b_ip)):
            subprocess.run([ip, "-n", name, "addr", "add", f"{addr}/24", "dev", end], check=True)
            subprocess.run([ip, "-n", name, "link", "set", end, "up"], check=True)
            subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True)
        yield a, b
    finally:
        for name in made:
            subprocess.run([ip, "netns", "del", name], check=False)
