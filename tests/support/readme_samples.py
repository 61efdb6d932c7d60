"""The README's sample outputs, made from a real run: so that they cannot drift from what nsnet
prints.

    sudo .venv/bin/python tests/support/readme_samples.py --write README.md
    sudo .venv/bin/python tests/support/readme_samples.py --check README.md

builds the dependency node (support/depnode.py: a services namespace, two pods, a sidecar; real
namespaces, processes and connections), runs each sample's command as a user runs it
(`python -m nsnet ... --json`), and renders the documents with nsnet's own renderer at 100
columns. What changes from one run to the next -- pids, namespace inodes, ephemeral ports, the
fixture's random tag, pod uids, container ids, times, the interpreter's path -- is replaced by
fixed values of the same kind before rendering, so a rerun gives the same text; the host's
namespace and processes (whatever machine this runs on) are left out. Each sample sits in the
README between `<!-- sample: NAME -->` and the end of the code block after it.
tests/kernel/test_readme_samples.py runs the check.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]

from depnode import APP_A, APP_B, DNS, PG, PLAN, REDIS, SIDECAR_A, WEB, DepNode  # noqa: E402

from nsnet.graph import to_mermaid  # noqa: E402
from nsnet.report import (  # noqa: E402
    Renderer,
    render_by_namespace,
    render_by_pod,
    render_by_user,
    render_deps,
    render_sockets,
    render_summary,
)

WIDTH = 100
TAG = "demo"
EPOCH = 1796200000.0
PID_BASE, BUILDER_PID = 4101, 4100
NS_INODES = {"svc": 4026532801, "a": 4026532802, "b": 4026532803}
HOST_INODE = 4026531840
EPHEMERAL_BASE = 40001
ROLES = ("web", "redis", "pg", "dns", "a.pause", "a.app", "b.pause", "b.app", "a.sidecar")
PID_KEYS = {"pid", "ppid", "pids", "peer_pids", "processes", "tid"}
TIME_KEYS = {"first_seen", "last_seen", "started"}


class Fixed:
    """What varies between runs, replaced by fixed values of the same kind."""

    def __init__(self, node: DepNode, docs: list[dict], every_socket: dict):
        self.node = node
        names = [name for name, *_ in PLAN]
        self.ports = {(c.local_addr, c.local_port): EPHEMERAL_BASE + names.index(c.name)
                      for c in node.conn.values() if c.local_port}
        self.pids = {pid: PID_BASE + i for i, pid in enumerate(self._processes(every_socket))}
        self.builder = {os.getpid()}
        self.inodes = {node.inodes[k]: v for k, v in NS_INODES.items()}
        host = [ns["inode"] for doc in docs for ns in doc.get("namespaces", [])
                if isinstance(ns, dict) and ns.get("host")]
        if host:
            self.inodes[host[0]] = HOST_INODE
        self.strings: list[tuple[str, str]] = []
        for key, uid in node.pod_uid.items():
            self.strings.append((uid, f"00000000-0000-4000-8000-00000000000{key}"))
        for key, cid in node.containers.items():
            self.strings.append((cid, hashlib.sha256(key.encode()).hexdigest()))
        self.strings.append((str(node.dir), f"/run/nsnt-dep-{TAG}"))
        self.strings.append((f"nsnt-dep-{node.tag}", f"nsnt-dep-{TAG}"))
        self.strings.extend((str(k), str(v)) for k, v in self.inodes.items())

    def _processes(self, every_socket: dict) -> list[int]:
        """The fixture's pids in a fixed order: its roles in the order they are built, each
        followed by its workers; workers of one master (which accepts a connection is the
        kernel's choice) ordered by the connections they hold, as fixed ports."""
        held: dict[int, list[tuple]] = {}
        for s in every_socket["sockets"]:
            ends = tuple(self.ports.get((s[f"{side}_addr"], s[f"{side}_port"]),
                                        s[f"{side}_port"] or 0) for side in ("local", "remote"))
            for pid in s["pids"]:
                held.setdefault(pid, []).append((s["proto"], s["state"], *ends))
        order = []
        for role in ROLES:
            if role not in self.node.procs:
                continue
            pid = self.node.procs[role].popen.pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            order.append(pid)
            order.extend(sorted((int(c) for c in children),
                                key=lambda c: (c not in held, sorted(held.get(c, [])))))
        return order

    def pid(self, value: int) -> int:
        if value in self.builder:
            return BUILDER_PID
        return self.pids.get(value, value)

    def text(self, value: str) -> str:
        for old, new in self.strings:
            value = value.replace(old, new)
        if value.startswith("pid ") and value[4:].isdigit():          # read_via
            value = f"pid {self.pid(int(value[4:]))}"
        if value.endswith("/python") or re.fullmatch(r"/\S+/python3(\.\d+)?", value):
            return "/usr/bin/python3"
        return value

    def __call__(self, value: object, key: str = "") -> object:
        if isinstance(value, dict):
            return self.mapping(value)
        if isinstance(value, list):
            items = [self(v, key) for v in value]
            if key in PID_KEYS and all(isinstance(v, int) for v in items):
                items.sort()
            return items
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            if value in self.inodes:
                return self.inodes[value]
            return self.pid(value) if key in PID_KEYS else value
        if isinstance(value, float) and key in TIME_KEYS:
            return EPOCH
        if isinstance(value, str):
            return self.text(value)
        return value

    def mapping(self, doc: dict) -> dict:
        out = {}
        for k, v in doc.items():
            key = str(self.pid(int(k))) if k.isdigit() else k     # "fds": {pid: [fd]}
            out[key] = self(v, k)
        for side in ("local", "remote"):
            addr, port = doc.get(f"{side}_addr"), doc.get(f"{side}_port")
            if (addr, port) in self.ports:
                out[f"{side}_port"] = self.ports[(addr, port)]
        if isinstance(out.get("processes"), list) and out["processes"] \
                and isinstance(out["processes"][0], dict):
            out["processes"].sort(key=lambda p: p["pid"])
        if "sockets" in out and isinstance(out["sockets"], list):
            out["sockets"].sort(key=_socket_order)
        if isinstance(out.get("namespaces"), list) and out["namespaces"] \
                and isinstance(out["namespaces"][0], dict):
            # nsnet.views' order (host first, then by inode), on the fixed inodes: the
            # kernel hands out inodes in no particular order
            out["namespaces"].sort(key=lambda n: (not n["host"], n["inode"] is None,
                                                  n["inode"] or 0))
        return out


def _socket_order(s: dict) -> tuple:
    # nsnet.views' order, on the fixed values
    return (s["netns"] is None, s["netns"] or 0, s["proto"], s["direction"] != "listening",
            s["local_addr"], s["local_port"] or 0, s["remote_addr"] or "", s["remote_port"] or 0)


def nsnet_json(*args: str, root: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "nsnet", *args, "--json", "-q",
                          "--host-root", str(root)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"nsnet {' '.join(args)}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def _fixture_only(doc: dict, keys: set[str], uids: set[int], sockets: int) -> dict:
    """The fixture's part of a node-wide document (this machine's own namespaces and users
    are not the README's)."""
    if doc["view"] == "summary":
        rows = [n for n in doc["namespaces"] if n["key"] in keys]
        doc = {**doc, "namespaces": rows, "processes": sum(n["processes"] for n in rows),
               "stats": {**doc["stats"], "sockets": sum(n["sockets"] for n in rows)}}
    if doc["view"] == "sockets":
        doc = {**doc, "stats": {**doc["stats"], "namespaces": len(keys), "sockets": sockets}}
    if doc["view"] == "dependencies":
        doc = {**doc, "edges": [e for e in doc["edges"] if e["uid"] in uids]}
    return doc


# (name, the command shown, its arguments, how it is rendered)
Sample = tuple[str, str, Callable[[DepNode], list[str]], Callable[[dict, Renderer], str]]
SAMPLES: list[Sample] = [
    ("summary", "nsnet", lambda n: ["summary"], render_summary),
    ("by-namespace", f"nsnet by-namespace --netns nsnt-dep-{TAG}-svc",
     lambda n: ["by-namespace", "--netns", n.netns["svc"]], render_by_namespace),
    ("by-user", "nsnet by-user --user 10601", lambda n: ["by-user", "--user", "10601"],
     render_by_user),
    ("by-pod", "nsnet by-pod --pod shop/tenant-a", lambda n: ["by-pod", "--pod", "shop/tenant-a"],
     render_by_pod),
    ("sockets", "nsnet sockets --netns pod:shop/tenant-a",
     lambda n: ["sockets", "--netns", "pod:shop/tenant-a"], render_sockets),
    ("deps", "nsnet deps", lambda n: ["deps"], render_deps),
    ("json", "nsnet sockets --json --netns pod:shop/tenant-b --tcp --state established | jq"
             "   # trimmed: one socket, a few stats",
     lambda n: ["sockets", "--netns", "pod:shop/tenant-b", "--tcp", "--state", "established"],
     lambda doc, r: _trimmed_json(doc)),
]

STATS_SHOWN = ("namespaces", "sockets", "source")     # the rest counts the whole machine


def _trimmed_json(doc: dict) -> str:
    socket = {**doc["sockets"][0], "inode": 1048577}   # the kernel's choice: fixed here
    # link-local addresses come from the veths' random MACs (and names): left out
    trimmed = {**doc, "namespaces": [
                   {**ns, "addresses": [a for a in ns["addresses"] or []
                                        if not a["addr"].startswith("fe80:")]}
                   for ns in doc["namespaces"] if ns["key"] == socket["netns_key"]],
               "processes": [p for p in doc["processes"] if p["pid"] in socket["pids"]],
               "sockets": [socket],
               "user_names": {k: v for k, v in doc["user_names"].items()
                              if int(k) in socket["users"]},
               "stats": {**{k: doc["stats"][k] for k in STATS_SHOWN},
                         "privileges": [], "...": "..."}}
    return json.dumps(trimmed, indent=1)


def collect(node: DepNode, root: Path) -> dict[str, str]:
    """Every sample's text (its command line, then the output), from one run."""
    raw = {name: nsnet_json(*args(node), root=root) for name, _, args, _ in SAMPLES}
    fixed = Fixed(node, list(raw.values()), nsnet_json("sockets", root=root))
    keys = {f"net:[{node.inodes[k]}]" for k in ("svc", "a", "b")}
    uids = {WEB, REDIS, PG, DNS, APP_A, SIDECAR_A, APP_B}
    texts = {}
    sockets = sum(n["sockets"] for n in raw["summary"]["namespaces"] if n["key"] in keys)
    for name, shown, _, render in SAMPLES:
        doc = fixed(_fixture_only(raw[name], keys, uids, sockets))
        assert isinstance(doc, dict)
        r = Renderer(WIDTH, False, user_names=doc.get("user_names"))
        texts[name] = f"$ {shown}\n{render(doc, r)}"
        if name == "deps":
            texts["graph"] = to_mermaid(doc["edges"]).rstrip("\n")
    return texts


MARK = re.compile(r"<!-- sample: ([a-z-]+) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks(readme: str) -> dict[str, str]:
    return {m.group(1): m.group(2).removesuffix("\n") for m in MARK.finditer(readme)}


def replace(readme: str, texts: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        fence = m.group(0).split("\n", 2)[1]
        return f"<!-- sample: {m.group(1)} -->\n{fence}\n{texts[m.group(1)]}\n```"
    return MARK.sub(one, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="README", help="put the samples into this file")
    action.add_argument("--check", metavar="README", help="exit 1 if they differ")
    args = parser.parse_args(argv)
    path = Path(args.write or args.check)
    readme = path.read_text()
    with tempfile.TemporaryDirectory(prefix="nsnt-samples-") as root, \
            DepNode.build(Path(root)) as node:
        texts = collect(node, Path(root))
    missing = set(texts) - set(blocks(readme))
    if missing:
        print(f"README has no block for {sorted(missing)}", file=sys.stderr)
        return 1
    if args.write:
        path.write_text(replace(readme, texts))
        return 0
    wrong = [name for name, text in blocks(readme).items() if texts.get(name) != text]
    for name in wrong:
        print(f"sample {name} differs:\n{texts.get(name)}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
