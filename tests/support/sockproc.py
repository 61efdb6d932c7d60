"""A fixture process for tests/support/realnode.py: it creates real sockets and reports them itself.

It runs inside a test namespace (started by `nsenter --net=PATH setpriv ... python sockproc.py`)
and reports, as JSON lines on the file descriptor given by --report-fd, what it holds: for every
socket its fd, its inode (os.fstat(fd).st_ino), getsockname/getpeername, type/protocol and the
socket's own namespace (ioctl SIOCGSKNS -> a netns fd whose inode names the namespace; that
ioctl needs CAP_NET_ADMIN, so for unprivileged tenants the builder asks the same question of the
socket itself, borrowed with pidfd_getfd). That is the ground truth the integration tests
compare nsnet against, so it must never come from parsing /proc/net.

Standard library only, and everything it needs is imported up front: it runs as an unprivileged
uid under an interpreter that the test's interpreter may not be (see realnode.interpreter_for).

Roles (argv[1]):
  pause    report, then exec `sleep infinity` with argv[0] "/pause" (a sandbox holder)
  serve    create the sockets of --spec, fork --workers children that hold them all, then accept
           connections on the listeners marked "accept" and report each accepted socket
  hold     create the sockets of --spec and hold them; answers commands on stdin
  thread   like hold, plus one thread that setns()es into the namespace of fd --thread-netns-fd,
           creates the sockets of --thread-spec there, and sleeps
  foreign  setns() into the namespace of fd --foreign-netns-fd, create the sockets of --spec,
           setns() back: the process lives in its original namespace, its sockets in the other

Commands on stdin (JSON lines), answered on the report fd:
  {"cmd": "timewait", "listener": NAME}   connect to that loopback listener, accept, close the
                                          client side first: leaves a TIME_WAIT socket (inode 0)
  {"cmd": "describe"}                     report every socket again
A closed stdin (the test process died) makes the process exit, as a last-resort cleanup.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import sys
import threading

SIOCGSKNS = 0x894C
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
TCP_STATE_NAMES = {1: "ESTABLISHED", 7: "CLOSE", 10: "LISTEN"}

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread only (os.setns exists from Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Reporter:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "pid": os.getpid(), **fields}).encode() + b"\n"
        with self.lock:
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view):]


def netns_of_socket(fd: int) -> int | None:
    """The socket's own namespace. SIOCGSKNS needs CAP_NET_ADMIN, which tenants lack: then
    None, and the builder asks the socket itself through pidfd_getfd (see realnode)."""
    try:
        nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    except PermissionError:
        return None
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def own_netns(thread: bool = False) -> int:
    return os.stat("/proc/thread-self/ns/net" if thread else "/proc/self/ns/net").st_ino


def _endpoint(addr) -> dict:
    if isinstance(addr, tuple):
        return {"addr": addr[0], "port": addr[1]}
    if isinstance(addr, bytes):       # abstract unix name: leading NUL
        return {"addr": "@" + addr[1:].decode("utf-8", "surrogateescape"), "port": None}
    return {"addr": addr or "", "port": None}


def describe(name: str, sock: socket.socket) -> dict:
    fd = sock.fileno()
    try:
        peer = _endpoint(sock.getpeername())
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
        peer = None
    info = {
        "name": name,
        "fd": fd,
        "inode": os.fstat(fd).st_ino,
        "family": {socket.AF_INET: "inet", socket.AF_INET6: "inet6",
                   socket.AF_UNIX: "unix"}[sock.family],
        "type": {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram"}[sock.type],
        "protocol": sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
        "listening": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)),
        "local": _endpoint(sock.getsockname()),
        "remote": peer,
        "netns": netns_of_socket(fd),
        "tcp_state": None,
    }
    if sock.family != socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        info["tcp_state"] = TCP_STATE_NAMES.get(state, str(state))
    return info


def make_socket(spec: dict) -> list[tuple[str, socket.socket]]:
    """Create the sockets of one spec entry; returns (name, socket) pairs."""
    kind, name = spec["kind"], spec["name"]
    fam = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}[
        spec.get("family", "inet")]
    if kind == "tcp-listen":
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(spec.get("v6only", False)))
        s.bind((spec["addr"], spec["port"]))
        s.listen(64)
        return [(name, s)]
    if kind == "tcp-connect":
        s = socket.create_connection((spec["addr"], spec["port"]), timeout=20)
        s.settimeout(None)
        return [(name, s)]
    if kind in ("udp-bind", "udp-connect"):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if kind == "udp-bind":
            s.bind((spec["addr"], spec["port"]))
        else:
            s.connect((spec["addr"], spec["port"]))
        return [(name, s)]
    if kind == "unix-listen":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = spec["path"]
        s.bind("\0" + path[1:] if path.startswith("@") else path)
        s.listen(16)
        return [(name, s)]
    if kind == "loop-pair":
        # A listener on loopback, a client connected to it, and the accepted server end.
        lst = socket.socket(fam, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((spec["addr"], spec["port"]))
        lst.listen(64)
        cli = socket.create_connection((spec["addr"], spec["port"]), timeout=20)
        cli.settimeout(None)
        srv, _ = lst.accept()
        return [(name + ".listen", lst), (name + ".client", cli), (name + ".server", srv)]
    raise ValueError(f"unknown socket kind {kind!r}")


def make_sockets(specs: list[dict]) -> list[tuple[str, socket.socket]]:
    out: list[tuple[str, socket.socket]] = []
    for spec in specs:
        out.extend(make_socket(spec))
    return out


def time_wait(listener: socket.socket) -> dict:
    """Leave one TIME_WAIT socket: the client closes first (it is the active closer)."""
    cli = socket.create_connection(listener.getsockname()[:2], timeout=20)
    srv, _ = listener.accept()
    local, remote = _endpoint(cli.getsockname()), _endpoint(cli.getpeername())
    cli.shutdown(socket.SHUT_WR)          # client FIN first
    srv.settimeout(20)
    if srv.recv(1) != b"":                # the server saw the FIN ...
        raise RuntimeError("unexpected data")
    srv.close()                           # ... and answers with its own FIN
    cli.settimeout(20)
    if cli.recv(1) != b"":                # the client got the server's FIN: it is in TIME_WAIT
        raise RuntimeError("unexpected data")
    state = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    cli.close()
    # After the peer's FIN the full socket is CLOSE; the kernel keeps a timewait mini-socket.
    return {"local": local, "remote": remote, "netns": own_netns(),
            "state_before_close": TCP_STATE_NAMES.get(state, str(state))}


def serve_commands(rep: Reporter, socks: list[tuple[str, socket.socket]],
                   listeners: list[tuple[str, socket.socket]] = ()) -> None:
    """Answer stdin commands; accept on `listeners`; exit when stdin closes."""
    by_name = dict(socks)
    accepted: list[socket.socket] = []     # keep them open
    stdin = sys.stdin.buffer
    buf = b""
    watch = [0] + [s.fileno() for _, s in listeners]
    names = {s.fileno(): (n, s) for n, s in listeners}
    while True:
        ready, _, _ = select.select(watch, [], [])
        for fd in ready:
            if fd in names:
                lname, lsock = names[fd]
                conn, _ = lsock.accept()
                accepted.append(conn)
                rep.send("accepted", listener=lname,
                         socket=describe(f"{lname}.accepted{len(accepted)}", conn))
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                os._exit(0)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                try:
                    if cmd["cmd"] == "timewait":
                        rep.send("timewait", **time_wait(by_name[cmd["listener"]]))
                    elif cmd["cmd"] == "describe":
                        rep.send("sockets", sockets=[describe(n, s) for n, s in socks])
                    else:
                        rep.send("error", error=f"unknown command {cmd!r}")
                except Exception as e:   # report, keep serving: the test decides
                    rep.send("error", error=f"{type(e).__name__}: {e}")


def base_fields(role: str) -> dict:
    return {"role": role, "ppid": os.getppid(), "uid": os.getuid(), "euid": os.geteuid(),
            "gid": os.getgid(), "netns": own_netns(), "argv": sys.argv}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["pause", "serve", "hold", "thread", "foreign"])
    ap.add_argument("--report-fd", type=int, required=True)
    ap.add_argument("--spec", default="[]")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--thread-netns-fd", type=int)
    ap.add_argument("--thread-spec", default="[]")
    ap.add_argument("--foreign-netns-fd", type=int)
    args = ap.parse_args()
    rep = Reporter(args.report_fd)
    try:
        run(args, rep)
    except Exception as e:
        rep.send("error", error=f"{type(e).__name__}: {e}")
        sys.exit(1)


def run(args, rep: Reporter) -> None:
    spec = json.loads(args.spec)
    if args.role == "pause":
        # The report pipe is close-on-exec: the builder sees EOF once argv is "/pause".
        os.set_inheritable(args.report_fd, False)
        rep.send("ready", **base_fields("pause"), sockets=[])
        os.execv("/bin/sleep", ["/pause", "infinity"])

    if args.role == "foreign":
        home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        setns(args.foreign_netns_fd)
        os.close(args.foreign_netns_fd)
        try:
            socks = make_sockets(spec)
        finally:
            setns(home)
            os.close(home)
        rep.send("ready", **base_fields("foreign"),
                 sockets=[describe(n, s) for n, s in socks])
        serve_commands(rep, socks)

    socks = make_sockets(spec)
    thread_info = None
    if args.role == "thread":
        done = threading.Event()
        box: dict = {}

        def body() -> None:
            try:
                setns(args.thread_netns_fd)
                tsocks = make_sockets(json.loads(args.thread_spec))
                box["info"] = {"tid": threading.get_native_id(), "netns": own_netns(thread=True),
                               "sockets": [describe(n, s) for n, s in tsocks]}
                box["socks"] = tsocks
            except Exception as e:
                box["error"] = f"{type(e).__name__}: {e}"
            done.set()
            threading.Event().wait()      # sleep forever, in the other namespace

        threading.Thread(target=body, daemon=True, name="other-netns").start()
        done.wait()
        if "error" in box:
            raise RuntimeError(box["error"])
        os.close(args.thread_netns_fd)
        thread_info = box["info"]
        socks = socks + box["socks"]

    if args.role == "serve" and args.workers:
        for i in range(args.workers):
            pid = os.fork()
            if pid == 0:
                # A worker: it only holds the inherited listener fds, like a pre-fork server's.
                die_with_parent()
                fields = base_fields("worker")
                fields["worker"] = i
                rep.send("ready", **fields, sockets=[describe(n, s) for n, s in socks])
                os.close(args.report_fd)
                os.close(0)
                while True:
                    signal.pause()
    fields = base_fields(args.role)
    if thread_info:
        fields["thread"] = thread_info
    rep.send("ready", **fields, sockets=[describe(n, s) for n, s in socks
                                         if thread_info is None
                                         or n not in {d["name"] for d in thread_info["sockets"]}])
    listeners = [(n, s) for (n, s), sp in zip(socks, _flat_specs(spec)) if sp.get("accept")]
    serve_commands(rep, socks, listeners)


def _flat_specs(specs: list[dict]) -> list[dict]:
    """The spec of each created socket, aligned with make_sockets' output."""
    out = []
    for sp in specs:
        out.extend([sp] * (3 if sp["kind"] == "loop-pair" else 1))
    return out


if __name__ == "__main__":
    main()
