"""Lint rule: nanotui/core stays pure, and nothing in nanotui imports torch or nanochat (docs/CONTRACTS.md "nanotui/core")."""
import ast
from pathlib import Path

import pytest

NANOTUI = Path(__file__).resolve().parents[2] / "nanotui"
CORE_FORBIDDEN = {"textual", "pynvml", "subprocess", "socket", "torch", "nanochat", "psutil", "multiprocessing",
                  "asyncio", "threading", "signal", "rich"}
PACKAGE_FORBIDDEN = {"torch", "nanochat"}


def imported_top_modules(path: Path) -> set:
    """Top-level module names imported anywhere in a file (including inside functions), plus __import__/
    importlib.import_module calls with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if fname in ("__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_rule_detects_forbidden_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef f():\n    from torch import nn\n    import subprocess as sp\n"
                   "importlib.import_module('textual.app')\n")
    assert {"torch", "subprocess", "textual"} <= imported_top_modules(bad)


def core_files():
    files = sorted((NANOTUI / "core").rglob("*.py"))
    assert files, "nanotui/core has no modules"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_is_pure(path):
    bad = imported_top_modules(path) & CORE_FORBIDDEN
    assert not bad, f"{path.relative_to(NANOTUI.parent)} imports {sorted(bad)}; nanotui/core must stay pure"


def test_nanotui_never_imports_torch_or_nanochat():
    offenders = {}
    for path in sorted(NANOTUI.rglob("*.py")):
        bad = imported_top_modules(path) & PACKAGE_FORBIDDEN
        if bad:
            offenders[str(path.relative_to(NANOTUI.parent))] = sorted(bad)
    assert not offenders, f"nanotui must talk to the trainer only through processes/logs/files: {offenders}"
