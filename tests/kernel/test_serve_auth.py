"""`nsnet serve --auth-token-file`: a real agent process over real HTTP, its token file laid out
as the kubelet lays out a Secret volume (token -> ..data/token, ..data -> ..<version>) and
rotated the way the kubelet rotates it (a new version, ..data swapped by a rename)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import REPO, start_agent, stop, wait_ready

pytestmark = pytest.mark.usefixtures("root")

FIRST, SECOND, THIRD = "nsnet-first-7d0c2f4e9a", "nsnet-second-51be03a8c6", "nsnet-third-e2a9f1"
RECHECK = 5.0      # nsnet.agent.auth.RECHECK_SECONDS: how soon a rotation is taken


def request(port: int, path: str, token: str | None = None,
            scheme: str = "Bearer") -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def rotate(secret: Path, version: str, content: str | None) -> None:
    """The kubelet's atomic update of a Secret volume. content None: a FIFO."""
    new = secret / f"..{version}"
    new.mkdir()
    if content is None:
        os.mkfifo(new / "token")
    else:
        (new / "token").write_text(content)
        (new / "token").chmod(0o400)
    os.symlink(new.name, secret / "..data_tmp")
    os.rename(secret / "..data_tmp", secret / "..data")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A Secret volume holding FIRST; returns the path of its token file."""
    directory = tmp_path / "secret"
    directory.mkdir()
    rotate(directory, "v1", FIRST + "\n")
    os.symlink("..data/token", directory / "token")
    return directory / "token"


class Stderr:
    """What the agent says after its banner, read as it comes (the pipe never fills)."""

    def __init__(self, child: subprocess.Popen):
        self.lines: list[str] = list(child.said)
        self._thread = threading.Thread(target=self._read, args=(child,), daemon=True)
        self._thread.start()

    def _read(self, child: subprocess.Popen) -> None:
        for line in child.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, child: subprocess.Popen) -> str:
        """Everything it said, once it is gone."""
        if child.poll() is None:
            child.kill()
        child.wait()
        self._thread.join(timeout=30)
        return self.text()


@pytest.fixture
def guarded(secret):
    child, port = start_agent("--auth-token-file", str(secret), "--events", "off")
    said = Stderr(child)
    try:
        yield child, port, said
    finally:
        said.finish(child)
        stop(child)


def unauthorized(port: int, token: str) -> dict[str, float]:
    _, _, body = request(port, "/metrics", token)
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "nsnet_http_unauthorized":
            return {s.labels["reason"]: s.value for s in family.samples
                    if s.name == "nsnet_http_unauthorized_total"}
    raise AssertionError("nsnet_http_unauthorized_total not in /metrics")


def test_only_the_probes_are_open_without_the_token(guarded, secret):
    child, port, said = guarded
    (banner,) = [line for line in said.lines if "serving on" in line]
    assert banner.rstrip().endswith(f"bearer token from {secret} (all but /healthz and /readyz)")
    assert request(port, "/healthz")[0] == 200
    wait_ready(port)                               # /readyz, no token: 503 then 200
    assert request(port, "/readyz")[0] == 200
    assert unauthorized(port, FIRST) == {"missing": 0, "invalid": 0}
    refused = 0
    for path in ("/metrics", "/api/v1/snapshot", "/api/v1/snapshot?view=by-namespace",
                 "/api/v1/dependencies?since=1h", "/nowhere"):
        status, headers, body = request(port, path)
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="nsnet"', path
        assert b"/healthz" not in body and FIRST.encode() not in body
        status, headers, body = request(port, path, "wrong-" + FIRST)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Bearer realm="nsnet", error="invalid_token"'
        assert FIRST.encode() not in body
        assert request(port, path, FIRST, scheme="Basic")[0] == 401
        refused += 1
        expected = 404 if path == "/nowhere" else 200
        assert request(port, path, FIRST)[0] == expected, path
        assert request(port, path, FIRST, scheme="bearer")[0] == expected, path
    status, _, body = request(port, "/api/v1/snapshot?view=by-namespace", FIRST)
    assert status == 200 and b'"view": "by-namespace"' in body
    assert unauthorized(port, FIRST) == {"missing": refused, "invalid": 2 * refused}
    text = said.finish(child)
    assert FIRST not in text and "Traceback" not in text


def wait_until_accepted(port: int, token: str, timeout: float = 4 * RECHECK + 10) -> float:
    start = deadline = time.monotonic()
    deadline += timeout
    while request(port, "/metrics", token)[0] != 200:
        assert time.monotonic() < deadline, f"{token} not accepted within {timeout} s"
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_rotated_secret_is_taken_and_a_bad_one_keeps_the_token(guarded, secret):
    child, port, said = guarded
    assert request(port, "/metrics", FIRST)[0] == 200
    rotate(secret.parent, "v2", SECOND + "\n")
    took = wait_until_accepted(port, SECOND)
    assert took <= 2 * RECHECK + 5
    assert request(port, "/metrics", FIRST)[0] == 401          # the old one is refused
    assert request(port, "/api/v1/dependencies", FIRST)[0] == 401
    changed = f"nsnet: auth token file {secret} changed: the new token is in force\n"
    assert said.lines.count(changed) == 1
    # A broken rotation (the new token is a FIFO, then an empty file): the token in force
    # stays, said once, whatever the number of checks meanwhile.
    rotate(secret.parent, "v3", None)
    deadline = time.monotonic() + 4 * RECHECK + 10
    warning = (f"nsnet: warning: auth token file {secret}: not a regular file (a FIFO); "
               "keeping the token read before\n")
    while warning not in said.lines:
        assert request(port, "/metrics", SECOND)[0] == 200
        assert time.monotonic() < deadline, said.text()
        time.sleep(0.2)
    rotate(secret.parent, "v4", "\n")
    end = time.monotonic() + RECHECK + 1.5             # one more check at least
    while time.monotonic() < end:
        assert request(port, "/metrics", SECOND)[0] == 200
        time.sleep(0.2)
    assert said.lines.count(warning) == 1
    assert not [line for line in said.lines if "empty" in line]   # the same failing streak
    # fixed: the third token is taken
    rotate(secret.parent, "v5", THIRD)
    wait_until_accepted(port, THIRD)
    assert request(port, "/metrics", SECOND)[0] == 401
    assert request(port, "/healthz")[0] == 200
    text = said.finish(child)
    for token in (FIRST, SECOND, THIRD):
        assert token not in text
    assert "Traceback" not in text


def run_serve(token_file: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "nsnet", "serve", "--listen", "127.0.0.1:0",
                          "--auth-token-file", token_file], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return run, time.monotonic() - start


@pytest.mark.parametrize("kind, said", [
    ("fifo", "not a regular file (a FIFO)"),
    ("dev-zero", "not a regular file (a character device)"),
    ("link-to-dev-zero", "not a regular file (a character device)"),
    ("directory", "not a regular file (a directory)"),
    ("missing", "cannot read auth token file"),
    ("empty", "empty (no token in it)"),
    ("too-large", "larger than 4096 bytes"),
    ("two-lines", "one word of visible ASCII"),
])
def test_an_unusable_token_file_is_one_line_and_a_quick_exit(tmp_path, kind, said):
    """No hang on a FIFO without a writer, no endless read of /dev/zero: one line, exit 1,
    before anything listens -- and the content is never echoed."""
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "link-to-dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_text("\n")
    elif kind == "too-large":
        path.write_text("z" * 100_000)
    elif kind == "two-lines":
        path.write_text(f"{FIRST}\n{SECOND}\n")
    run, took = run_serve(str(path))
    assert run.returncode == 1, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsnet: error: "), run.stderr
    assert said in lines[0] and str(path) in lines[0]
    assert "serving on" not in run.stderr and "Traceback" not in run.stderr
    assert FIRST not in run.stderr and SECOND not in run.stderr
    assert took < 20


def test_an_empty_path_is_a_usage_error():
    run, _ = run_serve("")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "nsnet: error: argument --auth-token-file: an empty path: give the token file's path "
        "(see 'nsnet serve --help')"]
