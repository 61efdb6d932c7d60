"""The README's sample outputs are what nsnet prints: support/readme_samples.py makes them again
from a fresh dependency node (a real run; what varies between runs replaced by fixed values)
and every block must be identical. To update them after a change of the output:
`.venv/bin/python tests/support/readme_samples.py --write README.md` (as root)."""
from __future__ import annotations

from pathlib import Path

from conftest import require_root
from depnode import DepNode
from readme_samples import blocks, collect

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_samples_are_what_nsnet_prints(tmp_path):
    require_root("ip", "setpriv", "ss")
    with DepNode.build(tmp_path) as node:
        made = collect(node, tmp_path)
    written = blocks(README.read_text())
    assert set(made) <= set(written), f"README lacks sample blocks {set(made) - set(written)}"
    for name, text in made.items():
        assert written[name] == text, (
            f"README sample {name!r} differs from what nsnet prints now; regenerate it with "
            f"tests/support/readme_samples.py --write README.md\n--- made:\n{text}")
