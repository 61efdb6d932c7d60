"""A shared services namespace and two pods on real namespaces, with the connections whose
attribution is hard: the proof of nsnet's dependency truth (tests/kernel/test_dependency_truth.py).

    with DepNode.build(host_root) as node:
        node.conn["a_tw"], node.svc_name, node.pod_a ...

Everything is real: `ip netns add`, veth pairs, processes of their own uids started with
`ip netns exec NS setpriv --reuid U ...` running support/depproc.py, pods given by cgroups
(the kubelet's cgroupfs layout, made in the v1 `pids` hierarchy) and by a kubelet log tree
under `host_root`. What a correct tool must say comes from the plan below, and the build
checks with `ss` (run in each namespace) that the kernel holds the states the plan makes.

  svc (a shared namespace, no pod):  web, uid WEB: a master and two workers holding 8080
      (accepting) and 8081 (never accepting); redis, uid REDIS, on 6379 and postgres, uid
      PG, on 5432 (a master and one worker each); dns, uid DNS, UDP 10053.
  pod A (shop/tenant-a): a /pause sandbox, the app (uid APP_A), a sidecar (uid SIDECAR_A)
      that only holds a unix listener. The app: a_keep (8080, open), a_tw (8080, the server
      closed first: the server's end in TIME_WAIT), a_fw2 (8080, the server closed, ours kept:
      CLOSE_WAIT here, a FIN_WAIT2 orphan there), a_cc (8080, closed first by us: TIME_WAIT
      here, in a namespace with two owners), a_unacc (8081: un-accepted there), a_redis
      (6379, open), a_dns (UDP 10053, connected).
  pod B (shop/tenant-b): a /pause sandbox, the app (uid APP_B): b_pg (5432, open), b_cc
      (8080, closed first: TIME_WAIT here, one owner).

Teardown kills every process and removes every namespace, cgroup and file it made, also
when the build fails half way. One at a time per machine (an flock).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import machinelock
from kubelet_tree import HostTree
from realnode import BuildError, interpreter_for, ip_tool, remove_cgroups, run, util_linux

LOCK_PATH = "/run/nsnt-depnode.lock"
WEB, REDIS, PG, DNS = 10501, 10502, 10503, 10504
APP_A, SIDECAR_A, APP_B, PAUSE = 10601, 10611, 10602, 65535
SVC_A, POD_A_IP, SVC_B, POD_B_IP = "10.91.1.1", "10.91.1.2", "10.91.2.1", "10.91.2.2"
WEB_PORT, NOACCEPT_PORT, REDIS_PORT, PG_PORT, DNS_PORT = 8080, 8081, 6379, 5432, 10053
CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
HERE = Path(__file__).resolve().parent

# (name, pod, op, host, port) in the order the apps run them
PLAN = [
    ("a_keep", "a", "keep", SVC_A, WEB_PORT),
    ("a_tw", "a", "server_closes", SVC_A, WEB_PORT),
    ("a_fw2", "a", "server_closes_kept", SVC_A, WEB_PORT),
    ("a_cc", "a", "client_closes", SVC_A, WEB_PORT),
    ("a_unacc", "a", "unaccepted", SVC_A, NOACCEPT_PORT),
    ("a_redis", "a", "keep", SVC_A, REDIS_PORT),
    ("a_dns", "a", "udp", SVC_A, DNS_PORT),
    ("b_pg", "b", "keep", SVC_B, PG_PORT),
    ("b_cc", "b", "client_closes", SVC_B, WEB_PORT),
]


@dataclass
class Conn:
    name: str
    pod: str
    op: str
    host: str
    port: int
    local_addr: str = ""
    local_port: int = 0
    inode: int = 0
    made: float = 0.0


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen
    ready: dict


@dataclass
class DepNode:
    tag: str
    host_root: Path
    netns: dict[str, str] = field(default_factory=dict)        # svc/a/b -> ip netns name
    inodes: dict[str, int] = field(default_factory=dict)
    pod_uid: dict[str, str] = field(default_factory=dict)      # a/b -> pod uid
    containers: dict[str, str] = field(default_factory=dict)   # "a.app" -> container id
    procs: dict[str, Proc] = field(default_factory=dict)
    conn: dict[str, Conn] = field(default_factory=dict)
    cgroups: list[Path] = field(default_factory=list)
    dir: Path = Path()
    _lock: int = -1

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def build(cls, host_root: Path) -> DepNode:
        node = cls(secrets.token_hex(3), host_root)
        node._lock = machinelock.take(LOCK_PATH, 600, "dependency node")
        try:
            node._build()
        except BaseException:
            node.teardown()
            raise
        return node

    def __enter__(self) -> DepNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _build(self) -> None:
        ip = ip_tool()
        self.dir = Path(f"/run/nsnt-dep-{self.tag}")
        self.dir.mkdir(mode=0o755)
        shutil.copy(HERE / "depproc.py", self.dir / "depproc.py")
        os.chmod(self.dir / "depproc.py", 0o644)
        sidecar_dir = self.dir / "sidecar"
        sidecar_dir.mkdir()
        os.chown(sidecar_dir, SIDECAR_A, SIDECAR_A)
        for key in ("svc", "a", "b"):
            name = f"nsnt-dep-{self.tag}-{key}"
            _run([ip, "netns", "add", name])
            self.netns[key] = name
            self.inodes[key] = os.stat(f"/run/netns/{name}").st_ino
            _run([ip, "-n", name, "link", "set", "lo", "up"])
        for key, svc_ip, pod_ip in (("a", SVC_A, POD_A_IP), ("b", SVC_B, POD_B_IP)):
            outer, inner = f"nsd{self.tag}{key}0", f"nsd{self.tag}{key}1"
            _run([ip, "link", "add", outer, "netns", self.netns["svc"], "type", "veth", "peer",
                  "name", inner, "netns", self.netns[key]])
            for ns, dev, addr in ((self.netns["svc"], outer, svc_ip),
                                  (self.netns[key], inner, pod_ip)):
                _run([ip, "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                _run([ip, "-n", ns, "link", "set", dev, "up"])
        # the FIN_WAIT2 orphan must outlive the test module (tcp_fin_timeout is per namespace)
        self._sysctl("svc", "net/ipv4/tcp_fin_timeout", "600")
        self._pods()
        self._services()
        self._apps()
        self._settle()

    def teardown(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
            proc.popen.wait()
        remove_cgroups(self.cgroups)
        for name in self.netns.values():
            subprocess.run([ip_tool(), "netns", "del", name], capture_output=True)
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

    # --------------------------------------------------------------------- pieces
    def _sysctl(self, key: str, name: str, value: str) -> None:
        _run([ip_tool(), "netns", "exec", self.netns[key], "sh", "-c",
              f"echo {value} > /proc/sys/{name}"])

    def _pods(self) -> None:
        tree = HostTree(self.host_root) if not (self.host_root / "var/log/pods").exists() \
            else _ExistingTree(self.host_root)
        for key, name, apps in (("a", "tenant-a", ("app", "sidecar")), ("b", "tenant-b", ("app",))):
            uid = str(uuid.uuid4())
            self.pod_uid[key] = uid
            for container in ("pause", *apps):
                self.containers[f"{key}.{container}"] = secrets.token_hex(32)
            # the kubelet writes logs for the app containers only: the sandbox has none
            tree.pod("shop", name, uid, {c: self.containers[f"{key}.{c}"] for c in apps})

    def _cgroup(self, key: str, container: str) -> Path:
        pod_dir = CGROUP_ROOT / "kubepods" / "burstable" / f"pod{self.pod_uid[key]}"
        path = pod_dir / self.containers[f"{key}.{container}"]
        for p in (CGROUP_ROOT / "kubepods", CGROUP_ROOT / "kubepods" / "burstable", pod_dir,
                  path):
            if not p.exists():
                p.mkdir()
                self.cgroups.append(p)
        return path

    def _start(self, role: str, ns: str, uid: int, args: list[str], *,
               container: tuple[str, str] | None = None, stdin: bool = False) -> Proc:
        argv = [ip_tool(), "netns", "exec", self.netns[ns], util_linux("setpriv"),
                "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--",
                interpreter_for(uid), str(self.dir / "depproc.py"), *args]
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd="/", text=True,
                                 stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        if container is not None:   # before it does anything: its cgroup says its pod
            (self._cgroup(*container) / "cgroup.procs").write_text(f"{popen.pid}\n")
        line = popen.stdout.readline() if popen.stdout else ""
        if not line:
            raise BuildError(f"{role} did not start: {argv}")
        proc = self.procs[role] = Proc(role, popen, json.loads(line))
        return proc

    def _services(self) -> None:
        self._start("web", "svc", WEB, ["server", "--listen", str(WEB_PORT), "--listen",
                                          f"{NOACCEPT_PORT}:noaccept", "--workers", "2"])
        self._start("redis", "svc", REDIS, ["server", "--listen", str(REDIS_PORT),
                                              "--workers", "1"])
        self._start("pg", "svc", PG, ["server", "--listen", str(PG_PORT), "--workers", "1"])
        self._start("dns", "svc", DNS, ["udp", "--listen", str(DNS_PORT)])

    def _apps(self) -> None:
        for key in ("a", "b"):
            self._start(f"{key}.pause", key, PAUSE, ["pause"], container=(key, "pause"))
            self._start(f"{key}.app", key, APP_A if key == "a" else APP_B, ["client"],
                        container=(key, "app"), stdin=True)
        self._start("a.sidecar", "a", SIDECAR_A,
                    ["unix", "--path", str(self.dir / "sidecar" / "sidecar.sock")],
                    container=("a", "sidecar"))
        for name, pod, op, host, port in PLAN:
            self.run(pod, Conn(name, pod, op, host, port))

    def run(self, pod: str, conn: Conn) -> Conn:
        """Have pod's app run one operation of the plan's kinds; record it."""
        popen = self.procs[f"{pod}.app"].popen
        assert popen.stdin is not None and popen.stdout is not None
        popen.stdin.write(json.dumps({"op": conn.op, "name": conn.name, "host": conn.host,
                                      "port": conn.port}) + "\n")
        popen.stdin.flush()
        answer = json.loads(popen.stdout.readline())
        if answer["event"] != "done":
            raise BuildError(f"{conn.name}: {answer}")
        if conn.op == "close":
            return conn
        conn.local_addr, conn.local_port = answer["local_addr"], answer["local_port"]
        conn.inode, conn.made = answer["inode"], time.monotonic()
        self.conn[conn.name] = conn
        return conn

    # ----------------------------------------------------------------- the kernel
    def ss(self, key: str) -> set[tuple[str, str, str]]:
        """(state, local, peer) of every TCP socket of a namespace, as ss prints them."""
        out = _run([ip_tool(), "netns", "exec", self.netns[key], "ss", "-tanH"])
        rows = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 5:
                rows.add((parts[0], parts[3], parts[4]))
        return rows

    def expected_ss(self) -> dict[str, set[tuple[str, str, str]]]:
        """What the plan leaves in each namespace (ss's names for the states)."""
        c = self.conn
        def pair(name: str, server_port: int, svc_ip: str) -> tuple[str, str]:
            return f"{svc_ip}:{server_port}", f"{c[name].local_addr}:{c[name].local_port}"
        want: dict[str, set[tuple[str, str, str]]] = {"svc": set(), "a": set(), "b": set()}
        server = {"a_keep": "ESTAB", "a_tw": "TIME-WAIT", "a_fw2": "FIN-WAIT-2",
                  "a_unacc": "ESTAB", "a_redis": "ESTAB", "b_pg": "ESTAB"}
        client = {"a_keep": "ESTAB", "a_fw2": "CLOSE-WAIT", "a_cc": "TIME-WAIT",
                  "a_unacc": "ESTAB", "a_redis": "ESTAB", "b_pg": "ESTAB", "b_cc": "TIME-WAIT"}
        for name, state in server.items():
            svc, pod = pair(name, c[name].port, c[name].host)
            want["svc"].add((state, svc, pod))
        for name, state in client.items():
            svc, pod = pair(name, c[name].port, c[name].host)
            want[c[name].pod].add((state, pod, svc))
        return want

    def wait_for(self, key: str, row: tuple[str, str, str], timeout: float = 10.0) -> None:
        """Until ss shows that (state, local, peer) in the namespace."""
        deadline = time.monotonic() + timeout
        while row not in self.ss(key):
            if time.monotonic() > deadline:
                raise BuildError(f"{key}: no {row} in {sorted(self.ss(key))}")
            time.sleep(0.05)

    def _settle(self, timeout: float = 15.0) -> None:
        """Until the kernel shows exactly the plan's TCP states (closing handshakes take a
        few ms), listeners aside."""
        want = self.expected_ss()
        deadline = time.monotonic() + timeout
        while True:
            got = {k: {r for r in self.ss(k) if r[0] != "LISTEN"} for k in want}
            if got == want:
                return
            if time.monotonic() > deadline:
                raise BuildError(f"the kernel does not show the plan's states: {got} != {want}")
            time.sleep(0.05)


class _ExistingTree(HostTree):
    """A host root whose log tree exists already (a second node in one test run)."""

    def __init__(self, root: Path):
        self.root = root
        self.pods = root / "var/log/pods"
        self.containers = root / "var/log/containers"


def _run(argv: list[str]) -> str:
    return run(argv, timeout=60)


if __name__ == "__main__":      # python tests/support/depnode.py: build, show, tear down
    import tempfile

    with tempfile.TemporaryDirectory() as root, DepNode.build(Path(root)) as built:
        for k in ("svc", "a", "b"):
            print(k, built.inodes[k], sorted(built.ss(k)), file=sys.stderr)
