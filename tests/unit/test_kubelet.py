"""nsnet.kubelet: names the kubelet writes, and a host tree laid out the way it lays it out."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kubelet_tree import (ID_API, ID_APP, ID_DNS, ID_OLD, ID_PROXY, STATIC_UID, UID_DNS, UID_WEB,
                          UID_WEB_OLD, HostTree, build_host)
from nsnet import kubelet
from nsnet.kubelet import (
    ContainerLog,
    ContainerName,
    KubeletLogs,
    PodRef,
    load_kubelet_logs,
    parse_container_log_name,
    parse_pod_log_dir,
)


@pytest.fixture
def host(tmp_path: Path) -> HostTree:
    return build_host(tmp_path)


# -- pure: /var/log/pods directory names ------------------------------------------------------

@pytest.mark.parametrize("name, want", [
    (f"kube-system_coredns-5d78c9869d-4xq2b_{UID_DNS}", PodRef(UID_DNS, "kube-system", "coredns-5d78c9869d-4xq2b")),
    (f"shop-prod_web.v2-7c9d8f6b5-x2kqp_{UID_WEB}", PodRef(UID_WEB, "shop-prod", "web.v2-7c9d8f6b5-x2kqp")),
    (f"kube-system_kube-apiserver-node-1.example.com_{STATIC_UID}",
     PodRef(STATIC_UID, "kube-system", "kube-apiserver-node-1.example.com")),
    (f"a_b_{UID_WEB}", PodRef(UID_WEB, "a", "b")),
])
def test_parse_pod_log_dir(name, want):
    assert parse_pod_log_dir(name) == want


@pytest.mark.parametrize("name", [
    "",
    "kube-system",
    f"kube-system_coredns_{UID_DNS}_extra",
    f"kube-system_coredns-{UID_DNS}",                 # '-' is not the separator
    f"Kube-System_coredns_{UID_DNS}",                 # upper case
    f"kube.system_coredns_{UID_DNS}",                 # a namespace is a label: no dots
    f"kube-system_-coredns_{UID_DNS}",                # labels start alphanumeric
    f"kube-system_coredns-_{UID_DNS}",
    f"kube-system_coredns_{UID_DNS[:-1]}",            # truncated uid
    f"kube-system_coredns_{UID_DNS.upper()}",
    f"kube-system_coredns_{STATIC_UID[:31]}",
    f"kube-system_coredns_{UID_DNS}\n",               # trailing newline
    f"kube-system_core\ndns_{UID_DNS}",
    f"kube-system_\x1b[31mcoredns_{UID_DNS}",
    f"kube-system_core dns_{UID_DNS}",
    f"{'n' * 64}_coredns_{UID_DNS}",                  # label longer than 63
    f"kube-system_{'a' * 254}_{UID_DNS}",             # subdomain longer than 253
    f"kube-system_coredns_{UID_DNS}.log",
])
def test_parse_pod_log_dir_rejects(name):
    assert parse_pod_log_dir(name) is None


# -- pure: /var/log/containers names ----------------------------------------------------------

@pytest.mark.parametrize("name, want", [
    (f"coredns-5d78c9869d-4xq2b_kube-system_coredns-{ID_DNS}.log",
     ContainerLog("coredns-5d78c9869d-4xq2b", "kube-system", "coredns", ID_DNS)),
    # container names with dashes: the id follows the last '-'
    (f"web.v2-7c9d8f6b5-x2kqp_shop-prod_istio-proxy-{ID_PROXY}.log",
     ContainerLog("web.v2-7c9d8f6b5-x2kqp", "shop-prod", "istio-proxy", ID_PROXY)),
    (f"kube-apiserver-node-1.example.com_kube-system_kube-apiserver-{ID_API}.log",
     ContainerLog("kube-apiserver-node-1.example.com", "kube-system", "kube-apiserver", ID_API)),
])
def test_parse_container_log_name(name, want):
    assert parse_container_log_name(name) == want


@pytest.mark.parametrize("name", [
    "",
    ".log",
    f"coredns_kube-system_coredns-{ID_DNS}",           # no .log
    f"coredns_kube-system_coredns-{ID_DNS}.log.1",
    f"coredns_kube-system_coredns-{ID_DNS}.log\n",
    f"coredns_kube-system_coredns{ID_DNS}.log",        # no '-' before the id
    f"coredns_kube-system_-{ID_DNS}.log",              # empty container name
    f"coredns_kube-system_coredns-{ID_DNS[:12]}.log",  # short id
    f"coredns_kube-system_coredns-{ID_DNS.upper()}.log",
    f"coredns_kube-system_coredns-{'z' * 64}.log",
    f"coredns_kube-system_extra_coredns-{ID_DNS}.log",
    f"coredns_kube-system_core\ndns-{ID_DNS}.log",
    f"coredns_kube-system_\x1b]0;pwned\x07-{ID_DNS}.log",
    f"coredns_kube.system_coredns-{ID_DNS}.log",
    f"coredns_kube-system_core.dns-{ID_DNS}.log",      # container names are labels
])
def test_parse_container_log_name_rejects(name):
    assert parse_container_log_name(name) is None


# -- I/O: a host tree as the kubelet builds it ------------------------------------------------


def test_not_a_kubernetes_node(tmp_path):
    assert load_kubelet_logs(str(tmp_path)) == KubeletLogs()


def test_default_host_root_does_not_raise():
    assert isinstance(load_kubelet_logs(), KubeletLogs)


def test_full_tree(host):
    got = load_kubelet_logs(str(host.root))
    assert got.errors == []
    assert got.pods == {
        UID_DNS: PodRef(UID_DNS, "kube-system", "coredns-5d78c9869d-4xq2b"),
        UID_WEB: PodRef(UID_WEB, "shop-prod", "web.v2-7c9d8f6b5-x2kqp"),
        STATIC_UID: PodRef(STATIC_UID, "kube-system", "kube-apiserver-node-1"),
    }
    assert got.containers == {
        ID_DNS: ContainerName("coredns", UID_DNS, "kube-system", "coredns-5d78c9869d-4xq2b"),
        ID_APP: ContainerName("app", UID_WEB, "shop-prod", "web.v2-7c9d8f6b5-x2kqp"),
        ID_PROXY: ContainerName("istio-proxy", UID_WEB, "shop-prod", "web.v2-7c9d8f6b5-x2kqp"),
        ID_API: ContainerName("kube-apiserver", STATIC_UID, "kube-system", "kube-apiserver-node-1"),
    }
    assert got.container_names_by_pod == {
        UID_DNS: {"coredns"}, UID_WEB: {"app", "istio-proxy"}, STATIC_UID: {"kube-apiserver"},
    }


def test_links_are_dangling_under_a_host_root_and_still_give_the_uid(host):
    # The targets are /var/log/pods/..., which do not exist on this machine: never followed.
    link = next(host.containers.iterdir())
    assert not link.exists() and link.is_symlink()
    assert all(c.pod_uid for c in load_kubelet_logs(str(host.root)).containers.values())


def test_dangling_link_after_rotation_and_pod_dir_gone(tmp_path):
    tree = HostTree(tmp_path)
    tree.link("web-0", "shop", "app", ID_OLD, f"/var/log/pods/shop_web-0_{UID_WEB_OLD}/app/3.log")
    got = load_kubelet_logs(str(tmp_path))
    assert got.containers[ID_OLD] == ContainerName("app", UID_WEB_OLD, "shop", "web-0")
    # The link target names the pod: it is known even though its directory is gone.
    assert got.pods == {UID_WEB_OLD: PodRef(UID_WEB_OLD, "shop", "web-0")}
    assert got.container_names_by_pod == {UID_WEB_OLD: {"app"}}


def test_junk_is_skipped(host):
    (host.pods / "lost+found").mkdir()
    (host.pods / "README").write_text("x")
    (host.pods / f"kube-system_not-a-dir_{UID_WEB_OLD}").write_text("a file, not a pod dir")
    os.symlink(str(host.pods), host.pods / f"kube-system_symlinked_{UID_WEB_OLD}")
    pod_dir = host.pods / f"kube-system_coredns-5d78c9869d-4xq2b_{UID_DNS}"
    (pod_dir / "Not_A_Container").mkdir()
    (pod_dir / "stray.log").write_text("")
    (host.containers / "garbage.log").write_text("")
    os.symlink("/nowhere", host.containers / f"web_shop_app-{ID_OLD[:12]}.log")
    os.symlink("/nowhere", host.containers / "evil\nname_ns_c-{}.log".format(ID_OLD))
    got = load_kubelet_logs(str(host.root))
    assert got.errors == []
    assert set(got.pods) == {UID_DNS, UID_WEB, STATIC_UID}
    assert set(got.containers) == {ID_DNS, ID_APP, ID_PROXY, ID_API}
    assert got.container_names_by_pod[UID_DNS] == {"coredns"}


def test_link_into_another_pod_is_not_trusted_for_the_uid(host):
    # The link names web's directory but the log name says coredns: take the uid from the
    # one coredns directory there is, not from the link.
    host.link("coredns-5d78c9869d-4xq2b", "kube-system", "coredns", ID_OLD,
              f"/var/log/pods/shop-prod_web.v2-7c9d8f6b5-x2kqp_{UID_WEB}/app/0.log")
    got = load_kubelet_logs(str(host.root))
    assert got.containers[ID_OLD].pod_uid == UID_DNS


def test_plain_file_log_and_recreated_pod_is_ambiguous(host):
    # A StatefulSet pod recreated under the same name: two directories, so a log that does not
    # link to one of them cannot be placed.
    host.pod("shop-prod", "db-0", UID_WEB_OLD, {})
    host.pod("shop-prod", "db-0", "3bf4ea78-20ea-45c0-a71a-11d4b481a934", {})
    (host.containers / f"db-0_shop-prod_postgres-{ID_OLD}.log").write_text("not a symlink")
    got = load_kubelet_logs(str(host.root))
    assert got.containers[ID_OLD] == ContainerName("postgres", None, "shop-prod", "db-0")


def test_plain_file_log_with_one_matching_pod(host):
    (host.containers / f"coredns-5d78c9869d-4xq2b_kube-system_coredns-{ID_OLD}.log").write_text("")
    assert load_kubelet_logs(str(host.root)).containers[ID_OLD].pod_uid == UID_DNS


def test_pods_dir_is_a_file(tmp_path):
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "var/log/pods").write_text("")
    got = load_kubelet_logs(str(tmp_path))
    assert got.errors == [f"cannot read {tmp_path}/var/log/pods: not a directory"]
    assert got.pods == {}


def test_entries_vanishing_mid_listing(host, monkeypatch):
    # Remove, for real, a pod directory and a log link between the listing and their read.
    gone_pod = host.pods / f"shop-prod_web.v2-7c9d8f6b5-x2kqp_{UID_WEB}"
    gone_link = next(host.containers.glob(f"*-{ID_DNS}.log"))
    real_scandir, real_readlink = os.scandir, os.readlink

    def scandir(path):
        if isinstance(path, str) and path == str(gone_pod):  # rmtree itself passes fds
            shutil.rmtree(gone_pod)
        return real_scandir(path)

    def readlink(path, *args, **kwargs):
        if isinstance(path, str) and path == str(gone_link):
            os.unlink(gone_link)
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(kubelet.os, "scandir", scandir)
    monkeypatch.setattr(kubelet.os, "readlink", readlink)
    got = load_kubelet_logs(str(host.root))
    assert got.errors == []
    assert not gone_pod.exists() and not gone_link.is_symlink()
    assert ID_DNS not in got.containers
    assert got.container_names_by_pod[UID_WEB] == {"app", "istio-proxy"}  # from the links
    assert set(got.containers) == {ID_APP, ID_PROXY, ID_API}


# -- unreadable directories: uid 0 without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH ---------------


