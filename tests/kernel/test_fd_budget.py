"""One tenant cannot make a snapshot arbitrarily long: fd links are read up to a budget per
uid, and the rest is counted and said.

Real processes: a tenant process holds 2,000 sockets and forks 4 children that inherit them
(~10,000 fd links, every one a socket: what the attack multiplies to a million). With a
budget of 4,000 per uid, exactly the links past it are left unread, the processes concerned
are named once, and every socket is still listed (from its namespace's table) -- held by the
processes whose fds were read.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_root
from tenant import start_as

REPO = Path(__file__).resolve().parents[2]
TENANT = 10818
SOCKETS, CHILDREN = 2000, 4

HOARD = r"""
import os, resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
held = []
for _ in range(int(sys.argv[1])):   # bound: an unbound UDP socket is in no table
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    held.append(s)
kids = []
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        sys.stdin.read()
        os._exit(0)
    kids.append(pid)
print(" ".join(map(str, [os.getpid(), *kids])), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def hoarder():
    require_root("setpriv")
    popen, line = start_as(TENANT, HOARD, str(SOCKETS), str(CHILDREN))
    pids = [int(p) for p in line.split()]
    links = {pid: len(list(Path(f"/proc/{pid}/fd").iterdir())) for pid in pids}
    yield pids, links
    popen.kill()
    popen.wait()


def nsnet(*args: str) -> tuple[dict, str]:
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--udp", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), run.stderr


def test_fd_links_past_a_uids_budget_are_counted_not_read(hoarder):
    pids, links = hoarder
    total = sum(links.values())
    assert total >= SOCKETS * (CHILDREN + 1)
    doc, stderr = nsnet("--max-fds-per-user", "4000")
    stats = doc["stats"]
    assert stats["fds_skipped"] == total - 4000
    cut = [pid for pid in pids if sum(links[p] for p in pids[:pids.index(pid) + 1]) > 4000]
    assert f"fds not all read for {len(cut)} process(es) (pid {cut[0]} (" in stderr
    assert f"uid {TENANT} holds more than 4000 fds in all (--max-fds-per-user)" in stderr
    ours = [s for s in doc["sockets"] if s["uid"] == TENANT]
    assert len(ours) == SOCKETS            # every socket still listed, from the table
    # the parent's fds were read within the budget: it holds every one of them
    assert all(pids[0] in s["pids"] for s in ours)
    assert all(s["users"] == [TENANT] for s in ours)


def test_within_the_budget_everything_is_read(hoarder):
    pids, _ = hoarder
    doc, stderr = nsnet()
    assert doc["stats"]["fds_skipped"] == 0 and "fds not all read" not in stderr
    ours = [s for s in doc["sockets"] if s["uid"] == TENANT]
    assert len(ours) == SOCKETS and all(s["pids"] == sorted(pids) for s in ours)


@pytest.fixture(scope="module")
def crowd():
    """A tenant's 2,000 sockets in 61 processes (~120k fd links): seconds of walking."""
    require_root("setpriv")
    popen, line = start_as(TENANT, HOARD, str(SOCKETS), "60")
    yield [int(p) for p in line.split()]
    popen.kill()
    popen.wait()


def test_the_walk_stops_at_its_deadline_and_says_so(crowd):
    doc, stderr = nsnet("--deadline", "0.1", "--max-fds-per-user", "all")
    stats = doc["stats"]
    assert stats["processes_skipped"] > 0
    assert (f"{stats['processes_skipped']} not walked (--deadline)") in stderr
    assert "the walk's deadline (0.1 s) passed after " in stderr
    walked = {p["pid"] for p in doc["processes"]}
    assert not set(crowd) <= walked        # the last of the crowd were not walked
    doc, stderr = nsnet("--max-fds-per-user", "all")
    assert doc["stats"]["processes_skipped"] == 0 and "deadline" not in stderr


def test_a_megabyte_command_line_costs_at_most_64_kib():
    """A tenant's command line may be megabytes (a quarter of its stack limit): nsnet reads
    its first 64 KiB, as for every text of a process it reads."""
    require_root()
    # a shell that waits, its arguments unused: 10 of 100 kB (at most 128 kB each)
    long = subprocess.Popen(["/bin/sh", "-c", "sleep 60; :", "sh", *(["x" * 100_000] * 10)],
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):   # until it has exec'd
            if len(Path(f"/proc/{long.pid}/cmdline").read_bytes()) > 1_000_000:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the long command line never showed")
        run = subprocess.run([sys.executable, "-m", "nsnet", "by-namespace", "--json",
                              "--netns", "host"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        [ns] = json.loads(run.stdout)["namespaces"]
        [shown] = [p for p in ns["processes"] if p["pid"] == long.pid]
        assert shown["cmdline"][:3] == ["/bin/sh", "-c", "sleep 60; :"]
        # 64 KiB read: the arguments and the NULs between them
        assert 60_000 < sum(len(a) + 1 for a in shown["cmdline"]) - 1 <= 1 << 16
    finally:
        long.kill()
        long.wait()
