"""The SQLite history on filesystems that fail under it: a full disk, a read-only mount
(root: real tmpfs mounts). Each is a clear one-line StoreError."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from memnode import observed

from conftest import require_root
from nsnet.agent.edges import EdgeKey
from nsnet.agent.store import SampleRecord, Store, StoreError

REPO = Path(__file__).resolve().parents[2]
DB_EDGE = EdgeKey(10001, "pod:shop/cart", "outbound", "tcp", "10.0.0.5", 3306)


def sample(ts: float) -> SampleRecord:
    return SampleRecord(ts, 0.1, 0.05, 3, 10, False)


def test_full_disk_is_a_clear_error(tmp_path):
    require_root("mount", "umount")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "nsnt-tiny", str(mnt)], check=True)
    try:
        store = Store(str(mnt / "h.db"))
        with pytest.raises(StoreError) as err:
            for batch in range(1000):
                keys = observed({EdgeKey(u, "host", "outbound", "tcp", f"10.3.{batch % 250}.{u}",
                                        443): 1 for u in range(200)})
                store.record("n", keys, sample(float(batch)))
        assert "cannot write" in str(err.value) and "full" in str(err.value)
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_filesystem_is_a_clear_error(tmp_path):
    require_root("mount", "umount")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "nsnt-ro", str(mnt)], check=True)
    try:
        Store(str(mnt / "h.db")).close()          # made while writable...
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(StoreError) as err:    # ...then the filesystem turns read-only
            Store(str(mnt / "h.db")).record("n", observed({DB_EDGE: 1}), sample(1.0))
        message = str(err.value)
        assert message.startswith(f"history database {mnt}/h.db: cannot ")
        assert "\n" not in message
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_another_users_file_is_refused(tmp_path):
    require_root()
    db = tmp_path / "h.db"
    Store(str(db)).close()
    os.chown(db, 12345, 12345)          # e.g. a tenant's file where the history should be
    with pytest.raises(StoreError, match="owned by uid 12345, not by us"):
        Store(str(db))


def test_the_history_commands_read_a_read_only_mount(tmp_path):
    """`nsnet deps --db` on a history mounted read-only (a copy taken off a node): SQLite
    cannot create the WAL's shared memory there; the file is read as immutable."""
    require_root("mount", "umount")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "nsnt-rodb", str(mnt)], check=True)
    try:
        store = Store(str(mnt / "h.db"))
        store.record("n", observed({DB_EDGE: 2}), sample(time.time()))
        store.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        run = subprocess.run([sys.executable, "-m", "nsnet", "deps", "--json", "--db",
                              str(mnt / "h.db")], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        [edge] = json.loads(run.stdout)["edges"]
        assert (edge["uid"], edge["peer_addr"], edge["port"]) == (10001, "10.0.0.5", 3306)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_readyz_says_when_history_writes_fail_and_recovers(tmp_path):
    """A real full disk under the agent's history: /readyz turns 503 "history writes failing"
    while writes fail, and ready again once there is room; sampling never stops."""
    require_root("mount", "umount")
    from memnode import FixedScanner, MemNode

    from nsnet.agent.serve import Agent, http_server
    from nsnet.options import AgentOptions, SamplingOptions

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "nsnt-tiny2", str(mnt)],
                   check=True)
    try:
        node = MemNode()
        node.process(1, uid=0, cmdline=["/sbin/init"])
        for u in range(300):
            node.process(1000 + u, uid=20000 + u, cmdline=["/bin/client"])
            node.socket("tcp", "ESTABLISHED", f"10.0.0.1:{30000 + u}", f"10.8.{u // 250}."
                        f"{u % 250}:443", holders=[1000 + u])
        snap = node.build()
        options = AgentOptions(sampling=SamplingOptions(events=False), node="n1",
                               db=str(mnt / "h.db"), listen=("127.0.0.1", 0))
        agent = Agent(options, io.StringIO(), store=Store(str(mnt / "h.db")),
                      scanner=FixedScanner([snap], cycle=True))
        agent.step()
        assert agent.status()["history_error"] is None
        filler = mnt / "filler"
        with open(filler, "wb") as f:       # take the rest of the filesystem
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for _ in range(3):
            agent.step()
        status = agent.status()
        assert status["history_error"] is not None and "full" in status["history_error"]
        assert status["samples"] == 4                     # sampling went on
        server = http_server(agent)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/readyz"
        try:
            with pytest.raises(urllib.error.HTTPError) as failing:
                urllib.request.urlopen(url, timeout=30)
            body = json.loads(failing.value.read())
            assert failing.value.code == 503 and body["status"] == "history writes failing"
            filler.unlink()
            agent.step()
            assert agent.status()["history_error"] is None
            with urllib.request.urlopen(url, timeout=30) as ok:
                assert json.loads(ok.read())["status"] == "ready"
        finally:
            server.shutdown()
            server.server_close()
        agent.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
