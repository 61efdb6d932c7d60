"""A tenant cannot make nsnet report unix sockets that do not exist, nor file a victim's
socket as one of its own, by printing lines into /proc/net/unix.

Real attack, with nothing but a tenant's uid in its own network namespace: it binds abstract
unix names holding a newline and then a line shaped like the kernel's (unix_seq_show prints
names raw). One forged line claims a listener with an inode nobody has; one claims the
victim's TCP listener's inode; one the victim's unix listener's inode with another name.
The victim lives in another namespace, as another uid. Every source, and `auto` with the
DaemonSet's capabilities (CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH: the proc source, borrowing
allowed, SIOCGSKNS not), must report the victim's sockets once and as they are, and the
phantom listener either not at all or flagged unconfirmed -- never as a fact.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root
from realnode import ip_tool, util_linux
from tenant import start_json

REPO = Path(__file__).resolve().parents[2]
VICTIM, TENANT = 10811, 10812
PHANTOM_INODE = 987654321

# Holds a TCP listener and a unix listener, prints their inodes, waits for stdin to close.
VICTIM_PROG = r"""
import json, os, socket, sys
t = socket.socket(); t.bind(("127.0.0.1", 7001)); t.listen()
u = socket.socket(socket.AF_UNIX); u.bind(sys.argv[1]); u.listen()
print(json.dumps({"tcp": os.fstat(t.fileno()).st_ino, "unix": os.fstat(u.fileno()).st_ino}),
      flush=True)
sys.stdin.read()
"""
# Binds each abstract name of argv (json: a list of latin-1 texts), prints their inodes.
TENANT_PROG = r"""
import json, os, socket, sys
held = []
for name in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_UNIX); s.bind(b"\0" + name.encode("latin-1")); s.listen()
    held.append(s)
print(json.dumps([os.fstat(s.fileno()).st_ino for s in held]), flush=True)
sys.stdin.read()
"""


def forged_name(inode: int, path: str) -> str:
    """An abstract name that makes /proc/net/unix print a LISTEN line for `inode`."""
    line = f"0000000000000000: 00000002 00000000 00010000 0001 01 {inode} {path}"
    name = "x\n" + line
    assert len(name) <= 107, name     # an abstract name's limit (sun_path minus its NUL)
    return name


@pytest.fixture(scope="module")
def attack():
    require_root("ip", "setpriv")
    tag = secrets.token_hex(3)
    names = {"victim": f"nsnt-fv-{tag}", "tenant": f"nsnt-ft-{tag}"}
    d = Path(f"/run/nsnt-forge-{tag}")
    d.mkdir()
    os.chown(d, VICTIM, VICTIM)
    procs: list[subprocess.Popen] = []
    try:
        for ns in names.values():
            subprocess.run([ip_tool(), "netns", "add", ns], check=True)
            subprocess.run([ip_tool(), "-n", ns, "link", "set", "lo", "up"], check=True)
        victim, inodes = start_json(names["victim"], VICTIM, VICTIM_PROG, str(d / "victim.sock"))
        procs.append(victim)
        forged = [forged_name(PHANTOM_INODE, "/run/shared-db.sock"),
                  forged_name(inodes["tcp"], "/run/victim-tcp.sock"),
                  forged_name(inodes["unix"], "@evil")]
        tenant, tenant_inodes = start_json(names["tenant"], TENANT, TENANT_PROG, json.dumps(forged))
        procs.append(tenant)
        netns = {role: os.stat(f"/run/netns/{ns}").st_ino for role, ns in names.items()}
        # the attack works on the kernel's text: the forged lines are there, as lines
        text = Path(f"/proc/{tenant.pid}/net/unix").read_text()
        assert f"00010000 0001 01 {inodes['tcp']} /run/victim-tcp.sock\n" in text
        yield {"victim": victim.pid, "tenant": tenant.pid, "inodes": inodes,
               "tenant_inodes": tenant_inodes, "netns": netns, "path": str(d / "victim.sock")}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in names.values():
            subprocess.run([ip_tool(), "netns", "del", ns], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


DAEMONSET_CAPS = "-all,+sys_ptrace,+dac_read_search"


def nsnet_sockets(source: str, caps: str | None) -> tuple[dict, str]:
    argv = [sys.executable, "-m", "nsnet", "sockets", "--json", "--source", source]
    if caps is not None:
        argv = [util_linux("setpriv"), "--inh-caps=-all", "--ambient-caps=-all",
                f"--bounding-set={caps}", "--", *argv]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    return json.loads(run.stdout), run.stderr


@pytest.mark.parametrize("source,caps", [
    ("proc", None), ("netlink", None), ("pidfd", None), ("auto", None),
    ("auto", DAEMONSET_CAPS), ("proc", "-all"),
], ids=["proc", "netlink", "pidfd", "auto", "auto-daemonset-caps", "proc-no-caps"])
def test_forged_unix_lines_are_never_reported_as_real(attack, source, caps):
    doc, stderr = nsnet_sockets(source, caps)
    inodes, netns = attack["inodes"], attack["netns"]
    by_inode: dict[int, list[dict]] = {}
    for s in doc["sockets"]:
        by_inode.setdefault(s["inode"], []).append(s)

    # the victim's sockets: once each, as they are, in the victim's namespace
    [tcp] = by_inode[inodes["tcp"]]
    assert (tcp["proto"], tcp["state"], tcp["local_port"]) == ("tcp", "LISTEN", 7001)
    [unix] = by_inode[inodes["unix"]]
    assert (unix["proto"], unix["state"], unix["local_addr"]) == ("unix", "LISTEN",
                                                                 attack["path"])
    assert not tcp["unconfirmed"] and not unix["unconfirmed"]
    if caps == "-all":
        # no capability: namespaces are known by their /proc/net identity only, and no
        # holder at all (other users' fds)
        victim_key = tcp["netns_key"]
        assert unix["netns_key"] == victim_key
        tenant_key = by_inode[attack["tenant_inodes"][0]][0]["netns_key"]
    else:
        victim_key, tenant_key = (f"net:[{netns['victim']}]", f"net:[{netns['tenant']}]")
        assert tcp["pids"] == [attack["victim"]] and unix["pids"] == [attack["victim"]]
    assert tcp["netns_key"] == unix["netns_key"] == victim_key != tenant_key

    # the phantom listener: absent, or flagged and counted -- never a plain fact
    phantom = by_inode.get(PHANTOM_INODE, [])
    assert all(s["unconfirmed"] for s in phantom)
    ours = [s for s in doc["sockets"]
            if s["netns_key"] in (victim_key, tenant_key) and s["unconfirmed"]]
    if caps == "-all":
        # nothing can be asked: the tenant's own lines after its first name are flagged too
        assert {s["inode"] for s in ours} - set(attack["tenant_inodes"]) == {PHANTOM_INODE}
    else:
        assert ours == phantom
    # (other namespaces of a busy machine may have some too: sockets made after the walk)
    assert doc["stats"]["unix_unconfirmed"] >= len(phantom)
    if phantom:
        assert "unconfirmed" in stderr
    # the tenant's own sockets are all there, in its namespace
    for inode in attack["tenant_inodes"]:
        [own] = by_inode[inode]
        assert own["netns_key"] == tenant_key and own["local_addr"].startswith("@x")
    # no claim on another inode survived (each forged line is dropped or is the phantom)
    tenant_ns = [s for s in doc["sockets"] if s["netns_key"] == tenant_key]
    assert {s["inode"] for s in tenant_ns} <= set(attack["tenant_inodes"]) | {PHANTOM_INODE}
    if doc["stats"]["source"] == "proc":
        # both claims on the victim's inodes were seen and dropped
        assert doc["stats"]["unix_lines_dropped"] == 2
        assert "2 /proc/net/unix line(s) dropped" in stderr


def test_the_terminal_marks_an_unconfirmed_unix_socket(attack):
    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--unix", "--source",
                          "proc", "-o", "wide"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    # (the tenant's real sockets, whose names hold the forged text, are listed too)
    rows = [ln.split()[:3] for ln in run.stdout.splitlines()
            if ln.split()[2:3] == ["/run/shared-db.sock"]]
    assert rows == [["unix", "LISTEN?", "/run/shared-db.sock"]], run.stdout
    assert "may be part of a bound name" in run.stdout
