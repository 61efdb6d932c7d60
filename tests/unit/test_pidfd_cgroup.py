"""The pidfd source's cgroup v1 guard, on captured /proc/cgroups and /proc/<pid>/cgroup text:
which hosts have a net_cls/net_prio hierarchy whose classid a borrow would re-tag."""
from __future__ import annotations

from nsnet.sources import pidfd as borrow


PROC_CGROUPS_V2_HOST = b"""#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t1\t1
net_cls\t0\t1\t1
net_prio\t0\t1\t1
"""


PROC_CGROUPS_V1_HOST = b"""#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t80\t1
net_cls\t7\t80\t1
net_prio\t7\t80\t1
"""


def test_cgroup_v1_net_controllers_are_recognised():
    assert borrow.v1_net_controllers(PROC_CGROUPS_V2_HOST) == frozenset()
    assert borrow.v1_net_controllers(PROC_CGROUPS_V1_HOST) == {"net_cls", "net_prio"}
    disabled = PROC_CGROUPS_V1_HOST.replace(b"net_prio\t7\t80\t1", b"net_prio\t7\t80\t0")
    assert borrow.v1_net_controllers(disabled) == {"net_cls"}
    assert borrow.v1_net_controllers(b"garbage\nnet_cls\n\n") == frozenset()
    both = frozenset({"net_cls", "net_prio"})
    pid_cgroup = (b"12:net_cls,net_prio:/kubepods/pod1/abc\n4:memory:/x\n"
                  b"0::/kubepods.slice/x:y\nbad line\n")
    assert borrow.cgroup_paths(pid_cgroup, both) == {"net_cls": "/kubepods/pod1/abc",
                                                     "net_prio": "/kubepods/pod1/abc"}
    assert borrow.cgroup_paths(b"0::/\n", both) == {}
