"""The agent image (deploy/Dockerfile), built offline on a private dockerd and run.

Root only (a daemon of our own); mandatory when CI=true. The image is built once per module
from a base made of the host's python3.11 (tests/support/agent_image.py says why and how).
"""
from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import nsnet
from agent_image import REPO, build_agent_image, private_dockerd
from conftest import require_root

TAG = "nsnet-test/agent:latest"
MAX_IMAGE_BYTES = 150 * 1024 * 1024     # python:3.11-slim alone is ~130 MB unpacked
DAEMONSET = REPO / "deploy" / "base" / "daemonset.yaml"
COMPILERS = re.compile(r"(^|/)(gcc|g\+\+|cc|c\+\+|cpp|cc1|clang|ld|as|make)(-[\d.]+)?$")
SITE = "opt/nsnet/lib/python3.11/site-packages/"


@dataclass
class Image:
    docker: list[str]
    tag: str
    build_seconds: float
    workdir: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.docker, "run", "--rm", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def inspect(self, fmt: str) -> str:
        return subprocess.run([*self.docker, "image", "inspect", "--format", fmt, self.tag],
                              capture_output=True, text=True, timeout=60,
                              check=True).stdout.strip()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    require_root("dockerd", "docker", "ldd")
    workdir = tmp_path_factory.mktemp("img")
    with private_dockerd(workdir) as docker:
        started = time.monotonic()
        build_agent_image(docker, TAG, workdir)
        yield Image(docker, TAG, time.monotonic() - started, workdir)


def test_image_prints_nsnet_version(image):
    proc = image.run("--network", "none", image.tag, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"nsnet {nsnet.__version__}"


def test_image_config(image):
    config = json.loads(image.inspect("{{json .Config}}"))
    assert config["Entrypoint"] == ["nsnet"]
    assert config["User"] == "0:0"
    env = dict(item.split("=", 1) for item in config["Env"])
    # the venv last: its `nsenter` (the PyPI package's script) never shadows util-linux's
    assert env["PATH"].split(":")[-1] == "/opt/nsnet/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_nsenter_on_the_images_path_is_util_linux(image):
    """`nsenter` as the runtime finds it on the image's PATH (no shell: the stand-in base's
    busybox shell would run its own applet) is util-linux's, not the nsenter package's
    console script that the venv holds too."""
    proc = image.run("--network", "none", "--entrypoint", "nsenter", image.tag, "--version")
    assert proc.returncode == 0, proc.stderr
    assert "util-linux" in proc.stdout
    listed = image.run("--network", "none", "--entrypoint", "/bin/sh", image.tag, "-c",
                       "ls /opt/nsnet/bin")
    assert "nsenter" in listed.stdout.split()      # installed by pip, just not first


def test_image_holds_the_venv_and_no_build_leftovers(image):
    """Exported file system: the venv with byte code, and no compiler, pip, pip cache,
    sources or wheels from the build stage."""
    name = f"nsnt-export-{uuid.uuid4().hex[:8]}"
    subprocess.run([*image.docker, "create", "--name", name, image.tag], check=True,
                   capture_output=True, timeout=60)
    try:
        export = subprocess.Popen([*image.docker, "export", name], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            names = [m.name.lstrip("./") for m in tar]
        assert export.wait(timeout=120) == 0
    finally:
        subprocess.run([*image.docker, "rm", "-f", name], capture_output=True, timeout=60)
    assert not [n for n in names if COMPILERS.search(n)], "a compiler in the image"
    assert not [n for n in names if n.startswith(("root/.cache", "src/", "wheels/"))]
    assert not [n for n in names if n.startswith(f"{SITE}pip/") or n == "opt/nsnet/bin/pip"]
    assert not [n for n in names if n.startswith("opt/nsnet/") and n.endswith(".whl")]
    assert "opt/nsnet/bin/nsnet" in names
    for package in ("nsnet/", "psutil/", "nsenter"):
        assert any(n.startswith(SITE + package) for n in names), package
    # compiled at install time: a read-only root never needs to write byte code
    assert any(re.match(rf"{SITE}nsnet/__pycache__/snapshot\.cpython-311\.pyc$", n)
               for n in names)


def test_image_runs_on_a_read_only_root(image):
    proc = image.run("--network", "none", "--read-only", "--tmpfs", "/tmp",
                     "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                     image.tag, "sockets", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["schema"] == nsnet.SCHEMA
    assert "Read-only file system" not in proc.stderr


def test_image_size_is_reasonable(image):
    size = int(image.inspect("{{.Size}}"))
    print(f"agent image: {size / 2**20:.1f} MiB, built in {image.build_seconds:.1f} s")
    assert size < MAX_IMAGE_BYTES


def test_rebuild_with_same_inputs_is_skipped(image):
    before = image.inspect("{{.Id}}")
    started = time.monotonic()
    build_agent_image(image.docker, image.tag, image.workdir)
    assert image.inspect("{{.Id}}") == before
    assert time.monotonic() - started < 30


# -- the manifest's privileges are enough ------------------------------------------------

def _daemonset_run_flags(drop_capability: str | None = None) -> list[str]:
    """docker run flags that reproduce the DaemonSet's container: taken from the manifest
    itself, so that a change there is what this test exercises."""
    docs = list(yaml.safe_load_all(DAEMONSET.read_text()))
    pod = next(d for d in docs if d and d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    flags = ["--pid", "host", "--network", "none",
             "--user", f"{sc['runAsUser']}:{pod['securityContext'].get('runAsGroup', 0)}"]
    if sc["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    if sc["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    flags += [f"--cap-drop={c}" for c in sc["capabilities"]["drop"]]
    flags += [f"--cap-add={c}" for c in sc["capabilities"]["add"] if c != drop_capability]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            if not Path(volume["hostPath"]["path"]).is_dir():
                continue     # no kubelet on this machine: no /var/log/pods
            mode = "ro" if mount.get("readOnly") else "rw"
            flags += ["-v", f"{volume['hostPath']['path']}:{mount['mountPath']}:{mode}"]
        elif "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
    for env in container["env"]:
        if "value" in env:
            flags += ["-e", f"{env['name']}={env['value']}"]
    return flags


@pytest.fixture
def nobody_listener():
    """A listener held by uid 65534 in the host namespace: another user's process, whose
    /proc/<pid>/fd (mode 0500) only CAP_DAC_READ_SEARCH lets the agent list."""
    code = ("import socket,sys,time\n"
            "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True); time.sleep(600)\n")
    proc = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534",
                             "--clear-groups", "/usr/bin/python3.11", "-c", code],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _agent_sockets(image: Image, port: int, drop: str | None = None):
    proc = image.run(*_daemonset_run_flags(drop), image.tag, "sockets", "--json",
                     "--port", str(port))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    listening = [s for s in doc["sockets"]
                 if s["local_port"] == port and s["state"] == "LISTEN"]
    assert len(listening) == 1, doc["sockets"]
    return listening[0], proc.stderr


def test_daemonset_privileges_attribute_another_users_socket(image, nobody_listener):
    require_root("setpriv")
    pid, port = nobody_listener
    sock, _ = _agent_sockets(image, port)
    assert sock["pids"] == [pid]          # hostPID: the node's pid, found through its fds
    assert sock["uid"] == 65534


def test_without_dac_read_search_the_agent_says_what_it_cannot_see(image, nobody_listener):
    require_root("setpriv")
    _, port = nobody_listener
    sock, stderr = _agent_sockets(image, port, drop="DAC_READ_SEARCH")
    assert sock["pids"] == []
    assert sock["uid"] == 65534           # still attributed to its user (the table's uid)
    assert "no pid attribution for" in stderr
