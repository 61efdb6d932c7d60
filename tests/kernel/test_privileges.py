"""Without privileges nsnet still runs, reports what it can, and says what it could not see.

Run as root with capabilities removed (setpriv bounding set): uid 0 without CAP_SYS_PTRACE
cannot read other processes' fds or ns links, exactly like an unprivileged user, while it can
still run this checkout's interpreter (which lives under /root).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
SETPRIV = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all"]


def run_with_caps(bounding: str, *args: str) -> tuple[dict, list[str]]:
    run = subprocess.run([*SETPRIV, f"--bounding-set={bounding}", "--", sys.executable, "-m",
                          "nsnet", *args, "--json"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert all(line.startswith("nsnet: warning: ") for line in lines), lines
    return json.loads(run.stdout), [line[len("nsnet: warning: "):] for line in lines]


def _truth_sockets(node, *names: str):
    return [s for ns in names for s in node.truth.sockets_in(ns) if s.inode]


def test_without_any_capability(node):
    doc, warnings = run_with_caps("-all", "sockets")
    stats = doc["stats"]
    expected = re.compile(
        rf"no pid attribution for {stats['processes_fd_denied']} of {stats['processes']} "
        r"processes \(pid \d+ \([^)]*\)(, pid \d+ \([^)]*\))*(, \+\d+ more)?\): "
        r"/proc/<pid>/fd needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH$")
    assert any(expected.match(w) for w in warnings), warnings
    # the rest: unix lines a bound name could have printed, which nothing could ask without
    # privileges (tests/kernel/test_forged_unix.py), flagged and said
    unconfirmed = [w for w in warnings if w not in stats["privileges"]]
    assert stats["privileges"] == [w for w in warnings if w not in unconfirmed]
    assert unconfirmed == ([f"{stats['unix_unconfirmed']} unix socket(s) unconfirmed: their "
                            "/proc/net/unix line may be part of a bound name and nothing "
                            "could check it (flagged)"] if stats["unix_unconfirmed"] else [])
    fixture_pids = {p for ns in ("A", "B") for p in node.truth.ns[ns].pids}
    assert stats["processes_fd_denied"] >= len(fixture_pids)
    assert stats["processes_ns_denied"] >= len(fixture_pids)

    by_inode = {s["inode"]: s for s in doc["sockets"] if s["inode"]}
    keys = {}
    for truth in _truth_sockets(node, "A", "B"):
        got = by_inode.get(truth.inode)
        assert got is not None, f"{truth.name} missing without privileges"
        assert (got["proto"], got["state"], got["local_addr"], got["local_port"],
                got["remote_addr"], got["remote_port"]) == \
            (truth.proto, truth.state, truth.local_addr, truth.local_port,
             truth.remote_addr, truth.remote_port), truth.name
        assert got["pids"] == []
        # no holder known: attributed to the table's uid column (none for unix sockets)
        assert got["users"] == ([] if truth.uid is None else [truth.uid]), truth.name
        keys.setdefault(truth.ns, set()).add(got["netns_key"])
    # grouped without the ns inode: one stand-in identity per namespace, distinct ones
    assert all(len(k) == 1 for k in keys.values()), keys
    assert keys["A"] != keys["B"]
    [key_a] = keys["A"]
    assert key_a.startswith("procnet:")
    ns_a = next(ns for ns in doc["namespaces"] if ns["key"] == key_a)
    assert ns_a["inode"] is None and ns_a["tables_read"]


def test_with_the_daemonset_capabilities(node):
    """CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH: every pid attributed; only the namespace pinned
    by nothing but a bind mount stays closed (setns needs CAP_SYS_ADMIN), and says so."""
    doc, warnings = run_with_caps("-all,+sys_ptrace,+dac_read_search", "sockets")
    by_inode = {s["inode"]: s for s in doc["sockets"] if s["inode"]}
    for truth in _truth_sockets(node, "A", "B"):
        got = by_inode[truth.inode]
        assert got["pids"] == truth.pids, truth.name
        assert got["netns"] == truth.netns
    c = node.truth.ns["C"]
    [ns_c] = [ns for ns in doc["namespaces"] if ns["inode"] == c.inode]
    assert not ns_c["tables_read"] and "CAP_SYS_ADMIN" in ns_c["error"]
    assert ns_c["found_by"] == ["bind-mount"]
    assert node.truth.sock("C.listen").inode not in by_inode
    stats = doc["stats"]
    assert stats["pinned_unreadable"] >= 1 and stats["socket_fds_not_in_tables"] >= 1
    assert (f"{stats['pinned_unreadable']} namespace(s) pinned only by a bind mount not read: "
            "entering them needs CAP_SYS_ADMIN") in warnings
    assert not any(w.startswith("no pid attribution") and "needs" in w for w in warnings)
