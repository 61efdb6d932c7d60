"""nsnet.cgroup on /proc/<pid>/cgroup text as the kernel prints it for each layout."""
from __future__ import annotations

import dataclasses

import pytest

from nsnet.cgroup import ContainerIdentity, identity_from_cgroup, identity_from_path

ID1 = "c56d5471c0d5082073993c916c2654a028dbeded9ed18b69a42ecb821499e1ca"
ID2 = "62edfdcda39b76cd2e72799e36fc75a67e6e16186a2b0f978abdc0e18dc0a39a"
ID3 = "5461fb17fd6d661fc2e3c93eaf039eeb6838ddab9ffae7fceee9897a34b8fed2"
ID4 = "293a0226d64c5ca56b162f958abb50ec2d8f0bc76d66f8513cb0f44d37ebdae8"
KIND_NODE = "f937839d66deb3174744a62bdc310d6a0a288be4afe114a34cf80788996609a2"
UID1 = "3bf4ea78-20ea-45c0-a71a-11d4b481a934"
UID2 = "8de2e08d-b7b0-4df1-bb91-4e400b65f84d"
UID3 = "a0cd4e6b-9bfa-4c45-a9b0-83a39f28a6df"
STATIC_UID = "ec4df51a57cb6d537c4045c7f11006c3"


def systemd_uid(uid: str) -> str:
    return uid.replace("-", "_")


def v1(path: str, unified: str = "/") -> str:
    """A cgroup v1 (hybrid) host's text: every controller in `path`, as on Debian 10/CentOS 7."""
    return "".join(
        f"{n}:{c}:{path}\n"
        for n, c in [
            (12, "cpuset"), (11, "perf_event"), (10, "memory"), (9, "freezer"),
            (8, "blkio"), (7, "rdma"), (6, "net_cls,net_prio"), (5, "pids"),
            (4, "hugetlb"), (3, "devices"), (2, "cpu,cpuacct"), (1, "name=systemd"),
        ]
    ) + f"0::{unified}\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


def ident(text: str) -> tuple:
    got = identity_from_cgroup(text)
    assert got is not None
    return (got.runtime, got.container_id, got.pod_uid, got.qos)


# -- one test per layout, on the full text ---------------------------------------------------

def test_docker_cgroupfs_v1():
    text = v1(f"/docker/{ID1}")
    assert ident(text) == ("docker", ID1, None, None)
    assert identity_from_cgroup(text).path == f"/docker/{ID1}"


def test_docker_systemd_v1_and_v2():
    path = f"/system.slice/docker-{ID1}.scope"
    assert ident(v1(path, unified=path)) == ("docker", ID1, None, None)
    assert ident(v2(path)) == ("docker", ID1, None, None)


def test_kubelet_cgroupfs_burstable_v1():
    path = f"/kubepods/burstable/pod{UID1}/{ID1}"
    assert ident(v1(path)) == (None, ID1, UID1, "burstable")


def test_kubelet_cgroupfs_besteffort_v2():
    assert ident(v2(f"/kubepods/besteffort/pod{UID2}/{ID2}")) == (None, ID2, UID2, "besteffort")


def test_kubelet_cgroupfs_guaranteed_has_no_qos_segment():
    assert ident(v1(f"/kubepods/pod{UID3}/{ID3}")) == (None, ID3, UID3, "guaranteed")


def test_kubelet_systemd_containerd_burstable():
    path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid(UID1)}.slice/"
            f"cri-containerd-{ID1}.scope")
    assert ident(v2(path)) == ("containerd", ID1, UID1, "burstable")


def test_kubelet_systemd_guaranteed():
    path = f"/kubepods.slice/kubepods-pod{systemd_uid(UID2)}.slice/cri-containerd-{ID2}.scope"
    assert ident(v2(path)) == ("containerd", ID2, UID2, "guaranteed")


def test_kubelet_systemd_docker_besteffort_v1():
    path = (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid(UID3)}.slice/"
            f"docker-{ID3}.scope")
    assert ident(v1(path, unified=path)) == ("docker", ID3, UID3, "besteffort")


def test_crio_scope():
    path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid(UID1)}.slice/"
            f"crio-{ID1}.scope")
    assert ident(v2(path)) == ("cri-o", ID1, UID1, "burstable")


def test_crio_with_crun_container_subcgroup():
    # crun on cgroup v2 moves the process one level down, into `container`.
    path = f"/kubepods.slice/kubepods-pod{systemd_uid(UID1)}.slice/crio-{ID1}.scope/container"
    assert ident(v2(path)) == ("cri-o", ID1, UID1, "guaranteed")


@pytest.mark.parametrize("path", [
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid(UID1)}.slice/crio-conmon-{ID1}.scope",
    f"/kubepods/burstable/pod{UID1}/crio-conmon-{ID1}",
])
def test_crio_conmon_is_not_the_container(path):
    # conmon monitors the container from outside it: the pod, the runtime, but no container id.
    assert ident(v2(path)) == ("cri-o", None, UID1, "burstable")


def test_crio_cgroupfs():
    assert ident(v1(f"/kubepods/besteffort/pod{UID2}/crio-{ID2}")) == ("cri-o", ID2, UID2, "besteffort")


def test_static_pod_cgroupfs():
    assert ident(v1(f"/kubepods/burstable/pod{STATIC_UID}/{ID1}")) == (None, ID1, STATIC_UID, "burstable")


def test_static_pod_systemd():
    path = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
            f"cri-containerd-{ID1}.scope")
    assert ident(v2(path)) == ("containerd", ID1, STATIC_UID, "burstable")


KIND_PATH = (
    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{systemd_uid(UID2)}.slice/cri-containerd-{ID2}.scope"
)


def test_kind_inside_the_node():
    assert ident(v2(KIND_PATH)) == ("containerd", ID2, UID2, "besteffort")


def test_kind_seen_from_the_host_takes_the_inner_container():
    # From the host the whole kubelet hierarchy sits under the kind node's docker scope.
    path = f"/system.slice/docker-{KIND_NODE}.scope{KIND_PATH}"
    assert ident(v2(path)) == ("containerd", ID2, UID2, "besteffort")


def test_kind_node_own_process_is_the_node_container():
    path = f"/system.slice/docker-{KIND_NODE}.scope/system.slice/containerd.service"
    assert ident(v2(path)) == ("docker", KIND_NODE, None, None)


def test_kind_guaranteed():
    path = (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{systemd_uid(UID1)}.slice/"
            f"cri-containerd-{ID1}.scope")
    assert ident(v2(path)) == ("containerd", ID1, UID1, "guaranteed")


def test_unconverted_systemd_name_cri_containerd():
    path = (f"/system.slice/containerd.service/kubepods-burstable-pod{systemd_uid(UID1)}.slice"
            f":cri-containerd:{ID1}")
    text = v1(path, unified=path)
    got = identity_from_cgroup(text)
    assert (got.runtime, got.container_id, got.pod_uid, got.qos) == ("containerd", ID1, UID1, "burstable")
    assert got.path == path  # the ':' inside the path survived the line split


def test_podman_system():
    assert ident(v2(f"/machine.slice/libpod-{ID3}.scope")) == ("podman", ID3, None, None)


def test_podman_rootless():
    path = f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID4}.scope"
    assert ident(v2(path)) == ("podman", ID4, None, None)
    # crun's `container` sub-cgroup, as podman on cgroup v2 creates it.
    assert ident(v2(path + "/container")) == ("podman", ID4, None, None)


def test_podman_cgroupfs():
    assert ident(v1(f"/libpod_parent/libpod-{ID3}")) == ("podman", ID3, None, None)


def test_podman_conmon_is_not_the_container():
    path = f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID4}.scope"
    assert ident(v2(path)) == ("podman", None, None, None)


def test_private_cgroup_namespace_relative_path():
    text = v2(f"/../../kubepods/burstable/pod{UID1}/{ID1}")
    assert ident(text) == (None, ID1, UID1, "burstable")


def test_private_cgroup_namespace_systemd_layout():
    text = v2(f"/../../kubepods-burstable-pod{systemd_uid(UID1)}.slice/cri-containerd-{ID1}.scope")
    assert ident(text) == ("containerd", ID1, UID1, "burstable")


def test_private_cgroup_namespace_pod_dir_alone_has_unknown_qos():
    assert ident(v2(f"/../pod{UID1}/{ID1}")) == (None, ID1, UID1, None)


def test_docker_nested_under_other_junk():
    path = f"/actions_job/runner-7/docker/{ID1}"
    assert ident(v1(path, unified=path)) == ("docker", ID1, None, None)


def test_docker_in_docker_takes_the_innermost():
    assert ident(v2(f"/docker/{ID1}/docker/{ID2}")) == ("docker", ID2, None, None)


def test_process_below_the_container_cgroup_belongs_to_it():
    # systemd running inside a container: its units live below the container's scope.
    assert ident(v2(f"/system.slice/docker-{ID1}.scope/init.scope")) == ("docker", ID1, None, None)


def test_pod_level_cgroup_without_container():
    assert ident(v2(f"/kubepods/burstable/pod{UID1}")) == (None, None, UID1, "burstable")
    slice_ = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd_uid(UID2)}.slice"
    assert ident(v2(slice_)) == (None, None, UID2, "besteffort")


def test_container_in_a_pod_nested_in_another_container_stops_at_it():
    # Docker-in-docker inside a pod: the inner container is not the kubelet's, so no pod.
    assert ident(v2(f"/kubepods/burstable/pod{UID1}/{ID1}/docker/{ID2}")) == ("docker", ID2, None, None)


# -- not containers ----------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/",
    "/init.scope",
    "/user.slice/user-1000.slice/session-2.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
    "/system.slice/ssh.service",
    "/system.slice/docker.service",
    "/system.slice/containerd.service",
    "/kubepods.slice/kubepods-burstable.slice",
    "/kubepods/besteffort",
])
def test_non_container_paths(path):
    assert identity_from_path(path) is None
    assert identity_from_cgroup(v1(path, unified=path)) is None


def test_host_process_on_hybrid_host():
    text = (
        "12:cpuset:/\n11:memory:/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service\n"
        "0::/system.slice/ssh.service\n"
    )
    assert identity_from_cgroup(text) is None


# -- malformed and odd input --------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "garbage\n",
    "not:a cgroup line\n",
    "x:cpu:/docker/" + ID1 + "\n",        # hierarchy id not a number
    "3:cpu:docker/" + ID1 + "\n",          # path not absolute
    "12\n0:\n:\n",
    "\x00\x01:\x02:/\x1b[31m\n",
])
def test_malformed_text_is_none(text):
    assert identity_from_cgroup(text) is None


def test_garbage_lines_around_a_good_one_are_skipped():
    text = f"garbage\n5:pids\n\n0::/kubepods/besteffort/pod{UID2}/{ID2}\nmore garbage: here\n"
    assert ident(text) == (None, ID2, UID2, "besteffort")


def test_truncated_text_mid_line():
    # A read cut short mid-id: the short id is not a container id.
    text = v2(f"/system.slice/docker-{ID1}.scope") + f"1:name=systemd:/docker/{ID1[:40]}"
    assert ident(text) == ("docker", ID1, None, None)
    assert identity_from_cgroup(f"0::/docker/{ID1[:40]}") is None


@pytest.mark.parametrize("path", [
    f"/docker/{ID1[:12]}",                                  # docker's short id: never in cgroups
    f"/system.slice/docker-{ID1[:63]}.scope",
    f"/system.slice/docker-{ID1}0.scope",                   # 65 digits
    f"/docker/{ID1.upper()}",                               # runtimes write lower case
    f"/system.slice/docker-{ID1.upper()}.scope",
    f"/kubepods/burstable/pod{UID1.upper()}",
    "/docker/" + "g" * 64,                                  # id-looking, not hex
    f"/system.slice/cri-containerd-{ID1[:-1]}z.scope",
    f"/system.slice/docker-{ID1}.mount",                    # a mount unit, not a scope
    f"/system.slice/run-docker-netns-{ID1[:12]}.mount",
    f"/system.slice/var-lib-docker-overlay2-{ID1}-merged.mount",
    f"/default/{ID1}",                                      # bare id under an unknown parent
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID1}.slice",  # dashes: not systemd's
    f"/kubepods/burstable/pod{UID1[:-1]}",                  # truncated uid
    f"/system.slice/docker-conmon-{ID1}.scope",             # only cri-o and podman have conmon scopes
    f"/weird:name/also:odd:{ID1}",                          # ':' in a path, not the unconverted form
])
def test_odd_segments_are_not_identities(path):
    assert identity_from_path(path) is None
    assert identity_from_cgroup(v2(path)) is None


def test_path_with_colon_above_a_real_container():
    path = f"/odd:dir:name/kubepods/burstable/pod{UID1}/{ID1}"
    got = identity_from_cgroup(f"4:memory:{path}\n")
    assert (got.container_id, got.pod_uid, got.path) == (ID1, UID1, path)


def test_newline_in_a_cgroup_name_does_not_raise():
    # A cgroup name may contain '\n'; the text is then ambiguous but parsing must go on.
    text = f"0::/user.slice/evil\nname/{ID1}\n"
    assert identity_from_cgroup(text) is None


# -- choosing among lines ------------------------------------------------------------------

def test_prefers_the_line_with_pod_and_container():
    text = (
        f"7:rdma:/\n"
        f"4:memory:/kubepods/burstable/pod{UID1}\n"
        f"2:cpu,cpuacct:/kubepods/burstable/pod{UID1}/{ID1}\n"
        f"1:name=systemd:/docker/{ID2}\n"
        f"0::/\n"
    )
    assert ident(text) == (None, ID1, UID1, "burstable")


def test_tie_prefers_the_unified_line_then_file_order():
    a = f"/system.slice/docker-{ID1}.scope"
    b = f"/system.slice/docker-{ID2}.scope"
    assert identity_from_cgroup(f"1:name=systemd:{a}\n0::{b}\n").container_id == ID2
    assert identity_from_cgroup(f"3:cpu:{a}\n2:memory:{b}\n").container_id == ID1
    assert identity_from_cgroup(f"3:cpu:{b}\n2:memory:{a}\n").container_id == ID2


def test_runtime_beats_bare_id_on_equal_pod_and_container():
    bare = f"/kubepods/burstable/pod{UID1}/{ID1}"
    named = f"/kubepods/burstable/pod{UID1}/crio-{ID1}"
    assert ident(f"3:cpu:{bare}\n2:memory:{named}\n")[0] == "cri-o"


def test_identity_is_frozen_and_keeps_the_path():
    got = identity_from_path(f"/docker/{ID1}")
    assert got == ContainerIdentity("docker", ID1, None, None, f"/docker/{ID1}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.container_id = ID2  # type: ignore[misc]
