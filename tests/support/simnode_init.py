"""The pid 1 of one simulated node of tests/support/simcluster.py. Standard library only.

simcluster starts it, per node, as

    nsenter --net=/run/netns/<node netns> -- \\
        unshare --pid --fork --kill-child --mount --mount-proc --propagation private -- \\
        python simnode_init.py FD

so it is pid 1 of the node's own pid namespace, in the node's network namespace (nsnet calls
the netns of pid 1 of the procfs it reads "host"), in a private copy of the mount namespace
whose /proc shows the node's processes only. FD is its end of a SOCK_SEQPACKET socketpair:
one JSON request per message, the fds it needs passed along (SCM_RIGHTS), one JSON answer.

  {"op": "spawn", "argv": [...], "env": {...}, "cwd": "/", "netns": bool, "cgroup": bool}
      fds: stdin, stdout, stderr[, netns][, cgroup.procs]
      fork a child that joins the pod's netns (setns on the passed fd: the pod's /run/netns
      pin is not in this mount namespace, see below), writes its own pid to the pod
      container's cgroup.procs (an fd opened outside: `nsenter` keeps /sys/fs/cgroup, but the
      fd does not depend on that) and execs argv. It stays root: a tenant's argv starts with
      setpriv (as depnode's do: setpriv resolves the interpreter's path with its capabilities
      still held, which a pyenv build under a 0700 /root needs).
      Answer {"pid": P} (P in this pid namespace) or {"error": why} (the exec failed).
  {"op": "kill", "pid": P, "signal": S}  -> {"ok": true}

The controller's end closing (the test died, or teardown) ends this process, and with it,
pid 1 gone, the kernel kills every process of the namespace.

Why the netns pins are unmounted here: this mount namespace is a copy of the test's, which
holds a /run/netns bind mount for every namespace of the machine (the other nodes', their
pods', other tests'). nsnet finds namespaces by their pins in mountinfo too, so the node's
agent would see -- and enter -- other nodes' pods. A real node's mount namespace has only its
own; here it has none (every pod is held by its sandbox process anyway).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def drop_netns_pins() -> list[str]:
    """Detach every bind mount of a network namespace (nsfs, root net:[N]) in our mount
    namespace, the deepest first (a pin may be mounted over another)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "nsfs" and fields[3].startswith("net:["):
                points.append(_unescape(fields[4]))
    for point in reversed(points):
        if _libc.umount2(point.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):   # EINVAL/ENOENT: already gone with a parent
                raise OSError(err, f"umount2 {point}: {os.strerror(err)}")
    return points


def reap(signum: int, frame: object) -> None:
    # pid 1 inherits every orphan of the namespace: reap them, or they stay zombies
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def spawn(req: dict, fds: list[int], control: int) -> dict:
    stdio, rest = fds[:3], fds[3:]
    netns = rest.pop(0) if req.get("netns") else None
    cgroup = rest.pop(0) if req.get("cgroup") else None
    r, w = os.pipe2(os.O_CLOEXEC)   # the child's exec error, if any; EOF when exec worked
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(control)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if netns is not None and _libc.setns(netns, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            if cgroup is not None:   # before it runs anything of its own: its cgroup says its pod
                os.write(cgroup, f"{os.getpid()}\n".encode())
            for i, fd in enumerate(stdio):
                os.dup2(fd, i)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.chdir(req.get("cwd", "/"))
            argv = req["argv"]
            os.execve(argv[0], argv, req.get("env", {}))
        except BaseException as exc:   # anything: say it, never run on as a copy of pid 1
            os.write(w, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(127)
    os.close(w)
    for fd in fds:
        os.close(fd)
    failure = b""
    while chunk := os.read(r, 4096):
        failure += chunk
    os.close(r)
    return {"error": failure.decode(errors="replace")} if failure else {"pid": pid}


def main() -> None:
    control = int(sys.argv[1])
    os.set_inheritable(control, False)
    sock = socket.socket(fileno=control)
    signal.signal(signal.SIGCHLD, reap)
    dropped = drop_netns_pins()
    sock.send(json.dumps({"event": "ready", "pid": os.getpid(),
                          "dropped_pins": len(dropped)}).encode())
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 16)
        if not msg:
            return   # the controller is gone: so is this node
        req = json.loads(msg)
        try:
            if req["op"] == "spawn":
                answer = spawn(req, fds, control)
            elif req["op"] == "kill":
                os.kill(req["pid"], req.get("signal", signal.SIGKILL))
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown op {req['op']!r}"}
        except OSError as exc:
            answer = {"error": str(exc)}
        sock.send(json.dumps(answer).encode())


if __name__ == "__main__":
    main()
