"""The sock_diag test scenario: known sockets built inside a scratch namespace, what sock_diag
must say of them, and the capture that wrote tests/data/sockdiag_*.bin from them.

The unit tier checks the codec on those captures (tests/unit/test_sockdiag.py); the kernel tier
builds the same Scenario in a fresh namespace and compares the netlink source's dumps with the
proc source's tables (tests/kernel/test_netlink_live.py). Rebuild the captures, as root, with

    python3 tests/support/diag_scenario.py capture
"""
from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":      # run from a checkout: nsnet is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nsnet import netparse  # noqa: E402
from nsnet.sockdiag import (  # noqa: E402
    ALL, build_inet_request, build_tcp_legacy_request, build_unix_request,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TENANT = 12345           # some sockets are created with this effective uid
V6 = "fd7d::1"           # an extra IPv6 address on lo
ABSTRACT = b"\0nsnt-diag\0tail"


# ============================================================== the scenario (live + capture)

@contextlib.contextmanager
def effective_uid(uid: int):
    """Sockets record the creator's fsuid: create some as another user (root can come back)."""
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)


# The kinds this scenario builds and compares (packet, netlink, ping and UDP-Lite sockets have
# their own: link_scenario.py): the tables and the sock_diag protocols that list them.
CLASSIC_FILES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix")
CLASSIC_PROTOS = ("tcp", "udp", "raw", "unix")


def _proc_rows(names=CLASSIC_FILES) -> list[netparse.Socket]:
    out = []
    for name in names:
        with open(f"/proc/thread-self/net/{name}", "rb") as f:
            out.extend(netparse.parse_net_file(name, f.read()).sockets)
    return out


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Scenario:
    """Known sockets, built inside the current thread's (scratch) namespace.

    inodes maps a name to the fstat() inode of a socket this process holds; the expected
    rows below refer to those names (None: no process holds it, inode 0).
    """
    unix_dir: str
    inodes: dict[str, int] = field(default_factory=dict)
    keep: list[socket.socket] = field(default_factory=list)

    def hold(self, name: str, sock: socket.socket) -> socket.socket:
        self.keep.append(sock)
        self.inodes[name] = os.fstat(sock.fileno()).st_ino
        return sock

    def close(self) -> None:
        for s in self.keep:
            s.close()
        self.keep.clear()

    def tcp_listener(self, name, family, addr, port, *, v6only=None, defer=False):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if defer:   # the handshake's last ACK is dropped: the request socket stays SYN_RECV
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 60)
        s.bind((addr, port))
        s.listen(16)
        return self.hold(name, s)

    def tcp_client(self, name, family, local, remote):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(local)
        c.connect(remote)
        return self.hold(name, c)

    def build(self) -> None:
        INET, INET6 = socket.AF_INET, socket.AF_INET6
        # --- TCP
        l4 = self.tcp_listener("l4", INET, "127.0.0.1", 7001)
        with effective_uid(TENANT):
            self.tcp_listener("lt", INET, "0.0.0.0", 7002)
            self.tcp_listener("ldefer", INET, "127.0.0.1", 7005, defer=True)
        l6 = self.tcp_listener("l6", INET6, V6, 7003, v6only=True)
        ld = self.tcp_listener("ldual", INET6, "::", 7004, v6only=False)
        self.tcp_client("c4", INET, ("127.0.0.1", 40001), ("127.0.0.1", 7001))
        self.hold("c4.acc", l4.accept()[0])
        self.tcp_client("c6", INET6, ("::1", 40002), (V6, 7003))
        self.hold("c6.acc", l6.accept()[0])
        self.tcp_client("cmap", INET, ("127.0.0.1", 40003), ("127.0.0.1", 7004))
        self.hold("cmap.acc", ld.accept()[0])          # ::ffff:127.0.0.1 on both ends
        self.tcp_client("cdefer", INET, ("127.0.0.1", 40006), ("127.0.0.1", 7005))
        # connected to lt, never accepted
        self.tcp_client("cqueued", INET, ("127.0.0.1", 40007), ("127.0.0.1", 7002))
        half = self.tcp_client("chalf", INET, ("127.0.0.1", 40009), ("127.0.0.1", 7001))
        self.hold("chalf.acc", l4.accept()[0])
        half.shutdown(socket.SHUT_WR)                  # FIN_WAIT2 here, CLOSE_WAIT there
        for family, local, remote, listener in (
                (INET, ("127.0.0.1", 40004), ("127.0.0.1", 7001), l4),
                (INET6, ("::1", 40005), (V6, 7003), l6)):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.bind(local)
            c.connect(remote)
            a = listener.accept()[0]
            c.close()                                  # the client closes first ...
            assert a.recv(1) == b""
            a.close()                                  # ... so it ends in TIME_WAIT
        synsent = socket.socket(INET, socket.SOCK_STREAM)
        synsent.bind(("10.254.0.1", 40008))
        synsent.setblocking(False)
        assert synsent.connect_ex(("10.254.255.1", 9)) == errno.EINPROGRESS   # nobody answers ARP
        self.hold("csynsent", synsent)
        self.hold("bound", socket.socket(INET, socket.SOCK_STREAM)).bind(("127.0.0.1", 7006))
        # --- UDP
        u4 = self.hold("u4", socket.socket(INET, socket.SOCK_DGRAM))
        u4.bind(("127.0.0.1", 5301))
        u6 = self.hold("u6dual", socket.socket(INET6, socket.SOCK_DGRAM))
        u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        u6.bind(("::", 5302))
        uc4 = self.hold("uc4", socket.socket(INET, socket.SOCK_DGRAM))
        uc4.bind(("127.0.0.1", 40010))
        uc4.connect(("127.0.0.1", 5301))
        uc6 = self.hold("uc6", socket.socket(INET6, socket.SOCK_DGRAM))
        uc6.bind(("::1", 40011))
        uc6.connect(("::1", 5302))
        ucm = self.hold("ucmap", socket.socket(INET6, socket.SOCK_DGRAM))
        ucm.bind(("::", 40012))
        ucm.connect(("::ffff:127.0.0.1", 5301))
        with effective_uid(TENANT):
            self.hold("ut", socket.socket(INET, socket.SOCK_DGRAM)).bind(("0.0.0.0", 5303))
        # --- raw (the port columns hold the protocol)
        self.hold("r4", socket.socket(INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        self.hold("r6", socket.socket(INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
        # --- unix
        d = self.unix_dir
        srv = self.hold("us", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        srv.bind(f"{d}/srv.sock")
        srv.listen(8)
        self.hold("ua", socket.socket(socket.AF_UNIX)).connect(f"{d}/srv.sock")
        self.hold("ua.acc", srv.accept()[0])
        self.hold("ue", socket.socket(socket.AF_UNIX)).connect(f"{d}/srv.sock")  # not accepted
        ab = self.hold("uabs", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        ab.bind(ABSTRACT)
        ab.listen(1)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.hold("upair.a", a)
        self.hold("upair.b", b)
        dg = self.hold("udg", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        dg.bind(f"{d}/dgram.sock")
        self.hold("udgc", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)).connect(
            f"{d}/dgram.sock")
        self.hold("udgu", socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sq = self.hold("useq", socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        sq.bind(f"{d}/seq.sock")
        sq.listen(1)
        # --- settle: the closes above end in TIME_WAIT, nothing still in flight
        def settled():
            states = collections.Counter(s.state for s in _proc_rows(("tcp", "tcp6")))
            return states["TIME_WAIT"] == 2 and states["SYN_RECV"] == 1 and \
                not (states["LAST_ACK"] or states["FIN_WAIT1"] or states["CLOSING"])
        _wait_for(settled, "two TIME_WAIT sockets and one SYN_RECV request")


def make_namespace(name: str) -> str:
    """ip netns add NAME with lo up, V6 on lo, and a veth pair whose two ends both stay
    inside (10.254.0.1/16 on one end: nothing answers there, so a connect stays SYN_SENT)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["addr", "add", f"{V6}/128", "dev", "lo", "nodad"],
                    ["link", "add", "nsntd0", "type", "veth", "peer", "name", "nsntd1"],
                    ["addr", "add", "10.254.0.1/16", "dev", "nsntd0"],
                    ["link", "set", "nsntd0", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], check=False)
        raise
    return f"/run/netns/{name}"


def expected_rows(inodes: dict[str, int], unix_dir: str) -> dict[str, list[tuple]]:
    """What the Scenario must look like through sock_diag, per captured file:
    (proto, family, state, laddr, lport, raddr, rport, inode, uid, unix_type)."""
    def ino(name):
        return 0 if name is None else inodes[name]

    def tcp(family, rows):
        return [("tcp", family, st, la, lp, ra, rp, ino(n), uid, None)
                for st, la, lp, ra, rp, n, uid in rows]
    tcp4 = tcp("inet", [
        ("LISTEN", "127.0.0.1", 7001, "0.0.0.0", 0, "l4", 0),
        ("LISTEN", "0.0.0.0", 7002, "0.0.0.0", 0, "lt", TENANT),
        ("LISTEN", "127.0.0.1", 7005, "0.0.0.0", 0, "ldefer", TENANT),
        ("ESTABLISHED", "127.0.0.1", 40001, "127.0.0.1", 7001, "c4", 0),
        ("ESTABLISHED", "127.0.0.1", 7001, "127.0.0.1", 40001, "c4.acc", 0),
        ("ESTABLISHED", "127.0.0.1", 40003, "127.0.0.1", 7004, "cmap", 0),
        ("ESTABLISHED", "127.0.0.1", 40006, "127.0.0.1", 7005, "cdefer", 0),
        # sock_diag reports a request socket with uid 0 (/proc: its listener's, TENANT)
        ("SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, None, 0),
        ("ESTABLISHED", "127.0.0.1", 40007, "127.0.0.1", 7002, "cqueued", 0),
        ("ESTABLISHED", "127.0.0.1", 7002, "127.0.0.1", 40007, None, TENANT),  # not accepted
        ("FIN_WAIT2", "127.0.0.1", 40009, "127.0.0.1", 7001, "chalf", 0),
        ("CLOSE_WAIT", "127.0.0.1", 7001, "127.0.0.1", 40009, "chalf.acc", 0),
        ("TIME_WAIT", "127.0.0.1", 40004, "127.0.0.1", 7001, None, 0),
        ("SYN_SENT", "10.254.0.1", 40008, "10.254.255.1", 9, "csynsent", 0),
    ])
    tcp6 = tcp("inet6", [
        ("LISTEN", V6, 7003, "::", 0, "l6", 0),
        ("LISTEN", "::", 7004, "::", 0, "ldual", 0),
        ("ESTABLISHED", "::1", 40002, V6, 7003, "c6", 0),
        ("ESTABLISHED", V6, 7003, "::1", 40002, "c6.acc", 0),
        ("ESTABLISHED", "127.0.0.1", 7004, "127.0.0.1", 40003, "cmap.acc", 0),  # mapped
        ("TIME_WAIT", "::1", 40005, V6, 7003, None, 0),
    ])

    def dgram(proto, family, rows):
        return [(proto, family, st, la, lp, ra, rp, ino(n), uid, None)
                for st, la, lp, ra, rp, n, uid in rows]
    udp4 = dgram("udp", "inet", [
        ("UNCONN", "127.0.0.1", 5301, "0.0.0.0", 0, "u4", 0),
        ("ESTABLISHED", "127.0.0.1", 40010, "127.0.0.1", 5301, "uc4", 0),
        ("UNCONN", "0.0.0.0", 5303, "0.0.0.0", 0, "ut", TENANT),
    ])
    udp6 = dgram("udp", "inet6", [
        ("UNCONN", "::", 5302, "::", 0, "u6dual", 0),
        ("ESTABLISHED", "::1", 40011, "::1", 5302, "uc6", 0),
        ("ESTABLISHED", "127.0.0.1", 40012, "127.0.0.1", 5301, "ucmap", 0),    # mapped
    ])
    raw4 = dgram("raw", "inet", [("UNCONN", "0.0.0.0", 1, "0.0.0.0", 0, "r4", 0)])
    raw6 = dgram("raw", "inet6", [("UNCONN", "::", 58, "::", 0, "r6", 0)])
    d = unix_dir
    unix = [("unix", "unix", st, path, None, "", None, ino(n), None, kind)
            for st, kind, path, n in [
                ("LISTEN", "stream", f"{d}/srv.sock", "us"),
                ("ESTABLISHED", "stream", "", "ua"),
                ("ESTABLISHED", "stream", f"{d}/srv.sock", "ua.acc"),
                ("ESTABLISHED", "stream", "", "ue"),
                # (ue's peer, still in srv.sock's queue, has no inode: unix_diag skips it)
                ("LISTEN", "stream", "@nsnt-diag@tail", "uabs"),
                ("ESTABLISHED", "stream", "", "upair.a"),
                ("ESTABLISHED", "stream", "", "upair.b"),
                # connect() on a datagram socket marks both ends established (6.18)
                ("ESTABLISHED", "dgram", f"{d}/dgram.sock", "udg"),
                ("ESTABLISHED", "dgram", "", "udgc"),
                ("UNCONN", "dgram", "", "udgu"),
                ("LISTEN", "seqpacket", f"{d}/seq.sock", "useq"),
            ]]
    return {"tcp4": tcp4, "tcp6": tcp6, "tcp_legacy": tcp4 + tcp6, "udp4": udp4,
            "udp6": udp6, "raw4": raw4, "raw6": raw6, "unix": unix}


def row(s) -> tuple:
    return (s.proto, s.family, s.state, s.local_addr, s.local_port, s.remote_addr,
            s.remote_port, s.inode, s.uid, s.unix_type)


def rows(sockets) -> collections.Counter:
    return collections.Counter(row(s) for s in sockets)



NLMSGHDR = struct.Struct("=IHHII")


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, nlmsg_len, nlmsg_type) of each message, framed independently of the parser."""
    out, off = [], 0
    while off < len(data):
        length, mtype = NLMSGHDR.unpack_from(data, off)[:2]
        out.append((off, length, mtype))
        off += (length + 3) & ~3
    assert off == len(data)
    return out



# ============================================================== capture (run by hand)

def capture() -> None:
    """Rebuild tests/data/sockdiag_*.bin and sockdiag_capture.json (as root)."""
    from nsnet.setns import run_in_namespace
    from nsnet.sources.netlink import open_diag_socket

    name = f"nsnt-diag-cap-{secrets.token_hex(3)}"
    path = make_namespace(name)
    unix_dir = tempfile.mkdtemp(prefix="nsnt-diag-cap-")
    scenario = Scenario(unix_dir)
    requests = {
        "tcp_legacy": build_tcp_legacy_request(ALL, seq=1001),
        "tcp4": build_inet_request(socket.AF_INET, socket.IPPROTO_TCP, ALL, seq=1002),
        "tcp6": build_inet_request(socket.AF_INET6, socket.IPPROTO_TCP, ALL, seq=1003),
        "udp4": build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, 0xFFFFFFFF, seq=1004),
        "udp6": build_inet_request(socket.AF_INET6, socket.IPPROTO_UDP, 0xFFFFFFFF, seq=1005),
        "raw_enoent": build_inet_request(socket.AF_INET, socket.IPPROTO_RAW, 0xFFFFFFFF,
                                         seq=1006, raw_protocol=socket.IPPROTO_RAW),
        "unix": build_unix_request(seq=1007),
    }
    record = {"kernel": os.uname().release, "unix_dir": unix_dir, "seq": {}, "datagrams": {}}
    try:
        diag = run_in_namespace(path, os.stat(path).st_ino,
                                lambda: (scenario.build(), open_diag_socket())[1])
        with diag:
            for key, request in requests.items():
                seq = NLMSGHDR.unpack_from(request)[3]
                diag.send(request)
                datagrams = []
                while True:
                    datagrams.append(diag.recv(1 << 20))
                    types = [t for _, _, t in frames(datagrams[-1])]
                    if 2 in types or 3 in types:
                        break
                (DATA / f"sockdiag_{key}.bin").write_bytes(b"".join(datagrams))
                record["seq"][key] = seq
                record["datagrams"][key] = len(datagrams)
        record["inodes"] = scenario.inodes
        (DATA / "sockdiag_capture.json").write_text(json.dumps(record, indent=1, sort_keys=True)
                                                    + "\n")
    finally:
        scenario.close()
        shutil.rmtree(unix_dir, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)



if __name__ == "__main__":
    if sys.argv[1:] != ["capture"]:
        sys.exit("usage: python3 tests/support/diag_scenario.py capture   (as root)")
    capture()
