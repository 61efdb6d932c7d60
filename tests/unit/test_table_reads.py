"""What a table source does with one namespace's read: a socket the kernel listed twice
(its hash moved between two read() pieces) is kept once."""
from __future__ import annotations

from nsnet.model import Socket
from nsnet.sources.base import _once_each


def tcp(inode: int, lport: int, state: str = "ESTABLISHED") -> Socket:
    return Socket("tcp", "inet", state, "127.0.0.1", lport, "127.0.0.1", 8080, inode, 0)


def test_a_socket_listed_twice_is_kept_once() -> None:
    a, b, again = tcp(11, 40000), tcp(12, 40001), tcp(11, 40000)
    tw, tw_again, other_tw = (tcp(0, 40002, "TIME_WAIT"), tcp(0, 40002, "TIME_WAIT"),
                              tcp(0, 40003, "TIME_WAIT"))
    kept, repeated = _once_each([a, b, again, tw, tw_again, other_tw])
    assert kept == [a, b, tw, other_tw] and kept[0] is a and repeated == 2


def test_two_different_unix_lines_for_one_inode_are_left_to_the_unix_check() -> None:
    first = Socket("unix", "unix", "LISTEN", "/run/a.sock", None, "", None, 7, None)
    forged = Socket("unix", "unix", "LISTEN", "@evil", None, "", None, 7, None,
                    unconfirmed=True)
    same = Socket("unix", "unix", "LISTEN", "/run/a.sock", None, "", None, 7, None)
    kept, repeated = _once_each([forged, first, same])
    assert kept == [forged, first] and repeated == 1
