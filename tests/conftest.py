"""Shared test policy: root-only tests skip with a reason, but fail when CI=true."""
from __future__ import annotations

import os
import shutil

import pytest


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
def root(request):
    require_root()


@pytest.fixture(scope="session")
def node():
    """The real-namespace node of tests/realnode.py, built once per session and shared
    (only one can exist at a time: its addresses and uids are fixed)."""
    require_root("ip", "nsenter", "setpriv")
    from realnode import RealNode

    with RealNode.build() as built:
        yield built
