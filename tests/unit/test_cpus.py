"""The CPU budget's parsers (nsnet.cpus) on captured text, malformed input included."""
from __future__ import annotations

import pytest

from nsnet.cpus import (
    CgroupMount,
    CpuBudget,
    cgroup_dirs,
    parse_cfs,
    parse_cgroup_mounts,
    parse_cgroup_paths,
    parse_cpu_max,
)

# this machine (cgroup v1 with a cgroup2 "unified" mount beside it)
MOUNTINFO_V1 = b"""\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
CGROUP_V1 = """\
9:name=systemd:/
4:memory:/process_api/607fe258
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""
# a Docker container without a cgroup namespace: the mount's root is the container's cgroup
MOUNTINFO_DOCKER = (b"1290 1281 0:30 /docker/0123abcd /sys/fs/cgroup/cpu,cpuacct ro,nosuid,"
                    b"nodev,noexec,relatime master:11 - cgroup cgroup rw,cpu,cpuacct\n")
CGROUP_DOCKER = "3:cpu,cpuacct:/docker/0123abcd\n2:memory:/docker/0123abcd\n"
# a kubelet (systemd driver) node on cgroup v2
MOUNTINFO_V2 = b"29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
CGROUP_V2 = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-9f.scope\n"


def test_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("50000 100000\n") == 0.5
    assert parse_cpu_max("250000 100000") == 2.5


@pytest.mark.parametrize("text", ["", "max", "50000", "x 100000", "50000 0", "-1 100000",
                                  "50000 100000 7", "50000 abc"])
def test_cpu_max_rejects(text):
    with pytest.raises(ValueError):
        parse_cpu_max(text)


def test_cfs():
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("150000\n", "100000\n") == 1.5
    with pytest.raises(ValueError):
        parse_cfs("junk", "100000")
    with pytest.raises(ValueError):
        parse_cfs("100000", "0")


def test_cgroup_paths():
    assert parse_cgroup_paths(CGROUP_V1) == {1: "/", 2: "/"}
    assert parse_cgroup_paths(CGROUP_DOCKER) == {1: "/docker/0123abcd"}
    assert parse_cgroup_paths(CGROUP_V2)[2].endswith("cri-containerd-9f.scope")
    # cpuacct alone is not the cpu controller; junk lines are skipped
    assert parse_cgroup_paths("2:cpuacct:/a\nnot a line\n5:cpu,cpuacct:/b\n") == {1: "/b"}


def test_cgroup_mounts():
    assert parse_cgroup_mounts(MOUNTINFO_V1) == [
        CgroupMount(1, "/", "/sys/fs/cgroup/cpu"), CgroupMount(2, "/", "/sys/fs/cgroup/unified")]
    assert parse_cgroup_mounts(MOUNTINFO_DOCKER) == [
        CgroupMount(1, "/docker/0123abcd", "/sys/fs/cgroup/cpu,cpuacct")]
    assert parse_cgroup_mounts(MOUNTINFO_V2) == [CgroupMount(2, "/", "/sys/fs/cgroup")]


def test_cgroup_mounts_skip_malformed_lines():
    bad = b"no separator here\n1 2 3\n32 31 0:29 / /x rw - cgroup\n" + MOUNTINFO_V2
    assert parse_cgroup_mounts(bad) == [CgroupMount(2, "/", "/sys/fs/cgroup")]


def test_cgroup_mount_point_with_an_escaped_space():
    line = b"41 31 0:38 / /sys/fs/cgroup/my\\040dir rw - cgroup2 cgroup2 rw\n"
    assert parse_cgroup_mounts(line) == [CgroupMount(2, "/", "/sys/fs/cgroup/my dir")]


def test_dirs_walk_up_to_the_mount():
    mount = CgroupMount(2, "/", "/sys/fs/cgroup")
    assert cgroup_dirs(mount, "/kubepods.slice/a.slice/c.scope") == [
        "/sys/fs/cgroup/kubepods.slice/a.slice/c.scope", "/sys/fs/cgroup/kubepods.slice/a.slice",
        "/sys/fs/cgroup/kubepods.slice", "/sys/fs/cgroup"]
    assert cgroup_dirs(mount, "/") == ["/sys/fs/cgroup"]


def test_dirs_of_a_container_mount_and_a_foreign_path():
    docker = CgroupMount(1, "/docker/0123abcd", "/sys/fs/cgroup/cpu,cpuacct")
    assert cgroup_dirs(docker, "/docker/0123abcd") == ["/sys/fs/cgroup/cpu,cpuacct"]
    assert cgroup_dirs(docker, "/docker/0123abcd/sub") == [
        "/sys/fs/cgroup/cpu,cpuacct/sub", "/sys/fs/cgroup/cpu,cpuacct"]
    # seen from another cgroup namespace ("/.." paths) or outside the root: the mount only
    assert cgroup_dirs(docker, "/../../kubepods/x") == ["/sys/fs/cgroup/cpu,cpuacct"]
    assert cgroup_dirs(docker, "/docker/0123abcdEF") == ["/sys/fs/cgroup/cpu,cpuacct"]


def test_budget_describes_itself():
    assert CpuBudget(1, 64, 0.5).describe() == \
        "1 CPU(s) usable (64 in the affinity mask, cgroup CPU quota 0.5)"
    assert "no cgroup CPU quota" in CpuBudget(2, 2, None).describe()
