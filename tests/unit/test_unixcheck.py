"""The settling of /proc/net/unix lines a bound name could have printed, on lines built in
memory (what needs no process: claims on the same inode, lines nobody holds). The checks
against held sockets run on real ones in tests/kernel/test_forged_unix.py."""
from __future__ import annotations

from nsnet.model import Socket, Stats
from nsnet.unixcheck import UnixLineCheck


def unix(inode: int, name: str, *, unconfirmed: bool, netns: int = 1) -> Socket:
    return Socket("unix", "unix", "LISTEN", name, None, "", None, inode, None, netns,
                  f"net:[{netns}]", unix_type="stream", unconfirmed=unconfirmed)


def tcp(inode: int, netns: int = 2) -> Socket:
    return Socket("tcp", "inet", "LISTEN", "127.0.0.1", 7001, "0.0.0.0", 0, inode, 0, netns,
                  f"net:[{netns}]")


def settle(sockets: list[Socket]) -> tuple[list[Socket], Stats]:
    stats = Stats()
    check = UnixLineCheck("/proc", stats)
    check.check(sockets)      # nobody holds these: nothing to ask
    check.finish(sockets)
    return sockets, stats


def test_a_claim_on_an_inode_a_sure_line_lists_is_dropped() -> None:
    victim_tcp, victim_unix = tcp(50), unix(51, "/run/v.sock", unconfirmed=False, netns=2)
    forged = [unix(50, "/run/x", unconfirmed=True), unix(51, "@evil", unconfirmed=True)]
    kept, stats = settle([unix(10, "@x", unconfirmed=False), *forged, victim_tcp, victim_unix])
    assert [(s.proto, s.inode, s.local_addr) for s in kept] == [
        ("unix", 10, "@x"), ("tcp", 50, "127.0.0.1"), ("unix", 51, "/run/v.sock")]
    assert (stats.unix_lines_dropped, stats.unix_unconfirmed) == (2, 0)
    assert any("2 /proc/net/unix line(s) dropped" in w for w in stats.warnings())


def test_a_line_nothing_can_check_stays_flagged_and_counted() -> None:
    kept, stats = settle([unix(10, "@x", unconfirmed=False),
                          unix(987654321, "/run/db.sock", unconfirmed=True)])
    assert [(s.inode, s.unconfirmed) for s in kept] == [(10, False), (987654321, True)]
    assert (stats.unix_lines_dropped, stats.unix_unconfirmed) == (0, 1)
    assert any(w.startswith("1 unix socket(s) unconfirmed") for w in stats.warnings())


def test_two_unconfirmed_claims_on_one_inode_both_stay_flagged() -> None:
    """Neither line is sure, so neither wins: both are shown, both flagged."""
    kept, stats = settle([unix(7, "@a", unconfirmed=True), unix(7, "@b", unconfirmed=True)])
    assert [(s.local_addr, s.unconfirmed) for s in kept] == [("@a", True), ("@b", True)]
    assert stats.unix_unconfirmed == 2


def test_a_line_the_fd_vouched_for_is_confirmed_unless_disputed() -> None:
    lone, disputed, sure = (unix(8, "@a", unconfirmed=True), unix(9, "@b", unconfirmed=True),
                            unix(9, "@c", unconfirmed=False, netns=3))
    stats = Stats()
    check = UnixLineCheck("/proc", stats)
    check.kind_only.update({id(lone): lone, id(disputed): disputed})  # as _holds_up leaves them
    sockets = [lone, disputed, sure]
    check.finish(sockets)
    assert sockets == [lone, sure] and not lone.unconfirmed
    assert (stats.unix_lines_dropped, stats.unix_unconfirmed) == (1, 0)


def test_nothing_is_checked_or_dropped_when_no_line_is_suspect() -> None:
    sockets = [unix(1, "@a", unconfirmed=False), unix(2, "", unconfirmed=False), tcp(3)]
    kept, stats = settle(list(sockets))
    assert kept == sockets and stats.warnings() == []
