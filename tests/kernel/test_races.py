"""Races are normal: processes exit, pids are reused, namespaces change mid-walk.

The walker must skip and count, never crash, never file a socket under the wrong namespace.
Where a race cannot be provoked on demand, it is injected at one precise point (a reaped pid
in the pid list, a live pid of another namespace as a table reader); every /proc read is real.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from conftest import require_root
from nsnet import snapshot, walk
from nsnet.model import Namespace, Stats, netns_key
from nsnet.sources import ReadContext
from nsnet.sources.proc import ProcSource


def _reaped_pid() -> int:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    assert not os.path.exists(f"/proc/{proc.pid}")
    return proc.pid


def test_process_vanishing_between_listing_and_reading_is_counted(monkeypatch):
    real_list = walk.list_pids
    dead = _reaped_pid()
    monkeypatch.setattr(walk, "list_pids", lambda proc: sorted(real_list(proc) + [dead]))
    snap = snapshot.take_snapshot()
    assert dead not in snap.processes
    assert snap.stats.processes_vanished >= 1
    assert all(dead not in s.pids for s in snap.sockets)


def test_table_reader_that_vanished_or_moved_is_skipped():
    """The namespace's tables come from the next live member; a pid that now lives in
    another namespace (as after pid reuse) is never used as a reader."""
    require_root("ip")
    name = f"nsnt-race-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    member = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        inode = os.stat(f"/run/netns/{name}").st_ino
        while os.stat(f"/proc/{member.pid}/ns/net").st_ino != inode:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        key = netns_key(inode)
        dead = _reaped_pid()
        elsewhere = os.getpid()   # alive, but in another namespace

        def read(pids: list[int]) -> tuple[Namespace, Stats, list]:
            stats = Stats()
            found = walk.Discovery("/proc")
            ns = found.namespace(key)
            ns.pids = pids
            sockets = ProcSource().read_namespaces(ReadContext("/proc", stats, None, False),
                                                   found, {key: ns})
            return ns, stats, sockets

        ns, stats, sockets = read([dead, elsewhere, member.pid])
        assert ns.tables_read and ns.read_via == f"pid {member.pid}"
        assert stats.namespace_read_retries == 2
        assert all(s.netns == inode for s in sockets)
        ns, stats, sockets = read([dead, elsewhere])
        assert not ns.tables_read and ns.read_via is None and sockets == []
        assert stats.namespaces_unread == 1 and "no task" in ns.error
    finally:
        member.kill()
        member.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)


CHURN = r"""
import os, socket, sys, time
end = time.monotonic() + float(sys.argv[1])
base = int(sys.argv[2])
i = 0
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", base + i % 50))
        s.listen()
        time.sleep(0.002)
        os._exit(0)
    os.waitpid(pid, 0)
    i += 1
print(i, flush=True)
"""


def test_snapshots_under_process_churn_never_misfile_sockets():
    """Short-lived processes with listeners churn inside one namespace while snapshots are
    taken: no crash, and every churn socket seen is filed under the churn namespace."""
    require_root("ip")
    name = f"nsnt-churn-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    base = 41000
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
        churn = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", CHURN,
                                  "4", str(base)], stdout=subprocess.PIPE, text=True)
        seen_churn = 0
        vanished = 0
        runs = 0
        while churn.poll() is None:
            snap = snapshot.take_snapshot()
            runs += 1
            vanished += snap.stats.processes_vanished + snap.stats.fds_vanished
            for s in snap.sockets:
                if s.proto == "tcp" and s.local_addr == "127.0.0.1" and \
                        base <= s.local_port < base + 50 and s.state == "LISTEN":
                    seen_churn += 1
                    assert s.netns == inode, "a churn socket was filed under another namespace"
                    for pid in s.pids:
                        if pid in snap.processes:
                            assert snap.processes[pid].netns in (inode, None)
        forks = int(churn.stdout.read())
        assert churn.returncode == 0 and forks > 50 and runs >= 3
        print(f"{runs} snapshots, {forks} forks, {seen_churn} churn sockets seen, "
              f"{vanished} vanished processes/fds counted")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
