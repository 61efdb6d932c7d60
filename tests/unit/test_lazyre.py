"""LazyPattern: compiled at its first use, then the same compiled pattern every time; and
the parsers' patterns are not compiled by importing their modules."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from nsnet.lazyre import LazyPattern

REPO = Path(__file__).resolve().parents[2]


def test_compiled_at_first_use_and_once():
    pattern = LazyPattern(rb"([0-9]+):([a-z]+)", re.IGNORECASE)
    assert pattern._compiled is None
    m = pattern.match(b"12:AB rest")
    assert m is not None and m.groups() == (b"12", b"AB")
    first = pattern.compiled
    assert pattern.compiled is first and first.flags & re.IGNORECASE
    assert pattern.fullmatch(b"12:ab") is not None and pattern.fullmatch(b"12:ab!") is None
    assert pattern.search(b"xx 7:q").group(1) == b"7"
    assert [m.group(2) for m in pattern.finditer(b"1:a 2:b", 1)] == [b"b"]
    assert pattern.match(b"12:ab", 0, 2) is None      # endpos is honoured


def test_a_malformed_pattern_fails_where_it_is_used():
    broken = LazyPattern("(unclosed")
    try:
        broken.match("x")
    except re.error:
        return
    raise AssertionError("a malformed pattern compiled")


def test_importing_the_parsers_compiles_none_of_their_lazy_patterns():
    code = ("import nsnet.netparse, nsnet.kubelet, nsnet.ctparse\n"
            "from nsnet.lazyre import LazyPattern\n"
            "lazy = [v for m in (nsnet.netparse, nsnet.kubelet, nsnet.ctparse)\n"
            "        for v in vars(m).values() if isinstance(v, LazyPattern)]\n"
            "print(len(lazy), sum(v._compiled is not None for v in lazy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[0]) >= 13 and out[1] == "0", out
