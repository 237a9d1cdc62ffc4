"""Imports run one way (STYLE.md): entry points -> train/evaluate -> lit_module -> model -> mixers, and the lower
packages (``data/``, ``mixers/``) import nothing above them. Checked on the source (every import statement, those
inside functions included) and at run time (what importing them loads)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "peerlab"


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of every module ``source`` (the module named ``module``) imports, anywhere in it."""
    names = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def upward_imports(subpackage: str) -> list[str]:
    """``file: module`` for each import of a peerlab module outside ``peerlab.<subpackage>`` by a file in it."""
    bad = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        module = "peerlab." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for name in imported_modules(path.read_text(), module):
            inside = name == f"peerlab.{subpackage}" or name.startswith(f"peerlab.{subpackage}.")
            if (name == "peerlab" or name.startswith("peerlab.")) and not inside:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    return bad


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    source = "def f():\n    from peerlab.builders import build_model\n    from ..model import Transformer\n"
    names = imported_modules(source, "peerlab.data.corpora")
    assert {"peerlab.builders", "peerlab.model"} <= names


@pytest.mark.parametrize("subpackage", ["data", "mixers"])
def test_lower_packages_import_nothing_above_them(subpackage):
    assert upward_imports(subpackage) == []


def test_importing_the_data_package_loads_no_model():
    modules = [f"peerlab.data.{p.stem}" for p in (PACKAGE / "data").glob("*.py") if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "above = sorted(m for m in sys.modules if m.startswith('peerlab.') and not m.startswith('peerlab.data'))\n"
            "print(above)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_prepare_entry_point_builds_the_cache(tmp_path, cache_dir):
    proc = subprocess.run([sys.executable, "-m", "peerlab.prepare", "tokenizer.vocab_size=512"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "token cache: " in proc.stdout and "  train: " in proc.stdout and "  val: " in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "peerlab.prepare", "data=nope"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: data='nope' is not an option of config group 'data'")
