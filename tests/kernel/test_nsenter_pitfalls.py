"""The two known pitfalls of the `nsenter` package, proved real and proved handled.

1. On exit it returns to the namespace of /proc/self -- the main thread's -- not to the
   namespace of the thread that entered. nsnet enters only from the main thread and checks
   that it came back.
2. It depends on the PyPI backports `argparse` and `pathlib` (Python 2 era); under PYTHONPATH
   or `pip install --target` they shadow the standard library, and the old pathlib does not
   even import on 3.11. nsnet loads the standard library's modules first.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from conftest import require_root

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _thread_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@pytest.fixture
def pinned_ns():
    """A namespace pinned only by `ip netns add`, with a TCP listener created inside it
    but held by this (host-namespace) test process: no process lives in it."""
    require_root("ip")
    name = f"nsnt-pit-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))   # lo is down, but binding 127.0.0.1 still works
            listener.listen()
        finally:
            _setns(home)
        yield {"path": path, "inode": os.fstat(target).st_ino, "listener": listener}
        listener.close()
    finally:
        os.close(home)
        os.close(target)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_package_returns_to_the_main_threads_namespace(pinned_ns):
    """The pitfall itself: entered from a thread that lives in another namespace, the
    package brings that thread back to the *main thread's* namespace, not its own."""
    from nsenter import Namespace

    main_ns = _thread_netns()
    seen = {}

    def worker():
        fd = os.open(pinned_ns["path"], os.O_RDONLY)
        _setns(fd)                       # this thread now lives in the pinned namespace
        os.close(fd)
        seen["before"] = _thread_netns()
        with Namespace(f"/proc/{os.getpid()}/ns/net", "net"):
            pass
        seen["after"] = _thread_netns()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["before"] == pinned_ns["inode"]
    assert seen["after"] == main_ns != seen["before"]   # not where it was: the pitfall


def test_snapshot_reads_pinned_namespace_and_comes_home(pinned_ns):
    from nsnet.snapshot import take_snapshot

    home = _thread_netns()
    snap = take_snapshot()
    assert _thread_netns() == home
    ns = snap.namespaces[f"net:[{pinned_ns['inode']}]"]
    assert ns.found_by == ["bind-mount"]
    assert ns.pinned == [pinned_ns["path"]]
    assert ns.tables_read and ns.read_via == f"setns {pinned_ns['path']}"
    port = pinned_ns["listener"].getsockname()[1]
    inode = os.fstat(pinned_ns["listener"].fileno()).st_ino
    [sock] = [s for s in snap.sockets if s.netns == pinned_ns["inode"] and s.proto == "tcp"]
    assert (sock.state, sock.local_addr, sock.local_port, sock.inode) == \
        ("LISTEN", "127.0.0.1", port, inode)
    assert list(sock.pids) == [os.getpid()]
    assert sock.fds == {os.getpid(): [pinned_ns["listener"].fileno()]}


def test_snapshot_from_a_thread_never_enters(pinned_ns):
    """From a non-main thread nsnet refuses to setns (the package would return it to the
    main thread's namespace): the namespace is reported, unread, with the reason."""
    from nsnet import setns
    from nsnet.errors import EnterError
    from nsnet.snapshot import take_snapshot

    result = {}

    def worker():
        result["home"] = _thread_netns()
        try:
            setns.run_in_namespace(pinned_ns["path"], pinned_ns["inode"], lambda: None)
        except EnterError as exc:
            result["refused"] = str(exc)
        result["snap"] = take_snapshot()
        result["after"] = _thread_netns()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert "main thread" in result["refused"]
    assert result["after"] == result["home"]
    ns = result["snap"].namespaces[f"net:[{pinned_ns['inode']}]"]
    assert not ns.tables_read and "main thread" in ns.error
    assert result["snap"].stats.pinned_unreadable >= 1


def _backport_files() -> dict[str, Path]:
    found = {}
    for dist_name in ("argparse", "pathlib"):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            if str(f) == f"{dist_name}.py":
                found[dist_name] = Path(dist.locate_file(f))
    return found


def test_backports_shadow_stdlib_but_not_for_nsnet(tmp_path):
    """Lay the backports that `pip install nsenter` brought along out like a `--target`
    install on PYTHONPATH: plain Python breaks, nsnet does not."""
    files = _backport_files()
    if set(files) != {"argparse", "pathlib"}:
        msg = "the nsenter package's argparse/pathlib backports are not installed here"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    for path in files.values():
        shutil.copy(path, tmp_path / path.name)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")

    plain = subprocess.run([sys.executable, "-c", "import pathlib"], env=env,
                           capture_output=True, text=True)
    assert plain.returncode != 0 and "pathlib.py" in plain.stderr   # the pitfall is real

    probe = ("import nsnet, argparse, pathlib, nsenter, json, sys;"
             "print(json.dumps([nsnet.SHADOWED_STDLIB, argparse.__file__, pathlib.__file__]))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout
    shadowed, argparse_file, pathlib_file = json.loads(out)
    assert shadowed == ["argparse", "pathlib"]
    assert not argparse_file.startswith(str(tmp_path))
    assert not pathlib_file.startswith(str(tmp_path))

    run = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--json", "--tcp"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["schema"] == "nsnet/1"
