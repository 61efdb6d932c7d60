"""pods.assemble: the pure step from walked processes + the kubelet's log tree to pods,
containers and sandbox holders. Inputs are the parsers' real outputs (cgroup text as the
kernel prints it, a log tree laid out as the kubelet does); the end-to-end proof against a
real container runtime is tests/containers/test_kubepods.py."""
from __future__ import annotations

import os

from nsnet import pods
from nsnet.cgroup import identity_from_cgroup
from nsnet.kubelet import load_kubelet_logs
from nsnet.model import Process

HOST = "net:[4026531840]"
POD_NS = "net:[4026532300]"
POD_UID = "0f8d2a51-7c3e-4b7a-9a55-2f1c1e0b9d11"
HOSTNET_UID = "5a3c9e77-1b2d-4f60-8e0a-3d4c5b6a7980"
SANDBOX = "a1" * 32
APP = "b2" * 32
SIDECAR = "c3" * 32
HOSTNET_SANDBOX = "d4" * 32
HOSTNET_APP = "e5" * 32
DOCKER = "f6" * 32


def cgroup_text(path: str) -> str:
    # a cgroup v1 hybrid machine, as /proc/<pid>/cgroup prints it
    return "".join(f"{n}:{c}:{path}\n" for n, c in
                   ((12, "pids"), (11, "memory"), (4, "cpu,cpuacct"), (1, "name=systemd"))) \
        + f"0::{path}\n"


def proc(pid: int, uid: int, netns: str, path: str, argv: list[str],
         sockets: dict[int, int] | None = None) -> Process:
    p = Process(pid, 1, os.path.basename(argv[0])[:15], argv, uid, netns_key=netns,
                socket_fds=dict(sockets or {}))
    p.identity = identity_from_cgroup(cgroup_text(path))
    return p


def kubelet_tree(root, pods_: list[tuple[str, str, str, dict[str, str]]]) -> None:
    """pods_: (namespace, name, uid, {container name: container id}) -> the kubelet's layout."""
    for ns, name, uid, containers in pods_:
        pod_dir = root / "var/log/pods" / f"{ns}_{name}_{uid}"
        for cname, cid in containers.items():
            (pod_dir / cname).mkdir(parents=True)
            (pod_dir / cname / "0.log").write_text("")
            links = root / "var/log/containers"
            links.mkdir(parents=True, exist_ok=True)
            os.symlink(f"/var/log/pods/{ns}_{name}_{uid}/{cname}/0.log",
                       links / f"{name}_{ns}_{cname}-{cid}.log")


def scenario(tmp_path, *, commands=("pause",)):
    under = "_".join(POD_UID.split("-"))
    slice_ = ("/kubepods.slice/kubepods-burstable.slice/"
              f"kubepods-burstable-pod{under}.slice")
    hostnet = f"/kubepods/besteffort/pod{HOSTNET_UID}"
    processes = {p.pid: p for p in [
        # the CRI sandbox runs some other binary here: only the log tree tells it apart
        proc(100, 65535, POD_NS, f"{slice_}/cri-containerd-{SANDBOX}.scope", ["/bin/holder"]),
        proc(101, 10001, POD_NS, f"{slice_}/cri-containerd-{APP}.scope", ["/app", "serve"],
             {3: 5001}),
        proc(102, 10001, POD_NS, f"{slice_}/cri-containerd-{APP}.scope", ["/app", "worker"]),
        proc(103, 10002, POD_NS, f"{slice_}/cri-containerd-{SIDECAR}.scope", ["/envoy"],
             {4: 5002}),
        proc(200, 65535, HOST, f"{hostnet}/{HOSTNET_SANDBOX}", ["/pause"]),
        proc(201, 0, HOST, f"{hostnet}/{HOSTNET_APP}", ["/node-exporter"], {3: 5003}),
        proc(300, 1000, "net:[4026532400]", f"/system.slice/docker-{DOCKER}.scope", ["nginx"]),
        proc(400, 0, HOST, "/system.slice/ssh.service", ["/usr/sbin/sshd"], {3: 5004}),
        proc(401, 0, HOST, "/user.slice", ["/pause"]),   # not in a pod: the command rule
    ]}
    kubelet_tree(tmp_path, [
        ("shop", "cart-7d9f", POD_UID, {"cart": APP, "envoy": SIDECAR}),
        ("monitoring", "node-exporter-x2k4p", HOSTNET_UID, {"node-exporter": HOSTNET_APP}),
    ])
    logs = load_kubelet_logs(str(tmp_path))
    return processes, pods.assemble(processes, logs, commands, HOST)


def test_pods_containers_and_names(tmp_path):
    processes, (containers, pod_map, of_netns, misfits) = scenario(tmp_path)
    assert misfits == []
    assert set(pod_map) == {POD_UID, HOSTNET_UID}
    cart = pod_map[POD_UID]
    assert (cart.namespace, cart.name, cart.qos) == ("shop", "cart-7d9f", "burstable")
    assert set(cart.containers) == {SANDBOX, APP, SIDECAR}
    assert containers[APP].name == "cart" and containers[APP].pids == [101, 102]
    assert containers[SIDECAR].name == "envoy"
    assert containers[APP].runtime == "containerd"
    assert cart.pids == [100, 101, 102, 103] and cart.netns_keys == [POD_NS]
    assert of_netns == {POD_NS: [POD_UID]}   # the host's namespace belongs to no pod
    # a container outside Kubernetes: known by its cgroup, in no pod
    assert containers[DOCKER].runtime == "docker" and containers[DOCKER].pod_uid is None


def test_sandbox_is_the_container_the_kubelet_keeps_no_log_for(tmp_path):
    processes, (containers, pod_map, _, _) = scenario(tmp_path)
    assert processes[100].sandbox and containers[SANDBOX].sandbox
    assert containers[SANDBOX].name is None
    assert not any(processes[p].sandbox for p in (101, 102, 103, 201, 300, 400))
    assert pod_map[POD_UID].owners == [10001, 10002]    # never the sandbox's 65535
    # a name alone is no sandbox: /pause outside any pod is an owner like any process
    assert not processes[401].sandbox


def test_host_network_pod(tmp_path):
    processes, (_, pod_map, _, _) = scenario(tmp_path)
    exporter = pod_map[HOSTNET_UID]
    assert exporter.host_network and exporter.netns_keys == [HOST]
    assert exporter.owners == [0] and exporter.qos == "besteffort"
    assert processes[200].sandbox        # its pause runs /pause and has no log
    assert not pod_map[POD_UID].host_network


def test_without_the_log_tree_pods_have_uids_only(tmp_path):
    processes = scenario(tmp_path)[0]
    containers, pod_map, _, _ = pods.assemble(processes, None, ("pause",), HOST)
    cart = pod_map[POD_UID]
    assert cart.namespace is None and cart.name is None and cart.display == f"pod {POD_UID}"
    # no log tree: only the command rule can tell the sandbox, and /bin/holder is not pause
    assert not processes[100].sandbox and cart.owners == [10001, 10002, 65535]
    assert processes[200].sandbox


def test_a_socket_holder_is_never_a_sandbox(tmp_path):
    processes = scenario(tmp_path)[0]
    processes[100].socket_fds = {5: 7777}
    processes[401].socket_fds = {5: 7778}
    logs = load_kubelet_logs(str(tmp_path))
    pods.assemble(processes, logs, ("pause",), HOST)
    assert not processes[100].sandbox and not processes[401].sandbox


def test_the_runtime_monitor_is_not_part_of_the_pod(tmp_path):
    """cri-o's conmon sits in the pod's cgroup, in the host namespace, as root: counting it
    would make root an owner of every cri-o pod."""
    under = "_".join(POD_UID.split("-"))
    slice_ = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice"
    processes = {p.pid: p for p in [
        proc(10, 0, HOST, f"{slice_}/crio-conmon-{APP}.scope", ["/usr/bin/conmon"], {3: 9001}),
        proc(11, 10001, POD_NS, f"{slice_}/crio-{APP}.scope", ["/app"], {3: 9002}),
    ]}
    assert processes[10].identity.runtime == "cri-o" and processes[10].pod_uid == POD_UID
    _, pod_map, _, _ = pods.assemble(processes, None, ("pause",), HOST)
    assert pod_map[POD_UID].pids == [11] and pod_map[POD_UID].owners == [10001]
    assert processes[10].pod_uid is None and processes[10].identity.runtime == "cri-o"


def test_a_process_claiming_a_pod_from_another_namespace_is_not_the_pods(tmp_path):
    """A tenant with a delegated cgroup subtree names a cgroup after the victim's pod (the
    path parses like the kubelet's) and listens there. Its namespace is not the one of the
    containers the kubelet's log tree confirms: it is not counted as the pod's, and said."""
    processes = scenario(tmp_path)[0]
    fake = "9a" * 32
    delegated = (f"/user.slice/user-10666.slice/user@10666.service/kubepods/burstable/"
                 f"pod{POD_UID}/{fake}")
    processes[500] = proc(500, 10666, "net:[4026532500]", delegated, ["/evil"], {3: 5005})
    processes[501] = proc(501, 10666, "net:[4026532500]", delegated, ["/pause"])
    logs = load_kubelet_logs(str(tmp_path))
    containers, pod_map, of_netns, misfits = pods.assemble(processes, logs, ("pause",), HOST)
    cart = pod_map[POD_UID]
    assert fake not in cart.containers and cart.pids == [100, 101, 102, 103]
    assert cart.owners == [10001, 10002] and cart.netns_keys == [POD_NS]
    assert containers[fake].pod_uid is None and containers[fake].claimed_pod == POD_UID
    assert [(m.pid, m.pod) for m in misfits] == [(500, "shop/cart-7d9f"),
                                                (501, "shop/cart-7d9f")]
    assert processes[500].pod_uid is None and not processes[501].sandbox
    assert of_netns == {POD_NS: [POD_UID]}


def test_a_process_named_pause_is_no_sandbox_by_its_name_alone(tmp_path):
    """Outside a pod, or in a pod the kubelet does not know, pause is just a name: such a
    process stays an owner of its namespace."""
    processes = scenario(tmp_path)[0]
    unknown = "11111111-2222-3333-4444-555555555555"
    processes[600] = proc(600, 10667, HOST, f"/kubepods/besteffort/pod{unknown}/{'7b' * 32}",
                          ["/pause"])
    logs = load_kubelet_logs(str(tmp_path))
    pods.assemble(processes, logs, ("pause",), HOST)
    assert not processes[600].sandbox and not processes[401].sandbox
    assert processes[200].sandbox and processes[100].sandbox   # the real ones still are
