"""nsnet.agent.auth: the bearer token of `nsnet serve --auth-token-file`, its file read with
bounds and re-read when it changes, and the HTTP side asking for it (in-process, on
127.0.0.1); no root. The real process is in tests/kernel/test_serve_auth.py."""
from __future__ import annotations

import io
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nsnet.agent.auth import (
    INVALID,
    MAX_TOKEN_FILE,
    MISSING,
    TokenAuth,
    challenge,
    parse_token,
    presented_token,
    read_token,
)
from nsnet.agent.serve import Agent, http_server
from nsnet.cli import agent_options, build_parser
from nsnet.errors import AuthConfigError, UsageError
from nsnet.options import AgentOptions, SamplingOptions

TOKEN = "tok-3f9a8c_Q.~+/="


# ----------------------------------------------------------------------- the file's bytes

@pytest.mark.parametrize("data, token", [
    (b"abc\n", b"abc"), (b"  abc\r\n\t", b"abc"), (TOKEN.encode(), TOKEN.encode()),
    (b"x" * MAX_TOKEN_FILE, b"x" * MAX_TOKEN_FILE),
])
def test_parse_token_strips_surrounding_whitespace(data, token):
    assert parse_token(data, "f") == token


@pytest.mark.parametrize("data, said", [
    (b"", "empty"), (b" \n\t\n", "empty"),
    (b"x" * (MAX_TOKEN_FILE + 1), "larger than 4096 bytes"),
    (b"first-secret\nsecond-secret\n", "one word of visible ASCII"),
    (b"two words", "one word"), (b"caf\xc3\xa9", "non-ASCII"), (b"a\x00b", "control"),
])
def test_parse_token_refuses_without_quoting_the_content(data, said):
    with pytest.raises(AuthConfigError) as caught:
        parse_token(data, "/etc/nsnet/token")
    message = str(caught.value)
    assert said in message and message.startswith("auth token file /etc/nsnet/token: ")
    for word in data.split():
        assert len(word) < 3 or word.decode(errors="replace") not in message


# ---------------------------------------------------------------------------- the file

def test_read_token_of_a_regular_file_follows_a_secret_volumes_links(tmp_path):
    """A Secret volume: token -> ..data/token, ..data -> ..2024_01_01_v1 (the kubelet's
    layout). O_NOFOLLOW would refuse it; the links are followed, the target checked."""
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "token").write_text(TOKEN + "\n")
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/token", tmp_path / "token")
    token, identity = read_token(str(tmp_path / "token"))
    assert token == TOKEN.encode()
    assert identity.ino == os.stat(tmp_path / "..v1" / "token").st_ino


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "missing", "link-to-fifo"])
def test_read_token_refuses_what_is_not_a_regular_file_at_once(tmp_path, kind):
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)               # no writer: a blocking open would hang here
    elif kind == "dev-zero":
        path = Path("/dev/zero")      # endless: an unbounded read would fill the memory
    elif kind == "directory":
        path.mkdir()
    elif kind == "link-to-fifo":
        os.mkfifo(tmp_path / "fifo")
        os.symlink(tmp_path / "fifo", path)
    with pytest.raises(AuthConfigError) as caught:
        read_token(str(path))
    said = {"fifo": "not a regular file (a FIFO)", "link-to-fifo": "(a FIFO)",
            "dev-zero": "not a regular file (a character device)",
            "directory": "not a regular file (a directory)",
            "missing": "cannot read auth token file"}[kind]
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_read_token_refuses_a_file_past_the_bound_without_reading_it_all(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"y" * (10 * 1024 * 1024))
    with pytest.raises(AuthConfigError, match="larger than"):
        read_token(str(path))


# ------------------------------------------------------------------ the request's header

@pytest.mark.parametrize("headers, token", [
    ([f"Bearer {TOKEN}"], TOKEN.encode()), ([f"bearer {TOKEN}"], TOKEN.encode()),
    ([f"BEARER   {TOKEN}  "], TOKEN.encode()), (["Bearer caf\xe9"], b"caf\xe9"),
    ([], None), (["Bearer"], None), (["Bearer "], None), ([f"Basic {TOKEN}"], None),
    ([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], None), ([TOKEN], None),
])
def test_presented_token(headers, token):
    assert presented_token(headers) == token


def test_challenges_follow_rfc_6750():
    assert challenge(MISSING) == 'Bearer realm="nsnet"'
    assert challenge(INVALID) == 'Bearer realm="nsnet", error="invalid_token"'


# ------------------------------------------------------------------------- re-reading

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rotate(secret_dir: Path, version: str, content: bytes | None) -> None:
    """The kubelet's atomic update of a Secret volume: a new directory, then ..data swapped
    to it with a rename. content None: the new version's token is a FIFO."""
    new = secret_dir / f"..{version}"
    new.mkdir()
    if content is None:
        os.mkfifo(new / "token")
    else:
        (new / "token").write_bytes(content)
    os.symlink(new.name, secret_dir / "..data_tmp")
    os.rename(secret_dir / "..data_tmp", secret_dir / "..data")


@pytest.fixture
def secret_dir(tmp_path):
    rotate(tmp_path, "v1", b"first-token\n")
    os.symlink("..data/token", tmp_path / "token")
    return tmp_path


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


def test_a_rotated_secret_is_taken_at_the_next_check(secret_dir):
    clock, err = Clock(), io.StringIO()
    auth = TokenAuth(str(secret_dir / "token"), err, recheck=5.0, clock=clock)
    assert auth.verdict(bearer("first-token")) is None
    assert auth.verdict(bearer("second-token")) == INVALID
    assert auth.verdict([]) == MISSING
    rotate(secret_dir, "v2", b"second-token")
    clock.now += 4.9                                   # not yet due: the old token holds
    assert auth.verdict(bearer("first-token")) is None
    clock.now += 0.1
    assert auth.verdict(bearer("second-token")) is None
    assert auth.verdict(bearer("first-token")) == INVALID
    assert err.getvalue() == (f"nsnet: auth token file {secret_dir}/token changed: the new "
                              "token is in force\n")
    assert "first-token" not in err.getvalue() and "second-token" not in err.getvalue()


def test_a_file_rewritten_in_place_is_taken_too(tmp_path):
    path = tmp_path / "token"
    path.write_text("aaaa")
    clock = Clock()
    auth = TokenAuth(str(path), io.StringIO(), recheck=5.0, clock=clock)
    path.write_text("bbbbbb")          # same inode, another size and mtime
    clock.now += 5
    assert auth.verdict(bearer("bbbbbb")) is None


def test_a_failed_reread_keeps_the_token_and_is_said_once(secret_dir):
    clock, err = Clock(), io.StringIO()
    auth = TokenAuth(str(secret_dir / "token"), err, recheck=5.0, clock=clock)
    rotate(secret_dir, "v2", None)                     # the new version is a FIFO
    for _ in range(3):
        clock.now += 5
        assert auth.verdict(bearer("first-token")) is None
    rotate(secret_dir, "v3", b"   \n")                 # then empty
    clock.now += 5
    assert auth.verdict(bearer("first-token")) is None
    lines = err.getvalue().splitlines()
    assert lines == [f"nsnet: warning: auth token file {secret_dir}/token: not a regular file "
                     "(a FIFO); keeping the token read before"]
    rotate(secret_dir, "v4", b"fourth-token\n")        # fixed: in force, and said
    clock.now += 5
    assert auth.verdict(bearer("fourth-token")) is None
    assert err.getvalue().splitlines()[1:] == [
        f"nsnet: auth token file {secret_dir}/token changed: the new token is in force"]
    # a later failure is said again (once)
    (secret_dir / "token").unlink()
    for _ in range(2):
        clock.now += 5
        assert auth.verdict(bearer("fourth-token")) is None
    assert err.getvalue().splitlines()[2:] == [
        f"nsnet: warning: cannot read auth token file {secret_dir}/token: no such file or "
        "directory; keeping the token read before"]
    os.symlink("..data/token", secret_dir / "token")   # back, unchanged
    clock.now += 5
    assert auth.verdict(bearer("fourth-token")) is None
    assert err.getvalue().splitlines()[3:] == [
        f"nsnet: auth token file {secret_dir}/token is readable again (the same token)"]
    assert "-token" not in err.getvalue().replace(f"{secret_dir}/token", "")


def test_a_bad_file_at_start_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(AuthConfigError, match="FIFO"):
        TokenAuth(str(tmp_path / "fifo"), io.StringIO())


# --------------------------------------------------------------------------- the CLI

def test_the_option_reaches_the_agent_options(tmp_path):
    args = build_parser({}).parse_args(["serve", "--auth-token-file", "/run/secrets/t"])
    assert agent_options(args, {}).auth_token_file == "/run/secrets/t"
    args = build_parser({}).parse_args(["serve"])
    assert agent_options(args, {}).auth_token_file is None


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_a_usage_error_not_auth_off(value):
    with pytest.raises(UsageError, match="--auth-token-file: an empty path"):
        build_parser({}).parse_args(["serve", "--auth-token-file", value])


# ------------------------------------------------------------------- over HTTP, in-process

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    try:
        with NO_PROXY.open(urllib.request.Request(url, headers=headers or {}),
                           timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def guarded(tmp_path):
    """An agent (no sample taken) serving on 127.0.0.1 with a token file."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    options = AgentOptions(sampling=SamplingOptions(events=False), node="n1",
                           listen=("127.0.0.1", 0), auth_token_file=str(tmp_path / "token"))
    agent = Agent(options, io.StringIO())
    server = http_server(agent, TokenAuth(str(tmp_path / "token"), io.StringIO()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield agent, f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    agent.close()


def unauthorized(agent: Agent, reason: str) -> float:
    return agent.metrics.http_unauthorized.labels(reason)._value.get()


def test_every_path_but_the_probes_asks_for_the_token(guarded):
    agent, base = guarded
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert request(base + "/healthz")[0] == 200
    assert request(base + "/readyz")[0] == 503       # no sample yet: not a 401
    for path in ("/metrics", "/api/v1/snapshot?view=by-pod", "/api/v1/dependencies",
                 "/nowhere", "/healthz/", "/metrics?x=/healthz"):
        status, headers, body = request(base + path)
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="nsnet"', path
        assert b"/healthz" not in body and len(body) < 100     # no list of paths
        status, headers, body = request(base + path, {"Authorization": "Bearer wrong"})
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert request(base + path, good)[0] != 401
    assert request(base + "/metrics", good)[0] == 200
    assert request(base + "/api/v1/snapshot", good)[0] == 503    # authorized, no sample yet
    assert request(base + "/nowhere", good)[0] == 404
    assert unauthorized(agent, MISSING) == 6 and unauthorized(agent, INVALID) == 6


def test_refusals_are_exported_from_the_start(guarded):
    agent, base = guarded
    status, _, body = request(base + "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    text = body.decode()
    assert status == 200
    assert 'nsnet_http_unauthorized_total{reason="missing"} 0.0' in text
    assert 'nsnet_http_unauthorized_total{reason="invalid"} 0.0' in text
