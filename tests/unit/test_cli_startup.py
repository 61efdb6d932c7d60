"""The CLI's start: `--version` answers without building the parser, and nothing heavy is
imported before a command runs (measured in bench/bench_startup.py; here only what is
imported, which does not depend on the machine's speed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nsnet import __version__
from nsnet.cli import build_parser, main
from nsnet.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def test_version_fast_path_prints_what_argparse_prints(capsys):
    assert main(["--version"]) == 0
    fast = capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == fast == f"nsnet {__version__}\n"


def test_version_among_other_arguments_goes_through_argparse(capsys):
    # --version is an option of nsnet, not of its commands: one error line, as before
    assert main(["sockets", "--json", "--version"]) == 2
    assert "unrecognized arguments: --version" in capsys.readouterr().err


def python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (what it imports is all its own)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)


def test_importing_the_cli_loads_no_command_machinery():
    loaded = set(python(
        "import sys, nsnet.cli; loaded = sorted(m for m in sys.modules if m.startswith("
        "('nsnet', 'psutil', 'nsenter', 'prometheus_client', 'socket', 'json', "
        "'concurrent'))); print(' '.join(loaded))").stdout.split())
    assert loaded == {"nsnet", "nsnet._stdlib_guard", "nsnet.cli", "nsnet.errors",
                      "nsnet.model", "nsnet.options", "nsnet.records"}, loaded


def test_the_snapshot_pipeline_loads_the_pidfd_source_only_when_it_is_used():
    # ~10 ms of a netlink run's start: it borrows sockets only for kinds no table lists,
    # and only the /proc tables make lines to check (both import it where they need it)
    loaded = python("import sys, nsnet.snapshot, nsnet.views\n"
                    "print('nsnet.sources.pidfd' in sys.modules, 'nsnet.unixcheck' in sys.modules)")
    assert loaded.stdout.split() == ["False", "True"]


def test_verbose_is_an_option_of_every_command():
    for command in ("summary", "sockets", "by-user", "serve", "watch", "deps"):
        assert build_parser().parse_args([command, "-v"]).verbose is True
        assert build_parser().parse_args([command]).verbose is False


def test_the_default_source_is_auto():
    assert build_parser().parse_args(["sockets"]).source == "auto"


def test_a_json_command_does_not_import_the_renderers():
    run = python("import sys\nfrom nsnet import cli\n"
                 "code = cli.main(['sockets', '--json', '--proc', '/nonexistent-proc'])\n"
                 "print(code, 'nsnet.report' in sys.modules)\n")
    exit_code, report = run.stdout.split()
    assert exit_code == "1" and report == "False", (run.stdout, run.stderr)
    assert "nonexistent-proc" in run.stderr
    # help still has the vocabulary and the columns
    helped = subprocess.run([sys.executable, "-m", "nsnet", "sockets", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert "columns for -o / --columns: NETNS,PROTO,STATE" in helped


def test_building_only_the_command_run_parses_as_the_whole_parser_does():
    from nsnet.cli import COMMANDS, _commands

    assert tuple(name for name, *_ in _commands({})) == COMMANDS
    env = {"NSNET_DB": "/tmp/x.db", "NSNET_PROMETHEUS": "http://p:9090"}
    for command in COMMANDS:
        whole = build_parser(env).parse_args([command])
        alone = build_parser(env, only=command).parse_args([command])
        assert vars(alone) == vars(whole), command
    args = ["sockets", "--json", "--state", "listen", "--port", "80", "-v"]
    assert vars(build_parser(only="sockets").parse_args(args)) == \
        vars(build_parser().parse_args(args))
    with pytest.raises(UsageError, match="unrecognized arguments: --netns-typo"):
        build_parser(only="summary").parse_args(["summary", "--netns-typo"])
