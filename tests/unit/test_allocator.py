"""The agent's allocator settings (nsnet.agent.allocator) do what they are for, measured on
this process's own resident size (glibc; each case in a fresh interpreter)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nsnet.agent import allocator
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
"""
# 400 blocks of 100 kB (under every mmap threshold: from the heap), one more above them, so
# that freeing the 400 leaves a hole no automatic trim at the heap's top reaches
TRIM = PRELUDE + """
blocks = [bytearray(100_000) for _ in range(400)]
pin = bytearray(100_000)
del blocks
freed = rss()
allocator.trim()
print(json.dumps({"freed": freed, "trimmed": rss()}))
"""
# glibc's dynamic threshold: once a 4 MB mapped block is freed, blocks up to 4 MB come from
# the heap and stay there when freed; tune() fixes the threshold at 256 KiB
THRESHOLD = PRELUDE + """
if sys.argv[2] == "tuned":
    assert allocator.tune()
big = bytearray(4_000_000)
del big
before = rss()
blocks = [bytearray(1_000_000) for _ in range(40)]
pin = bytearray(100_000)
held = rss()
del blocks
print(json.dumps({"before": before, "held": held, "freed": rss()}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(REPO), *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(autouse=True)
def glibc():
    from nsnet.agent import allocator
    if allocator._LIBC is None:
        pytest.skip("not glibc: the allocator is left as it is")


def test_trim_gives_freed_heap_back():
    got = run(TRIM)
    assert got["freed"] - got["trimmed"] > 30_000, got     # KiB: most of the 40 MB


def test_a_fixed_mmap_threshold_unmaps_large_blocks_at_once():
    default, tuned = run(THRESHOLD, "default"), run(THRESHOLD, "tuned")
    assert default["held"] - default["before"] > 35_000, default
    assert default["held"] - default["freed"] < 5_000, default     # kept by the heap
    assert tuned["held"] - tuned["freed"] > 35_000, tuned          # unmapped on free
