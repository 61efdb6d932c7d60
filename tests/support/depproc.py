"""A fixture process for tests/support/depnode.py: services that accept and close connections
the way the plan says, and clients that open them. Standard library only (it runs as other
uids under the system's python3); one JSON line per event on stdout.

Roles (argv[1]):
  server   --listen PORT[:noaccept] ... --workers N: bind every listener on 0.0.0.0, fork N
           workers that hold them all (a pre-fork server: one socket, N+1 pids), and accept on
           the listeners not marked noaccept. On each accepted connection the first byte
           says what to do: `k` keep it until the client closes (then close too), `c` close
           at once (the server closes first).
  udp      --listen PORT: a UDP server (unconnected, listening).
  client   holds connections; commands on stdin (JSON lines), each answered with its result:
             {"op": "keep", "name": N, "host": H, "port": P}        connect, send k, hold
             {"op": "server_closes", ...}   send c, wait for the server's FIN, close: the
                                            server's end is left in TIME_WAIT
             {"op": "server_closes_kept", ...}  send c, wait for the FIN, keep it: ours is in
                                            CLOSE_WAIT, the server's an orphan in FIN_WAIT2
             {"op": "client_closes", ...}   send k, close first: ours is left in TIME_WAIT
             {"op": "unaccepted", ...}      connect to a noaccept listener and hold: the
                                            server's end waits in the accept queue
             {"op": "udp", ...}             a connected UDP socket, held
             {"op": "close", "name": N}     close a held connection, first
  unix     --path PATH: a unix listener (a sidecar that talks to nobody over TCP).
  pause    exec sleep with argv[0] /pause (a sandbox holder), after reporting.
A closed stdin (the test process died) makes a client exit; servers die with their parent.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sys
import threading

PR_SET_PDEATHSIG = 1


def report(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")
    sys.stdout.flush()


def die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def handle(conn: socket.socket) -> None:
    try:
        what = conn.recv(1)
        if what == b"k":
            while conn.recv(4096):
                pass
    except OSError:
        pass
    finally:
        conn.close()


def accept_forever(listeners: list[socket.socket]) -> None:
    while True:
        ready, _, _ = select.select(listeners, [], [])
        for lst in ready:
            try:
                conn, _ = lst.accept()
            except BlockingIOError:
                continue   # another worker took it
            threading.Thread(target=handle, args=(conn,), daemon=True).start()


def server(args: list[str]) -> None:
    listens, workers = [], 0
    it = iter(args)
    for arg in it:
        if arg == "--listen":
            listens.append(next(it))
        elif arg == "--workers":
            workers = int(next(it))
    socks, accepting = [], []
    for spec in listens:
        port, _, mode = spec.partition(":")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(port)))
        s.listen(16)
        s.setblocking(False)
        socks.append((int(port), s))
        if mode != "noaccept":
            accepting.append(s)
    pids = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            die_with_parent()
            accept_forever(accepting)
        pids.append(pid)
    report("ready", workers=pids, listeners={port: inode(s) for port, s in socks})
    signal.pause()   # the master holds the listeners too


def udp(args: list[str]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(args[args.index("--listen") + 1])))
    report("ready", inode=inode(s))
    signal.pause()


def unix(args: list[str]) -> None:
    path = args[args.index("--path") + 1]
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(4)
    report("ready", inode=inode(s), path=path)
    signal.pause()


def _wait_eof(s: socket.socket) -> None:
    s.settimeout(10)
    while s.recv(4096):
        pass


def client() -> None:
    held: dict[str, socket.socket] = {}
    report("ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        op, name = cmd["op"], cmd.get("name")
        try:
            if op == "close":
                held.pop(name).close()
                report("done", name=name)
                continue
            if op == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect((cmd["host"], cmd["port"]))
            else:
                s = socket.create_connection((cmd["host"], cmd["port"]), timeout=10)
            local = s.getsockname()
            ino = inode(s)
            if op in ("keep", "client_closes"):
                s.sendall(b"k")
            elif op in ("server_closes", "server_closes_kept"):
                s.sendall(b"c")
                _wait_eof(s)
            if op in ("server_closes", "client_closes"):
                s.close()
            else:
                held[name] = s
            report("done", name=name, local_addr=local[0], local_port=local[1], inode=ino)
        except OSError as exc:
            report("failed", name=name, error=str(exc))


def main() -> None:
    role, args = sys.argv[1], sys.argv[2:]
    die_with_parent()
    if role == "pause":
        report("ready")
        os.execvp("sleep", ["/pause", "infinity"])
    {"server": server, "udp": udp, "unix": unix}.get(role, lambda _: client())(args)


if __name__ == "__main__":
    main()
