"""Shared test policy.

Three tiers, one directory each, each marked (select with `-m unit`, `-m kernel`,
`-m containers`):

  unit/        pure modules on captured text, and everything above the sources tested
               in-process from a Snapshot built in memory (support/memnode.py). No root.
  kernel/      real namespaces, sockets, processes and daemons, checked against the kernel's
               own tools (ss, lsfd, conntrack). Root.
  containers/  real containers on a private dockerd/runc, and the agent's image. Root.

Tests that need root skip with a reason, but fail when CI=true. Helpers the tiers share
(a real node, the ss oracle, the container scaffolding, the in-memory node) are in support/.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))

TIERS = ("unit", "kernel", "containers")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: pure or in-memory tests (no root)")
    config.addinivalue_line("markers", "kernel: real kernel objects (root; mandatory when "
                                       "CI=true)")
    config.addinivalue_line("markers", "containers: real containers on a private dockerd/runc "
                                       "(root; mandatory when CI=true)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def require_root(*tools: str) -> None:
    """Skip (or, under CI=true, fail) unless we are root and have the given tools."""
    missing = [t for t in tools if shutil.which(t) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, setns, other users' /proc entries)"
    elif missing:
        reason = f"needs {', '.join(missing)} on PATH"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def root(request: pytest.FixtureRequest) -> None:
    require_root()


@pytest.fixture(scope="session")
def node():
    """The real-namespace node of support/realnode.py, built once per session and shared
    (only one can exist at a time: its addresses and uids are fixed)."""
    require_root("ip", "nsenter", "setpriv")
    from realnode import RealNode

    with RealNode.build() as built:
        yield built
