"""A tenant cannot hang nsnet, nor make it enter another kind of namespace, through a pin in
its own mount namespace.

Real attack, with nothing but a tenant's uid: in its own user and mount namespace
(`unshare -Urm`), the tenant pins a network namespace at PATH (a child in a new netns
bind-mounts its ns/net there and exits: only the pin keeps it alive), then mounts a tmpfs
over the directory and puts something else at PATH -- a FIFO, or a file of another namespace
(its user namespace). The kernel still lists the nsfs mount in the tenant's mountinfo. Opening
/proc/<pid>/root/PATH used to block forever in fifo_open (every command and the agent hung);
now the path is opened O_PATH, checked to be the pinned namespace's nsfs file, and skipped
with a reason when it is not."""
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

REPO = Path(__file__).resolve().parents[2]
TENANT = 10801

# $1: the tenant's directory; $2: what to put over the pin (fifo | userns)
ATTACK = r"""
set -e
D=$1
mount -t tmpfs none $D/a
touch $D/a/x
unshare -n sh -c "mount --bind /proc/self/ns/net $D/a/x"
mount -t tmpfs none $D/a
if [ "$2" = fifo ]; then mkfifo $D/a/x; else touch $D/a/x; mount --bind /proc/self/ns/user $D/a/x; fi
echo ready
exec sleep 600
"""


@pytest.fixture(params=["fifo", "userns"])
def hostile_pin(request):
    require_root("unshare", "setpriv", "mkfifo")
    d = Path(f"/run/nsnt-hostile-{secrets.token_hex(3)}")
    (d / "a").mkdir(parents=True)
    os.chown(d, TENANT, TENANT)
    os.chown(d / "a", TENANT, TENANT)
    tenant = subprocess.Popen(
        ["setpriv", "--reuid", str(TENANT), "--regid", str(TENANT), "--clear-groups", "--",
         "unshare", "-Urm", "--propagation", "private", "sh", "-c", ATTACK, "attack", str(d),
         request.param], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = tenant.stdout.readline() if tenant.stdout else ""
        if line.strip() != "ready":
            pytest.fail(f"the attack could not be set up: {tenant.stderr.read() if tenant.stderr else ''}")
        mountinfo = Path(f"/proc/{tenant.pid}/mountinfo").read_text()
        # only our pin: the host may hold others (ip netns, container runtimes), and the
        # tenant's mount namespace is a copy of the host's
        [pin] = [ln for ln in mountinfo.splitlines()
                 if " nsfs " in ln and "net:[" in ln and ln.split()[4].startswith(f"{d}/")]
        inode = int(pin.split()[3][5:-1])
        yield request.param, tenant.pid, inode, f"{d}/a/x"
    finally:
        tenant.kill()
        tenant.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("source", ["proc", "netlink"])
def test_a_pin_covered_by_a_fifo_or_another_namespace_is_skipped_not_entered(hostile_pin, source):
    kind, pid, inode, path = hostile_pin
    # the tenant's sleep is not in that namespace: only the pin keeps it alive
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != inode
    run = subprocess.run([sys.executable, "-m", "nsnet", "by-namespace", "--json", "--source",
                          source], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    [ns] = [n for n in doc["namespaces"] if n["inode"] == inode]
    assert (ns["found_by"], ns["pinned"], ns["tables_read"]) == (["bind-mount"], [path], False)
    what = "not a namespace file (a FIFO)" if kind == "fifo" else "another namespace"
    assert f"is {what}, not the pinned namespace {inode}" in ns["error"], ns["error"]
    # and nsnet came back to its own namespace with nothing read elsewhere
    assert "Traceback" not in run.stderr
