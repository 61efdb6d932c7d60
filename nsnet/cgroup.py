"""Pure parser of /proc/<pid>/cgroup: which container and which kubelet pod a process is in.

No I/O here: the parser is tested on captured text. The layouts it knows:

    docker, cgroupfs driver        /docker/<id>
    docker, systemd driver         /system.slice/docker-<id>.scope
    kubelet, cgroupfs driver       /kubepods/<qos>/pod<uid>/<id>   (Guaranteed: /kubepods/pod<uid>/<id>)
    kubelet, systemd driver        /kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
                                       {cri-containerd,crio,docker}-<id>.scope
                                   (Guaranteed: /kubepods.slice/kubepods-pod<uid_>.slice/...)
    kind (kubelet under a slice)   /kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-<qos>.slice/
                                       kubelet-kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope
    systemd name not converted     .../kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>
    podman                         /machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id>,
                                   rootless .../user@1000.service/user.slice/libpod-<id>.scope

The path is parsed from the leaf upwards and never anchored at "/": a reader in a private
cgroup namespace (the DaemonSet's own pod) sees `/../../kubepods/...`, and kind nests a whole
kubelet under its node container's `docker-<id>.scope`. The innermost container wins, and the
pod is the nearest pod cgroup above it, looked for only up to the next enclosing container (the
kind node, a docker-in-docker host): what lies above that belongs to someone else.

Segments below the innermost container (crun's `.../crio-<id>.scope/container`, a systemd
inside the container) still belong to it.

Monitors: cri-o's `crio-conmon-<id>` and podman's `libpod-conmon-<id>` hold conmon, the
runtime's per-container monitor, not the container. They give the runtime (and the pod, for
cri-o) but container_id None, so conmon is never mistaken for the app or the sandbox.

Strictness: container ids are exactly 64 lower-case hex digits (every runtime above uses the
full id in cgroup names); a truncated or upper-case id is not recognised. Pod uids are dashed
lower-case UUIDs (underscored in systemd slice names) or the 32-hex hash the kubelet gives
static pods.

Not a security boundary: a user with a delegated cgroup subtree (user@.service, a container
with cgroupns and write access) can create `.../kubepods/burstable/pod<uid>/<id>` under it,
and a cgroup name may even contain a newline. Cross-check the ids against the kubelet's own
records before trusting them.
"""
from __future__ import annotations

import re

from .model import ContainerIdentity
from .records import record

__all__ = ["ContainerIdentity", "identity_from_cgroup", "identity_from_path"]

_ID = r"[0-9a-f]{64}"
_UUID_DASHED = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_UNDERSCORED = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}"
_STATIC_UID = r"[0-9a-f]{32}"

# Prefix of a container scope (systemd) or directory (cgroupfs) -> runtime name.
_RUNTIME_BY_PREFIX = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}
_PREFIXES = "|".join(re.escape(p) for p in _RUNTIME_BY_PREFIX)
# `.scope` under the systemd driver; no suffix under cgroupfs (crio-<id>, libpod-<id>).
_PREFIXED = re.compile(rf"({_PREFIXES})-(conmon-)?({_ID})(?:\.scope)?")
_BARE_ID = re.compile(_ID)
# cgroupfs pod directory; its QoS is the parent directory's name.
_POD_DIR = re.compile(rf"pod({_UUID_DASHED}|{_STATIC_UID})")
# systemd pod slice: the QoS is in the name. Nested slices repeat their parents' names,
# so kind's kubelet.slice gives `kubelet-kubepods-...`: allow any leading prefix.
_POD_SLICE = re.compile(
    rf"(?:[^/]*-)?kubepods(?:-(burstable|besteffort))?-pod({_UUID_UNDERSCORED}|{_STATIC_UID})\.slice"
)
_QOS_DIRS = {"burstable": "burstable", "besteffort": "besteffort"}
# Parents of a Guaranteed pod (no QoS level in between).
_GUARANTEED_PARENTS = re.compile(r"(?:[^/]*-)?kubepods(?:\.slice)?")
_HIERARCHY_ID = re.compile(r"[0-9]+")


@record(frozen=True, slots=True)
class _Container:
    runtime: str | None
    container_id: str | None


@record(frozen=True, slots=True)
class _Pod:
    uid: str
    qos: str | None


def _container(segment: str, parent: str | None) -> _Container | None:
    m = _PREFIXED.fullmatch(segment)
    if m:
        prefix, conmon, cid = m.groups()
        runtime = _RUNTIME_BY_PREFIX[prefix]
        if conmon and prefix not in ("crio", "libpod"):
            return None  # only cri-o and podman name a monitor scope this way
        return _Container(runtime, None if conmon else cid)
    # A bare id means something only under a parent that says what it is: anywhere else
    # 64 hex digits could be any tool's directory.
    if _BARE_ID.fullmatch(segment) and parent is not None:
        if parent == "docker":
            return _Container("docker", segment)
        if _pod(parent, None) is not None:
            # containerd and docker (cri-dockerd) both use the bare id under the cgroupfs driver.
            return _Container(None, segment)
    return None


def _pod(segment: str, parent: str | None) -> _Pod | None:
    m = _POD_SLICE.fullmatch(segment)
    if m:
        level, uid = m.groups()
        return _Pod(uid.replace("_", "-"), level or "guaranteed")
    m = _POD_DIR.fullmatch(segment)
    if m:
        if parent in _QOS_DIRS:
            qos: str | None = _QOS_DIRS[parent]
        elif parent is not None and _GUARANTEED_PARENTS.fullmatch(parent):
            qos = "guaranteed"
        else:
            qos = None  # e.g. `/../pod<uid>` seen from inside a namespace: cannot tell
        return _Pod(m.group(1), qos)
    return None


def _unconverted(segment: str) -> tuple[_Pod, _Container] | None:
    """`<slice>:<prefix>:<id>`: a systemd-driver cgroup name that reached cgroupfs unconverted
    (containerd with SystemdCgroup under a cgroupfs kubelet)."""
    parts = segment.split(":")
    if len(parts) != 3:
        return None
    slice_, prefix, cid = parts
    pod = _pod(slice_, None)
    runtime = _RUNTIME_BY_PREFIX.get(prefix)
    if pod is None or runtime is None or not _BARE_ID.fullmatch(cid):
        return None
    return pod, _Container(runtime, cid)


def identity_from_path(path: str) -> ContainerIdentity | None:
    """Identify the container and pod of one cgroup path, or None if it names neither."""
    segments = [s for s in path.split("/") if s]

    def parent_of(i: int) -> str | None:
        return segments[i - 1] if i > 0 else None

    container: _Container | None = None
    pod: _Pod | None = None
    start = None
    for i in range(len(segments) - 1, -1, -1):
        both = _unconverted(segments[i])
        if both is not None:
            pod, container = both
            break
        container = _container(segments[i], parent_of(i))
        if container is not None:
            start = i
            break
        pod = _pod(segments[i], parent_of(i))
        if pod is not None:
            break
    if start is not None:
        for i in range(start - 1, -1, -1):
            pod = _pod(segments[i], parent_of(i))
            if pod is not None or _container(segments[i], parent_of(i)) is not None:
                break
            if _unconverted(segments[i]) is not None:
                break
    if container is None and pod is None:
        return None
    return ContainerIdentity(
        runtime=container.runtime if container else None,
        container_id=container.container_id if container else None,
        pod_uid=pod.uid if pod else None,
        qos=pod.qos if pod else None,
        path=path,
    )


def _score(identity: ContainerIdentity) -> tuple[bool, ...]:
    has_container = identity.container_id is not None
    has_pod = identity.pod_uid is not None
    return (has_container and has_pod, has_container, has_pod,
            identity.runtime is not None, identity.qos is not None)


def identity_from_cgroup(text: str) -> ContainerIdentity | None:
    """Identify a process from the whole text of its /proc/<pid>/cgroup.

    v1 lines are `N:controllers:path`, the v2 line `0::path`; hybrid hosts print both, and
    their hierarchies can disagree (a controller left at `/`, a named hierarchy placed
    differently). The most informative line wins; on a tie, the v2 line, then the first line.
    Malformed lines are skipped.
    """
    best: tuple[tuple[bool, ...], bool, int, ContainerIdentity] | None = None
    for index, line in enumerate(text.split("\n")):
        parts = line.split(":", 2)  # the path itself may contain ':'
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if not _HIERARCHY_ID.fullmatch(hierarchy) or not path.startswith("/"):
            continue
        identity = identity_from_path(path)
        if identity is None:
            continue
        unified = hierarchy == "0" and controllers == ""
        # Higher score first, then the unified line, then file order (lower index).
        key = (_score(identity), unified, -index)
        if best is None or key > best[:3]:
            best = (*key, identity)
    return best[3] if best else None
