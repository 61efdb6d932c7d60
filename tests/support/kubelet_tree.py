"""A host tree laid out the way the kubelet lays out /var/log/pods and /var/log/containers,
with the pods and containers the kubelet tests use (unit and kernel tiers)."""
from __future__ import annotations

import os
from pathlib import Path

UID_DNS = "b5477f41-4a29-4964-89cc-87d9f627db0f"
UID_WEB = "a0837de6-de8a-4810-81a5-0284c13f17bf"
UID_WEB_OLD = "c4f9ca28-9351-4161-9ba1-e036fe709bba"
STATIC_UID = "ec4df51a57cb6d537c4045c7f11006c3"
ID_DNS = "8471bc415bfdf9e0e713b301f91032f53992639d0f5bdaa7bd6d857298d77be5"
ID_APP = "f8d22fc2fc65261e145d87aca14dd041f334d7db6104c80d0b2df04d78b410a0"
ID_PROXY = "1614232c835681c80fe474cf038fdcdce7fde3d6ed9d0702d7ad8032b7b32c9d"
ID_API = "c56d5471c0d5082073993c916c2654a028dbeded9ed18b69a42ecb821499e1ca"
ID_OLD = "62edfdcda39b76cd2e72799e36fc75a67e6e16186a2b0f978abdc0e18dc0a39a"


class HostTree:
    """<root>/var/log/{pods,containers}; link targets are host paths, as the kubelet writes
    them, so inside a DaemonSet (host root /host) every link is dangling by design."""

    def __init__(self, root: Path):
        self.root = root
        self.pods = root / "var/log/pods"
        self.containers = root / "var/log/containers"
        self.pods.mkdir(parents=True)
        self.containers.mkdir(parents=True)

    def pod(self, namespace: str, name: str, uid: str, containers: dict[str, str]) -> Path:
        pod_dir = self.pods / f"{namespace}_{name}_{uid}"
        pod_dir.mkdir()
        for cname, cid in containers.items():
            (pod_dir / cname).mkdir()
            (pod_dir / cname / "0.log").write_text('2024-05-01T10:00:00.0Z stdout F ready\n')
            self.link(name, namespace, cname, cid, f"/var/log/pods/{namespace}_{name}_{uid}/{cname}/0.log")
        return pod_dir

    def link(self, pod: str, namespace: str, cname: str, cid: str, target: str) -> Path:
        link = self.containers / f"{pod}_{namespace}_{cname}-{cid}.log"
        os.symlink(target, link)
        return link


def build_host(tmp_path: Path) -> HostTree:
    """The tree the tests share: coredns, a web pod with an istio sidecar, a static pod."""
    tree = HostTree(tmp_path)
    tree.pod("kube-system", "coredns-5d78c9869d-4xq2b", UID_DNS, {"coredns": ID_DNS})
    tree.pod("shop-prod", "web.v2-7c9d8f6b5-x2kqp", UID_WEB, {"app": ID_APP, "istio-proxy": ID_PROXY})
    tree.pod("kube-system", "kube-apiserver-node-1", STATIC_UID, {"kube-apiserver": ID_API})
    return tree
