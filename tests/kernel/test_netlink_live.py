"""The netlink source against a live namespace: the Scenario of support/diag_scenario.py
built in a fresh namespace (root), its sock_diag dumps compared with the /proc tables read
from inside it. The differences the kernel causes are asserted exactly (see nsnet/sockdiag.py's
docstring): unix_diag skips the not-yet-accepted unix socket (inode 0), a TCP request socket
has uid 0 in sock_diag but its listener's uid in /proc, and raw sockets are missing when the
kernel has no raw_diag (this one: CONFIG_INET_RAW_DIAG is not set).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

import pytest

from diag_scenario import (
    CLASSIC_FILES,
    CLASSIC_PROTOS,
    TENANT,
    Scenario,
    expected_rows,
    make_namespace,
    row,
    rows,
)
from nsnet import netparse
from nsnet.sockdiag import (
    ALL, ANY_STATE as ANY, TCPF, TCPF_BOUND_INACTIVE, UNHELD, build_inet_request,
    build_tcp_legacy_request, parse_dump,
)
from nsnet.sources import netlink


def _patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


# ============================================================== live namespace

@dataclass
class Live:
    path: str
    inode: int
    scenario: Scenario
    diag: socket.socket
    proc_fds: dict[str, int]

    def proc(self) -> collections.Counter:
        out = collections.Counter()
        for name, fd in self.proc_fds.items():
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            parsed = netparse.parse_net_file(name, b"".join(chunks))
            assert parsed.malformed == 0
            out.update(row(s) for s in parsed.sockets)
        return out


def _open_proc_fds() -> dict[str, int]:
    return {name: os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
            for name in CLASSIC_FILES}


@contextlib.contextmanager
def live_namespace(build: bool = True):
    from conftest import require_root

    require_root("ip")
    from nsnet.setns import run_in_namespace
    name = f"nsnt-diag-{secrets.token_hex(4)}"
    path = make_namespace(name)
    unix_dir = tempfile.mkdtemp(prefix="nsnt-diag-")
    scenario = Scenario(unix_dir)
    opened: list = []
    try:
        def inside():
            if build:
                scenario.build()
            opened.append(netlink.open_diag_socket())
            opened.append(_open_proc_fds())
        run_in_namespace(path, os.stat(path).st_ino, inside)
        yield Live(path, os.stat(path).st_ino, scenario, opened[0], opened[1])
    finally:
        if opened:
            opened[0].close()
        if len(opened) > 1:
            for fd in opened[1].values():
                os.close(fd)
        scenario.close()
        shutil.rmtree(unix_dir, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(scope="module")
def live():
    with live_namespace() as ns:
        yield ns


def stable_compare(live: Live, **kwargs):
    """/proc, then sock_diag, then /proc again; retried while /proc changed in between."""
    for _ in range(5):
        before = live.proc()
        kwargs.setdefault("protos", CLASSIC_PROTOS)
        result = netlink.dump_namespace(live.diag, **kwargs)
        if live.proc() == before:
            return before, result
        time.sleep(0.05)
    raise AssertionError("the namespace kept changing under the comparison")


def test_dump_equals_proc(live: Live) -> None:
    proc, result = stable_compare(live)
    diag = rows(result.sockets)
    assert result.malformed == 0
    inodes = live.scenario.inodes
    d = live.scenario.unix_dir

    # a kernel without raw_diag (this one) answers ENOENT: said in `missing`, not an error
    raw_missing = "raw" in result.missing
    assert result.missing <= {"raw"} and result.errors == []   # icmp: not asked here
    # The differences the kernel makes, and nothing else:
    proc_only = collections.Counter({
        # the not-yet-accepted server end of ue: no inode, so unix_diag skips it
        ("unix", "unix", "ESTABLISHED", f"{d}/srv.sock", None, "", None, 0, None, "stream"): 1,
        # /proc prints a request socket with its listener's uid
        ("tcp", "inet", "SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, 0, TENANT, None): 1,
    })
    diag_only = collections.Counter({
        ("tcp", "inet", "SYN_RECV", "127.0.0.1", 7005, "127.0.0.1", 40006, 0, 0, None): 1,
    })
    if raw_missing:
        proc_only.update({
            ("raw", "inet", "UNCONN", "0.0.0.0", 1, "0.0.0.0", 0, inodes["r4"], 0, None): 1,
            ("raw", "inet6", "UNCONN", "::", 58, "::", 0, inodes["r6"], 0, None): 1,
        })
    assert proc - diag == proc_only
    assert diag - proc == diag_only

    # ... and independently of /proc: what the scenario built, exactly.
    expected = expected_rows(inodes, d)
    want = collections.Counter()
    for name in ("tcp_legacy", "udp4", "udp6", "unix") + (() if raw_missing else ("raw4", "raw6")):
        want.update(expected[name])
    assert diag == want


def test_any_thread_reads_the_namespace_it_was_opened_in(live: Live) -> None:
    here = rows(netlink.dump_namespace(live.diag, protos=CLASSIC_PROTOS).sockets)
    box = []
    t = threading.Thread(target=lambda: box.append(
        netlink.dump_namespace(live.diag, protos=CLASSIC_PROTOS)))
    t.start()
    t.join()
    assert rows(box[0].sockets) == here
    # a socket opened in our own namespace sees none of the scenario's sockets
    with contextlib.closing(netlink.open_diag_socket()) as home:
        mine = {s.inode for s in netlink.dump_namespace(home, protos=CLASSIC_PROTOS).sockets}
    assert not mine & set(live.scenario.inodes.values())


def test_tcp_state_filter(live: Live) -> None:
    unheld = netlink.dump_namespace(live.diag, tcp_states=UNHELD, protos=("tcp",))
    assert sorted((s.state, s.local_port, s.remote_port, s.inode) for s in unheld.sockets) == [
        ("SYN_RECV", 7005, 40006, 0), ("TIME_WAIT", 40004, 7001, 0),
        ("TIME_WAIT", 40005, 7003, 0)]
    listen = netlink.dump_namespace(live.diag, tcp_states=TCPF["LISTEN"], protos=("tcp",))
    assert sorted(s.local_port for s in listen.sockets) == [7001, 7002, 7003, 7004, 7005]
    assert unheld.errors == listen.errors == []


def test_legacy_request_equals_one_request_per_family(live: Live) -> None:
    legacy = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=True)
    per_family = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=False)
    assert legacy.errors == per_family.errors == []
    assert rows(legacy.sockets) == rows(per_family.sockets)
    assert len(legacy.sockets) == 20


def test_falls_back_when_the_kernel_refuses_the_legacy_request(live: Live, monkeypatch) -> None:
    """A kernel without TCPDIAG_GETSOCK answers like this one does for DCCPDIAG_GETSOCK (19),
    whose handler is gone: dump_namespace must then ask per family, and remember."""
    dccp = lambda states, *, seq, ext=0: _patch(build_tcp_legacy_request(states, seq=seq, ext=ext),
                                                4, "=H", 19)
    seq = 777
    refused = netlink.run_dump(live.diag, dccp(ALL, seq=seq), seq, "tcp")
    assert refused.error in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP) and not refused.sockets
    monkeypatch.setattr(netlink, "build_tcp_legacy_request", dccp)
    monkeypatch.setattr(netlink, "_legacy_tcp", None)
    result = netlink.dump_namespace(live.diag, protos=("tcp",))
    assert netlink._legacy_tcp is False and result.errors == []
    per_family = netlink.dump_namespace(live.diag, protos=("tcp",), legacy_tcp=False)
    assert rows(result.sockets) == rows(per_family.sockets) and len(result.sockets) == 20


def test_bound_inactive_only_on_request(live: Live) -> None:
    # asked for with TCPF_BOUND_INACTIVE, the kernel reports them with their sk_state, CLOSE
    bound = ("tcp", "inet", "CLOSE", "127.0.0.1", 7006, "0.0.0.0", 0,
             live.scenario.inodes["bound"], 0, None)
    assert bound not in rows(netlink.dump_namespace(live.diag, protos=("tcp",)).sockets)
    asked = netlink.dump_namespace(live.diag, protos=("tcp",),
                                    tcp_states=ALL | TCPF_BOUND_INACTIVE)
    assert bound in rows(asked.sockets)
    assert all(r[6] != 7006 and r[4] != 7006 for r in live.proc())   # /proc never lists it


@pytest.fixture
def fd_room():
    """Room for ~1,500 descriptors, whatever the soft limit was."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


V4_UDP, V6_UDP, PAIRS = 1000, 100, 100


def test_many_sockets_multipart_and_an_abandoned_dump(fd_room) -> None:
    """Over a thousand sockets span several reply datagrams (each at most ~32 KiB); a dump
    abandoned after its first datagram leaves the kernel busy (EBUSY) until it is read out:
    the next request must skip its leftovers, be sent again, and still return everything."""
    with live_namespace(build=False) as ns:
        held = []

        def create():
            for i in range(V4_UDP + V6_UDP):
                v6 = i >= V4_UDP
                u = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
                held.append(u)
                u.bind(("::1" if v6 else "127.0.0.1", 20000 + i))
            for _ in range(PAIRS):
                held.extend(socket.socketpair())
        from nsnet.setns import run_in_namespace
        try:
            run_in_namespace(ns.path, ns.inode, create)
            # multi-part, counted by hand
            seq = 4242
            ns.diag.send(build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, ANY, seq=seq))
            datagrams = []
            while True:
                datagrams.append(ns.diag.recv(1 << 20))
                if parse_dump(datagrams[-1], "udp", seq).done:
                    break
            assert len(datagrams) >= 4 and max(map(len, datagrams)) <= 32768
            whole = parse_dump(b"".join(datagrams), "udp", seq)
            assert (len(whole.sockets), whole.malformed) == (V4_UDP, 0)
            # abandon a dump after its first datagram: the next request is refused (EBUSY)
            # until the old one is read out, then sent again
            def abandon(seq):
                ns.diag.send(build_inet_request(socket.AF_INET, socket.IPPROTO_UDP, ANY, seq=seq))
                assert not parse_dump(ns.diag.recv(1 << 20), "udp", seq).done
            abandon(4243)
            parsed = netlink.run_dump(ns.diag, build_inet_request(
                socket.AF_INET6, socket.IPPROTO_UDP, ANY, seq=4244), 4244, "udp")
            assert parsed.busy_retries == 1 and parsed.stale > 100 and parsed.stale_done
            assert (parsed.error, parsed.malformed, len(parsed.sockets)) == (0, 0, V6_UDP)
            abandon(4245)
            proc, result = stable_compare(ns)
            diag = rows(result.sockets)
            proc_raw = collections.Counter({r: c for r, c in proc.items() if r[0] == "raw"})
            assert not proc_raw
            assert diag == proc and sum(diag.values()) == V4_UDP + V6_UDP + 2 * PAIRS
            assert result.malformed == 0
        finally:
            for s in held:
                s.close()
