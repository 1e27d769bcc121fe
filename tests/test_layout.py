"""The package's layout: one module per chapter, imports pointing back along the lifecycle, no private names shared."""
import ast
from pathlib import Path

import pytest

from conftest import LIFECYCLE

PACKAGE = Path(__file__).resolve().parent.parent / "mllifecycle"


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    "Every import of another mllifecycle module in `module` (function-level ones too): (module, name, line)."
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                target = node.module.split(".")[0]
            elif node.level == 0 and (node.module or "").startswith("mllifecycle."):
                target = node.module.split(".")[1]
            elif node.level == 0 and node.module == "mllifecycle":
                found += [(alias.name, None, node.lineno) for alias in node.names]
                continue
            else:
                continue
            found += [(target, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], None, node.lineno) for alias in node.names
                      if alias.name.startswith("mllifecycle.")]
    return found


def test_every_module_is_a_chapter_in_lifecycle_order():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "_modidx"}
    assert modules == set(LIFECYCLE)
    chapters = {p.stem.split("_", 1)[1] for p in (PACKAGE.parent / "nbs").glob("[0-9][0-9]_*.ipynb")}
    assert chapters == set(LIFECYCLE)  # every notebook's name says its module


@pytest.mark.parametrize("module", LIFECYCLE)
def test_imports_point_back_along_the_lifecycle(module):
    later = [(target, line) for target, _, line in imports_of(module)
             if target in LIFECYCLE and LIFECYCLE.index(target) >= LIFECYCLE.index(module)]
    assert not later, f"{module} imports a module at or after it: {later}"


@pytest.mark.parametrize("module", LIFECYCLE)
def test_no_module_uses_another_modules_private_names(module):
    private = [(target, name, line) for target, name, line in imports_of(module) if name and name.startswith("_")]
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if (alias.name in LIFECYCLE or alias.name.startswith("mllifecycle."))}
    private += [(node.value.id, node.attr, node.lineno) for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_")]
    assert not private, f"{module} uses private names of other modules: {private}"


@pytest.mark.parametrize("source, fragment", [
    ("from .validate import _per_row\n", "_per_row"),  # a private name imported
    ("import mllifecycle.serve as serve\n\ndef f():\n    return serve._replay()\n", "_replay"),  # or reached for
])
def test_the_checks_see_a_private_name_and_a_later_module(tmp_path, monkeypatch, source, fragment):
    "The checks above fail on a module that uses another's private name, or imports a later module."
    (tmp_path / "train.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    with pytest.raises(AssertionError, match=fragment):
        test_no_module_uses_another_modules_private_names("train")
    with pytest.raises(AssertionError, match="imports a module at or after it"):
        test_imports_point_back_along_the_lifecycle("train")
