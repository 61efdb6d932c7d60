"""nsnet.kubelet on a host tree whose directories a process without the DAC capabilities
cannot read: an error line, never a lost pod (root: setpriv drops the capabilities)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root
from kubelet_tree import (
    ID_API,
    ID_APP,
    ID_DNS,
    ID_PROXY,
    STATIC_UID,
    UID_DNS,
    UID_WEB,
    HostTree,
    build_host,
)

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture
def host(tmp_path: Path) -> HostTree:
    return build_host(tmp_path)


def load_without_dac(host_root: Path) -> dict:
    """load_kubelet_logs in a child whose bounding set lacks the DAC capabilities, so a
    mode-000 directory is unreadable even though it runs as root."""
    code = (
        "import dataclasses, json, sys\n"
        "from nsnet.kubelet import load_kubelet_logs\n"
        "r = load_kubelet_logs(sys.argv[1])\n"
        "print(json.dumps({'pods': sorted(r.pods), 'containers': sorted(r.containers),\n"
        "  'names': {k: sorted(v) for k, v in r.container_names_by_pod.items()}, 'errors': r.errors}))\n"
    )
    run = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
         "--bounding-set=-dac_override,-dac_read_search", "--",
         sys.executable, "-c", code, str(host_root)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_unreadable_pods_dir_is_an_error_line(host):
    require_root("setpriv")
    host.pods.chmod(0)
    try:
        got = load_without_dac(host.root)
    finally:
        host.pods.chmod(0o755)
    assert got["errors"] == [f"cannot read {host.root}/var/log/pods: permission denied"]
    # /var/log/containers is still read: the links alone give the pods, names and uids.
    assert got["pods"] == sorted([UID_DNS, UID_WEB, STATIC_UID])
    assert got["containers"] == sorted([ID_DNS, ID_APP, ID_PROXY, ID_API])
    assert got["names"][UID_WEB] == ["app", "istio-proxy"]


def test_unreadable_pod_dir_keeps_the_pod(host):
    require_root("setpriv")
    pod_dir = host.pods / f"kube-system_coredns-5d78c9869d-4xq2b_{UID_DNS}"
    pod_dir.chmod(0)
    try:
        got = load_without_dac(host.root)
    finally:
        pod_dir.chmod(0o755)
    assert got["errors"] == [f"cannot read {pod_dir}: permission denied"]
    assert UID_DNS in got["pods"]
    assert got["names"][UID_DNS] == ["coredns"]  # from its log link
