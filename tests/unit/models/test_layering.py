"""``models.blocks`` and ``models.transformers`` share ``models.units`` and are no import
circle: ``transformers`` never imports ``blocks``; ``blocks`` imports ``transformers`` at module
level only."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import ablate.models

PKG = Path(ablate.models.__file__).parent
SHARED = {"Block", "Glue", "get_module", "set_module", "_resolve"}


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported ablate.models module, whether the import sits inside a function or class)."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative to ablate.models (level 1) or ablate (level 2)
                    pkg = "ablate.models".rsplit(".", child.level - 1)[0]
                    base = f"{pkg}.{base}" if base else pkg
                out.append((base, inner))
                out.extend((f"{base}.{a.name}", inner) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def _names(module: str) -> set[str]:
    return {m.removeprefix("ablate.models.") for m, _ in _imports(module)}


def test_transformers_never_imports_blocks():
    assert "blocks" not in _names("transformers")
    assert "units" in _names("transformers")


def test_blocks_imports_transformers_only_at_module_level():
    found = [(m, nested) for m, nested in _imports("blocks")
             if m.removeprefix("ablate.models.") == "transformers"]
    assert found and not any(nested for _, nested in found)
    assert "units" in _names("blocks")


def test_no_function_level_import_between_them():
    for a, b in (("blocks", "transformers"), ("transformers", "blocks")):
        nested = [m for m, inner in _imports(a) if inner and m.removeprefix("ablate.models.") == b]
        assert not nested, f"{a}.py imports {b} inside a function"


def test_units_imports_neither():
    assert not {"blocks", "transformers"} & _names("units")


@pytest.mark.parametrize("module", ["blocks", "transformers"])
def test_shared_pieces_are_defined_once_in_units(module):
    tree = ast.parse((PKG / f"{module}.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & SHARED


def test_public_names_still_importable():
    units = importlib.import_module("ablate.models.units")
    blocks = importlib.import_module("ablate.models.blocks")
    transformers = importlib.import_module("ablate.models.transformers")
    for name in ("Block", "Glue", "get_module", "set_module"):
        assert getattr(blocks, name) is getattr(units, name)
    for name in ("blocks", "chain", "deletable_units", "eval_mode", "restore_flags",
                 "train_flags"):
        assert callable(getattr(blocks, name))
    assert issubclass(transformers.TransformerBlock, units.Block)
    assert transformers._resolve is units._resolve
