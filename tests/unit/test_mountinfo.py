"""Tests of nsnet.mountinfo on mountinfo text captured from a real kernel.

How tests/data/mountinfo_*.txt were captured (Linux 6.18): a throwaway root script ran
`ip netns add nsnt-cap-6e996c-a` and `...-b`, started `unshare -n sleep` and bind-mounted
its /proc/<pid>/ns/net onto files in /tmp/nsnt-mnt-6e996c named "with space",
"tab<TAB>here", "new<LF>line", "back\\slash" and "caf<0xE9>", bind-mounted the -a pin
again at ".../again", pinned a UTS namespace with `unshare --uts=.../uts`, then copied
/proc/self/mountinfo (mountinfo_netns_pins.txt). mountinfo_slave_shared.txt is
/proc/self/mountinfo read inside `unshare -m --propagation slave` after
`mount --make-shared` on the -a pin, so its lines carry zero, one ("master:3") or two
("shared:4 master:2") optional fields. Everything was unmounted and deleted afterwards.
The namespace inodes below were checked with `stat -L` on the pins at capture time.
Both files are byte-exact except that one line, a host-specific tmpfs unrelated to
namespaces, was removed from each. mountinfo_malformed.txt was written by hand from
captured lines.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from nsnet.mountinfo import NsfsMount, parse_mountinfo, unescape

DATA = Path(__file__).resolve().parents[1] / "data"
TMP = "/tmp/nsnt-mnt-6e996c"
NS_A, NS_B, NS_HELD = 4026532177, 4026532246, 4026532315

PINS = [
    NsfsMount("/run/netns/nsnt-cap-6e996c-a", NS_A),
    NsfsMount("/run/netns/nsnt-cap-6e996c-b", NS_B),
    NsfsMount(f"{TMP}/with space", NS_HELD),
    NsfsMount(f"{TMP}/tab\there", NS_HELD),
    NsfsMount(f"{TMP}/new\nline", NS_HELD),
    NsfsMount(f"{TMP}/back\\slash", NS_HELD),
    NsfsMount(f"{TMP}/caf\udce9", NS_HELD),      # raw byte 0xE9: the kernel does not escape it
    NsfsMount(f"{TMP}/again", NS_A),
]

GOOD = b"43 42 0:4 net:[4026532177] /run/netns/nsnt-cap-6e996c-a rw shared:2 - nsfs nsfs rw"
GOOD_AFTER = b"50 27 0:4 net:[4026532177] /tmp/nsnt-mnt-6e996c/again rw shared:2 - nsfs nsfs rw"


def parse_lines(*lines: bytes) -> tuple[list[NsfsMount], int]:
    return parse_mountinfo(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("file", ["mountinfo_netns_pins.txt", "mountinfo_slave_shared.txt"])
def test_captured_pins(file: str) -> None:
    assert parse_mountinfo((DATA / file).read_bytes()) == (PINS, 0)


def test_captured_file_has_what_the_test_claims() -> None:
    """Guards the capture: the excluded entries really are there."""
    raw = (DATA / "mountinfo_netns_pins.txt").read_bytes()
    assert b" uts:[4026532384] /tmp/nsnt-mnt-6e996c/uts rw - nsfs nsfs rw" in raw
    assert b" /run/netns /run/netns rw,relatime shared:1 - ext4 " in raw
    assert b" / /proc rw,relatime - proc proc rw" in raw
    slave = (DATA / "mountinfo_slave_shared.txt").read_bytes()
    assert b" rw shared:4 master:2 - nsfs " in slave and b" rw master:3 - nsfs " in slave


def test_malformed_file() -> None:
    mounts, malformed = parse_mountinfo((DATA / "mountinfo_malformed.txt").read_bytes())
    assert mounts == [PINS[0], PINS[2], PINS[7]]
    # no separator, bad mount id, bad device, no super options, bad inode, garbage,
    # and a last line cut inside its mount point
    assert malformed == 7


@pytest.mark.parametrize("optional", [
    b"", b"shared:2", b"master:1", b"shared:4 master:2",
    b"shared:4 master:2 propagate_from:1", b"unbindable",
])
def test_optional_fields(optional: bytes) -> None:
    fields = [b"43 42 0:4 net:[4026532177] /run/netns/x rw", optional, b"- nsfs nsfs rw"]
    line = b" ".join(f for f in fields if f)
    assert parse_lines(line) == ([NsfsMount("/run/netns/x", NS_A)], 0)


@pytest.mark.parametrize("escaped, path", [
    (b"/a\\040b", "/a b"),
    (b"/a\\011b", "/a\tb"),
    (b"/a\\012b", "/a\nb"),
    (b"/a\\134b", "/a\\b"),
    (b"/\\040\\040", "/  "),
    # One pass: an escaped backslash followed by digits stays a backslash and digits.
    (b"/a\\134040b", "/a\\040b"),
    # Not an escape the kernel writes: kept as it is.
    (b"/a\\b", "/a\\b"),
    (b"/a\\9b", "/a\\9b"),
    (b"/a\\477", "/a\\477"),
    (b"/caf\xc3\xa9", "/caf\u00e9"),
    (b"/caf\xe9", "/caf\udce9"),
])
def test_mount_point_unescaped(escaped: bytes, path: str) -> None:
    line = b"43 42 0:4 net:[4026532177] " + escaped + b" rw - nsfs nsfs rw"
    assert parse_lines(line) == ([NsfsMount(path, NS_A)], 0)


def test_unescape_keeps_bytes() -> None:
    assert unescape(b"/x\\040\\377") == b"/x \xff"


@pytest.mark.parametrize("line", [
    pytest.param(b"51 27 0:4 uts:[4026532384] /p rw - nsfs nsfs rw", id="uts"),
    pytest.param(b"51 27 0:4 ipc:[4026532384] /p rw - nsfs nsfs rw", id="ipc"),
    pytest.param(b"51 27 0:4 mnt:[4026532384] /p rw - nsfs nsfs rw", id="mnt"),
    pytest.param(b"51 27 0:4 cgroup:[4026532384] /p rw - nsfs nsfs rw", id="cgroup"),
    pytest.param(b"51 27 0:4 user:[4026532384] /p rw - nsfs nsfs rw", id="user"),
    pytest.param(b"51 27 0:4 netx:[4026532384] /p rw - nsfs nsfs rw", id="not-net-prefix"),
    pytest.param(b"42 27 254:0 /run/netns /run/netns rw shared:1 - ext4 /dev/vda rw", id="ext4"),
    pytest.param(b"52 27 254:0 net:[4026532177] /p rw - ext4 /dev/vda rw", id="net-root-on-ext4"),
    pytest.param(b"53 27 0:21 /1234/ns/net /p rw - proc proc rw", id="proc-bind"),
])
def test_other_mounts_ignored(line: bytes) -> None:
    assert parse_lines(GOOD, line, GOOD_AFTER) == (
        [NsfsMount("/run/netns/nsnt-cap-6e996c-a", NS_A), NsfsMount(f"{TMP}/again", NS_A)], 0)


@pytest.mark.parametrize("bad", [
    pytest.param(b"44 42 0:4 net:[4026532246] /run/netns/b rw shared:3 nsfs nsfs rw",
                 id="no-separator"),
    pytest.param(b"44 42 0:4 net:[4026532246] - nsfs nsfs rw", id="separator-too-early"),
    pytest.param(b"44 42 0:4 net:[4026532246] /run/netns/b rw - nsfs nsfs", id="no-super-options"),
    pytest.param(b"44 42 0:4 net:[4026532246] /run/netns/b rw -", id="nothing-after-separator"),
    pytest.param(b"x44 42 0:4 net:[4026532246] /run/netns/b rw - nsfs nsfs rw", id="mount-id"),
    pytest.param(b"44 -1 0:4 net:[4026532246] /run/netns/b rw - nsfs nsfs rw", id="parent-id"),
    pytest.param(b"44 42 04 net:[4026532246] /run/netns/b rw - nsfs nsfs rw", id="device"),
    pytest.param(b"44 42 0:4 net:[40265x2246] /run/netns/b rw - nsfs nsfs rw", id="inode-not-number"),
    pytest.param(b"44 42 0:4 net:[] /run/netns/b rw - nsfs nsfs rw", id="inode-empty"),
    pytest.param(b"44 42 0:4 net:[4026532246 /run/netns/b rw - nsfs nsfs rw", id="inode-unclosed"),
    pytest.param(b"44  42 0:4 net:[4026532246] /run/netns/b rw - nsfs nsfs rw", id="double-space"),
    pytest.param(b"44 42 0:4 net:[4026532246] /run/netns/nsnt-c", id="cut-mid-line"),
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"\x00\xff\x1b[31m - nsfs", id="binary-garbage"),
    pytest.param(b" ", id="single-space"),
])
def test_bad_line_counted_and_neighbours_kept(bad: bytes) -> None:
    mounts, malformed = parse_lines(GOOD, bad, GOOD_AFTER)
    assert mounts == [NsfsMount("/run/netns/nsnt-cap-6e996c-a", NS_A),
                      NsfsMount(f"{TMP}/again", NS_A)]
    assert malformed == 1


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n"])
def test_empty(data: bytes) -> None:
    assert parse_mountinfo(data) == ([], 0)


def test_last_line_without_newline() -> None:
    assert parse_mountinfo(GOOD) == ([NsfsMount("/run/netns/nsnt-cap-6e996c-a", NS_A)], 0)


def test_nsfs_mount_is_frozen_and_hashable() -> None:
    m = NsfsMount("/run/netns/x", 1)
    with pytest.raises(AttributeError):
        m.netns_inode = 2            # type: ignore[misc]
    assert {m, NsfsMount("/run/netns/x", 1)} == {m}


