"""The socket kinds beyond tcp/udp/raw/unix, built for real in the calling thread's (scratch)
network namespace: packet sockets (a sniffer on lo, a cooked IPv4 listener on every
interface), netlink sockets (a route listener with groups, a bound generic one), ping
sockets (IPv4 and IPv6) and UDP-Lite sockets (one bound, one connected) -- build(); and
build_scoped(): IPv6 wildcards with and without IPV6_V6ONLY, sockets bound to an interface.

The kernel tier (tests/kernel/test_socket_kinds_live.py) builds it in a fresh namespace and holds
every source to it; the capture (run by hand, as root) wrote tests/data/kinds_* from it:

    unshare -n python3 tests/support/link_scenario.py capture

Each socket's expectations come from what it was made to do and from fstat() (its inode),
never from nsnet's parsers.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":      # run from a checkout: nsnet is two levels up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DATA = Path(__file__).resolve().parents[1] / "data"
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
RTMGRP_LINK, RTMGRP_IPV4_IFADDR = 0x1, 0x10
IPPROTO_UDPLITE = 136
NETLINK_GENERIC = 16
PING_ID = 4242          # the kernel picks a ping socket's id when bound to port 0; we ask one
UDPLITE_PORT = 4343


@dataclass
class Built:
    """The live sockets, and the rows every source must list for them."""
    held: list[socket.socket] = field(default_factory=list)
    # (proto, family, state, local_addr, local_port, remote_addr, remote_port, inode, uid)
    expected: list[tuple] = field(default_factory=list)
    packet: dict[int, tuple] = field(default_factory=dict)    # inode -> (type, proto, ifindex)
    netlink: dict[int, tuple] = field(default_factory=dict)   # inode -> (protocol, portid, groups)

    inodes: dict[str, int] = field(default_factory=dict)      # name -> inode (keep())

    def keep(self, name: str, s: socket.socket) -> socket.socket:
        """Hold `s` (until close()) and note its inode under `name`."""
        self.held.append(s)
        self.inodes[name] = os.fstat(s.fileno()).st_ino
        return s

    def close(self) -> None:
        for s in self.held:
            s.close()


def allow_ping() -> None:
    """Ping sockets are refused to every group by default (ping_group_range "1 0"); the range
    is per namespace: open it in this scratch one."""
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")


def lo_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def build() -> Built:
    """In the calling thread's namespace (fresh: lo is its only interface, ifindex 1)."""
    lo_up()
    allow_ping()
    b = Built()
    uid = os.geteuid()

    def keep(s: socket.socket) -> int:
        b.held.append(s)
        return os.fstat(s.fileno()).st_ino

    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sniffer.bind(("lo", ETH_P_ALL))
    ino = keep(sniffer)
    b.packet[ino] = ("raw", ETH_P_ALL, 1)
    b.expected.append(("packet", "packet", "UNCONN", "lo", None, "", None, ino, uid))
    cooked = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    ino = keep(cooked)
    b.packet[ino] = ("dgram", ETH_P_IP, 0)
    b.expected.append(("packet", "packet", "UNCONN", "*", None, "", None, ino, uid))

    route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    route.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
    ino = keep(route)
    portid = route.getsockname()[0]
    b.netlink[ino] = (0, portid, RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
    b.expected.append(("netlink", "netlink", "UNCONN", "route", portid, "", None, ino, None))
    generic = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    generic.bind((0, 0))
    ino = keep(generic)
    portid = generic.getsockname()[0]
    b.netlink[ino] = (16, portid, 0)
    b.expected.append(("netlink", "netlink", "UNCONN", "generic", portid, "", None, ino, None))

    ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    ping.bind(("127.0.0.1", PING_ID))
    ino = keep(ping)
    b.expected.append(("icmp", "inet", "UNCONN", "127.0.0.1", PING_ID, "0.0.0.0", 0, ino, uid))
    ping6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
    ping6.bind(("::1", PING_ID + 1))
    ino = keep(ping6)
    b.expected.append(("icmp", "inet6", "UNCONN", "::1", PING_ID + 1, "::", 0, ino, uid))

    lite = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    lite.bind(("127.0.0.1", UDPLITE_PORT))
    ino = keep(lite)
    b.expected.append(("udplite", "inet", "UNCONN", "127.0.0.1", UDPLITE_PORT, "0.0.0.0", 0,
                       ino, uid))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    client.connect(("127.0.0.1", UDPLITE_PORT))
    ino = keep(client)
    port = client.getsockname()[1]
    b.expected.append(("udplite", "inet", "ESTABLISHED", "127.0.0.1", port, "127.0.0.1",
                       UDPLITE_PORT, ino, uid))
    return b


SCOPED_PORTS = {"v6only": 4500, "dual": 4501, "udp_v6only": 4502, "link_local": 4503,
                "bound_v4": 4504}
DUMMY, PEER = "nsnt0", "nsnt1"    # a veth pair: nsnt0 gets a link-local and an IPv4 address


def build_scoped() -> tuple[Built, dict[int, tuple]]:
    """IPv6 wildcards with and without IPV6_V6ONLY, and sockets bound to an interface (a
    link-local address's scope, SO_BINDTODEVICE), in the calling thread's fresh namespace;
    and inode -> (v6only, bound interface name) for each (None: the kernel says nothing)."""
    lo_up()
    subprocess.run(["ip", "link", "add", DUMMY, "type", "veth", "peer", "name", PEER],
                   check=True)
    subprocess.run(["ip", "link", "set", PEER, "up"], check=True)
    subprocess.run(["ip", "addr", "add", "fe80::1/64", "dev", DUMMY, "nodad"], check=True)
    subprocess.run(["ip", "addr", "add", "10.9.0.1/24", "dev", DUMMY], check=True)
    subprocess.run(["ip", "link", "set", DUMMY, "up"], check=True)
    ifindex = socket.if_nametoindex(DUMMY)
    b, scoped = Built(), {}

    def keep(s: socket.socket, v6only: bool | None, bound: str | None) -> int:
        b.held.append(s)
        ino = os.fstat(s.fileno()).st_ino
        scoped[ino] = (v6only, bound)
        return ino

    for name, v6only in (("v6only", 1), ("dual", 0)):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind(("::", SCOPED_PORTS[name]))
        s.listen(8)
        keep(s, bool(v6only), None)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::", SCOPED_PORTS["udp_v6only"]))
    keep(s, True, None)
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("fe80::1", SCOPED_PORTS["link_local"], 0, ifindex))   # the scope binds the device
    s.listen(8)
    keep(s, True, DUMMY)       # bound to an IPv6 address: the kernel sets ipv6only (bind)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, DUMMY.encode())
    s.bind(("0.0.0.0", SCOPED_PORTS["bound_v4"]))
    s.listen(8)
    keep(s, None, DUMMY)
    # an IPv4 connection the dual-stack listener accepts (its local address: IPv4, unmapped)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.connect(("127.0.0.1", SCOPED_PORTS["dual"]))
    keep(client, None, None)
    return b, scoped


QUEUE_PORTS = {"backlog": 4600, "traffic": 4601, "unread": 4602, "udp": 4603, "orphan": 4604}
BACKLOG, PENDING = 7, 3          # the listener that never accepts: its backlog, connects
SENT, ANSWERED, UNREAD = 1000, 300, 500
UNIX_BACKLOG, UNIX_PENDING, UNIX_UNREAD = 5, 2, 123


def build_queues(unix_dir: str) -> tuple[Built, dict[str, int]]:
    """Queues with known lengths, in the calling thread's fresh namespace: a TCP listener
    that never accepts (PENDING connections waiting, backlog BACKLOG), a connection that
    carried SENT bytes one way and ANSWERED back (each read), an accepted connection with
    UNREAD bytes its reader never read, a UDP socket with one datagram queued, a unix
    listener that never accepts and a unix pair with bytes unread. Returns the sockets and
    name -> inode."""
    lo_up()
    b = Built()
    ino = b.inodes

    keep = b.keep
    lst = keep("backlog", socket.socket())
    lst.bind(("127.0.0.1", QUEUE_PORTS["backlog"]))
    lst.listen(BACKLOG)
    for i in range(PENDING):
        keep(f"pending{i}", socket.create_connection(("127.0.0.1", QUEUE_PORTS["backlog"])))
    srv = keep("traffic_listener", socket.socket())
    srv.bind(("127.0.0.1", QUEUE_PORTS["traffic"]))
    srv.listen(8)
    client = keep("traffic_client", socket.create_connection(("127.0.0.1",
                                                               QUEUE_PORTS["traffic"])))
    server = keep("traffic_server", srv.accept()[0])
    client.sendall(b"x" * SENT)
    got = 0
    while got < SENT:
        got += len(server.recv(SENT - got))
    server.sendall(b"y" * ANSWERED)
    got = 0
    while got < ANSWERED:
        got += len(client.recv(ANSWERED - got))
    srv2 = keep("unread_listener", socket.socket())
    srv2.bind(("127.0.0.1", QUEUE_PORTS["unread"]))
    srv2.listen(8)
    writer = keep("unread_writer", socket.create_connection(("127.0.0.1",
                                                             QUEUE_PORTS["unread"])))
    keep("unread_reader", srv2.accept()[0])
    writer.sendall(b"z" * UNREAD)
    # an orphan: the server closes its end first, the client does not answer with its FIN:
    # the server's socket lives on, held by nobody, in FIN_WAIT2 (tcp_fin_timeout)
    srv3 = keep("orphan_listener", socket.socket())
    srv3.bind(("127.0.0.1", QUEUE_PORTS["orphan"]))
    srv3.listen(8)
    keep("orphan_client", socket.create_connection(("127.0.0.1", QUEUE_PORTS["orphan"])))
    srv3.accept()[0].close()
    udp = keep("udp", socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", QUEUE_PORTS["udp"]))
    sender = keep("udp_sender", socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender.sendto(b"d" * 200, ("127.0.0.1", QUEUE_PORTS["udp"]))
    ulst = keep("unix_backlog", socket.socket(socket.AF_UNIX))
    ulst.bind(f"{unix_dir}/backlog.sock")
    ulst.listen(UNIX_BACKLOG)
    for i in range(UNIX_PENDING):
        c = keep(f"unix_pending{i}", socket.socket(socket.AF_UNIX))
        c.connect(f"{unix_dir}/backlog.sock")
    left, right = socket.socketpair()
    keep("unix_left", left)
    keep("unix_right", right)
    left.sendall(b"u" * UNIX_UNREAD)
    import time
    time.sleep(0.2)      # loopback delivery and the ACKs settle before anything reads
    return b, ino


OPTION_PORTS = {"set": 4700, "unset": 4701, "set6": 4702, "udp_set": 4703}
# What build_options() sets, as getsockopt reads it back: the kernel doubles SO_RCVBUF and
# SO_SNDBUF (sock_setsockopt: "we double it on the way in")
OPTIONS_SET = {"SO_REUSEADDR": 1, "SO_REUSEPORT": 1, "SO_KEEPALIVE": 1, "SO_RCVBUF": 2 * 65536,
               "SO_SNDBUF": 2 * 32768, "SO_MARK": 0x42, "TCP_NODELAY": 1, "TCP_KEEPIDLE": 33,
               "TCP_KEEPINTVL": 7, "TCP_KEEPCNT": 4, "TCP_USER_TIMEOUT": 12345,
               "SO_LINGER": 5, "TCP_CONGESTION": "reno", "IP_TOS": 0x10}


def build_options() -> tuple[Built, dict[str, int]]:
    """Sockets with every option knetstat shows set (OPTIONS_SET), one with none set, an
    IPv6 one with IPV6_TCLASS and IPV6_V6ONLY, a UDP one; name -> inode."""
    lo_up()
    b = Built()
    ino = b.inodes

    keep = b.keep
    s = keep("set", socket.socket())
    for level, option, value in (
            (socket.SOL_SOCKET, socket.SO_REUSEADDR, 1),
            (socket.SOL_SOCKET, socket.SO_REUSEPORT, 1),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.SOL_SOCKET, socket.SO_RCVBUF, 65536),
            (socket.SOL_SOCKET, socket.SO_SNDBUF, 32768),
            (socket.SOL_SOCKET, socket.SO_MARK, 0x42),
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 12345),
            (socket.IPPROTO_IP, socket.IP_TOS, 0x10)):
        s.setsockopt(level, option, value)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")
    s.bind(("127.0.0.1", OPTION_PORTS["set"]))
    s.listen(4)
    s = keep("unset", socket.socket())
    s.bind(("127.0.0.1", OPTION_PORTS["unset"]))
    s.listen(4)
    s = keep("set6", socket.socket(socket.AF_INET6))
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x20)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::", OPTION_PORTS["set6"]))
    s.listen(4)
    s = keep("udp_set", socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", OPTION_PORTS["udp_set"]))
    return b, ino


MPTCP_PORT = 4800
IPPROTO_MPTCP = 262


MULTIPATH_PORT = 4810
MULTIPATH_ADDRS = ("10.77.0.1", "10.77.0.2")
SOL_MPTCP, MPTCP_INFO = 284, 1


def mptcp_token(s: socket.socket) -> tuple[int, int]:
    """(token, additional subflows) from MPTCP_INFO (mptcpi_token, mptcpi_subflows)."""
    info = s.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)
    return struct.unpack_from("=I", info, 12)[0], info[0]


def build_multipath(b: Built) -> dict[str, int]:
    """An MPTCP connection with two subflows: the client's path manager opens the second
    from MULTIPATH_ADDRS[1] (an `ip mptcp endpoint ... subflow`) once the connection is
    fully established (data both ways). Returns each end's token by name."""
    first, second = MULTIPATH_ADDRS
    for addr in MULTIPATH_ADDRS:
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "mptcp", "limits", "set", "subflow", "2", "add_addr_accepted", "2"],
                   check=True)
    subprocess.run(["ip", "mptcp", "endpoint", "add", second, "dev", "lo", "subflow"],
                   check=True)
    lst = b.keep("multipath_listener", socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                                     IPPROTO_MPTCP))
    lst.bind(("0.0.0.0", MULTIPATH_PORT))
    lst.listen(4)
    client = b.keep("multipath_client", socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                                      IPPROTO_MPTCP))
    client.connect((first, MULTIPATH_PORT))
    server = b.keep("multipath_server", lst.accept()[0])
    client.sendall(b"hi")
    server.recv(2)
    server.sendall(b"yo")
    client.recv(2)
    deadline = time.monotonic() + 10
    while mptcp_token(client)[1] < 1 or mptcp_token(server)[1] < 1:
        if time.monotonic() > deadline:
            raise AssertionError("no second MPTCP subflow within 10 s")
        time.sleep(0.01)
    return {"client": mptcp_token(client)[0], "server": mptcp_token(server)[0]}


def build_unlisted(vsock_port: int) -> tuple[Built, dict[str, int]]:
    """Held sockets no /proc table lists: an MPTCP listener and an MPTCP connection (both
    ends), a vsock listener (vsock ports are global: the caller picks a free one), a netlink
    and a ping socket never bound, a TCP socket bound but idle; name -> inode."""
    lo_up()
    allow_ping()
    b = Built()
    ino = b.inodes

    keep = b.keep
    lst = keep("mptcp_listener", socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                               IPPROTO_MPTCP))
    lst.bind(("127.0.0.1", MPTCP_PORT))
    lst.listen(4)
    client = keep("mptcp_client", socket.socket(socket.AF_INET, socket.SOCK_STREAM,
                                                IPPROTO_MPTCP))
    client.connect(("127.0.0.1", MPTCP_PORT))
    keep("mptcp_server", lst.accept()[0])
    v = keep("vsock", socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
    v.bind((socket.VMADDR_CID_ANY, vsock_port))
    v.listen(4)
    keep("netlink_unbound", socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
    keep("ping_unbound", socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
    idle = keep("tcp_idle", socket.socket())
    idle.bind(("127.0.0.1", 4801))
    return b, ino


def row(s) -> tuple:
    return (s.proto, s.family, s.state, s.local_addr, s.local_port, s.remote_addr,
            s.remote_port, s.inode, s.uid)


# ============================================================== capture (run by hand)

NLMSGHDR = struct.Struct("=IHHII")
SEQ = {"packet": 7001, "netlink": 7002, "udplite4": 7003, "icmp_enoent": 7004}
SCOPED_SEQ = {"tcp6": 7101, "tcp4": 7102, "udp6": 7103}
QUEUE_SEQ = {"tcp4": 7201, "udp4": 7202, "unix": 7203}
TABLES = ("packet", "netlink", "icmp", "icmp6", "udplite", "udplite6")


def _dump(sock: socket.socket, request: bytes) -> tuple[bytes, int]:
    sock.send(request)
    out, datagrams = b"", 0
    while True:
        data = sock.recv(1 << 20)
        datagrams += 1
        out += data
        off, done = 0, False
        while off < len(data):
            length, mtype = NLMSGHDR.unpack_from(data, off)[:2]
            done = done or mtype in (2, 3)
            off += (length + 3) & ~3
        if done:
            return out, datagrams


def capture() -> None:
    """In a fresh namespace (run under `unshare -n`), build() and write each table and each
    reply."""
    from nsnet.sockdiag import (
        ANY_STATE,
        NETLINK_SOCK_DIAG,
        build_inet_request,
        build_netlink_request,
        build_packet_request,
    )
    with open("/proc/net/dev") as f:
        if len(f.read().splitlines()) != 3:     # two header lines and lo
            sys.exit("run me in a fresh namespace: unshare -n python3 " + __file__ + " capture")
    b = build()
    diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    diag_ino = os.fstat(diag.fileno()).st_ino
    record: dict = {"expected": b.expected, "packet": {str(k): v for k, v in b.packet.items()},
                    "netlink": {str(k): v for k, v in b.netlink.items()},
                    "diag_inode": diag_ino, "diag_portid": None, "seq": SEQ, "datagrams": {}}
    requests = {
        "packet": build_packet_request(seq=SEQ["packet"]),
        "netlink": build_netlink_request(seq=SEQ["netlink"]),
        "udplite4": build_inet_request(socket.AF_INET, IPPROTO_UDPLITE, ANY_STATE,
                                       seq=SEQ["udplite4"]),
        "icmp_enoent": build_inet_request(socket.AF_INET, socket.IPPROTO_ICMP, ANY_STATE,
                                          seq=SEQ["icmp_enoent"]),
    }
    for name, request in requests.items():
        data, datagrams = _dump(diag, request)
        record["datagrams"][name] = datagrams
        (DATA / f"kinds_diag_{name}.bin").write_bytes(data)
    record["diag_portid"] = diag.getsockname()[0]   # bound (autobind) by the first send
    for name in TABLES:
        with open(f"/proc/thread-self/net/{name}", "rb") as f:
            (DATA / f"kinds_proc_net_{name}.txt").write_bytes(f.read())
    with open("/proc/thread-self/net/if_inet6", "rb") as f:
        (DATA / "kinds_proc_net_if_inet6.txt").write_bytes(f.read())
    (DATA / "kinds_capture.json").write_text(json.dumps(record, indent=1) + "\n")
    b.close()
    scoped_built, scoped = build_scoped()
    record = {"scoped": {str(k): v for k, v in scoped.items()}, "ports": SCOPED_PORTS,
              "ifindex": socket.if_nametoindex(DUMMY), "seq": SCOPED_SEQ, "datagrams": {}}
    for name, (family, proto) in (("tcp6", (socket.AF_INET6, socket.IPPROTO_TCP)),
                                  ("tcp4", (socket.AF_INET, socket.IPPROTO_TCP)),
                                  ("udp6", (socket.AF_INET6, socket.IPPROTO_UDP))):
        data, record["datagrams"][name] = _dump(diag, build_inet_request(
            family, proto, ANY_STATE, seq=SCOPED_SEQ[name]))
        (DATA / f"scoped_diag_{name}.bin").write_bytes(data)
    with open("/proc/thread-self/net/if_inet6", "rb") as f:
        (DATA / "scoped_proc_net_if_inet6.txt").write_bytes(f.read())
    (DATA / "scoped_capture.json").write_text(json.dumps(record, indent=1) + "\n")
    scoped_built.close()
    import tempfile
    with tempfile.TemporaryDirectory() as unix_dir:
        queues_built, inodes = build_queues(unix_dir)
        record = {"inodes": inodes, "ports": QUEUE_PORTS, "seq": QUEUE_SEQ, "unix_dir": unix_dir}
        from nsnet.sockdiag import EXT_MEMORY, EXT_TCP_INFO, build_unix_request
        for name, request in (
                ("tcp4", build_inet_request(socket.AF_INET, socket.IPPROTO_TCP,
                                            seq=QUEUE_SEQ["tcp4"],
                                            ext=EXT_TCP_INFO | EXT_MEMORY)),
                ("udp4", build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, ANY_STATE,
                                            seq=QUEUE_SEQ["udp4"])),
                ("unix", build_unix_request(seq=QUEUE_SEQ["unix"], show=0x31))):
            data, _ = _dump(diag, request)
            (DATA / f"queues_diag_{name}.bin").write_bytes(data)
        for name in ("tcp", "udp"):
            with open(f"/proc/thread-self/net/{name}", "rb") as f:
                (DATA / f"queues_proc_net_{name}.txt").write_bytes(f.read())
        ss = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True,
                            text=True, check=True).stdout
        record["ss_tcp_info"] = ss
        record["ss_skmem"] = subprocess.run(["ss", "-tmnH", "state", "established"],
                                            capture_output=True, text=True, check=True).stdout
        (DATA / "queues_capture.json").write_text(json.dumps(record, indent=1) + "\n")
        queues_built.close()
    capture_multipath(diag)
    diag.close()


MULTIPATH_SEQ = {"tcp4": 7301, "mptcp4": 7302}


def capture_multipath(diag: socket.socket) -> None:
    """An MPTCP connection with two subflows: the TCP dump with INET_DIAG_INFO (the subflows'
    INET_DIAG_ULP_INFO comes only with it) and the mptcp_diag dump (mptcp_info)."""
    from nsnet.sockdiag import ALL, EXT_INFO, IPPROTO_MPTCP, build_inet_request

    b = Built()
    tokens = build_multipath(b)
    for name, proto in (("tcp4", socket.IPPROTO_TCP), ("mptcp4", IPPROTO_MPTCP)):
        data, _ = _dump(diag, build_inet_request(socket.AF_INET, proto, ALL, ext=EXT_INFO,
                                                 seq=MULTIPATH_SEQ[name]))
        (DATA / f"multipath_diag_{name}.bin").write_bytes(data)
    record = {"tokens": tokens, "inodes": b.inodes, "port": MULTIPATH_PORT,
              "addrs": MULTIPATH_ADDRS, "seq": MULTIPATH_SEQ,
              "ss": subprocess.run(["ss", "-tinH"], capture_output=True, text=True,
                                   check=True).stdout}
    (DATA / "multipath_capture.json").write_text(json.dumps(record, indent=1) + "\n")
    b.close()


if __name__ == "__main__" and sys.argv[1:] == ["capture"]:
    capture()
elif __name__ == "__main__" and sys.argv[1:] == ["capture", "multipath"]:
    # only the multipath capture (in a fresh namespace too: unshare -n)
    lo_up()
    from nsnet.sockdiag import NETLINK_SOCK_DIAG
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag_sock:
        capture_multipath(diag_sock)
