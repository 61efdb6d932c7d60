"""A busybox image for tests that need a real container runtime, and teardown helpers.

    with sigterm_as_exit(), agent_image.private_dockerd(workdir) as docker:
        rootfs = busybox_rootfs(workdir / "rootfs")        # busybox-static + a static /pause
        import_image(docker, rootfs, "nsnt-busybox:abc")
        subprocess.run([*docker, "run", "-d", ...])

The image is made from `busybox-static` with `docker import` of a tar: no registry, no
network. The same rootfs directory serves runc bundles (a real directory: runc rejects a
rootfs reached through a symlink). `/pause` is compiled with `gcc -static` so that the sandbox
holder's argv[0] is `/pause`, as the CRI's is.

The private daemon itself is tests/support/agent_image.py's `private_dockerd`.
SIGTERM becomes SystemExit while `sigterm_as_exit()` is active, so `timeout`/CI kills tear
down too.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator, Optional

BUSYBOX = "/bin/busybox"   # Debian's busybox-static
# Applets the tests run inside containers; `sh` first (docker exec / debugging).
APPLETS = ("sh", "sleep", "nc", "cat", "httpd", "ls", "id", "ps", "env", "true")

PAUSE_C = r"""
/* The sandbox holder, like Kubernetes' pause: sleeps, reaps, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void die(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, die); signal(SIGTERM, die); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit while active, so finally blocks run under `timeout`/CI kills.
    A no-op outside the main thread (signal handlers can only be set there)."""
    try:
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(argv: list[str], *, timeout: float = 60.0, check: bool = True,
        input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; on failure the error says what it printed."""
    done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory` in our mount namespace, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")   # \040 for spaces
            if point.startswith(prefix) or point == prefix[:-1]:
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def remove_tree(directory: Path) -> None:
    """Unmount anything left under `directory`, then remove it; never remove through a mount."""
    if not directory.exists():
        return
    for point in _mounts_under(directory):
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = _mounts_under(directory)
    if left:
        raise RuntimeError(f"still mounted under {directory}: {left}")
    shutil.rmtree(directory, ignore_errors=True)


def remove_all_containers(docker: list[str]) -> None:
    ids = run([*docker, "ps", "-aq"], check=False, timeout=30).stdout.decode().split()
    if ids:
        run([*docker, "rm", "-f", *ids], check=False, timeout=60)


def build_pause(dest: Path) -> None:
    """Compile the static /pause (argv[0] "/pause", like the CRI's sandbox holder)."""
    src = dest.with_suffix(".c")
    src.write_text(PAUSE_C)
    run(["gcc", "-static", "-Os", "-o", str(dest), str(src)], timeout=120)
    src.unlink()


def busybox_rootfs(rootfs: Path) -> Path:
    """A rootfs with busybox-static, its applets as symlinks and a static /pause."""
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "www"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (rootfs / "tmp").chmod(0o1777)
    build_pause(rootfs / "pause")
    return rootfs


def import_image(docker: list[str], rootfs: Path, tag: str) -> str:
    """`docker import` the rootfs as `tag`; returns the image id."""
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                         check=True).stdout
    return run([*docker, "import", "-", tag], input=tar).stdout.decode().strip()


def inspect(docker: list[str], container: str) -> dict:
    return json.loads(run([*docker, "inspect", container]).stdout)[0]
