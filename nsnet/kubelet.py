"""What the kubelet leaves on the node: pod and container names without an API server.

The kubelet writes every container's log under

    /var/log/pods/<namespace>_<pod name>_<pod uid>/<container name>/<restart>.log

and links it, for log shippers, from

    /var/log/containers/<pod name>_<namespace>_<container name>-<container id>.log

Those two trees are all this module reads: they map a pod uid (from the cgroup) to its
namespace and name, and a container id to its container name. The CRI sandbox (pause) has
no log, which is how the sandbox is told apart from the app containers.

Names are Kubernetes names: namespaces and container names are DNS labels, pod names DNS
subdomains, so none contains '_' and each field splits cleanly. Anything else is rejected
(None), never kept: a name with a newline or an escape sequence cannot be the kubelet's, and
rejecting it keeps hostile text out of every later table and error line.
"""
from __future__ import annotations

import os
from dataclasses import field

from .lazyre import LazyPattern
from .records import record

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"  # RFC 1123 label
_SUBDOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"  # 32: static pods
_LABEL_RE = LazyPattern(_LABEL)
_SUBDOMAIN_RE = LazyPattern(_SUBDOMAIN)
_UID_RE = LazyPattern(_UID)
_CONTAINER_ID_RE = LazyPattern(r"[0-9a-f]{64}")
_MAX_SUBDOMAIN = 253


@record(frozen=True, slots=True)
class PodRef:
    uid: str
    namespace: str
    name: str


@record(frozen=True, slots=True)
class ContainerLog:
    pod_name: str
    namespace: str
    container_name: str
    container_id: str


@record(frozen=True, slots=True)
class ContainerName:
    name: str
    pod_uid: str | None  # None when the link does not lead to a pod directory of this pod
    namespace: str
    pod_name: str


@record(slots=True)
class KubeletLogs:
    pods: dict[str, PodRef] = field(default_factory=dict)
    containers: dict[str, ContainerName] = field(default_factory=dict)
    container_names_by_pod: dict[str, set[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _is_label(s: str) -> bool:
    return _LABEL_RE.fullmatch(s) is not None


def _is_subdomain(s: str) -> bool:
    return len(s) <= _MAX_SUBDOMAIN and _SUBDOMAIN_RE.fullmatch(s) is not None


def parse_pod_log_dir(name: str) -> PodRef | None:
    """`<namespace>_<name>_<uid>` (a directory of /var/log/pods) -> PodRef, else None."""
    parts = name.split("_")
    if len(parts) != 3:
        return None
    namespace, pod, uid = parts
    if not (_is_label(namespace) and _is_subdomain(pod) and _UID_RE.fullmatch(uid)):
        return None
    return PodRef(uid=uid, namespace=namespace, name=pod)


def parse_container_log_name(name: str) -> ContainerLog | None:
    """`<pod>_<namespace>_<container>-<id>.log` (an entry of /var/log/containers), else None.

    Container names may contain '-': the id is what follows the last one."""
    if not name.endswith(".log"):
        return None
    parts = name[: -len(".log")].split("_")
    if len(parts) != 3:
        return None
    pod, namespace, rest = parts
    container, dash, cid = rest.rpartition("-")
    if not dash:
        return None
    if not (_is_subdomain(pod) and _is_label(namespace) and _is_label(container)
            and _CONTAINER_ID_RE.fullmatch(cid)):
        return None
    return ContainerLog(pod_name=pod, namespace=namespace, container_name=container, container_id=cid)


def _error(path: str, exc: OSError) -> str:
    reason = (exc.strerror or type(exc).__name__).lower()
    return f"cannot read {path}: {reason}"


def _list(path: str, errors: list[str]) -> list[os.DirEntry] | None:
    """Entries of a directory in name order (for deterministic results), or None.

    A missing directory is silent: the node is not a Kubernetes node, or the pod went away
    while we listed its parent."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        errors.append(_error(path, exc))
        return None


def _is_real_dir(entry: os.DirEntry) -> bool:
    # The kubelet makes real directories; a symlink here is not its doing, so not followed.
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False  # vanished between listing and stat


def _pod_from_link(target: str, log: ContainerLog) -> PodRef | None:
    """The pod directory of `.../<ns>_<pod>_<uid>/<container>/<N>.log`, if it is this log's."""
    parts = target.split("/")
    if len(parts) < 3:
        return None
    pod = parse_pod_log_dir(parts[-3])
    if pod is None or (pod.namespace, pod.name) != (log.namespace, log.pod_name):
        return None
    if parts[-2] != log.container_name:
        return None
    return pod


def load_kubelet_logs(host_root: str = "/") -> KubeletLogs:
    """Read <host_root>/var/log/pods and <host_root>/var/log/containers.

    Never raises for what is on disk: an unreadable directory becomes one line in `errors`,
    a missing one means an empty result, and entries that vanish mid-listing (log rotation,
    pod deletion) are skipped. Reads one level below each pod directory, no deeper.

    A pod named by a link target is added to `pods` even without its directory (not
    mounted, or already collected): the target text is the kubelet's own record."""
    result = KubeletLogs()
    pods_dir = os.path.join(host_root, "var/log/pods")
    containers_dir = os.path.join(host_root, "var/log/containers")

    for entry in _list(pods_dir, result.errors) or []:
        pod = parse_pod_log_dir(entry.name)
        if pod is None or not _is_real_dir(entry):
            continue
        result.pods.setdefault(pod.uid, pod)
        names = result.container_names_by_pod.setdefault(pod.uid, set())
        for sub in _list(entry.path, result.errors) or []:
            if _is_label(sub.name) and _is_real_dir(sub):
                names.add(sub.name)

    # Pods by (namespace, name), for a log whose link does not name its pod directory. A
    # recreated pod keeps its name under a new uid, so only an unambiguous match counts.
    by_name: dict[tuple[str, str], list[str]] = {}
    for pod in result.pods.values():
        by_name.setdefault((pod.namespace, pod.name), []).append(pod.uid)

    for entry in _list(containers_dir, result.errors) or []:
        log = parse_container_log_name(entry.name)
        if log is None or log.container_id in result.containers:
            continue
        try:
            # The link target's text is the record; following it would fail for a log
            # already rotated away and would read the pod tree a second time.
            target: str | None = os.readlink(entry.path)
        except FileNotFoundError:
            continue  # rotated away mid-listing
        except OSError:
            target = None  # not a symlink (EINVAL): the name alone still counts
        pod = _pod_from_link(target, log) if target is not None else None
        if pod is not None:
            result.pods.setdefault(pod.uid, pod)
            uid: str | None = pod.uid
        else:
            candidates = by_name.get((log.namespace, log.pod_name), [])
            uid = candidates[0] if len(candidates) == 1 else None
        result.containers[log.container_id] = ContainerName(
            name=log.container_name, pod_uid=uid, namespace=log.namespace, pod_name=log.pod_name
        )
        if uid is not None:
            result.container_names_by_pod.setdefault(uid, set()).add(log.container_name)
    return result
