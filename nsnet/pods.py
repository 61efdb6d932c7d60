"""Pods and containers, assembled from what the node alone shows: each process's cgroup
(container id, pod uid, QoS) and the kubelet's log tree (pod namespace/name, container names).

Pure: it takes the walked processes and the parsed log tree; no I/O, no API server.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from .kubelet import KubeletLogs
from .model import Container, Misfit, Pod, Process


def command_name(process: Process) -> str:
    return os.path.basename(process.cmdline[0]) if process.cmdline else process.comm


def assemble(processes: dict[int, Process], logs: KubeletLogs | None,
             sandbox_commands: Iterable[str], host_key: str | None
             ) -> tuple[dict[str, Container], dict[str, Pod], dict[str, list[str]], list[Misfit]]:
    """Group processes into containers and pods and mark sandbox holders (process.sandbox).

    A sandbox holder holds no socket and either is in a container of a pod (by its cgroup;
    a pod the kubelet knows, when its log tree names any) that runs a sandbox command
    (pause) or that the log tree does not list -- the CRI sandbox is the one container of a
    pod the kubelet writes no log for, whatever its binary -- or, outside any pod, runs a
    sandbox command and started before every other process of its network namespace (it
    made the namespace). A name alone makes no sandbox: any process can call itself pause.

    A cgroup path is not proof (cgroup.py: a delegated subtree can hold any name), so a
    pod's members are checked against the namespace of the containers the kubelet's log tree
    confirms: a process that claims the pod but lives in another network namespace is not
    counted as the pod's (misfits, with the pod it claimed).
    Returns (containers by id, pods by uid, pod uids by the namespace they own, misfits)."""
    commands = frozenset(sandbox_commands)
    containers: dict[str, Container] = {}
    pods: dict[str, Pod] = {}
    known_pods = logs.pods if logs else {}
    logged = logs.containers if logs else {}
    first_in_netns = _first_started(processes)

    for process in processes.values():
        ident = process.identity
        if ident is not None and ident.container_id is None and ident.runtime is not None:
            # the runtime's own monitor (cri-o/podman conmon) sits in the pod's cgroup but is
            # not the pod's: it runs as root in the host namespace
            process.identity = ident = replace(ident, pod_uid=None, qos=None)
        container = None
        pod_uid = ident.pod_uid if ident else None
        if ident is not None and ident.container_id:
            cid = ident.container_id
            log = logged.get(cid)
            if pod_uid is None and log is not None:
                pod_uid = log.pod_uid   # e.g. a cgroup layout that names only the container
            container = containers.get(cid)
            if container is None:
                container = containers[cid] = Container(
                    cid, ident.runtime, pod_uid, name=log.name if log else None)
            container.pids.append(process.pid)
        named = command_name(process) in commands
        process.sandbox = not process.socket_fds and (
            (container is not None and pod_uid is not None
             and (not known_pods or pod_uid in known_pods)
             and (named or (pod_uid in known_pods and container.id not in logged)))
            or (named and first_in_netns.get(process.netns_key) == process.pid))
        if pod_uid is None:
            continue
        pod = pods.get(pod_uid)
        if pod is None:
            ref = known_pods.get(pod_uid)
            pod = pods[pod_uid] = Pod(pod_uid, ref.namespace if ref else None,
                                      ref.name if ref else None,
                                      ident.qos if ident else None)
        pod.pids.append(process.pid)
        if container is not None:
            pod.containers.setdefault(container.id, container)

    misfits = _misfits(pods, processes, logs)
    for container in containers.values():
        container.pids.sort()
        container.sandbox = all(processes[p].sandbox for p in container.pids)

    return containers, pods, _finish_pods(pods, processes, host_key), misfits


def _first_started(processes: dict[int, Process]) -> dict[str, int]:
    """netns key -> the pid that started strictly before every other process there. A
    namespace holder outside any pod (`ip netns` + pause) made the namespace, so it came
    first; a process that merely calls itself pause and joined later did not."""
    first: dict[str, tuple[int, int]] = {}
    tied: set[str] = set()
    for p in processes.values():
        best = first.get(p.netns_key)
        if best is None or p.start_ticks < best[0]:
            first[p.netns_key] = (p.start_ticks, p.pid)
            tied.discard(p.netns_key)
        elif p.start_ticks == best[0]:
            tied.add(p.netns_key)
    return {key: pid for key, (_, pid) in first.items() if key not in tied}


def _misfits(pods: dict[str, Pod], processes: dict[int, Process],
             logs: KubeletLogs | None) -> list[Misfit]:
    """Detach from each pod the processes that claim it by cgroup but live outside the
    network namespace(s) of its containers the kubelet's log tree confirms. Every container
    of a pod shares its sandbox's namespace (the host's, for hostNetwork pods); a tenant's
    delegated cgroup named after the pod does not."""
    if logs is None:
        return []
    misfits: list[Misfit] = []
    for pod in pods.values():
        confirmed = {cid for cid, c in pod.containers.items()
                     if (log := logs.containers.get(cid)) is not None and log.pod_uid == pod.uid}
        home = {processes[p].netns_key for cid in confirmed for p in pod.containers[cid].pids}
        if not home:
            continue   # nothing the kubelet confirms: nothing to check against
        for pid in list(pod.pids):
            process = processes[pid]
            cid = process.container_id
            if cid in confirmed or process.netns_key in home:
                continue
            pod.pids.remove(pid)
            if cid is not None and cid in pod.containers:
                container = pod.containers.pop(cid)
                container.pod_uid = None
                container.claimed_pod = pod.uid
            if process.identity is not None:
                process.identity = replace(process.identity, pod_uid=None, qos=None)
            process.sandbox = False
            misfits.append(Misfit(pid, process.comm, pod.uid, pod.display))
    return misfits


def _finish_pods(pods: dict[str, Pod], processes: dict[int, Process],
                 host_key: str | None) -> dict[str, list[str]]:
    """Each pod's namespaces, owners and hostNetwork flag; returns the pod uids by the
    namespace they own (never the host's)."""
    pods_of_netns: dict[str, list[str]] = defaultdict(list)
    for pod in pods.values():
        pod.pids.sort()
        members = [processes[p] for p in pod.pids]
        pod.netns_keys = sorted({p.netns_key for p in members})
        apps = [p for p in members if not p.sandbox]
        pod.owners = sorted({p.uid for p in apps})
        # hostNetwork: the app processes live in the host's namespace (the sandbox too, then)
        pod.host_network = bool(host_key) and bool(apps) and all(
            p.netns_key == host_key for p in apps)
        for key in pod.netns_keys:
            if key != host_key:
                pods_of_netns[key].append(pod.uid)
    return {k: sorted(v) for k, v in pods_of_netns.items()}
