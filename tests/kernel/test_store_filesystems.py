"""The SQLite history on filesystems that fail under it: a full disk, a read-only mount
(root: real tmpfs mounts). Each is a clear one-line StoreError."""
from __future__ import annotations

import subprocess

import pytest

from memnode import observed

from conftest import require_root
from nsnet.agent.edges import EdgeKey
from nsnet.agent.store import SampleRecord, Store, StoreError

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
