"""Gates that keep the code's shape: lint and types, imports that point one way down the
pipeline, the design card's packages each used from one place, and the wheel's metadata.

Run by the README's test command (so by CI); a missing tool skips with a reason, and fails
when CI=true.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "nsnet"

# The pipeline, bottom up. A module may import its own layer and the layers below it only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("model/errors", ("nsnet", "nsnet._stdlib_guard", "nsnet.errors", "nsnet.lazyre", "nsnet.model",
                      "nsnet.records", "nsnet.options")),
    ("parsers", ("nsnet.netparse", "nsnet.mountinfo", "nsnet.cgroup", "nsnet.procparse",
                 "nsnet.sockdiag", "nsnet.services", "nsnet.ctparse")),
    ("OS boundary", ("nsnet.procfs", "nsnet.setns", "nsnet.caps", "nsnet.kubelet", "nsnet.cpus")),
    ("walk/sources", ("nsnet.walk", "nsnet.sources", "nsnet.sources.base",
                      "nsnet.sources.proc", "nsnet.sources.netlink", "nsnet.sources.pidfd",
                      "nsnet.conntrack")),
    ("join/classify/pods", ("nsnet.ownership", "nsnet.classify", "nsnet.pods",
                             "nsnet.unixcheck")),
    ("snapshot", ("nsnet.snapshot",)),
    ("views/report/graph", ("nsnet.views", "nsnet.report", "nsnet.graph", "nsnet.table", "nsnet.palette",
                            "nsnet.sanitize", "nsnet.cluster", "nsnet.terminal")),
    ("agent", ("nsnet.agent", "nsnet.agent.sampler", "nsnet.agent.events", "nsnet.agent.edges",
               "nsnet.agent.auth", "nsnet.agent.allocator", "nsnet.agent.store", "nsnet.agent.history", "nsnet.agent.metrics",
               "nsnet.agent.isolate", "nsnet.agent.serve", "nsnet.agent.watch")),
    ("cli", ("nsnet.cli", "nsnet.__main__")),
]
LAYER_OF = {module: n for n, (_, modules) in enumerate(LAYERS) for module in modules}

# Third-party packages and the one module allowed to import each (the OS boundary).
ONLY_FROM = {"nsenter": {"nsnet.setns"}, "psutil": {"nsnet.procfs"},
             "argparse": {"nsnet.cli"}, "prometheus_client": {"nsnet.agent.metrics",
                                                              "nsnet.agent.serve"}}


def require_tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module `name` imports (at any depth of its code, lazy imports included), as
    absolute names, with the line."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # `from . import x` / `from .. import x` may name submodules
            for alias in node.names:
                if f"{target}.{alias.name}" in LAYER_OF:
                    found.append((f"{target}.{alias.name}", node.lineno))
    return found


def test_every_module_has_a_layer() -> None:
    assert sorted(set(modules()) - set(LAYER_OF)) == []
    assert sorted(set(LAYER_OF) - set(modules())) == []


def test_imports_point_down_the_pipeline() -> None:
    wrong = []
    for name, path in modules().items():
        for target, line in imports_of(name, path):
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[name]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {LAYERS[LAYER_OF[name]][0]} "
                             f"{name} imports {LAYERS[LAYER_OF[target]][0]} {target}")
    assert wrong == []


def test_the_layering_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check above must be able to fail: a model that imports the views is caught."""
    fake = tmp_path / "nsnet" / "model.py"
    fake.parent.mkdir()
    fake.write_text("from .views import endpoint\ndef f():\n    from . import cli\n")
    targets = {t for t, _ in imports_of("nsnet.model", fake)}
    assert {"nsnet.views", "nsnet.cli"} <= targets
    assert LAYER_OF["nsnet.views"] > LAYER_OF["nsnet.model"]


def test_design_card_packages_are_used_from_one_module_each() -> None:
    wrong = []
    for name, path in modules().items():
        for target, line in imports_of(name, path):
            top = target.split(".")[0]
            if top in ONLY_FROM and name not in ONLY_FROM[top]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {name} imports {target}")
    assert wrong == []


def test_only_the_cli_reads_option_variables() -> None:
    wrong = []
    for name, path in modules().items():
        if name == "nsnet.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: os.{node.attr}")
    assert wrong == []


def test_ruff() -> None:
    require_tool("ruff")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "nsnet"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy() -> None:
    require_tool("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_wheel_ships_the_license_and_its_metadata(tmp_path: Path) -> None:
    """Apache-2.0 asks that the license text travel with the work: in the repository and in
    the wheel (built here offline, with the setuptools the test extras install)."""
    require_tool("setuptools")
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--quiet", "--wheel-dir", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    (wheel,) = tmp_path.glob("nsnet-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (licensed,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(licensed).decode() == license_text
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
        assert {"nsnet/sources/netlink.py", "nsnet/agent/serve.py", "nsnet/py.typed"} <= set(names)
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")
    assert any(url.startswith("Source, https://") for url in meta.get_all("Project-URL"))
