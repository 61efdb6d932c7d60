"""What the README says about options is what the parser takes: every option it lists under
"Every command takes" is accepted by every command, every `--option` it mentions anywhere
exists, and the column names it uses are the commands' own."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nsnet.cli import COMMANDS, build_parser
from nsnet.report import EDGE_COLUMN_NAMES, SOCKET_COLUMN_NAMES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def options_of() -> dict[str, set[str]]:
    parser = build_parser({})
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s for a in p._actions for s in a.option_strings}
            for name, p in sub.choices.items()}


def test_every_command_is_in_the_parser():
    assert set(options_of()) == set(COMMANDS)


def test_every_command_takes_what_the_readme_says_it_takes():
    section = README.split("Every command takes", 1)[1].split("\n\nExit status", 1)[0]
    listed = set(re.findall(r"^- `(-{1,2}[a-z][a-z-]*)", section, re.M))
    listed |= set(re.findall(r"\(or `(-{1,2}[a-z][a-z-]*)", section))
    assert {"--json", "-o", "-q", "--proc", "--color", "--host-root"} <= listed
    # nsnet cluster reads no node: the README names the ones it takes
    printing = set(re.findall(r"`(-{1,2}[a-z][a-z-]*)`", section.split(":\n", 1)[0]))
    assert printing == {"--json", "-o", "--columns", "-q", "-v", "--color", "--resolve",
                        "--services"}
    for command, options in options_of().items():
        wanted = printing if command == "cluster" else listed
        assert wanted <= options, (command, wanted - options)
    assert not (listed - printing) & options_of()["cluster"]


def test_every_option_the_readme_mentions_exists():
    known = set().union(*options_of().values()) | {"--help", "--version"}
    # the samples' output quotes the fixture's command lines: only their "$ " lines count
    prose = re.sub(r"```[a-z]*\n(.*?)```", lambda m: "\n".join(
        line for line in m.group(1).splitlines() if line.startswith("$ ")), README, flags=re.S)
    mentioned = set(re.findall(r"(?<![\w/-])(--[a-z][a-z-]+)", prose))
    # options of other programs the README quotes (pip, kubectl, ss, lsfd, the scripts)
    foreign = {"--write", "--check", "--strict", "--baseline", "--repeat", "--sources",
               "--skip-ss", "--change", "--propagation", "--reuid", "--regid",
               "--clear-groups", "--inh-caps", "--ambient-caps", "--bounding-set",
               "--ss-repeat", "--traffic-cost"}
    unknown = sorted(mentioned - known - foreign)
    assert not unknown, f"the README mentions options nsnet does not have: {unknown}"


@pytest.mark.parametrize("example", re.findall(r"nsnet sockets -o ([A-Z,-]+)", README))
def test_column_examples_name_real_columns(example):
    assert set(example.split(",")) <= set(SOCKET_COLUMN_NAMES)


def test_the_column_lists_are_the_commands():
    assert "NETNS" in SOCKET_COLUMN_NAMES and "OTHER-END" in SOCKET_COLUMN_NAMES
    assert {"USER", "SERVICE", "CLIENT", "KNOWN-BY"} <= set(EDGE_COLUMN_NAMES)


def test_the_readme_explains_every_word_of_the_vocabulary():
    from nsnet.report import VOCABULARY
    words = re.findall(r"^  ([A-Z][A-Z /]+?)\s{2,}", VOCABULARY, re.M)
    table = README.split("Reading the tables", 1)[1].split("\n\n", 2)[1]
    assert len(words) >= 6
    for word in words:
        for part in word.split("/"):
            assert part.strip() in table, part
