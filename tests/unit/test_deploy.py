"""deploy/: the manifests, the overlays (setns, kube-rbac-proxy, kube-rbac-proxy-tls,
auth-token), the rendered all-in-one file and the Dockerfile, checked offline (no cluster, no
root): YAML, yamllint, kubernetes-validate --strict for the supported Kubernetes versions,
kustomize's loading rules (and kustomize itself, through `kubectl kustomize`, where it is
installed), the NetworkPolicy fence, and every security requirement of the node agent
(issue 3 section 2), including a guard against any weakening field.

`python3 tests/unit/test_deploy.py --render` rewrites deploy/nsnet.yaml from deploy/base.
"""
from __future__ import annotations

import copy
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
OVERLAY = OVERLAYS / "setns"
RBAC_PROXY = OVERLAYS / "kube-rbac-proxy"
RBAC_PROXY_TLS = OVERLAYS / "kube-rbac-proxy-tls"
AUTH_TOKEN = OVERLAYS / "auth-token"
COMPONENTS = DEPLOY / "components"
SERVICE_MONITOR = COMPONENTS / "servicemonitor"
RENDERED = DEPLOY / "nsnet.yaml"
YAMLLINT_CONFIG = DEPLOY / ".yamllint"

# Oldest and newest Kubernetes minor versions supported (deploy/README.md says the same);
# every schema kubernetes-validate ships between them is checked too.
KUBERNETES_VERSIONS = ("1.27", "1.37")
BASE_CAPABILITIES = {"SYS_PTRACE", "DAC_READ_SEARCH"}
OVERLAY_CAPABILITIES = BASE_CAPABILITIES | {"SYS_ADMIN", "NET_ADMIN"}
# Every overlay: the capabilities its pod may add, and the containers that may mount a
# ServiceAccount token (kube-rbac-proxy's TokenReviews; never the agent, which reads every
# tenant's /proc).
VARIANTS: dict[str, tuple[Path, set[str], frozenset[str]]] = {
    "base": (BASE, BASE_CAPABILITIES, frozenset()),
    "setns-overlay": (OVERLAY, OVERLAY_CAPABILITIES, frozenset()),
    "kube-rbac-proxy-overlay": (RBAC_PROXY, BASE_CAPABILITIES, frozenset({"kube-rbac-proxy"})),
    "kube-rbac-proxy-tls-overlay": (RBAC_PROXY_TLS, BASE_CAPABILITIES,
                                    frozenset({"kube-rbac-proxy"})),
    "auth-token-overlay": (AUTH_TOKEN, BASE_CAPABILITIES, frozenset()),
}
AGENT_PORT = 9810
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
# hostPath -> where the container sees it; all read-only.
HOST_PATHS = {"/proc": "/host/proc", "/var/log/pods": "/host/var/log/pods",
              "/var/log/containers": "/host/var/log/containers"}
# The one host directory the agent writes: its own history (nsnet serve --db).
STATE_PATH = "/var/lib/nsnet"
USER_PRIORITY_MAX = 1_000_000_000     # the API server rejects user classes above this
RENDER_HEADER = (
    "# nsnet node agent, all in one: kubectl apply -f deploy/nsnet.yaml\n"
    "# Generated from deploy/base (python3 tests/unit/test_deploy.py --render): edit those files.\n"
)


# -- loading ---------------------------------------------------------------------------

def load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> dict:
    (doc,) = load(directory / "kustomization.yaml")
    return doc


def base_files() -> list[Path]:
    return [BASE / name for name in kustomization(BASE)["resources"]]


def base_resources() -> list[dict]:
    return [doc for path in base_files() for doc in load(path)]


def one(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def render() -> str:
    """What `kubectl apply -k deploy/` applies, as one file (kustomize changes nothing: see
    test_kustomize_transformations_are_no_ops), comments kept."""
    return RENDER_HEADER + "".join(path.read_text() for path in base_files())


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902 on a copy (the ops kustomize's JSON 6902 patches use here)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "test":
            actual = node[int(last)] if isinstance(node, list) else node[last]
            assert actual == op["value"], f"JSON patch test failed at {op['path']}"
        elif op["op"] in ("add", "replace"):
            if isinstance(node, list):
                if last == "-":
                    node.append(op["value"])
                elif op["op"] == "add":
                    node.insert(int(last), op["value"])
                else:
                    node[int(last)] = op["value"]
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']!r}")
    return doc


def _targets(doc: dict, target: dict) -> bool:
    group, version = target.get("group"), target.get("version")
    api = f"{group}/{version}" if group else version
    return doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"] \
        and (api is None or doc["apiVersion"] == api)


def resources_of(directory: Path) -> list[dict]:
    """What `kubectl apply -k directory` sends, by kustomize's rules as these kustomizations
    use them: the resources in order (a directory: its own kustomization's, recursively; a
    file: its documents), then each JSON 6902 patch on its target.
    test_kustomize_renders_what_the_checks_read holds this to kustomize itself."""
    if directory.resolve() == BASE.resolve():
        return base_resources()
    kust = kustomization(directory)
    docs: list[dict] = []
    for entry in [*(kust.get("resources") or []), *(kust.get("components") or [])]:
        path = directory / entry
        docs += resources_of(path) if path.is_dir() else load(path)
    for patch in kust.get("patches") or []:
        (ops,) = load(directory / patch["path"])
        docs = [json_patch(d, ops) if _targets(d, patch["target"]) else d for d in docs]
    return docs


def overlay_resources() -> list[dict]:
    """The base with the setns overlay's patches applied."""
    return resources_of(OVERLAY)


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]


def named(docs: list[dict], name: str) -> dict:
    (found,) = [c for c in pod_spec(docs)["containers"] if c["name"] == name]
    return found


def container(docs: list[dict]) -> dict:
    """The agent's container (the only one, but in the kube-rbac-proxy overlays)."""
    return named(docs, "nsnet")


def supported_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    def minor(v: str) -> tuple[int, int]:
        major, minor_, *_ = v.split(".")
        return int(major), int(minor_)
    shipped = sorted({".".join(v.split(".")[:2]) for v in all_versions()}, key=minor)
    low, high = (minor(v) for v in KUBERNETES_VERSIONS)
    return [v for v in shipped if low <= minor(v) <= high]


# -- the security guard ------------------------------------------------------------------

def all_containers(pod: dict) -> Iterator[dict]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def pod_specs(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] == "Pod":
            yield doc["metadata"]["name"], spec
        elif "template" in spec and "spec" in spec["template"]:
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]


def token_findings(name: str, pod: dict, token_containers: frozenset[str]) -> list[str]:
    """A ServiceAccount token mounted into a container not allowed one (the agent never is),
    or mounted automatically into every container."""
    found = []
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{name}: automountServiceAccountToken not false")
    for vol in pod.get("volumes") or []:
        if "projected" not in vol or not any("serviceAccountToken" in s for s in
                                             vol["projected"].get("sources") or []):
            continue
        users = {c["name"] for c in all_containers(pod)
                 if any(m["name"] == vol["name"] for m in c.get("volumeMounts") or [])}
        if not users or not users <= token_containers:
            found.append(f"{name}: service account token volume {vol['name']} "
                         f"(mounted by {sorted(users)})")
    return found


def security_findings(docs: list[dict], allowed_caps: set[str],
                      token_containers: frozenset[str] = frozenset()) -> list[str]:
    """Every field that would weaken the agent's confinement, in any pod of `docs`."""
    found = []
    for name, pod in pod_specs(docs):
        found += token_findings(name, pod, token_containers)
        for flag in ("hostNetwork", "hostIPC"):
            if pod.get(flag):
                found.append(f"{name}: {flag}")
        pod_sc = pod.get("securityContext") or {}
        pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
        if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"{name}: pod seccomp {pod_seccomp}")
        if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            found.append(f"{name}: pod AppArmor Unconfined")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for vol in volumes.values():
            if "hostPath" in vol and vol["hostPath"]["path"] not in (*HOST_PATHS, STATE_PATH):
                found.append(f"{name}: hostPath {vol['hostPath']['path']}")
        for c in all_containers(pod):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("privileged") is not False:
                found.append(f"{where}: privileged not false")
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: allowPrivilegeEscalation not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                found.append(f"{where}: readOnlyRootFilesystem not true")
            if sc.get("procMount", "Default") != "Default":
                found.append(f"{where}: procMount {sc['procMount']}")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                found.append(f"{where}: capabilities not dropped (drop: [ALL])")
            extra = set(caps.get("add") or []) - allowed_caps
            if extra:
                found.append(f"{where}: capabilities added {sorted(extra)}")
            seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
            if seccomp not in ("RuntimeDefault", "Localhost"):
                found.append(f"{where}: seccomp {seccomp}")
            if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
                found.append(f"{where}: AppArmor Unconfined")
            if any("hostPort" in p for p in c.get("ports") or []):
                found.append(f"{where}: hostPort")
            if not (c.get("resources") or {}).get("limits", {}).get("memory"):
                found.append(f"{where}: no memory limit")
            for mount in c.get("volumeMounts") or []:
                vol = volumes.get(mount["name"], {})
                if "hostPath" in vol and mount.get("readOnly") is not True \
                        and vol["hostPath"]["path"] != STATE_PATH:
                    found.append(f"{where}: hostPath {vol['hostPath']['path']} writable")
                if "hostPath" in vol and mount.get("mountPropagation") == "Bidirectional":
                    found.append(f"{where}: Bidirectional propagation")
    return found


# -- parsing, linting, schema validation -----------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")
                  or p.name == ".yamllint")


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    assert load(path), f"{path} holds no document"


def test_yamllint_passes():
    proc = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "--format", "parsable",
                           "-c", str(YAMLLINT_CONFIG), str(DEPLOY)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_config_is_in_force(tmp_path):
    """Control: the configuration rejects what it should (a YAML 1.1 truthy, no ---)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("enabled: yes\n")
    proc = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "--format", "parsable",
                           "-c", str(YAMLLINT_CONFIG), str(bad)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "(truthy)" in proc.stdout and "(document-start)" in proc.stdout


def test_supported_versions_are_shipped_by_kubernetes_validate():
    versions = supported_versions()
    assert versions[0] == KUBERNETES_VERSIONS[0] and versions[-1] == KUBERNETES_VERSIONS[-1], (
        f"kubernetes-validate ships {versions}: update KUBERNETES_VERSIONS and the README")


@pytest.mark.parametrize("version", supported_versions())
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kubernetes_validate_strict(version, variant):
    import kubernetes_validate

    docs = resources_of(VARIANTS[variant][0])
    for doc in docs:
        # Raises on a schema violation, and on a kind it has no schema for (which its
        # command line would only warn about).
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_command_line():
    """The command deploy/README.md gives, through the installed console script."""
    script = Path(sys.executable).parent / "kubernetes-validate"
    argv = [str(script) if script.exists() else "kubernetes-validate", "--strict"]
    for version in KUBERNETES_VERSIONS:
        argv += ["-k", version]
    proc = subprocess.run([*argv, *map(str, base_files())], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"^(WARN|ERROR|FATAL)", proc.stdout, re.M), proc.stdout
    assert proc.stdout.count("passed") == len(base_resources()) * len(KUBERNETES_VERSIONS)


def test_strict_validation_rejects_an_unknown_field():
    """Control: --strict is really strict (a misspelt securityContext key is an error)."""
    import kubernetes_validate

    docs = base_resources()
    container(docs)["securityContext"]["readOnlyRootFileSystem"] = True   # sic
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(one(docs, "DaemonSet"), KUBERNETES_VERSIONS[-1],
                                     strict=True)


# -- kustomize ------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest():
    listed = set(kustomization(BASE)["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    kinds = sorted(d["kind"] for d in base_resources())
    assert kinds == sorted(["Namespace", "ServiceAccount", "PriorityClass", "DaemonSet",
                            "Service", "NetworkPolicy"])


def test_every_overlay_is_checked():
    assert {p.parent for p in OVERLAYS.glob("*/kustomization.yaml")} == \
        {directory for directory, _, _ in VARIANTS.values()} - {BASE}


@pytest.mark.parametrize("directory", sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_kustomize_would_load_it(directory):
    """kustomize's rules: a directory entry is a kustomization that is neither this one nor
    above it ("cycle detected: candidate root ... contains visited root"), a file entry lies
    in or below this directory (the default load restrictor)."""
    doc = kustomization(directory)
    if COMPONENTS in directory.parents:     # added with `components:`, never applied alone
        assert (doc["apiVersion"], doc["kind"]) == ("kustomize.config.k8s.io/v1alpha1",
                                                    "Component")
    else:
        assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert doc["kind"] == "Kustomization"
    here = directory.resolve()
    entries = list(doc.get("resources") or [])
    for entry in entries:
        target = (directory / entry).resolve()
        assert target.exists(), entry
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), entry
            assert target != here and target not in here.parents, (
                f"{entry}: kustomize refuses a base that contains the overlay")
        else:
            assert here in target.parents, f"{entry}: outside {directory}"
    for patch in doc.get("patches") or []:
        target = (directory / patch["path"]).resolve()
        assert here in target.parents and target.is_file(), patch["path"]


def test_top_level_kustomization_is_the_base():
    assert kustomization(DEPLOY)["resources"] == ["base"]


def test_kustomize_transformations_are_no_ops():
    """The manifests already carry the kustomization's namespace and labels, so what
    kustomize applies is exactly these files (and deploy/nsnet.yaml)."""
    kust = kustomization(BASE)
    docs = base_resources()
    for doc in docs:
        if doc["kind"] not in ("Namespace", "PriorityClass"):
            assert doc["metadata"].get("namespace") == kust["namespace"], doc["kind"]
    assert one(docs, "Namespace")["metadata"]["name"] == kust["namespace"]
    for rule in kust["labels"]:
        pairs = rule["pairs"].items()
        for doc in docs:
            assert pairs <= doc["metadata"]["labels"].items(), doc["kind"]
        if rule.get("includeSelectors"):
            ds = one(docs, "DaemonSet")
            assert pairs <= ds["spec"]["selector"]["matchLabels"].items()
            assert pairs <= ds["spec"]["template"]["metadata"]["labels"].items()
            assert pairs <= one(docs, "Service")["spec"]["selector"].items()
            policy = one(docs, "NetworkPolicy")["spec"]
            assert pairs <= policy["podSelector"]["matchLabels"].items()
            # kustomize would add them to a podSelector of a peer too: there is none
            assert all("podSelector" not in peer for rule in policy["ingress"]
                       for peer in rule["from"])


def test_rendered_all_in_one_is_in_sync():
    assert RENDERED.read_text() == render(), (
        "deploy/nsnet.yaml is stale: run python3 tests/unit/test_deploy.py --render")
    assert load(RENDERED) == base_resources()


# -- the DaemonSet's security requirements -----------------------------------------------------

def test_pod_shares_the_host_pid_namespace_only():
    pod = pod_spec(base_resources())
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")


def test_runs_as_root_with_two_capabilities():
    docs = base_resources()
    pod_sc = pod_spec(docs)["securityContext"]
    sc = container(docs)["securityContext"]
    for ctx in (pod_sc, sc):
        assert ctx["runAsUser"] == 0          # added capabilities apply to uid 0 only
        assert ctx["runAsNonRoot"] is False
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(BASE_CAPABILITIES)
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_host_directories_are_mounted_read_only():
    docs = base_resources()
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounted = {}
    for mount in container(docs)["volumeMounts"]:
        vol = volumes[mount["name"]]
        if "hostPath" in vol and vol["hostPath"]["path"] == STATE_PATH:
            continue   # test_history_lives_on_the_node
        if "hostPath" in vol:
            assert mount["readOnly"] is True, mount
            mounted[vol["hostPath"]["path"]] = mount["mountPath"]
            if vol["hostPath"]["path"] == "/proc":
                assert vol["hostPath"]["type"] == "Directory"
    assert mounted == HOST_PATHS


def test_history_lives_on_the_node():
    """nsnet serve --db writes its SQLite history to a hostPath, so restarts keep it."""
    docs = base_resources()
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    (mount,) = [m for m in container(docs)["volumeMounts"]
                if volumes[m["name"]].get("hostPath", {}).get("path") == STATE_PATH]
    assert volumes[mount["name"]]["hostPath"]["type"] == "DirectoryOrCreate"
    assert not mount.get("readOnly") and mount["mountPath"] == STATE_PATH
    command = container(docs)["command"]
    assert command[command.index("--db") + 1].startswith(STATE_PATH + "/")


def test_read_only_root_has_a_writable_tmp():
    docs = base_resources()
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    (tmp,) = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly")


def test_tolerates_every_node():
    tolerations = pod_spec(base_resources())["tolerations"]
    assert all(t["operator"] == "Exists" and "key" not in t for t in tolerations)
    assert {"key": None, "effect": None} in [{"key": t.get("key"), "effect": t.get("effect")}
                                             for t in tolerations]
    assert {"NoSchedule", "NoExecute"} <= {t.get("effect") for t in tolerations}


def test_priority_class_is_shipped_and_below_system_classes():
    docs = base_resources()
    pc = one(docs, "PriorityClass")
    assert pod_spec(docs)["priorityClassName"] == pc["metadata"]["name"]
    assert 0 < pc["value"] <= USER_PRIORITY_MAX
    assert pc["globalDefault"] is False
    assert "preemptionPolicy" not in pc or pc["preemptionPolicy"] == "PreemptLowerPriority"


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)(Ki|Mi|Gi|m|)", str(text)).groups()
    return float(number) * units[unit]


def test_requests_and_memory_limit():
    resources = container(base_resources())["resources"]
    assert _quantity(resources["requests"]["cpu"]) > 0
    requested, limit = (_quantity(resources[k]["memory"]) for k in ("requests", "limits"))
    assert 0 < requested <= limit


def test_environment_matches_the_mounts():
    docs = base_resources()
    agent = container(docs)
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    proc = env["NSNET_PROC"]["value"]
    assert proc == HOST_PATHS["/proc"] and proc in mounts
    host_root = PurePosixPath(env["NSNET_HOST_ROOT"]["value"])
    for log_dir in ("/var/log/pods", "/var/log/containers"):
        assert str(host_root / log_dir.lstrip("/")) in mounts


def _parsed_command(env: dict[str, str]):
    """The container's command, parsed by nsnet's own argument parser."""
    from nsnet.cli import build_parser

    agent = container(base_resources())
    assert agent["command"][0] == "nsnet"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return build_parser().parse_args(agent["command"][1:])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_command_is_a_valid_nsnet_serve_on_the_exposed_port():
    agent = container(base_resources())
    env = {e["name"]: e["value"] for e in agent["env"] if "value" in e}
    args = _parsed_command(env)
    assert args.command == "serve" and args.source == "auto"
    (port,) = agent["ports"]
    assert port["name"] == "http" and args.listen == ("0.0.0.0", port["containerPort"])
    assert args.proc == "/host/proc" and args.host_root == "/host"


def test_probes_target_the_exposed_port():
    agent = container(base_resources())
    (port,) = agent["ports"]
    paths = {}
    for probe in ("livenessProbe", "readinessProbe"):
        get = agent[probe]["httpGet"]
        assert get["port"] in (port["name"], port["containerPort"])
        assert agent[probe]["periodSeconds"] >= 5 and agent[probe]["timeoutSeconds"] >= 1
        paths[probe] = get["path"]
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_probe_paths_are_served_by_nsnet_serve(tmp_path):
    """`nsnet serve` (the container's command, on a loopback port and an empty procfs so
    that no snapshot takes long) answers the probes' paths."""
    agent = container(base_resources())
    port = _free_port()
    argv = list(agent["command"][1:])
    argv[argv.index("--listen") + 1] = f"127.0.0.1:{port}"
    env = {**os.environ, "NSNET_PROC": str(tmp_path), "NSNET_HOST_ROOT": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "nsnet", *argv], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"nsnet serve exited {server.returncode}: {server.stderr.read()}")
            try:
                status = _get(port, agent["livenessProbe"]["httpGet"]["path"])
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert status == 200
        # ready or not (an empty procfs), the path exists: not 404
        assert _get(port, agent["readinessProbe"]["httpGet"]["path"]) != 404
        assert _get(port, "/no-such-path") == 404          # control
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_service_selects_the_agent_pods_on_their_port():
    docs = base_resources()
    svc = one(docs, "Service")
    ds = one(docs, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = container(docs)["ports"]
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["name"] == "http" and svc_port["port"] == port["containerPort"]
    assert svc_port["targetPort"] in (port["name"], port["containerPort"])


def test_no_service_account_token():
    docs = base_resources()
    sa = one(docs, "ServiceAccount")
    pod = pod_spec(docs)
    assert sa["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


def test_namespace_admits_the_agent():
    """hostPID, hostPath and added capabilities pass only the privileged Pod Security level."""
    labels = one(base_resources(), "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_rollout_and_termination():
    ds = one(base_resources(), "DaemonSet")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": "10%"}}
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


def test_image_tag_is_the_package_version():
    import nsnet

    image = container(base_resources())["image"]
    assert image == f"ghcr.io/nsnet/nsnet:{nsnet.__version__}"


# -- weakening guard ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", [*sorted(VARIANTS), "rendered"])
def test_no_field_weakens_the_agent(variant):
    if variant == "rendered":
        docs, caps, token_containers = load(RENDERED), BASE_CAPABILITIES, frozenset()
    else:
        directory, caps, token_containers = VARIANTS[variant]
        docs = resources_of(directory)
    assert security_findings(docs, caps, token_containers) == []


def _weaken(change):
    docs = base_resources()
    change(pod_spec(docs), container(docs))
    return docs


def _init_container(pod, agent):
    pod["initContainers"] = [{"name": "init", "image": agent["image"],
                              "securityContext": {"privileged": True}}]


WEAKENINGS = {
    "privileged": lambda pod, c: c["securityContext"].update(privileged=True),
    "privilege escalation": lambda pod, c: c["securityContext"].pop("allowPrivilegeEscalation"),
    "writable root": lambda pod, c: c["securityContext"].update(readOnlyRootFilesystem=False),
    "SYS_ADMIN in the base": lambda pod, c: c["securityContext"]["capabilities"]["add"]
    .append("SYS_ADMIN"),
    "NET_ADMIN": lambda pod, c: c["securityContext"]["capabilities"]["add"].append("NET_ADMIN"),
    "nothing dropped": lambda pod, c: c["securityContext"]["capabilities"].pop("drop"),
    "seccomp unconfined": lambda pod, c: c["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
    "pod seccomp unconfined": lambda pod, c: (c["securityContext"].pop("seccompProfile"),
                                              pod["securityContext"].update(
                                                  seccompProfile={"type": "Unconfined"})),
    "unmasked proc": lambda pod, c: c["securityContext"].update(procMount="Unmasked"),
    "host network": lambda pod, c: pod.update(hostNetwork=True),
    "host IPC": lambda pod, c: pod.update(hostIPC=True),
    "host port": lambda pod, c: c["ports"][0].update(hostPort=9810),
    "writable /proc": lambda pod, c: c["volumeMounts"][0].update(readOnly=False),
    "host root": lambda pod, c: pod["volumes"].append({"name": "root",
                                                       "hostPath": {"path": "/"}}),
    "no memory limit": lambda pod, c: c["resources"].pop("limits"),
    "privileged init container": _init_container,
    "token for the agent": lambda pod, c: (
        pod["volumes"].append({"name": "sa", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}),
        c["volumeMounts"].append({"name": "sa", "mountPath": "/var/run/secrets/x"})),
    "automounted token": lambda pod, c: pod.update(automountServiceAccountToken=True),
}


@pytest.mark.parametrize("name", sorted(WEAKENINGS))
def test_weakening_guard_catches(name):
    """Control for the guard above: each weakening is reported."""
    assert security_findings(_weaken(WEAKENINGS[name]), BASE_CAPABILITIES)


# -- the setns overlay ---------------------------------------------------------------------

def test_overlay_adds_sys_admin_net_admin_and_nothing_else():
    kust = kustomization(OVERLAY)
    assert kust["resources"] == ["../../base"]
    base, patched = base_resources(), overlay_resources()
    caps = container(patched)["securityContext"]["capabilities"]
    assert sorted(caps["add"]) == sorted(OVERLAY_CAPABILITIES)
    assert caps["drop"] == ["ALL"]
    container(patched)["securityContext"]["capabilities"]["add"] = \
        container(base)["securityContext"]["capabilities"]["add"]
    assert patched == base


def test_overlay_patch_checks_the_container_it_patches():
    (ops,) = load(OVERLAY / kustomization(OVERLAY)["patches"][0]["path"])
    assert ops[0]["op"] == "test" and ops[0]["value"] == container(base_resources())["name"]
    docs = base_resources()
    container(docs)["name"] = "renamed"
    with pytest.raises(AssertionError, match="JSON patch test failed"):
        json_patch(one(docs, "DaemonSet"), ops)


# -- kustomize itself ------------------------------------------------------------------------

def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_build(directory: Path) -> list[dict]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (resources_of() is checked "
                    "by the other tests)")
    proc = subprocess.run([*command, str(directory)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None]


def _by_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("directory", sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_kustomize_renders_what_the_checks_read(directory):
    """Where kustomize (or kubectl) is installed: what it renders is exactly what
    resources_of() gives, so every check above reads what `kubectl apply -k` sends."""
    built = _by_name(kustomize_build(directory))
    expected = _by_name(resources_of(directory))
    assert sorted(built) == sorted(expected)
    for key, doc in expected.items():
        assert built[key] == doc, key


# -- the ServiceMonitor component --------------------------------------------------------------

# what prometheus-operator gives every target of a ServiceMonitor (its generated relabeling):
# the agent's own namespace, Service, pod, container and endpoint
OPERATOR_TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint"}


def with_service_monitor(base: Path = BASE) -> list[dict]:
    return resources_of(base) + resources_of(SERVICE_MONITOR)


def test_the_service_monitor_scrapes_each_agent_with_the_edges_labels_intact():
    import re

    docs = with_service_monitor()
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
    # the operator's target labels are dropped, every one, and none of the edges' own
    # labels is touched (target relabelings never see the scraped series anyway)
    (drop,) = endpoint["relabelings"]
    assert drop["action"] == "labeldrop"
    pattern = re.compile(drop["regex"])
    assert {name for name in OPERATOR_TARGET_LABELS if pattern.fullmatch(name)} == \
        OPERATOR_TARGET_LABELS
    assert not [name for name in ("job", "instance", "__address__", "__metrics_path__")
                if pattern.fullmatch(name)]
    # the monitoring namespace (the operator's Prometheus) is the one the policy lets in
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": MONITORING}}]


def test_the_component_composes_with_every_variant():
    for variant, (directory, _, _) in VARIANTS.items():
        docs = with_service_monitor(directory)
        assert sorted(d["kind"] for d in docs).count("ServiceMonitor") == 1, variant


def test_kustomize_builds_a_variant_with_the_component(tmp_path):
    """As a user adds it: a kustomization of their own with the base as a resource and the
    component under `components:`."""
    import os

    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(BASE, tmp_path)}\n"
        f"components:\n  - {os.path.relpath(SERVICE_MONITOR, tmp_path)}\n")
    built = _by_name(kustomize_build(tmp_path))
    assert built == _by_name(with_service_monitor())


# -- who may reach the agent: NetworkPolicy, Service, kube-rbac-proxy, auth token ---------------

def network_policy(docs: list[dict]) -> dict:
    return one(docs, "NetworkPolicy")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_network_policy_lets_only_the_monitoring_namespace_reach_9810(variant):
    docs = resources_of(VARIANTS[variant][0])
    spec = network_policy(docs)["spec"]
    pod = one(docs, "DaemonSet")["spec"]["template"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": MONITORING}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": AGENT_PORT}]
    # the port is the one the pod serves on, whoever serves it
    served = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert served == {AGENT_PORT}
    # a NetworkPolicy does not apply to a pod on the host's network
    assert not pod["spec"].get("hostNetwork")
    assert network_policy(docs)["metadata"]["namespace"] == one(docs, "DaemonSet")[
        "metadata"]["namespace"]


def _readme_policy_patch() -> tuple[dict, list[dict]]:
    """The overlay deploy/README.md shows for another monitoring namespace."""
    readme = (DEPLOY / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)
                if "kind: NetworkPolicy" in b and "patch: |-" in b]
    kust = yaml.safe_load(block)
    (patch,) = kust["patches"]
    return kust, yaml.safe_load(patch["patch"])


def test_the_readmes_policy_patch_changes_the_namespace(tmp_path):
    kust, ops = _readme_policy_patch()
    assert kust["resources"] == ["../../base"]
    patched = json_patch(network_policy(base_resources()), ops)
    (rule,) = patched["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "observability"}}}]
    if kustomize_command() is not None:      # and kustomize agrees, on a copy of deploy/
        copy_of = tmp_path / "deploy"
        shutil.copytree(DEPLOY, copy_of)
        (copy_of / "overlays" / "mine").mkdir()
        (copy_of / "overlays" / "mine" / "kustomization.yaml").write_text(yaml.safe_dump(kust))
        built = _by_name(kustomize_build(copy_of / "overlays" / "mine"))
        assert built[("NetworkPolicy", "nsnet")]["spec"] == patched["spec"]


def test_linux_nodes_only():
    assert pod_spec(base_resources())["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_service_is_headless_one_endpoint_per_agent():
    """No virtual IP that would pick any node's agent: DNS and endpoint discovery give each
    node's agent, each a target of its own."""
    spec = one(base_resources(), "Service")["spec"]
    assert spec["clusterIP"] == "None" and spec.get("type", "ClusterIP") == "ClusterIP"


def test_probe_paths_need_no_token():
    """--auth-token-file leaves the probes' paths open: the kubelet sends no token."""
    from nsnet.agent.auth import OPEN_PATHS

    for variant in VARIANTS.values():
        agent = container(resources_of(variant[0]))
        for probe in ("livenessProbe", "readinessProbe"):
            assert agent[probe]["httpGet"]["path"] in OPEN_PATHS


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in args)


def test_kube_rbac_proxy_fronts_an_agent_on_loopback():
    docs = resources_of(RBAC_PROXY)
    agent, proxy = container(docs), named(docs, "kube-rbac-proxy")
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["nsnet", "kube-rbac-proxy"]
    listen = _parse_argv(agent["command"]).listen
    assert listen == ("127.0.0.1", 9811) and "ports" not in agent
    assert re.fullmatch(r"quay\.io/brancz/kube-rbac-proxy:v\d+\.\d+\.\d+", proxy["image"])
    flags = _flags(proxy["args"])
    assert flags["secure-listen-address"] == f"0.0.0.0:{AGENT_PORT}"
    assert flags["upstream"] == f"http://127.0.0.1:{listen[1]}/"
    assert "insecure-listen-address" not in flags
    probes = {agent[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert set(flags["ignore-paths"].split(",")) == probes == {"/healthz", "/readyz"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["port"] == AGENT_PORT
        assert agent[probe]["httpGet"]["scheme"] == "HTTPS"
    assert proxy["ports"] == [{"name": "https", "containerPort": AGENT_PORT, "protocol": "TCP"}]
    (port,) = one(docs, "Service")["spec"]["ports"]
    assert port == {"name": "https", "port": AGENT_PORT, "targetPort": "https",
                    "protocol": "TCP"}
    sc = proxy["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert "add" not in sc["capabilities"]


def test_kube_rbac_proxy_alone_holds_a_token():
    docs = resources_of(RBAC_PROXY)
    pod = pod_spec(docs)
    assert pod["automountServiceAccountToken"] is False
    (mount,) = named(docs, "kube-rbac-proxy")["volumeMounts"]
    # where client-go's in-cluster configuration reads the token and the CA
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    sources = volume["projected"]["sources"]
    assert {next(iter(s)) for s in sources} == {"serviceAccountToken", "configMap",
                                               "downwardAPI"}
    assert mount["name"] not in {m["name"] for m in container(docs)["volumeMounts"]}


def test_kube_rbac_proxy_rbac():
    docs = resources_of(RBAC_PROXY)
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert roles["nsnet-kube-rbac-proxy"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
         "verbs": ["create"]}]
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": "nsnet-kube-rbac-proxy"}
    ds = one(docs, "DaemonSet")
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": pod_spec(docs)["serviceAccountName"],
                                    "namespace": ds["metadata"]["namespace"]}]
    (reader,) = roles["nsnet-metrics-reader"]["rules"]
    assert reader == {"nonResourceURLs": ["/metrics", "/api/*"], "verbs": ["get"]}


def test_the_metrics_reader_grants_every_guarded_path():
    """Kubernetes' rule for nonResourceURLs: equal, or a prefix ending in '*'. Every path
    the agent serves but the probes' must be granted, or a reader gets 403 on it."""
    from nsnet.agent.auth import OPEN_PATHS
    from nsnet.agent.serve import _ROUTES

    (rule,) = one([d for d in resources_of(RBAC_PROXY)
                   if d["metadata"]["name"] == "nsnet-metrics-reader"], "ClusterRole")["rules"]

    def granted(path: str) -> bool:
        return any(path == u or (u.endswith("*") and path.startswith(u[:-1]))
                   for u in rule["nonResourceURLs"])
    guarded = set(_ROUTES) - OPEN_PATHS
    assert guarded and all(granted(path) for path in guarded)
    assert not granted("/api")      # control: the rule is not a blanket grant


def test_kube_rbac_proxy_overlay_changes_only_the_front():
    """The overlay's DaemonSet is the base's but for the agent's listen address, port and
    probes, the proxy container and its token volume."""
    base, docs = base_resources(), resources_of(RBAC_PROXY)
    ds = copy.deepcopy(one(docs, "DaemonSet"))
    pod = ds["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "kube-rbac-proxy"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "kube-api-access"]
    (agent,), original = pod["containers"], container(base)
    for key in ("command", "ports", "livenessProbe", "readinessProbe"):
        agent.pop(key, None)
        original.pop(key)
    assert ds == one(base, "DaemonSet")
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} - \
        {(d["kind"], d["metadata"]["name"]) for d in base} == {
            ("ClusterRole", "nsnet-kube-rbac-proxy"), ("ClusterRole", "nsnet-metrics-reader"),
            ("ClusterRoleBinding", "nsnet-kube-rbac-proxy")}


def test_kube_rbac_proxy_tls_serves_the_secrets_certificate():
    docs = resources_of(RBAC_PROXY_TLS)
    proxy = named(docs, "kube-rbac-proxy")
    flags = _flags(proxy["args"])
    mounts = {m["name"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    (tls,) = [name for name in mounts if "secret" in volumes[name]]
    assert volumes[tls]["secret"]["secretName"] == "nsnet-tls"
    assert mounts[tls]["readOnly"] is True and "subPath" not in mounts[tls]
    directory = PurePosixPath(mounts[tls]["mountPath"])
    assert flags["tls-cert-file"] == str(directory / "tls.crt")
    assert flags["tls-private-key-file"] == str(directory / "tls.key")
    assert tls not in {m["name"] for m in container(docs)["volumeMounts"]}
    # the rest is the kube-rbac-proxy overlay's
    flags.pop("tls-cert-file"), flags.pop("tls-private-key-file")
    assert flags == _flags(named(resources_of(RBAC_PROXY), "kube-rbac-proxy")["args"])


def test_auth_token_overlay_gives_the_agent_a_rotatable_token_file():
    docs = resources_of(AUTH_TOKEN)
    agent = container(docs)
    args = _parse_argv(agent["command"])
    assert args.auth_token_file == "/etc/nsnet/auth/token"
    mount, volume = _mount_of(docs, agent, args.auth_token_file)
    assert volume["secret"]["secretName"] == "nsnet-auth-token"
    # a subPath mount never sees the Secret change: the directory is mounted
    assert mount["readOnly"] is True and "subPath" not in mount
    assert [i["path"] for i in volume["secret"].get("items", [{"path": "token"}])] == ["token"]
    # nothing else changes: the same agent on the same port, and the probes open
    assert args.listen == ("0.0.0.0", AGENT_PORT)
    assert agent["command"][:-2] == container(base_resources())["command"]


def _parse_argv(command: list[str]):
    from nsnet.cli import build_parser

    assert command[0] == "nsnet"
    return build_parser({}).parse_args(command[1:])


def _mount_of(docs: list[dict], agent: dict, path: str) -> tuple[dict, dict]:
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    (mount,) = [m for m in agent["volumeMounts"]
                if PurePosixPath(path).parent == PurePosixPath(m["mountPath"])]
    return mount, volumes[mount["name"]]


# -- the Dockerfile --------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()  # type: ignore[misc]
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_is_multi_stage_on_python_slim():
    lines = _dockerfile()
    assert lines[0] == ("ARG", "BASE=python:3.11-slim-bookworm")
    froms = [i for i, (op, _) in enumerate(lines) if op == "FROM"]
    assert [lines[i][1] for i in froms] == ["${BASE} AS builder", "${BASE}"]
    final = lines[froms[-1]:]
    # Nothing runs in the final stage: it cannot gain a compiler, a pip cache or sources.
    assert not [arg for op, arg in final if op == "RUN"]
    assert [arg for op, arg in final if op == "COPY"] == ["--from=builder /opt/nsnet /opt/nsnet"]
    assert ("ENTRYPOINT", '["nsnet"]') in final
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and env.startswith("PATH=$PATH:/opt/nsnet/bin")
    builder = " ".join(arg for op, arg in lines[:froms[-1]] if op == "RUN")
    assert "python3 -m venv /opt/nsnet" in builder and "--no-cache-dir" in builder
    assert {"PIP_NO_INDEX", "PIP_FIND_LINKS"} <= {arg for op, arg in lines if op == "ARG"}


def test_dockerignore_is_a_whitelist_of_what_the_build_copies():
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!nsnet", "!wheels"} <= set(patterns)
    assert not {".venv", ".git", "tests", "bench"} & {p.lstrip("!") for p in patterns
                                                      if p.startswith("!")}


def test_readme_names_the_supported_versions():
    readme = (DEPLOY / "README.md").read_text()
    for version in KUBERNETES_VERSIONS:
        assert version in readme


if __name__ == "__main__":
    if sys.argv[1:] == ["--render"]:
        RENDERED.write_text(render())
        print(f"wrote {RENDERED}")
    else:
        sys.exit("usage: python3 tests/unit/test_deploy.py --render")
