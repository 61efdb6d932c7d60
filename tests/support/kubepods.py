"""Pod-like groups of real containers on a private runtime, with a fake kubelet log tree.

    with KubeNode.build() as kn:
        kn.host_root          # <tmp>/host: var/log/pods + var/log/containers, as a kubelet writes them
        kn.pods["web"].uid, kn.pods["web"].apps[0].id, kn.sockets ...

No kubelet can run here, so this builds what one leaves behind on a node, with real runtimes:

  web     shop/web-…      Burstable   docker, --cgroup-parent /kubepods/burstable/pod<uid>
          sandbox /pause (65535, --network none) + "server" (31101): `nc -ll -p 8080 -e cat`,
          10.88.0.1/24 on a veth to `client`
  client  shop/client-…   Burstable   runc, hand-made OCI bundles, systemd-style cgroupsPath
          /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
          cri-containerd-<id>.scope; sandbox /pause (65535, new netns) + "curl" (31202, joins
          it by linux.namespaces path): `nc 10.88.0.1 8080`, held open by a stdin pipe
  ledger  billing/ledger-0 Guaranteed docker, --cgroup-parent /kubepods/pod<uid>
          sandbox + "db" (31303): `nc -ll -p 9000 -e cat` + "sidecar" (31304): `nc 127.0.0.1 9000`
  agent   kube-system/node-agent-… BestEffort, hostNetwork: docker --network host,
          --cgroup-parent /kubepods/besteffort/pod<uid>; sandbox + "exporter" (31404):
          busybox httpd on 127.0.0.1:<free host port>
  plain   a docker container outside any pod (31505, --network none): `nc -ll -p 7070 -e cat`

The kubelet writes a log only for app containers, never for the sandbox:
<host_root>/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log, and
<host_root>/var/log/containers/<pod>_<ns>_<container>-<id>.log -> /var/log/pods/... (an
absolute link, as the kubelet makes it: it dangles under a host root, as it does in the agent's
container, where the tree is mounted at /host).

Ground truth comes from the setup, never from nsnet: container ids from docker/our runc ids,
pids from `docker inspect`/`runc state` and the containers' own cgroup.procs, namespace inodes
from stat(/proc/<pid>/ns/net), ports we chose; `ss` (in each namespace) only tells us when
the connections are up.

One KubeNode at a time per machine (flock): its uids would merge in nsnet's per-user view.
Teardown (also on SIGTERM, and for leftovers of a SIGKILLed run at the next build) removes the
runc containers, the daemon and its containers, the pod cgroups, veths and directories.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import dockerd as dk
import machinelock
from agent_image import private_dockerd
from realnode import ip_tool, util_linux

LOCK_PATH = "/run/nsnt-kubenode.lock"
LOCK_TIMEOUT = 600.0
READY_TIMEOUT = 30.0
WORK_PREFIX = "nsnt-k-"
CGROUP_ROOT = "/sys/fs/cgroup"

UID_PAUSE = 65535
# Tenants' uids: away from the 10001+ range of tests/support/realnode.py and the perf bench's
# synthetic nodes, which may run on the same machine (nsnet's per-user view would merge them).
UID_WEB, UID_CLIENT, UID_DB, UID_SIDECAR, UID_EXPORTER, UID_PLAIN = \
    31101, 31202, 31303, 31304, 31404, 31505
V4_WEB, V4_CLIENT = "10.88.0.1", "10.88.0.2"
PORT_WEB, PORT_DB, PORT_PLAIN = 8080, 9000, 7070

_LIVE: list["KubeNode"] = []


@dataclass
class ContainerTruth:
    key: str                  # "web/server", "web/sandbox", "plain"
    id: str                   # full 64-hex container id
    name: Optional[str]       # the kubelet's container name (None: sandbox or not in a pod)
    runtime: str              # "docker" | "runc" (how we started it)
    sandbox: bool
    uid: int
    pid: int                  # the container's init
    pids: list[int] = field(default_factory=list)   # every process in its cgroup
    netns: int = 0


@dataclass
class PodTruth:
    key: str
    uid: str
    namespace: str
    name: str
    qos: str                  # guaranteed | burstable | besteffort
    host_network: bool
    cgroup_parent: str
    sandbox: Optional[ContainerTruth] = None
    apps: list[ContainerTruth] = field(default_factory=list)

    @property
    def netns(self) -> int:
        return self.sandbox.netns

    @property
    def owners(self) -> list[int]:
        return sorted({c.uid for c in self.apps})

    def app(self, name: str) -> ContainerTruth:
        return next(c for c in self.apps if c.name == name)

    def ref(self) -> dict:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name}


@dataclass
class SocketTruth:
    key: str
    pod: Optional[str]        # PodTruth key, None outside pods
    container: str            # ContainerTruth key
    uid: int
    proto: str
    state: str
    local_port: int
    remote_addr: Optional[str]
    remote_port: Optional[int]
    netns: int
    direction: str            # listening | inbound | outbound


class KubeNode:
    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.prefix = f"nsnt-{self.suffix}"
        self.work: Optional[Path] = None
        self.host_root: Optional[Path] = None
        self.docker: list[str] = []
        self.image = f"nsnt-busybox:{self.suffix}"
        self.rootfs: Optional[Path] = None
        self.pods: dict[str, PodTruth] = {}
        self.containers: dict[str, ContainerTruth] = {}
        self.sockets: dict[str, SocketTruth] = {}
        self.host_netns = os.stat("/proc/self/ns/net").st_ino
        self.exporter_port = 0
        self.setup_seconds = 0.0
        self._stack = contextlib.ExitStack()
        self._lock_fd: Optional[int] = None
        self._runc_ids: list[str] = []
        self._stdin_pipes: list[int] = []
        self._state: dict = {"pid": os.getpid(), "cgroups": [], "veths": [], "containers": []}

    # ------------------------------------------------------------------ public API

    @classmethod
    def build(cls) -> "KubeNode":
        if _LIVE:   # the flock would wait for ourselves: say so at once instead
            raise RuntimeError("a KubeNode already exists in this process: share it")
        node = cls()
        _LIVE.append(node)
        started = time.monotonic()
        node._stack.enter_context(dk.sigterm_as_exit())
        try:
            node._build()
        except BaseException:
            with contextlib.suppress(Exception):   # the build's error is the one to see
                node.teardown()
            raise
        node.setup_seconds = time.monotonic() - started
        return node

    def __enter__(self) -> "KubeNode":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def runc(self) -> list[str]:
        return ["runc", "--root", str(self.work / "runc")]

    def teardown(self) -> None:
        errors = []
        for step in (self._remove_runc, self._close_pipes, self._stack.close,
                     self._remove_cgroups, self._remove_veths, self._remove_work,
                     self._unlock, self._forget):
            try:
                step()
            except Exception as e:    # every step runs; all failures are reported at the end
                errors.append(f"{step.__name__}: {e}")
        if errors:
            raise RuntimeError("KubeNode teardown: " + "; ".join(errors))

    # ------------------------------------------------------------------ build

    def _build(self) -> None:
        self._lock()
        remove_stale()
        self.work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir="/tmp"))
        self._save_state()
        self.host_root = self.work / "host"
        (self.work / "runc").mkdir()
        self.rootfs = dk.busybox_rootfs(self.work / "rootfs")
        self.docker = self._stack.enter_context(private_dockerd(self.work / "d"))
        dk.import_image(self.docker, self.rootfs, self.image)

        web = self._pod("web", "shop", "web-5d8f7c9b6-x2k4q", "burstable")
        client = self._pod("client", "shop", "client-6c7d9f8b5-p9m3z", "burstable")
        ledger = self._pod("ledger", "billing", "ledger-0", "guaranteed")
        agent = self._pod("agent", "kube-system", f"node-agent-{self.suffix[:5]}", "besteffort",
                          host_network=True)

        self._docker_sandbox(web)
        self._docker_app(web, "server", UID_WEB, ["nc", "-ll", "-p", str(PORT_WEB), "-e", "cat"])
        self._runc_container(client, None, UID_PAUSE, ["/pause"], stdin=None)
        self._veth(web.sandbox.pid, V4_WEB, client.sandbox.pid, V4_CLIENT)
        self._wait_sockets(web.sandbox.pid, lambda ss: _listening(ss, PORT_WEB))
        self._runc_container(client, "curl", UID_CLIENT, ["nc", V4_WEB, str(PORT_WEB)],
                             stdin="pipe")

        self._docker_sandbox(ledger)
        self._docker_app(ledger, "db", UID_DB, ["nc", "-ll", "-p", str(PORT_DB), "-e", "cat"])
        self._wait_sockets(ledger.sandbox.pid, lambda ss: _listening(ss, PORT_DB))
        self._docker_app(ledger, "sidecar", UID_SIDECAR, ["nc", "127.0.0.1", str(PORT_DB)],
                         interactive=True)

        self.exporter_port = _free_port()
        self._docker_sandbox(agent)
        self._docker_app(agent, "exporter", UID_EXPORTER,
                         ["httpd", "-f", "-h", "/www", "-p", f"127.0.0.1:{self.exporter_port}"])

        plain_id = dk.run([*self.docker, "run", "-d", "--name", f"{self.prefix}-plain",
                           "--network", "none", "--user", f"{UID_PLAIN}:{UID_PLAIN}",
                           self.image, "nc", "-ll", "-p", str(PORT_PLAIN), "-e", "cat"]
                          ).stdout.decode().strip()
        self._record(None, "plain", plain_id, None, "docker", False, UID_PLAIN,
                     self._docker_pid(plain_id))

        self._wait_connections(web, client, ledger, agent)
        self._write_kubelet_logs()
        for c in self.containers.values():
            c.pids = _cgroup_pids(c)
            c.netns = os.stat(f"/proc/{c.pid}/ns/net").st_ino

    def _pod(self, key: str, namespace: str, name: str, qos: str,
             host_network: bool = False) -> PodTruth:
        uid = str(uuid.uuid4())
        if key == "client":   # systemd driver: the pod slice, with the uid's dashes as _
            u = uid.replace("-", "_")
            parent = f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"
        elif qos == "guaranteed":
            parent = f"/kubepods/pod{uid}"
        else:
            parent = f"/kubepods/{qos}/pod{uid}"
        self._state["cgroups"].append(parent)
        self._save_state()
        pod = PodTruth(key, uid, namespace, name, qos, host_network, parent)
        self.pods[key] = pod
        return pod

    def _record(self, pod: Optional[PodTruth], key: str, cid: str, name: Optional[str],
                runtime: str, sandbox: bool, uid: int, pid: int) -> ContainerTruth:
        c = ContainerTruth(key, cid, name, runtime, sandbox, uid, pid)
        self.containers[key] = c
        self._state["containers"].append(cid)
        self._save_state()
        if pod is not None:
            if sandbox:
                pod.sandbox = c
            else:
                pod.apps.append(c)
        return c

    def _docker_pid(self, cid: str) -> int:
        state = dk.inspect(self.docker, cid)["State"]
        if not state.get("Running") or not state.get("Pid"):
            raise RuntimeError(f"container {cid[:12]} not running: {state}")
        return int(state["Pid"])

    def _docker_sandbox(self, pod: PodTruth) -> None:
        cid = dk.run([*self.docker, "run", "-d", "--name", f"{self.prefix}-{pod.key}-sandbox",
                      "--network", "host" if pod.host_network else "none",
                      "--cgroup-parent", pod.cgroup_parent,
                      "--user", f"{UID_PAUSE}:{UID_PAUSE}", "--entrypoint", "/pause",
                      self.image]).stdout.decode().strip()
        self._record(pod, f"{pod.key}/sandbox", cid, None, "docker", True, UID_PAUSE,
                     self._docker_pid(cid))

    def _docker_app(self, pod: PodTruth, name: str, uid: int, argv: list[str],
                    interactive: bool = False) -> None:
        network = "host" if pod.host_network else f"container:{pod.sandbox.id}"
        cid = dk.run([*self.docker, "run", "-d", *(["-i"] if interactive else []),
                      "--name", f"{self.prefix}-{pod.key}-{name}", "--network", network,
                      "--cgroup-parent", pod.cgroup_parent, "--user", f"{uid}:{uid}",
                      self.image, *argv]).stdout.decode().strip()
        self._record(pod, f"{pod.key}/{name}", cid, name, "docker", False, uid,
                     self._docker_pid(cid))

    def _runc_container(self, pod: PodTruth, name: Optional[str], uid: int, argv: list[str],
                        stdin: Optional[str]) -> None:
        """An OCI bundle for Debian's runc: shared read-only rootfs (a real directory: runc
        rejects a symlinked one), systemd-style cgroupsPath, and for app containers the
        sandbox's network namespace joined by path."""
        cid = secrets.token_hex(32)
        bundle = self.work / "bundles" / cid[:12]
        bundle.mkdir(parents=True)
        dk.run(["runc", "spec", "--bundle", str(bundle)])
        spec = json.loads((bundle / "config.json").read_text())
        spec["root"] = {"path": str(self.rootfs), "readonly": True}
        proc = spec["process"]
        proc.update(terminal=False, args=argv, cwd="/", user={"uid": uid, "gid": uid},
                    env=["PATH=/bin"])
        spec["hostname"] = pod.name
        linux = spec["linux"]
        linux["cgroupsPath"] = f"{pod.cgroup_parent}/cri-containerd-{cid}.scope"
        if name is not None:
            for ns in linux["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = f"/proc/{pod.sandbox.pid}/ns/net"
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        log = bundle / "runc.log"
        pidfile = bundle / "pid"
        read_end = subprocess.DEVNULL
        if stdin == "pipe":   # nc sees EOF (and hangs up) when stdin closes: keep it open
            read_end, write_end = os.pipe()
            self._stdin_pipes.append(write_end)
        self._runc_ids.append(cid)
        self._save_state()
        # runc hands its stdio to the container: a file, never a pipe we would wait on.
        with open(log, "wb") as out:
            done = subprocess.run([*self.runc(), "run", "--detach", "--bundle", str(bundle),
                                   "--pid-file", str(pidfile), cid],
                                  stdin=read_end, stdout=out, stderr=out, timeout=60)
        if stdin == "pipe":
            os.close(read_end)
        if done.returncode != 0:
            raise RuntimeError(f"runc run {name or 'sandbox'} exited {done.returncode}: "
                               f"{log.read_text(errors='replace')}")
        state = json.loads(dk.run([*self.runc(), "state", cid]).stdout)
        if state.get("status") != "running":
            raise RuntimeError(f"runc container {name or 'sandbox'} is {state.get('status')}")
        key = f"{pod.key}/{name or 'sandbox'}"
        self._record(pod, key, cid, name, "runc", name is None, uid, int(state["pid"]))
        if name is None:   # the CNI would bring lo up in a new pod namespace
            self._in_ns(int(state["pid"]), [ip_tool(), "link", "set", "lo", "up"])

    def _in_ns(self, pid: int, argv: list[str]) -> str:
        return dk.run([util_linux("nsenter"), f"--net=/proc/{pid}/ns/net", *argv]
                      ).stdout.decode()

    def _veth(self, pid_a: int, addr_a: str, pid_b: int, addr_b: str) -> None:
        a, b = f"{self.prefix}-a", f"{self.prefix}-b"
        self._state["veths"].append(a)
        self._save_state()
        dk.run([ip_tool(), "link", "add", a, "netns", str(pid_a), "type", "veth",
                "peer", "name", b, "netns", str(pid_b)])
        for pid, dev, addr in ((pid_a, a, addr_a), (pid_b, b, addr_b)):
            self._in_ns(pid, [ip_tool(), "addr", "add", f"{addr}/24", "dev", dev])
            self._in_ns(pid, [ip_tool(), "link", "set", dev, "up"])
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            links = [json.loads(self._in_ns(pid, [ip_tool(), "-j", "link", "show", "dev", dev]))
                     for pid, dev in ((pid_a, a), (pid_b, b))]
            if all(link and link[0].get("operstate") == "UP" for link in links):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"veth {a}/{b} not UP: {links}")
            time.sleep(0.02)

    def _ss(self, pid: int) -> list[dict]:
        """TCP sockets of pid's namespace, from ss (only to know when they are up)."""
        out = self._in_ns(pid, ["ss", "-Htanp"])
        rows = []
        for line in out.splitlines():
            f = line.split()
            if len(f) < 5:
                continue
            laddr, _, lport = f[3].rpartition(":")
            raddr, _, rport = f[4].rpartition(":")
            rows.append({"state": f[0], "laddr": laddr.strip("[]"), "lport": int(lport),
                         "raddr": raddr.strip("[]").removeprefix("::ffff:"),
                         "rport": None if rport == "*" else int(rport),
                         "held": "users:" in line})
        return rows

    def _wait_sockets(self, pid: int, ready, what: str = "") -> list[dict]:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            rows = self._ss(pid)
            if ready(rows):
                return rows
            if time.monotonic() > deadline:
                raise RuntimeError(f"sockets not ready in the namespace of pid {pid} "
                                   f"{what}: {rows}")
            time.sleep(0.02)

    def _wait_connections(self, web: PodTruth, client: PodTruth, ledger: PodTruth,
                          agent: PodTruth) -> None:
        def established(rows, lport=None, rport=None):
            return [r for r in rows if r["state"] == "ESTAB" and r["held"]
                    and (lport is None or r["lport"] == lport)
                    and (rport is None or r["rport"] == rport)]

        # Server sides held (nc accepted and forked cat), client sides connected.
        web_rows = self._wait_sockets(web.sandbox.pid, lambda r: established(r, lport=PORT_WEB),
                                      "(web: accepted)")
        cli_rows = self._wait_sockets(client.sandbox.pid,
                                      lambda r: established(r, rport=PORT_WEB), "(client)")
        led_rows = self._wait_sockets(ledger.sandbox.pid,
                                      lambda r: established(r, lport=PORT_DB)
                                      and established(r, rport=PORT_DB), "(ledger)")
        self._wait_sockets(agent.sandbox.pid,
                           lambda r: _listening(r, self.exporter_port, "127.0.0.1"), "(agent)")
        self._wait_sockets(self.containers["plain"].pid, lambda r: _listening(r, PORT_PLAIN),
                           "(plain)")
        cport = established(cli_rows, rport=PORT_WEB)[0]["lport"]
        sport = established(led_rows, rport=PORT_DB)[0]["lport"]
        if not any(r["rport"] == cport for r in established(web_rows, lport=PORT_WEB)):
            raise RuntimeError(f"web did not accept client port {cport}: {web_rows}")
        web_ns = os.stat(f"/proc/{web.sandbox.pid}/ns/net").st_ino
        cli_ns = os.stat(f"/proc/{client.sandbox.pid}/ns/net").st_ino
        led_ns = os.stat(f"/proc/{ledger.sandbox.pid}/ns/net").st_ino
        plain_ns = os.stat(f"/proc/{self.containers['plain'].pid}/ns/net").st_ino
        for t in (
            SocketTruth("web-listen", "web", "web/server", UID_WEB, "tcp", "LISTEN", PORT_WEB,
                        None, None, web_ns, "listening"),
            SocketTruth("web-accepted", "web", "web/server", UID_WEB, "tcp", "ESTABLISHED",
                        PORT_WEB, V4_CLIENT, cport, web_ns, "inbound"),
            SocketTruth("client-conn", "client", "client/curl", UID_CLIENT, "tcp",
                        "ESTABLISHED", cport, V4_WEB, PORT_WEB, cli_ns, "outbound"),
            SocketTruth("db-listen", "ledger", "ledger/db", UID_DB, "tcp", "LISTEN", PORT_DB,
                        None, None, led_ns, "listening"),
            SocketTruth("db-accepted", "ledger", "ledger/db", UID_DB, "tcp", "ESTABLISHED",
                        PORT_DB, "127.0.0.1", sport, led_ns, "inbound"),
            SocketTruth("sidecar-conn", "ledger", "ledger/sidecar", UID_SIDECAR, "tcp",
                        "ESTABLISHED", sport, "127.0.0.1", PORT_DB, led_ns, "outbound"),
            SocketTruth("exporter-listen", "agent", "agent/exporter", UID_EXPORTER, "tcp",
                        "LISTEN", self.exporter_port, None, None, self.host_netns, "listening"),
            SocketTruth("plain-listen", None, "plain", UID_PLAIN, "tcp", "LISTEN", PORT_PLAIN,
                        None, None, plain_ns, "listening"),
        ):
            self.sockets[t.key] = t

    def _write_kubelet_logs(self) -> None:
        pods_dir = self.host_root / "var" / "log" / "pods"
        links_dir = self.host_root / "var" / "log" / "containers"
        links_dir.mkdir(parents=True)
        for pod in self.pods.values():
            pod_dir_name = f"{pod.namespace}_{pod.name}_{pod.uid}"
            for c in pod.apps:
                d = pods_dir / pod_dir_name / c.name
                d.mkdir(parents=True)
                (d / "0.log").write_text(
                    "2024-05-01T10:00:00.000000000Z stdout F started\n")
                target = f"/var/log/pods/{pod_dir_name}/{c.name}/0.log"
                (links_dir / f"{pod.name}_{pod.namespace}_{c.name}-{c.id}.log").symlink_to(target)

    # ------------------------------------------------------------------ teardown

    def _remove_runc(self) -> None:
        for cid in reversed(self._runc_ids):
            subprocess.run([*self.runc(), "delete", "--force", cid], capture_output=True,
                           timeout=30)

    def _close_pipes(self) -> None:
        for fd in self._stdin_pipes:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stdin_pipes = []

    def _remove_cgroups(self) -> None:
        remove_cgroups(self._state["cgroups"])

    def _remove_veths(self) -> None:
        remove_veths(self._state["veths"])

    def _remove_work(self) -> None:
        if self.work is not None:
            dk.remove_tree(self.work)

    def _lock(self) -> None:
        self._lock_fd = machinelock.take(LOCK_PATH, LOCK_TIMEOUT, "KubeNode")

    def _forget(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _save_state(self) -> None:
        if self.work is not None:
            state = dict(self._state, runc=self._runc_ids)
            (self.work / "state.json").write_text(json.dumps(state))


def _listening(rows: list[dict], port: int, addr: Optional[str] = None) -> bool:
    return any(r["state"] == "LISTEN" and r["lport"] == port
               and (addr is None or r["laddr"] == addr) for r in rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cgroup_dirs() -> list[str]:
    """One directory per mounted cgroup hierarchy (v1 controllers, name=systemd, unified)."""
    seen, dirs = set(), []
    for line in open("/proc/self/mountinfo", encoding="utf-8"):
        f = line.split()
        fstype = f[f.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and f[4].startswith(CGROUP_ROOT):
            if f[4] not in seen:
                seen.add(f[4])
                dirs.append(f[4])
    return dirs


def _cgroup_pids(c: ContainerTruth) -> list[int]:
    """Every process of the container's cgroup (pids controller, else unified)."""
    with open(f"/proc/{c.pid}/cgroup", encoding="utf-8") as f:
        paths = {}
        for line in f:
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            paths[ctrl] = path
    for ctrl, mount in (("pids", f"{CGROUP_ROOT}/pids"), ("", f"{CGROUP_ROOT}/unified")):
        if ctrl in paths and os.path.exists(f"{mount}{paths[ctrl]}/cgroup.procs"):
            with open(f"{mount}{paths[ctrl]}/cgroup.procs") as f:
                return sorted(int(x) for x in f.read().split())
    return [c.pid]


def remove_cgroups(parents: list[str]) -> None:
    """rmdir our pod cgroups (and anything left inside them, deepest first) in every
    hierarchy, then their kubepods parents when empty: rmdir of a cgroup still in use by
    someone else fails harmlessly, and nothing outside our pods is walked."""
    for root in _cgroup_dirs():
        for parent in parents:
            parts = parent.strip("/").split("/")
            pod_dir = os.path.join(root, *parts)
            if os.path.isdir(pod_dir):
                for sub, _, _ in os.walk(pod_dir, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
            for i in range(len(parts) - 1, 0, -1):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, *parts[:i]))


def remove_veths(names: list[str]) -> None:
    for name in names:   # normally gone with their namespaces; left in the host if setup broke
        if os.path.exists(f"/sys/class/net/{name}"):
            subprocess.run([ip_tool(), "link", "del", name], capture_output=True)


def remove_stale() -> None:
    """Remove what a KubeNode killed outright (SIGKILL) left behind. Called with the lock held,
    so every /tmp/nsnt-k-* directory whose owner pid is gone is a leftover: its processes
    (the daemon, containerd and shims name the directory; the containers' processes sit in
    our pod cgroups or name a container id in theirs) are killed, then its runc state,
    mounts, cgroups, veths and files are removed."""
    for entry in os.listdir("/tmp"):
        d = Path("/tmp") / entry
        state_file = d / "state.json"
        if not entry.startswith(WORK_PREFIX) or not state_file.is_file():
            continue
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("pid") != os.getpid() and os.path.exists(f"/proc/{state.get('pid')}"):
            continue
        marks = [p.encode() for p in state.get("cgroups", []) + state.get("containers", [])]
        for pid in _pids_matching(str(d).encode(), marks):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for cid in state.get("runc", []):
            subprocess.run(["runc", "--root", str(d / "runc"), "delete", "--force", cid],
                           capture_output=True, timeout=30)
        remove_cgroups(state.get("cgroups", []))
        remove_veths(state.get("veths", []))
        dk.remove_tree(d)


def _pids_matching(path: bytes, cgroup_marks: list[bytes]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/cgroup", "rb") as f:
                cgroup = f.read()
        except OSError:
            continue
        if path in cmdline or any(m in cgroup for m in cgroup_marks):
            found.append(int(entry))
    return found
