"""Start a program as a tenant would run it: as a given uid, optionally inside a named
network namespace (`ip netns exec`), in a given cgroup, under another argv[0] -- and wait for
the first line it prints (its ready message, or what it made: inodes, pids)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from realnode import interpreter_for, ip_tool, util_linux


def start_as(uid: int, prog: str, *args: str, netns: str | None = None,
             argv0: str | None = None, cgroup: Path | None = None
             ) -> tuple[subprocess.Popen, str]:
    """Run the Python program `prog` as `uid`; returns (the process, its first line). The
    process reads stdin until it closes: kill() it at the end."""
    interp = interpreter_for(uid)
    argv = [interp, "-c", prog, *args]
    if argv0 is not None:
        # under another argv[0] (what a tenant names itself): the system's python, which
        # any uid may re-execute (a pyenv build under /root may not be)
        argv = [interp, "-c", "import os, sys; os.execv('/usr/bin/python3', sys.argv[1:])",
                argv0, "-c", prog, *args]
    argv = [util_linux("setpriv"), "--reuid", str(uid), "--regid", str(uid),
            "--clear-groups", "--", *argv]
    if netns is not None:
        argv = [ip_tool(), "netns", "exec", netns, *argv]
    popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd="/")
    if cgroup is not None:   # before it prints: its cgroup is what nsnet will read
        (cgroup / "cgroup.procs").write_text(f"{popen.pid}\n")
    line = popen.stdout.readline() if popen.stdout else ""
    if not line:
        popen.kill()
        pytest.fail(f"could not start: {popen.stderr.read() if popen.stderr else ''}")
    return popen, line


def start_json(netns: str, uid: int, prog: str, *args: str) -> tuple[subprocess.Popen, object]:
    """start_as in a named namespace, for a program whose first line is JSON (what it made)."""
    popen, line = start_as(uid, prog, *args, netns=netns)
    return popen, json.loads(line)
