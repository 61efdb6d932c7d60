"""nsnet.conntrack on a real node: Service VIPs DNATed by real iptables/ip6tables rules, real TCP
and UDP connections through them, conntrack(8) as the oracle.

The scenario (tests/support/conntrack_capture.py) is Kubernetes' shape: a client namespace (a
pod) routed through a node namespace whose nat PREROUTING (for the pod) and OUTPUT (for the
node's own client) jump to a chain of DNAT rules, to a backend namespace. In the node namespace
`conntrack -L -o extended` lists every entry; those with a translated destination are what
read_translations must give, whichever way it reads the table: ctnetlink run inside the node
namespace, or /proc/<pid>/net/nf_conntrack of a process in it, read from outside (the
DaemonSet's case: <proc>/1 is the host's pid 1, here a directory whose `1` is that process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import require_root

from nsnet.conntrack import CTNETLINK, read_translations

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "iptables", "ip6tables", "conntrack")

# read_translations(argv[1], int(argv[2])) in the namespace it runs in, as JSON
READ = """
import json, sys
from nsnet.conntrack import read_translations
read = read_translations(sys.argv[1], int(sys.argv[2]))
t = read.translations
print(json.dumps({"via": read.via, "error": read.error,
                  "translations": None if t is None else [[*k, *v] for k, v in t.items()],
                  "seen": None if t is None else t.seen,
                  "malformed": None if t is None else t.malformed}))
"""


@pytest.fixture
def node():
    """The scenario, and a directory standing for <proc> whose `1` is a process of the node
    namespace (its local client)."""
    require_root(*TOOLS)
    from conntrack_capture import scenario

    with scenario("nsct") as sc, tempfile.TemporaryDirectory(prefix="nsct-proc-") as fake:
        os.symlink(f"/proc/{sc.node_pid}", os.path.join(fake, "1"))
        yield sc, fake


def _oracle(sc) -> dict[tuple, tuple]:
    from conntrack_capture import oracle_lines, translated_by_oracle

    return translated_by_oracle(oracle_lines(sc))


def _read_in(ns_argv: list[str], proc: str, host_inode: int) -> dict:
    out = subprocess.run([*ns_argv, sys.executable, "-c", READ, proc, str(host_inode)],
                         capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    if got["translations"] is not None:
        got["translations"] = {tuple(row[:5]): tuple(row[5:]) for row in got["translations"]}
    return got


def _check(sc, translations: dict, before: dict) -> None:
    """The read equals conntrack(8)'s view (taken before and after it: nothing changed in
    between), and gives each client socket the backend it was sent to."""
    after = _oracle(sc)
    assert before == after, "the table changed during the test"
    assert translations == after
    assert len(after) >= 8      # tcp+udp, v4+v6, pod and node clients, the unreplied ones
    for key, backend in sc.expected.items():
        assert translations.get(key) == backend, key


def test_ctnetlink_in_the_node_namespace(node):
    """Run in the node namespace (its own namespace is the host's): a ctnetlink dump."""
    require_root(*TOOLS)
    sc, fake = node
    before = _oracle(sc)
    got = _read_in(sc.in_node(), fake, sc.node_inode)
    assert got["via"] == CTNETLINK and got["error"] is None
    assert got["malformed"] == 0 and got["seen"] >= len(before)
    _check(sc, got["translations"], before)


def test_proc_file_from_another_namespace(node):
    """Read from here (not the node namespace: no ctnetlink), through <proc>/1/net/
    nf_conntrack, the table of that process's namespace."""
    require_root(*TOOLS)
    sc, fake = node
    before = _oracle(sc)
    assert os.stat("/proc/thread-self/ns/net").st_ino != sc.node_inode
    read = read_translations(fake, sc.node_inode)
    assert read.via == f"{fake}/1/net/nf_conntrack" and read.error is None
    assert read.translations is not None and read.translations.malformed == 0
    _check(sc, dict(read.translations), before)


def test_without_net_admin_the_proc_file_is_read(node):
    """In the node namespace but without CAP_NET_ADMIN, the kernel refuses the dump (EPERM):
    the proc file is read instead, with the same result."""
    require_root(*TOOLS, "setpriv")
    sc, fake = node
    before = _oracle(sc)
    drop = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    got = _read_in([*sc.in_node(), *drop], fake, sc.node_inode)
    assert got["via"] == f"{fake}/1/net/nf_conntrack" and got["error"] is None
    # and with no table file either, the line says why ctnetlink failed
    empty = tempfile.mkdtemp(prefix="nsct-empty-")
    try:
        refused = _read_in([*sc.in_node(), *drop], empty, sc.node_inode)
    finally:
        os.rmdir(empty)
    assert refused["translations"] is None
    assert "ctnetlink: EPERM (Operation not permitted) without CAP_NET_ADMIN" in refused["error"]
    _check(sc, got["translations"], before)


def test_no_rules_no_entries(node):
    """The backend namespace has no netfilter rule: the kernel tracks nothing there, an
    empty table, which is not an error."""
    require_root(*TOOLS)
    sc, fake = node
    inode = os.stat(f"/run/netns/{sc.backend}").st_ino
    got = _read_in([sc.in_node()[0], "netns", "exec", sc.backend], fake, inode)
    assert got["via"] == CTNETLINK and got["error"] is None and got["translations"] == {}


def test_nothing_readable_is_one_line(tmp_path):
    """No table file (a kernel without CONFIG_NF_CONNTRACK_PROCFS looks the same) and not in
    the host's namespace: no translations, one line saying what would do. Never raises."""
    read = read_translations(str(tmp_path), None)
    path = f"{tmp_path}/1/net/nf_conntrack"
    assert read.translations is None and read.via == path
    assert read.error is not None and "\n" not in read.error
    assert read.error.startswith(
        f"Service VIPs not resolved: no connection-tracking table readable (needs {path} "
        "(CONFIG_NF_CONNTRACK_PROCFS) or CAP_NET_ADMIN in the host's network namespace")
    assert f"{path}: not there" in read.error


def test_a_kernel_without_connection_tracking_says_nothing(tmp_path, monkeypatch):
    """No nf_conntrack in the kernel (none under /sys/module): nothing can be translated, so
    the missing table is not worth a warning on every run."""
    import nsnet.conntrack as conntrack

    assert conntrack.conntrack_in_kernel(str(tmp_path)) is False
    (tmp_path / "module" / "nf_conntrack").mkdir(parents=True)
    assert conntrack.conntrack_in_kernel(str(tmp_path)) is True
    assert conntrack.conntrack_in_kernel() is True      # this kernel has it (built in)
    monkeypatch.setattr(conntrack, "conntrack_in_kernel", lambda: False)
    read = conntrack.read_translations(str(tmp_path), None)
    assert (read.translations, read.error) == (None, None)


def test_denied_file_is_said(tmp_path):
    """A table file we may not read: said as denied, not raised."""
    require_root("setpriv")
    (tmp_path / "1" / "net").mkdir(parents=True)
    table = tmp_path / "1" / "net" / "nf_conntrack"
    table.write_text("")
    table.chmod(0o000)
    code = ("import sys; from nsnet.conntrack import read_translations; "
            "r = read_translations(sys.argv[1], None); print(r.error)")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd="/", env={**os.environ,
                                                              "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert f"{table}: EACCES (Permission denied)" in out.stdout
