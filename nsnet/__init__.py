"""nsnet: walk every network namespace on a node and attribute every socket to its pids and users."""
from ._stdlib_guard import ensure_stdlib as _ensure_stdlib

SHADOWED_STDLIB = _ensure_stdlib()
__version__ = "0.1.0"
SCHEMA = "nsnet/1"
