"""How many CPUs this process may really use: the reader threads follow it.

`os.cpu_count()` is the machine's count. A process can use fewer: its affinity mask (cpuset,
`taskset`) and its cgroup's CPU quota -- a DaemonSet pod with `limits.cpu: 500m` on a 64-core
node gets half a core, and 8 reader threads there only queue on the CFS throttle. The quota
is cgroup v2's `cpu.max` ("QUOTA PERIOD" or "max PERIOD") or v1's `cpu.cfs_quota_us` /
`cpu.cfs_period_us` (-1: none); every level from the process's cgroup up to the mount's root
limits it, so the smallest wins (kernel/sched/core.c, tg_cfs_schedulable_down). Where the
hierarchy is mounted comes from our own mountinfo (a container sees its own cgroup root as
"/" of the mount, with or without a cgroup namespace).

Parsers are pure (tested on captured text); `available_cpus` does the reads and never raises:
what it cannot read does not limit.
"""
from __future__ import annotations

import math
import os
import posixpath

from .errors import NsnetError
from .mountinfo import mount_fields, unescape
from .procfs import MAX_MOUNTINFO, MAX_TASK_TEXT, read_text
from .records import record

OWN_PROC = "/proc/self"


@record(frozen=True)
class CgroupMount:
    version: int        # 1 or 2
    root: str           # the cgroup path mounted there (mountinfo's 4th field)
    mount_point: str


@record(frozen=True)
class CpuBudget:
    cpus: int                    # whole CPUs usable at once (at least 1)
    affinity: int                # CPUs in the affinity mask
    quota: float | None          # the cgroup quota in CPUs (None: no quota)

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else \
            f"cgroup CPU quota {self.quota:g}"
        return f"{self.cpus} CPU(s) usable ({self.affinity} in the affinity mask, {quota})"


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max: "QUOTA PERIOD" -> QUOTA/PERIOD CPUs; "max ..." -> None.
    ValueError when it is neither."""
    fields = text.split()
    if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) == 0:
        raise ValueError(f"not a cpu.max line: {text[:40]!r}")
    if fields[0] == "max":
        return None
    if not fields[0].isdigit():
        raise ValueError(f"not a cpu.max line: {text[:40]!r}")
    return int(fields[0]) / int(fields[1])


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us and cpu.cfs_period_us -> CPUs; quota -1 -> None."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    if quota < 0:
        return None
    if period <= 0:
        raise ValueError(f"cfs period {period}")
    return quota / period


def parse_cgroup_paths(text: str) -> dict[int, str]:
    """/proc/<pid>/cgroup -> {2: v2 path, 1: path of the v1 hierarchy with the cpu
    controller}; hierarchies without cpu are left out."""
    paths: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    return paths


def parse_cgroup_mounts(data: bytes) -> list[CgroupMount]:
    """cgroup2 mounts and cgroup (v1) mounts with the cpu controller, from mountinfo."""
    mounts: list[CgroupMount] = []
    for found in mount_fields(data):
        if found is None:
            continue
        fields, sep = found
        fstype, options = fields[sep + 1], fields[sep + 3].split(b",")
        version = 2 if fstype == b"cgroup2" else 1 if (fstype == b"cgroup"
                                                        and b"cpu" in options) else 0
        if version:
            mounts.append(CgroupMount(version,
                                      unescape(fields[3]).decode("utf-8", "surrogateescape"),
                                      unescape(fields[4]).decode("utf-8", "surrogateescape")))
    return mounts


def cgroup_dirs(mount: CgroupMount, path: str) -> list[str]:
    """The directories of `path` and each parent up to the mount, leaf first (only the mount
    itself when the path is not under the mounted root, e.g. seen from another cgroup
    namespace)."""
    root = mount.root.rstrip("/")
    path = posixpath.normpath(path) if path else "/"
    if root and path != root and not path.startswith(root + "/"):
        return [mount.mount_point]
    rel = path[len(root):].strip("/")
    dirs = []
    parts = rel.split("/") if rel else []
    for n in range(len(parts), -1, -1):
        dirs.append(posixpath.join(mount.mount_point, *parts[:n]))
    return dirs


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(256)
    except OSError:
        return None


def cgroup_quota(proc: str = OWN_PROC) -> float | None:
    """The smallest CPU quota on the way from our cgroup to the root (None: none found)."""
    try:
        paths = parse_cgroup_paths(read_text(f"{proc}/cgroup", MAX_TASK_TEXT).decode(
            "utf-8", "replace"))
        mounts = parse_cgroup_mounts(read_text(f"{proc}/mountinfo", MAX_MOUNTINFO))
    except NsnetError:
        return None
    quotas: list[float] = []
    for mount in mounts:
        path = paths.get(mount.version)
        if path is None:
            continue
        for directory in cgroup_dirs(mount, path):
            try:
                if mount.version == 2:
                    text = _read(f"{directory}/cpu.max")
                    quota = parse_cpu_max(text) if text else None
                else:
                    q, p = _read(f"{directory}/cpu.cfs_quota_us"), \
                        _read(f"{directory}/cpu.cfs_period_us")
                    quota = parse_cfs(q, p) if q and p else None
            except ValueError:
                continue
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def available_cpus(proc: str = OWN_PROC) -> CpuBudget:
    try:
        affinity = len(os.sched_getaffinity(0))
    except OSError:
        affinity = os.cpu_count() or 1
    quota = cgroup_quota(proc)
    cpus = affinity if quota is None else min(affinity, max(1, math.ceil(quota - 1e-9)))
    return CpuBudget(max(1, cpus), affinity, quota)
