"""Three simulated Kubernetes nodes on one machine, each with its own nsnet agent that sees
its own node only: the fixture of tests/kernel/test_simcluster.py and of anything that needs
several agents (a Prometheus scraping them all, edges joined across nodes).

    with SimCluster.build(tmp_path) as cluster:
        api = cluster.add_pod("node-a", "shop/api-7c9d8f6b5-x2x7q")
        pg = cluster.add_pod("node-b", "data/postgres-0")
        cluster.listen(pg, 5432)
        cluster.service_vip("node-a", "10.96.0.20", 5432, pg, 5432)
        conn = cluster.connect(api, "10.96.0.20", 5432)
        targets = cluster.start_agents()          # ["172.31.0.11:9810", ...]
        cluster.get("node-a", "/api/v1/snapshot")  # (status, body), no proxies
        cluster.conntrack("node-a"), cluster.ss(pod.netns), cluster.kill("node-b", proc)

Everything is real (names below with the build's prefix P = nsc + 4 hex digits):

  root netns:   bridge Pbr, 172.31.0.1/24 (the "underlay"; a Prometheus here scrapes every
                agent at NODE_IP:9810), one veth Pn<i> per node enslaved to it.
  node netns:   P-node-a ... (`ip netns add`): eth0 172.31.0.1<i>/24 (node-a .11, node-b .12,
                node-c .13), a pod bridge cni0 10.244.<i>.1/24 (node-a i=1 ...), IP forwarding
                on, rp_filter off, a route per other node's pod CIDR via that node's IP
                (host-gw: pods reach each other by pod IP, no NAT).
  pod netns:    P-node-a-p<n>: eth0 10.244.<i>.<n+1>/24 (veth<random> on cni0 at the node's
                end), default route via 10.244.<i>.1.
  Service VIPs: an iptables DNAT rule in the client's node netns (kube-proxy's shape); the
                pod's packets reach it through its default gateway; the node's conntrack
                table holds the translation (conntrack(node)).

Each node also has its own pid namespace with its own /proc, in a private mount namespace:
its pid 1 is support/simnode_init.py, started in the node netns, which spawns on request
(over a socketpair, fds passed along) every process of the node: per pod a sandbox
(support/depproc.py `pause`: /pause, uid 65535) and an app (depproc `client`, the pod's own
tenant uid) holding the pod's connections, `listen` adds depproc `server`s; and the agent
(`python -m nsnet serve --listen NODE_IP:9810 --node-name node-X --host-root ...`, root,
stderr to <base>/<node>/agent.log). A pod's processes are in the pod's netns and in real pod
cgroups, the kubelet's cgroupfs layout in the v1 `pids` hierarchy
(kubepods/burstable/pod<uid>/<container id>), and the pod is in the node's kubelet log tree
under its host root, <base>/<node>/var/log/{pods,containers} (support/kubelet_tree.py).

Teardown (also of a half-built cluster) kills each node's pid 1, so the kernel kills the rest
of its pid namespace, then removes the cgroups, namespaces, links and files it made. One
build at a time per machine (an flock): its addresses are fixed.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import machinelock
from kubelet_tree import HostTree
from realnode import BuildError, interpreter_for, ip_tool, remove_cgroups, run, util_linux

LOCK_PATH = "/run/nsnt-simcluster.lock"
NODES = ("node-a", "node-b", "node-c")
UNDERLAY_ROOT = "172.31.0.1"
UNDERLAY_PREFIX = 24
AGENT_PORT = 9810
PAUSE_UID = 65535
TENANT_UID_BASE = 10700        # pod n of the build runs as 10700 + n (depnode: 105xx, 106xx)
CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# a Deployment's pod (name-<replicaset hash>-<5 chars>) or a StatefulSet's (name-<ordinal>)
_WORKLOAD = re.compile(r"^(?P<app>.+?)(-[0-9a-f]{6,10}-[0-9a-z]{5}|-[0-9]+)$")
_STALE_NETNS = re.compile(r"^nsc[0-9a-f]{4}-node-")
_STALE_DIR = re.compile(r"^nsc[0-9a-f]{4}$")
_STALE_LINK = re.compile(r"^nsc[0-9a-f]{4}(br|n[0-9])$")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class NodeProc:
    """A process of a node's pid namespace, talked to over pipes (depproc's JSON lines)."""
    role: str
    pid: int                    # in the node's pid namespace
    stdin: TextIO | None = None     # None when not talked to
    stdout: TextIO | None = None
    ready: dict = field(default_factory=dict)


@dataclass
class Pod:
    node: str
    namespace: str
    name: str
    uid: str                    # the pod's uid (cgroup pod<uid>, the log tree's dir name)
    ip: str
    netns: str                  # ip netns name
    app_uid: int                # the tenant's Linux uid
    container: str              # the app container's name
    containers: dict[str, str] = field(default_factory=dict)    # name -> container id
    procs: dict[str, NodeProc] = field(default_factory=dict)    # pause, app, server:<port>

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Conn:
    name: str
    pod: Pod
    host: str
    port: int
    local_addr: str = ""
    local_port: int = 0
    inode: int = 0


@dataclass
class Node:
    name: str
    index: int                  # 1, 2, 3: the third octet of its pod CIDR
    ip: str
    netns: str
    host_root: Path
    tree: HostTree
    gateway: str = ""
    init: subprocess.Popen | None = None
    init_pid: int = 0           # pid 1 of the node, as the root pid namespace numbers it
    control: socket.socket | None = None
    pods: list[Pod] = field(default_factory=list)
    agent: NodeProc | None = None

    @property
    def target(self) -> str:
        return f"{self.ip}:{AGENT_PORT}"


@dataclass
class SimCluster:
    tag: str
    base: Path
    nodes: dict[str, Node] = field(default_factory=dict)
    dir: Path = Path()          # /run/nsc<tag>: what other uids must read (depproc.py)
    links: list[str] = field(default_factory=list)         # root-netns links we made
    netns: list[str] = field(default_factory=list)         # every ip netns we made
    cgroups: list[Path] = field(default_factory=list)
    forward_rule: list[str] = field(default_factory=list)  # root FORWARD rule, if one was needed
    pipes: list[TextIO] = field(default_factory=list)      # our ends, closed at teardown
    _pods_made: int = 0
    _conns_made: int = 0
    _lock: int = -1

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def build(cls, base: Path, nodes: tuple[str, ...] = NODES) -> SimCluster:
        """The nodes, their networks and their pid 1s; no pods yet (add_pod)."""
        cluster = cls(secrets.token_hex(2), base)
        cluster._lock = machinelock.take(LOCK_PATH, 600, "simulated cluster")
        try:
            cluster._build(nodes)
        except BaseException:
            cluster.teardown()
            raise
        return cluster

    def __enter__(self) -> SimCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    @property
    def prefix(self) -> str:
        return f"nsc{self.tag}"

    def _build(self, names: tuple[str, ...]) -> None:
        _remove_stale()     # under the lock: anything of ours still there is a dead run's
        self.dir = Path(f"/run/{self.prefix}")
        self.dir.mkdir(mode=0o755)
        shutil.copy(HERE / "depproc.py", self.dir / "depproc.py")
        os.chmod(self.dir / "depproc.py", 0o644)
        ip = ip_tool()
        bridge = f"{self.prefix}br"
        _run([ip, "link", "add", bridge, "type", "bridge"])
        self.links.append(bridge)
        _run([ip, "addr", "add", f"{UNDERLAY_ROOT}/{UNDERLAY_PREFIX}", "dev", bridge])
        _run([ip, "link", "set", bridge, "up"])
        self._allow_bridged()
        for i, name in enumerate(names, start=1):
            host_root = self.base / name
            host_root.mkdir(parents=True, exist_ok=True)
            node = Node(name, i, f"172.31.0.{10 + i}", f"{self.prefix}-{name}", host_root,
                        HostTree(host_root), gateway=f"10.244.{i}.1")
            self.nodes[name] = node
            self._node_net(node, bridge)
        for node in self.nodes.values():    # host-gw: every other node's pod CIDR via its IP
            for other in self.nodes.values():
                if other is not node:
                    _run([ip, "-n", node.netns, "route", "add", f"10.244.{other.index}.0/24",
                          "via", other.ip])
        for node in self.nodes.values():
            self._start_init(node)

    def _allow_bridged(self) -> None:
        # br_netfilter (loaded here: bridge-nf-call-iptables exists) passes bridged frames
        # through the root netns' FORWARD chain: a DROP policy there (dockerd sets one) would
        # cut the nodes apart. Only then, one rule for our bridge, removed at teardown.
        policy = _run(["iptables", "-S", "FORWARD"]).splitlines()[:1]
        if policy == ["-P FORWARD ACCEPT"]:
            return
        rule = ["FORWARD", "-i", f"{self.prefix}br", "-o", f"{self.prefix}br", "-m", "comment",
                "--comment", "nsnet-simcluster", "-j", "ACCEPT"]
        _run(["iptables", "-I", *rule])
        self.forward_rule = rule

    def _node_net(self, node: Node, bridge: str) -> None:
        ip = ip_tool()
        _run([ip, "netns", "add", node.netns])
        self.netns.append(node.netns)
        # before any interface exists: new interfaces copy `default` (rp_filter would drop a
        # pod's packet whose source is another node's pod CIDR on a strict path check)
        _run([ip, "netns", "exec", node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
              "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        _run([ip, "-n", node.netns, "link", "set", "lo", "up"])
        outer = f"{self.prefix}n{node.index}"
        _run([ip, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns",
              node.netns])
        self.links.append(outer)
        _run([ip, "link", "set", outer, "master", bridge, "up"])
        _run([ip, "-n", node.netns, "addr", "add", f"{node.ip}/{UNDERLAY_PREFIX}", "dev", "eth0"])
        _run([ip, "-n", node.netns, "link", "set", "eth0", "up"])
        _run([ip, "-n", node.netns, "link", "add", "cni0", "type", "bridge"])
        _run([ip, "-n", node.netns, "addr", "add", f"{node.gateway}/24", "dev", "cni0"])
        _run([ip, "-n", node.netns, "link", "set", "cni0", "up"])

    def _start_init(self, node: Node) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = open(node.host_root / "init.log", "ab")   # noqa: SIM115 -- the child's now
        argv = [util_linux("nsenter"), f"--net=/run/netns/{node.netns}", "--",
                util_linux("unshare"), "--pid", "--fork", "--kill-child", "--mount",
                "--mount-proc", "--propagation", "private", "--",
                sys.executable, str(HERE / "simnode_init.py"), str(theirs.fileno())]
        try:
            node.init = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, pass_fds=(theirs.fileno(),), cwd="/")
        finally:
            theirs.close()
            log.close()
        node.control = ours
        ours.settimeout(30)
        try:
            ready = json.loads(ours.recv(1 << 16) or b"{}")
        except (TimeoutError, json.JSONDecodeError) as exc:
            raise BuildError(f"{node.name}: its init did not start ({exc}); see "
                             f"{node.host_root / 'init.log'}") from exc
        if ready.get("event") != "ready" or ready.get("pid") != 1:
            raise BuildError(f"{node.name}: init said {ready}; see {node.host_root / 'init.log'}")
        ours.settimeout(60)
        # unshare --fork's one child is the node's pid 1: killing it empties the namespace
        children = Path(f"/proc/{node.init.pid}/task/{node.init.pid}/children").read_text()
        node.init_pid = int(children.split()[0])

    def teardown(self) -> None:
        for node in self.nodes.values():
            _stop_node(node)
        for f in self.pipes:
            try:
                f.close()
            except OSError:
                pass
        self.pipes.clear()
        remove_cgroups(self.cgroups)
        self.cgroups.clear()
        for name in reversed(self.netns):
            subprocess.run([ip_tool(), "netns", "del", name], capture_output=True)
        self.netns.clear()
        for link in reversed(self.links):   # a node's veth goes with its netns; the bridge not
            subprocess.run([ip_tool(), "link", "del", link], capture_output=True)
        self.links.clear()
        if self.forward_rule:
            subprocess.run(["iptables", "-D", *self.forward_rule], capture_output=True)
            self.forward_rule = []
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # ------------------------------------------------------------- node processes
    def _spawn(self, node: Node, argv: list[str], *, env: dict[str, str],
               stdio: tuple[int, int, int], netns: str | None = None,
               cgroup: Path | None = None) -> int:
        """Have the node's pid 1 start argv (in the pod's netns and cgroup when given);
        its pid in the node's pid namespace."""
        assert node.control is not None
        fds = list(stdio)
        opened = []
        if netns is not None:
            opened.append(os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC))
        if cgroup is not None:
            opened.append(os.open(cgroup / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        req = {"op": "spawn", "argv": argv, "env": env, "cwd": "/",
               "netns": netns is not None, "cgroup": cgroup is not None}
        try:
            socket.send_fds(node.control, [json.dumps(req).encode()], fds + opened)
            answer = json.loads(node.control.recv(1 << 16))
        finally:
            for fd in opened:
                os.close(fd)
        if "pid" not in answer:
            raise BuildError(f"{node.name}: could not start {argv}: {answer}")
        return int(answer["pid"])

    def _depproc(self, pod: Pod, role: str, uid: int, container: str, args: list[str], *,
                 talk: bool = False) -> NodeProc:
        """depproc.py `args` as uid, in the pod's netns and container cgroup; its first line
        (ready) read."""
        node = self.nodes[pod.node]
        in_r, in_w = os.pipe() if talk else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err = os.open(node.host_root / f"{pod.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        try:
            argv = [util_linux("setpriv"), "--reuid", str(uid), "--regid", str(uid),
                    "--clear-groups", "--", interpreter_for(uid), str(self.dir / "depproc.py"),
                    *args]
            pid = self._spawn(node, argv, env={"PATH": PATH_ENV}, stdio=(in_r, out_w, err),
                              netns=pod.netns, cgroup=self._cgroup(pod, container))
        except BaseException:
            for fd in (in_w, out_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err):
                os.close(fd)
        stdin = os.fdopen(in_w, "w") if talk else None
        stdout = os.fdopen(out_r, "r")
        self.pipes += [f for f in (stdin, stdout) if f is not None]
        line = stdout.readline()
        if not line:
            raise BuildError(f"{pod.ref}: {role} did not start (see "
                             f"{node.host_root / f'{pod.name}.log'})")
        proc = NodeProc(role, pid, stdin, stdout, json.loads(line))
        pod.procs[role] = proc
        return proc

    def _cgroup(self, pod: Pod, container: str) -> Path:
        pod_dir = CGROUP_ROOT / "kubepods" / "burstable" / f"pod{pod.uid}"
        path = pod_dir / pod.containers[container]
        for p in (CGROUP_ROOT / "kubepods", CGROUP_ROOT / "kubepods" / "burstable", pod_dir,
                  path):
            if not p.exists():
                p.mkdir()
                self.cgroups.append(p)
                with open(self.dir / "cgroups", "a") as f:   # for the next build, if we die
                    f.write(f"{p}\n")
        return path

    # ------------------------------------------------------------------------ pods
    def add_pod(self, node_name: str, ref: str, container: str | None = None) -> Pod:
        """A pod "namespace/name" on the node: its netns on the node's cni0, its sandbox
        and its app (a tenant uid of its own, holding the connections `connect` makes), its
        cgroups and its place in the node's kubelet log tree. The app container is named
        after the workload (api-7c9d8f6b5-x2x7q: api; postgres-0: postgres) unless given."""
        node = self.nodes[node_name]
        namespace, _, name = ref.partition("/")
        if not name:
            raise ValueError(f"pod {ref!r}: want namespace/name")
        m = _WORKLOAD.match(name)
        container = container or (m.group("app") if m else name)
        n = len(node.pods) + 1
        self._pods_made += 1
        pod = Pod(node_name, namespace, name, str(uuid.uuid4()), f"10.244.{node.index}.{n + 1}",
                  f"{node.netns}-p{n}", TENANT_UID_BASE + self._pods_made, container,
                  {"pause": secrets.token_hex(32), container: secrets.token_hex(32)})
        node.pods.append(pod)
        ip = ip_tool()
        _run([ip, "netns", "add", pod.netns])
        self.netns.append(pod.netns)
        host_end = f"veth{secrets.token_hex(4)}"    # as CNI names them; unique in the node
        _run([ip, "link", "add", host_end, "netns", node.netns, "type", "veth", "peer", "name",
              "eth0", "netns", pod.netns])
        _run([ip, "-n", node.netns, "link", "set", host_end, "master", "cni0", "up"])
        _run([ip, "-n", pod.netns, "link", "set", "lo", "up"])
        _run([ip, "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0"])
        _run([ip, "-n", pod.netns, "link", "set", "eth0", "up"])
        _run([ip, "-n", pod.netns, "route", "add", "default", "via", node.gateway])
        # the kubelet writes logs for the app containers only: the sandbox has none
        node.tree.pod(namespace, name, pod.uid, {container: pod.containers[container]})
        self._depproc(pod, "pause", PAUSE_UID, "pause", ["pause"])
        self._depproc(pod, "app", pod.app_uid, container, ["client"], talk=True)
        return pod

    def listen(self, pod: Pod, port: int) -> NodeProc:
        """A TCP server of the pod's app uid on 0.0.0.0:port, in its app container: a master
        holding the listener and one worker accepting (depproc `server`); returns when ss
        shows it listening."""
        proc = self._depproc(pod, f"server:{port}", pod.app_uid, pod.container,
                             ["server", "--listen", str(port), "--workers", "1"])
        self.wait_for(pod.netns, lambda rows: any(
            r[0] == "LISTEN" and r[1] == f"0.0.0.0:{port}" for r in rows), f"LISTEN on {port}")
        return proc

    def connect(self, pod: Pod, addr: str, port: int, name: str | None = None) -> Conn:
        """The pod's app connects to addr:port and keeps the connection open; returns when
        ss in the pod's netns shows it ESTABLISHED."""
        self._conns_made += 1
        conn = Conn(name or f"c{self._conns_made}", pod, addr, port)
        proc = pod.procs["app"]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"op": "keep", "name": conn.name, "host": addr,
                                     "port": port}) + "\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        if answer["event"] != "done":
            raise BuildError(f"{pod.ref} -> {addr}:{port}: {answer}")
        conn.local_addr, conn.local_port = answer["local_addr"], answer["local_port"]
        conn.inode = answer["inode"]
        row = ("ESTAB", f"{conn.local_addr}:{conn.local_port}", f"{addr}:{port}")
        self.wait_for(pod.netns, lambda rows: row in rows, f"{row}")
        return conn

    def service_vip(self, node_name: str, vip: str, port: int, backend: Pod,
                    backend_port: int) -> None:
        """A ClusterIP on the node as kube-proxy (iptables mode) makes it: DNAT in the node
        netns, for pods' packets (PREROUTING: they come in on cni0, through their default
        gateway, so no route is needed) and for the node's own (OUTPUT)."""
        node = self.nodes[node_name]
        for chain in ("PREROUTING", "OUTPUT"):
            _run([ip_tool(), "netns", "exec", node.netns, "iptables", "-t", "nat", "-A", chain,
                  "-d", f"{vip}/32", "-p", "tcp", "--dport", str(port), "-j", "DNAT",
                  "--to-destination", f"{backend.ip}:{backend_port}"])

    # ---------------------------------------------------------------------- agents
    def start_agents(self, extra_args: list[str] | tuple[str, ...] = (),
                     timeout: float = 60.0) -> list[str]:
        """nsnet serve on every node, in its pid, mount and network namespaces, listening on
        NODE_IP:9810; returns the scrape targets once each answers /metrics."""
        env = {"PATH": PATH_ENV, "HOME": "/root", "LANG": "C.UTF-8",
               # this checkout's nsnet, whatever the venv has installed
               "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        for node in self.nodes.values():
            argv = [sys.executable, "-m", "nsnet", "serve", "--listen", node.target,
                    "--node-name", node.name, "--host-root", str(node.host_root),
                    "--interval", "1", *extra_args]
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(node.host_root / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                          0o644)
            try:
                pid = self._spawn(node, argv, env=env, stdio=(null, log, log))
            finally:
                os.close(null)
                os.close(log)
            node.agent = NodeProc("agent", pid)
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while True:
                try:
                    with _NO_PROXY.open(f"http://{node.target}/metrics", timeout=5) as r:
                        if r.status == 200:
                            break
                except (OSError, urllib.error.URLError):
                    pass
                if time.monotonic() > deadline or not self.alive(node.name, node.agent):
                    tail = (node.host_root / "agent.log").read_text(errors="replace")[-2000:]
                    raise BuildError(f"{node.name}: no agent on {node.target} (it died, or "
                                     f"{timeout:.0f}s passed); its log ends:\n{tail}")
                time.sleep(0.2)
        return [n.target for n in self.nodes.values()]

    def get(self, node_name: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET an agent's path (no proxies: the node IPs are ours)."""
        try:
            with _NO_PROXY.open(f"http://{self.nodes[node_name].target}{path}",
                                timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def alive(self, node_name: str, proc: NodeProc | None) -> bool:
        """Whether a process of the node still runs: seen in the node's own /proc, through
        its pid 1's root (which resolves in the node's mount namespace)."""
        if proc is None:
            return False
        node = self.nodes[node_name]
        try:
            stat = Path(f"/proc/{node.init_pid}/root/proc/{proc.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    def kill(self, node_name: str, proc: NodeProc) -> None:
        """SIGKILL one process of a node (by its pid in the node's pid namespace)."""
        control = self.nodes[node_name].control
        assert control is not None
        control.send(json.dumps({"op": "kill", "pid": proc.pid}).encode())
        answer = json.loads(control.recv(1 << 16))
        if not answer.get("ok"):
            raise BuildError(f"kill {proc}: {answer}")

    # ----------------------------------------------------------------- the kernel
    def ss(self, netns: str) -> set[tuple[str, str, str]]:
        """(state, local, peer) of every TCP socket of a namespace, as ss prints them."""
        out = _run([ip_tool(), "netns", "exec", netns, "ss", "-tanH"])
        return {(p[0], p[3], p[4]) for p in (line.split() for line in out.splitlines())
                if len(p) >= 5}

    def wait_for(self, netns: str, ok: Callable[[set[tuple[str, str, str]]], bool], what: str,
                 timeout: float = 10.0) -> None:
        """Until ok(ss rows of netns) holds."""
        deadline = time.monotonic() + timeout
        while not ok(self.ss(netns)):
            if time.monotonic() > deadline:
                raise BuildError(f"{netns}: no {what} in {sorted(self.ss(netns))}")
            time.sleep(0.05)

    def conntrack(self, node_name: str, *args: str) -> str:
        """conntrack -L in the node's netns (its NAT translations)."""
        return _run([ip_tool(), "netns", "exec", self.nodes[node_name].netns, "conntrack",
                     "-L", *args])


def _stop_node(node: Node) -> None:
    """Kill the node's pid 1: the kernel kills the rest of its pid namespace."""
    if node.init_pid:
        try:
            os.kill(node.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if node.init is not None:
        try:    # unshare waits for pid 1, whose exit waits for the namespace to empty
            node.init.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.init.kill()   # --kill-child: takes pid 1 with it
            node.init.wait()
        node.init = None
    if node.control is not None:
        node.control.close()
        node.control = None


def _remove_stale() -> None:
    """What a killed run left (no teardown ran; its processes died with its control
    sockets): its namespaces, root links, cgroups (listed in its /run/nsc<tag>/cgroups) and
    that directory. Only under the lock, so no live cluster's."""
    ip = ip_tool()
    for old in Path("/run").glob("nsc*"):
        if _STALE_DIR.match(old.name) and old.is_dir():
            listed = old / "cgroups"
            if listed.exists():
                remove_cgroups([Path(line) for line in listed.read_text().split()])
            shutil.rmtree(old, ignore_errors=True)
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for entry in sorted(netns_dir.iterdir(), reverse=True):   # pods (-pN) first
            if _STALE_NETNS.match(entry.name):
                subprocess.run([ip, "netns", "del", entry.name], capture_output=True)
    out = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if _STALE_LINK.match(name):
            subprocess.run([ip, "link", "del", name], capture_output=True)


def _run(argv: list[str]) -> str:
    return run(argv, timeout=60)


if __name__ == "__main__":      # python tests/support/simcluster.py: build, show, tear down
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, SimCluster.build(Path(tmp)) as built:
        a = built.add_pod("node-a", "shop/api-7c9d8f6b5-x2x7q")
        r = built.add_pod("node-c", "cache/redis-6b8f9d7c5-m4n8p")
        built.listen(r, 6379)
        print(built.connect(a, r.ip, 6379), file=sys.stderr)
        print(built.start_agents(), file=sys.stderr)
