"""nsnet.mountinfo against this kernel's own mountinfo: real pins (root: ip netns, mount)."""
from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from pathlib import Path

from conftest import require_root

from nsnet.mountinfo import NsfsMount, parse_mountinfo


def test_live_pins_found() -> None:
    """Against this kernel's own mountinfo: a fresh `ip netns add` pin and a bind
    mount of it at a path with a space are both found with the right inode."""
    require_root("ip", "mount", "umount")
    name = f"nsnt-mi-{secrets.token_hex(4)}"
    tmpdir = tempfile.mkdtemp(prefix="nsnt-mi-")
    spaced = os.path.join(tmpdir, "with space")
    Path(spaced).touch()
    mounted = False
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["mount", "--bind", f"/run/netns/{name}", spaced], check=True)
        mounted = True
        inode = os.stat(f"/run/netns/{name}").st_ino
        assert os.stat(spaced).st_ino == inode
        mounts, malformed = parse_mountinfo(Path("/proc/self/mountinfo").read_bytes())
        assert malformed == 0
        assert NsfsMount(f"/run/netns/{name}", inode) in mounts
        assert NsfsMount(spaced, inode) in mounts
    finally:
        if mounted:
            subprocess.run(["umount", spaced], check=False)
        subprocess.run(["ip", "netns", "delete", name], check=False)
        os.unlink(spaced)
        os.rmdir(tmpdir)
