"""The reader threads follow the CPUs the process may use: its affinity mask and its cgroup's
CPU quota (nsnet.cpus), not the machine's count.

Real cgroups: nsnet runs as `nsnet sockets --json` inside a cgroup made here under the
machine's cpu controller (v1 `cpu.cfs_quota_us`, or v2 `cpu.max` where the cpu controller
is on the unified hierarchy), or with a narrowed affinity mask; `stats.reader_threads` and
`reader_threads_reason` must say what the kernel was told.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_root

REPO = Path(__file__).resolve().parents[2]


def _cpu_hierarchy() -> tuple[int, Path]:
    """(version, mount point) of the hierarchy that has the cpu controller here."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, point, options = fields[sep + 1], Path(fields[4]), fields[sep + 3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            return 1, point
        if fstype == "cgroup2" and "cpu" in (point / "cgroup.controllers").read_text().split():
            return 2, point
    pytest.fail("no cgroup hierarchy with the cpu controller on this machine")


@pytest.fixture
def cgroups():
    """make(quota_cpus or None, parent=None) -> a new cgroup directory; removed at the end."""
    require_root()
    version, mount = _cpu_hierarchy()
    made: list[Path] = []

    def make(quota: float | None, parent: Path | None = None) -> Path:
        path = (parent or mount) / f"nsnt-cpu-{secrets.token_hex(3)}"
        path.mkdir()
        made.append(path)
        if version == 2 and parent is None:
            (mount / "cgroup.subtree_control").write_text("+cpu")
        if quota is not None:
            if version == 1:
                (path / "cpu.cfs_period_us").write_text("100000")
                (path / "cpu.cfs_quota_us").write_text(str(int(quota * 100000)))
            else:
                (path / "cpu.max").write_text(f"{int(quota * 100000)} 100000")
        return path

    yield make
    for path in reversed(made):
        path.rmdir()


def _stats(cgroup: Path | None = None, cpus: set[int] | None = None) -> dict:
    def place() -> None:   # in the child, before exec: the cgroup and the mask nsnet starts in
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--tcp"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         preexec_fn=place)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["stats"]


def test_a_one_cpu_quota_means_one_reader(cgroups):
    stats = _stats(cgroups(1.0))
    assert stats["reader_threads"] == 1
    assert "cgroup CPU quota 1)" in stats["reader_threads_reason"]


def test_a_fractional_quota_rounds_up_and_the_mask_still_bounds(cgroups):
    affinity = len(os.sched_getaffinity(0))
    stats = _stats(cgroups(1.5))
    assert stats["reader_threads"] == min(2, affinity, 8)
    assert "cgroup CPU quota 1.5" in stats["reader_threads_reason"]
    wide = _stats(cgroups(affinity + 3.0))
    assert wide["reader_threads"] == min(affinity, 8)


def test_a_parent_quota_limits_a_child_without_one(cgroups):
    parent = cgroups(0.5)
    stats = _stats(cgroups(None, parent))
    assert stats["reader_threads"] == 1
    assert "cgroup CPU quota 0.5" in stats["reader_threads_reason"]


def test_the_affinity_mask_bounds_the_readers():
    require_root()
    stats = _stats(cpus={min(os.sched_getaffinity(0))})
    assert stats["reader_threads"] == 1
    assert "(1 in the affinity mask, " in stats["reader_threads_reason"]

