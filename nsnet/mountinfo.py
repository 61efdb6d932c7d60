"""Pure parser of /proc/<pid>/mountinfo: the mounts that pin network namespaces.

A namespace that no process holds any more stays alive only while its
/proc/<pid>/ns/net file is bind-mounted somewhere (`ip netns add`, Docker, CNI).
Those bind mounts are the only way to find such a namespace, so they are what
this module extracts. No I/O here: the parser is tested on captured text.

Line layout (fs/proc_namespace.c, show_mountinfo):

    43 42 0:4 net:[4026532177] /run/netns/blue rw shared:2 - nsfs nsfs rw
    id par dev root            mount point     opts optional... - fstype source super-opts

Zero or more optional fields ("shared:N", "master:N", "propagate_from:N",
"unbindable") precede the lone "-" separator.

What this kernel (6.18) prints, verified with `ip netns add` and
`mount --bind /proc/<pid>/ns/net PATH`: fstype `nsfs`, root `net:[<inode>]`,
the same for every later bind of a pin. Other namespace types pinned the same
way (uts:[N], ipc:[N], ...) share the fstype and are ignored. Kernels before
3.19 had no nsfs: such pins show fstype `proc` there; that format could not be
verified here and is not recognised.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from .records import record

_NET_ROOT = re.compile(rb"net:\[([0-9]+)\]\Z")
# The kernel escapes only space, tab, newline and backslash (as \040 \011 \012 \134),
# so anything else after a backslash is literal text, and values above 0o377 cannot occur.
_ESCAPE = re.compile(rb"\\([0-3][0-7][0-7])")
_DEVICE = re.compile(rb"[0-9]+:[0-9]+\Z")
# id, parent, device, root, mount point, options: the separator can come no earlier.
_FIRST_SEPARATOR_INDEX = 6


@record(slots=True, frozen=True)
class NsfsMount:
    mount_point: str
    netns_inode: int


def unescape(field: bytes) -> bytes:
    """Undo the kernel's octal escaping in one pass, so an escaped backslash
    followed by digits (`\\134040`) is not unescaped twice."""
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 8),)), field)


MountFields = tuple[list[bytes], int]   # a line's fields, and the index of its "-"


def mount_fields(data: bytes) -> Iterator[MountFields | None]:
    """Each line of a mountinfo: its fields (escaped as the kernel prints them) and where
    the "-" separator is, so that fields[3] is the root, fields[4] the mount point,
    fields[sep + 1] the filesystem type and fields[sep + 3] its super options; None for a
    line that does not have the mountinfo layout."""
    for line in data.split(b"\n"):
        if not line:
            continue
        # Fields are separated by single spaces: the kernel escapes spaces inside paths.
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", _FIRST_SEPARATOR_INDEX)
        except ValueError:
            yield None
            continue
        if (len(fields) < sep + 4 or not fields[0].isdigit() or not fields[1].isdigit()
                or not _DEVICE.match(fields[2])):
            yield None
            continue
        yield fields, sep


def parse_mountinfo(data: bytes) -> tuple[list[NsfsMount], int]:
    """Return the nsfs mounts of network namespaces, in file order, and the
    number of lines that do not have the mountinfo layout.

    One namespace may be pinned at several paths; every mount is returned.
    """
    mounts: list[NsfsMount] = []
    malformed = 0
    for found in mount_fields(data):
        if found is None:
            malformed += 1
            continue
        fields, sep = found
        if fields[sep + 1] != b"nsfs":
            continue
        root = fields[3]
        m = _NET_ROOT.match(root)
        if m is None:
            # A net pin whose inode does not parse would otherwise vanish silently.
            if root.startswith(b"net:"):
                malformed += 1
            continue
        mount_point = unescape(fields[4]).decode("utf-8", "surrogateescape")
        mounts.append(NsfsMount(mount_point, int(m.group(1))))
    return mounts, malformed
