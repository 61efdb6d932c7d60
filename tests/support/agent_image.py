"""The agent image of deploy/Dockerfile, built with no registry, on a private dockerd.

No registry is reachable from these machines, so:
- the base image is made from the host's own Debian python3.11 (interpreter, standard
  library with venv/ensurepip, the shared libraries they link, a shell) and imported with
  `docker import` -- a stand-in for python:3.11-slim;
- the project's build and run-time dependencies are fetched as wheels by the host's pip
  (the package mirror works for the host, not inside the build);
- the image is built with `--network none` from a copy of the project plus those wheels
  (`PIP_NO_INDEX=1`, `PIP_FIND_LINKS=/src/wheels`: the Dockerfile's offline variant).

`private_dockerd(workdir)` is a daemon of our own (own data and exec roots and socket, no
bridge, no iptables), torn down with everything it started. Every command is an argv list.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
PROJECT_DIRS = ("nsnet",)

HOST_PYTHON = Path("/usr/bin/python3.11")
HOST_STDLIB = Path("/usr/lib/python3.11")
HOST_PY_WHEELS = Path("/usr/share/python-wheels")    # where Debian's ensurepip finds pip
HOST_SHELLS = (Path("/bin/busybox"), Path("/bin/dash"))
# util-linux's nsenter: python:3.11-slim has it (util-linux is Essential in Debian), and the
# image must not shadow it with the nsenter package's console script
HOST_NSENTER = Path("/usr/bin/nsenter")
# Left out of the base, as python:3.11-slim leaves them out (tests, the static library
# and build configuration) or because they are Debian's own (the pip lock-out marker, a
# sitecustomize pointing into /etc).
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "__phello__",
               "EXTERNALLY-MANAGED", "sitecustomize.py"}
# Libraries wheels may load that nothing in the interpreter links (manylinux's allowed
# set: psutil's extension links libpthread); python:3.11-slim has all of them.
RUNTIME_LIBRARIES = ("libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                     "libresolv.so.2", "libutil.so.1", "libanl.so.1", "libnss_files.so.2",
                     "libnss_dns.so.2", "libgcc_s.so.1", "libstdc++.so.6")
BASE_TAG = "nsnet-test/python-host:3.11"
INPUTS_LABEL = "org.nsnet.test.inputs"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHEELS_IN_IMAGE = "/src/wheels"     # COPY . /src puts the context's wheels/ there


def _run(argv: list[str], *, timeout: float = 600, log: Optional[Path] = None,
         what: str = "") -> subprocess.CompletedProcess:
    """Run argv; on failure raise with the command and the tail of its output."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{what or argv[0]} failed (exit {proc.returncode}): "
                           f"{' '.join(argv)}\n{tail}")
    return proc


# -- a private dockerd --------------------------------------------------------------------

def _state_dir(workdir: Path) -> Path:
    """The daemon's directory, under workdir unless that path is too long for the unix
    sockets dockerd and containerd create in it (108 bytes, with ~40 of suffix)."""
    candidate = workdir / "dockerd"
    if len(str(candidate)) <= 60:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate
    return Path(tempfile.mkdtemp(prefix="nsnt-dockerd-", dir="/tmp"))


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names our state directory: the daemon's containerd
    and shims, which are ours to end (by pid) if the daemon left them behind."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                if point.startswith(prefix):
                    points.append(point)
    return sorted(points, key=len, reverse=True)


@contextlib.contextmanager
def private_dockerd(workdir: Path) -> Iterator[list[str]]:
    """Start a dockerd of our own; yield the docker argv prefix that talks to it.

    Own --data-root/--exec-root/socket/CLI config under workdir, --bridge=none and no
    iptables/masquerading (nothing on the host's network changes). On exit: its
    containers, the daemon, anything still running from its directory, its mounts and
    its files are removed.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None:
        raise RuntimeError("dockerd/docker not installed (Debian: docker.io)")
    state = _state_dir(workdir)
    (state / "daemon.json").write_text("{}\n")   # never the machine's /etc/docker config
    (state / "cli").mkdir(exist_ok=True)
    sock = state / "docker.sock"
    docker = ["docker", "--config", str(state / "cli"), "-H", f"unix://{sock}"]
    argv = [dockerd, "--config-file", str(state / "daemon.json"),
            "--data-root", str(state / "data"), "--exec-root", str(state / "x"),
            "-H", f"unix://{sock}", "--pidfile", str(state / "dockerd.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"]
    log_path = state / "dockerd.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"dockerd exited ({daemon.returncode}):\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            probe = subprocess.run([*docker, "version", "--format", "{{.Server.Version}}"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                                   check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("dockerd not ready after 60 s:\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        yield docker
    finally:
        _stop_dockerd(docker, daemon, state)


def _stop_dockerd(docker: list[str], daemon: subprocess.Popen, state: Path) -> None:
    if daemon.poll() is None:
        listed = subprocess.run([*docker, "ps", "-aq"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60, check=False)
        ids = listed.stdout.split()
        if ids:
            subprocess.run([*docker, "rm", "-f", *ids], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=120, check=False)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=30)
    # Its containerd stops with it; shims may linger a few seconds.
    deadline = time.monotonic() + 15
    while (left := _pids_mentioning(str(state))) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    for point in _mounts_under(state):
        subprocess.run(["umount", "--lazy", point], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, check=False)
    shutil.rmtree(state, ignore_errors=True)


# -- the base image: python3.11 from the host ---------------------------------------------

def _inside(root: Path, path: Path) -> Path:
    """`path` (under root) after resolving what exists of it: refuse anything that would
    write outside root (an absolute symlink copied from the host must never be followed)."""
    resolved = Path(os.path.realpath(path.parent)) / path.name
    real_root = Path(os.path.realpath(root))
    if resolved != real_root and real_root not in resolved.parents:
        raise RuntimeError(f"refusing to write {path}: it resolves outside {root}")
    return path


def _mirror(host_path: str, root: Path) -> None:
    """Copy a host file to the same path under root, recreating each symlink met on the
    way (/lib -> usr/lib, libz.so.1 -> libz.so.1.2.13, ...): the loader then finds the
    libraries where the host's binaries expect them."""
    parts = Path(host_path).parts[1:]
    current = Path("/")
    for i, part in enumerate(parts):
        current = current / part
        dest = root / current.relative_to("/")
        if current.is_symlink():
            target = os.readlink(current)
            if not os.path.lexists(dest):
                _inside(root, dest).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, dest)
            resolved = os.path.normpath(os.path.join(current.parent, target))
            _mirror(os.path.join(resolved, *parts[i + 1:]), root)
            return
    dest = root / current.relative_to("/")
    if current.is_dir():
        _inside(root, dest).mkdir(parents=True, exist_ok=True)
    elif not os.path.lexists(dest):
        _inside(root, dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(current, dest)


def _linked_libraries(binaries: list[Path]) -> set[str]:
    """Every shared library (and the loader) `ldd` lists for these binaries."""
    out = subprocess.run(["ldd", *map(str, binaries)], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=120, check=False).stdout
    return {m.group(1) for m in re.finditer(r"(?:=>\s*|^\s*)(/\S+)\s+\(0x", out, re.M)}


def _stdlib_ignore(directory: str, names: list[str]) -> set[str]:
    if Path(directory) == HOST_STDLIB:
        return {n for n in names if n in STDLIB_SKIP or n.startswith("config-")}
    return set()


def make_base_rootfs(root: Path) -> None:
    """A python:3.11-slim stand-in from the host's Debian python3.11."""
    if not HOST_PYTHON.exists() or not (HOST_STDLIB / "venv").is_dir() \
            or not (HOST_STDLIB / "ensurepip").is_dir():
        raise RuntimeError(f"needs {HOST_PYTHON} with venv and ensurepip "
                           "(Debian: python3.11 python3.11-venv)")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    _mirror(str(HOST_PYTHON), root)
    _mirror(str(HOST_STDLIB), root)
    shutil.copytree(HOST_STDLIB, root / HOST_STDLIB.relative_to("/"), symlinks=True,
                    ignore=_stdlib_ignore, dirs_exist_ok=True)
    if HOST_PY_WHEELS.is_dir():
        for wheel in sorted(HOST_PY_WHEELS.glob("*.whl")):
            _mirror(str(wheel), root)
    bindir = root / HOST_PYTHON.parent.relative_to("/")
    for alias in ("python3", "python"):
        if not os.path.lexists(bindir / alias):
            os.symlink(HOST_PYTHON.name, bindir / alias)

    # before the shell's applets: a busybox nsenter applet must not take its place
    if not HOST_NSENTER.exists():
        raise RuntimeError(f"needs util-linux's {HOST_NSENTER} (Debian: util-linux)")
    _mirror(str(HOST_NSENTER), root)

    shell = next((s for s in HOST_SHELLS if s.exists()), None)
    if shell is None:
        raise RuntimeError("needs a shell to copy: busybox-static or dash")
    _mirror(str(shell), root)
    real_shell = Path(os.path.realpath(shell))
    shell_dir = root / real_shell.parent.relative_to("/")
    applets = ["sh"]
    if shell.name == "busybox":
        listed = _run([str(shell), "--list"], what="busybox --list").stdout.split()
        applets += [a for a in listed if re.fullmatch(r"[a-z0-9_.\[-]+", a)]
    for applet in applets:
        if not os.path.lexists(shell_dir / applet):
            os.symlink(real_shell.name, _inside(root, shell_dir / applet))
    if not os.path.lexists(root / "bin" / "sh"):
        raise RuntimeError(f"{shell} is not reachable as /bin/sh in the base")

    binaries = [HOST_PYTHON, shell, HOST_NSENTER,
                *sorted((HOST_STDLIB / "lib-dynload").glob("*.so"))]
    linked = _linked_libraries(binaries)
    libc = next((lib for lib in linked if Path(lib).name == "libc.so.6"), None)
    if libc is None:
        raise RuntimeError(f"ldd lists no libc.so.6 for {HOST_PYTHON}")
    extra = [Path(libc).parent / name for name in RUNTIME_LIBRARIES]
    for library in sorted(linked | {str(p) for p in extra if p.exists()}):
        _mirror(library, root)

    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    for name, mode in (("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777)):
        (root / name).mkdir(parents=True, exist_ok=True)
        os.chmod(root / name, mode)


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_base_image(docker: list[str], workdir: Path, tag: str = BASE_TAG) -> None:
    digest = hashlib.sha256(HOST_PYTHON.read_bytes()
                            + Path(__file__).read_bytes()).hexdigest()[:16]
    if _label(docker, tag) == digest:
        return
    root = workdir / "base-rootfs"
    make_base_rootfs(root)
    tarball = workdir / "base-rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".", filter=_root_owned)
    _run([*docker, "import", "--change", f"ENV PATH={DEFAULT_PATH}",
          "--change", "ENV LANG=C.UTF-8", "--change", f"LABEL {INPUTS_LABEL}={digest}",
          "--change", 'CMD ["python3"]', str(tarball), tag], what="docker import")
    tarball.unlink()
    shutil.rmtree(root)


# -- wheels, build context, image -----------------------------------------------------------

def requirements() -> list[str]:
    """What the offline build installs: the build backend and the run-time dependencies."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    # wheel: setuptools older than 70.1 asks for it to build a wheel.
    return [*meta["build-system"]["requires"], "wheel", *meta["project"]["dependencies"]]


def download_wheels(dest: Path) -> list[str]:
    """Wheels (built here when only an sdist exists) of requirements() and their
    dependencies, fetched by the host's pip; reused while the requirements are unchanged."""
    reqs = requirements()
    stamp = dest / ".requirements.json"
    if stamp.exists() and json.loads(stamp.read_text()) == reqs and any(dest.glob("*.whl")):
        return sorted(p.name for p in dest.glob("*.whl"))
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--wheel-dir", str(dest), *reqs], timeout=900, what="pip wheel")
    stamp.write_text(json.dumps(reqs))
    return sorted(p.name for p in dest.glob("*.whl"))


def make_context(ctx: Path, wheels: Path) -> None:
    """A build context holding only what the Dockerfile's whitelist lets in, plus the
    Dockerfile (and its ignore file where the classic builder looks for it)."""
    if ctx.exists():
        shutil.rmtree(ctx)
    ctx.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, ctx / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, ctx / name, ignore=skip)
    shutil.copytree(wheels, ctx / "wheels", ignore=shutil.ignore_patterns(".*"))
    (ctx / "deploy").mkdir()
    shutil.copy2(DOCKERFILE, ctx / "deploy" / "Dockerfile")
    shutil.copy2(DOCKERIGNORE, ctx / "deploy" / "Dockerfile.dockerignore")
    shutil.copy2(DOCKERIGNORE, ctx / ".dockerignore")


def _inputs_digest(ctx: Path, base: str) -> str:
    h = hashlib.sha256(base.encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _label(docker: list[str], tag: str) -> Optional[str]:
    proc = subprocess.run([*docker, "image", "inspect", "--format",
                           "{{json .Config.Labels}}", tag], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    return (json.loads(proc.stdout or "null") or {}).get(INPUTS_LABEL)


def build_agent_image(docker: list[str], tag: str, workdir: Path) -> None:
    """Build deploy/Dockerfile as `tag` with no network and no registry (see the module
    docstring). Skipped when `tag` exists built from the same inputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    build_base_image(docker, workdir)
    wheels = workdir / "wheels"
    download_wheels(wheels)
    ctx = workdir / "context"
    make_context(ctx, wheels)
    base_id = _run([*docker, "image", "inspect", "--format", "{{.Id}}", BASE_TAG]).stdout.strip()
    digest = _inputs_digest(ctx, base_id)
    if _label(docker, tag) == digest:
        return
    _run([*docker, "build", "--network", "none",
          "--build-arg", f"BASE={BASE_TAG}",
          "--build-arg", "PIP_NO_INDEX=1",
          "--build-arg", f"PIP_FIND_LINKS={WHEELS_IN_IMAGE}",
          "--label", f"{INPUTS_LABEL}={digest}",
          "--file", str(ctx / "deploy" / "Dockerfile"), "--tag", tag, str(ctx)],
         timeout=900, log=workdir / "build.log", what="docker build")
