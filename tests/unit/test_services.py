"""The operator's service-name file: matching rules and one-line errors for bad entries."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsnet.services import ServiceConfigError, load_services, parse_match, parse_services

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[[service]]
name = "shared-db"
match = ["10.0.0.5:3306", "[fd00::5]:3306"]

[[service]]
name = "redis"
match = ["10.0.2.0/24:6379"]

[[service]]
name = "wiki"
match = ["10.0.2.0/24", "fd00:1::/64"]

[[service]]
name = "everything-else-in-10"
match = "10.0.0.0/8"
"""


def test_most_specific_rule_wins():
    services = parse_services(GOOD)
    assert services.name("10.0.0.5", 3306) == "shared-db"
    assert services.name("10.0.0.5", 3307) == "everything-else-in-10"
    assert services.name("fd00::5", 3306) == "shared-db"
    assert services.name("10.0.2.9", 6379) == "redis"       # same prefix: the port wins
    assert services.name("10.0.2.9", 80) == "wiki"
    assert services.name("fd00:1::7", 443) == "wiki"
    assert services.name("192.168.1.1", 3306) is None
    assert services.name("not-an-ip", 1) is None
    assert len(services) == 6


@pytest.mark.parametrize("text,words", [
    ('[[service]]\nname = "db"\nmatch = ["10.0.0.300:3306"]', ["service #1", "db", "10.0.0.300"]),
    ('[[service]]\nname = "db"\nmatch = ["10.0.0.0/33"]', ["service #1", "10.0.0.0/33"]),
    ('[[service]]\nname = "db"\nmatch = ["10.0.0.1/24"]', ["host bits set"]),
    ('[[service]]\nname = "db"\nmatch = ["10.0.0.1:99999"]', ["bad port"]),
    ('[[service]]\nname = "db"\nmatch = ["[fd00::1"]', ["bracketed"]),
    ('[[service]]\nname = "db"\nmatch = []', ["'match'"]),
    ('[[service]]\nmatch = ["10.0.0.1"]', ["'name'"]),
    ('[[service]]\nname = "bad\\u001b[2Jname"\nmatch = ["10.0.0.1"]', ["printable"]),
    ('service = 3', ["array of tables"]),
    ('[[servise]]\nname = "x"', ["unknown key", "servise"]),
    ('[[service]\nname=', ["not valid TOML"]),
])
def test_bad_entries_are_one_line_errors(text, words):
    with pytest.raises(ServiceConfigError) as err:
        parse_services(text, "svc.toml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("svc.toml")
    for word in words:
        assert word in message


def test_parse_match_forms():
    assert parse_match("10.0.0.5:3306")[1] == 3306
    assert str(parse_match("10.0.0.0/24")[0]) == "10.0.0.0/24"
    assert parse_match("[fd00::5]:53") [1] == 53
    assert parse_match("fd00::/64")[1] is None


def test_load_errors(tmp_path):
    with pytest.raises(ServiceConfigError, match="cannot read services file"):
        load_services(str(tmp_path / "missing.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ServiceConfigError, match="not UTF-8"):
        load_services(str(tmp_path / "bin.toml"))
    assert len(load_services(None)) == 0


def test_bad_config_on_the_command_line_is_one_line(tmp_path):
    cfg = tmp_path / "svc.toml"
    cfg.write_text('[[service]]\nname = "db"\nmatch = ["10.0.0.0/33"]\n')
    run = subprocess.run([sys.executable, "-m", "nsnet", "by-user", "--services", str(cfg)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        f"nsnet: error: {cfg}: service #1 (db): '10.0.0.0/33': "
        "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network"]


def test_what_is_not_a_small_regular_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)                      # nobody writes: a blocking open would hang forever
    with pytest.raises(ServiceConfigError, match="not a regular file"):
        load_services(str(fifo))
    with pytest.raises(ServiceConfigError, match="not a regular file"):
        load_services("/dev/zero")       # endless: never read
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * 200_000)
    with pytest.raises(ServiceConfigError, match="larger than 1 MiB"):
        load_services(str(big))


def test_deep_nesting_is_a_one_line_error(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ServiceConfigError, match="nested too deeply"):
        load_services(str(deep))
    run = subprocess.run([sys.executable, "-m", "nsnet", "deps", "--services", str(deep)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "nested too deeply" in run.stderr
