"""ARCHITECTURE.md's rules, checked: imports point down the layers (function-level imports
included), experiments do not import each other, and no module outside the registry lists the
experiments by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from analyses import registry

ROOT = Path(__file__).resolve().parents[1]
# The layers, bottom first. The library's own order: infrastructure < data < models < measures <
# interventions < training < the package's public facade (ablate/__init__.py).
LIBRARY = ("ablate._infra", "ablate.data", "ablate.models", "ablate.measures",
           "ablate.interventions", "ablate.training")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(mod: str) -> tuple[int, str]:
    """(layer number, layer name) of an internal module; -1 for outside modules."""
    for i, pkg in enumerate(LIBRARY):
        if mod == pkg or mod.startswith(pkg + "."):
            return i, pkg
    if mod == "ablate":
        return len(LIBRARY), "ablate (facade)"
    if mod == "analyses" or mod.startswith("analyses."):
        return len(LIBRARY) + 1, "analyses"
    if mod == "figures" or mod.startswith("figures."):
        return len(LIBRARY) + 2, "figures"
    if mod.startswith("ablate."):  # ablate/_cli.py, ablate/__main__.py, ablate/<command>.py
        return len(LIBRARY) + 3, "commands"
    return -1, "outside"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth, resolved to module names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # ``from ablate import models`` imports ablate.models (not the facade) when that
            # is a module; ``from ablate.models import blocks`` likewise
            out += [(node.lineno, _existing(f"{node.module}.{a.name}")) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = _module(path).split(".")
            base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out.append((node.lineno, mod))
    return out


def _sources() -> list[Path]:
    return sorted(p for d in ("ablate", "analyses", "figures") for p in (ROOT / d).rglob("*.py"))


def _internal(mod: str) -> bool:
    return mod.split(".")[0] in ("ablate", "analyses", "figures")


def _existing(mod: str) -> str:
    """The longest prefix of ``mod`` that is a module or package file (drops imported names)."""
    parts = mod.split(".")
    while parts:
        p = ROOT.joinpath(*parts)
        if p.with_suffix(".py").is_file() or (p / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return mod


def test_imports_point_down_the_layers():
    bad = []
    for path in _sources():
        me = _module(path)
        mine = _rank(me)
        for line, mod in _imports(path):
            if not _internal(mod):
                continue
            mod = _existing(mod)
            theirs = _rank(mod)
            if theirs[0] > mine[0]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({mine[1]}) imports {mod} "
                           f"({theirs[1]})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_experiments_do_not_import_each_other():
    exp_modules = {e.module for e in registry.experiments()}
    assert len(exp_modules) >= 9
    bad = []
    for mod in exp_modules:
        path = ROOT.joinpath(*mod.split(".")).with_suffix(".py")
        for line, imp in _imports(path):
            imp = _existing(imp)
            if imp in exp_modules and imp != mod:
                bad.append(f"{mod}:{line} imports {imp}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", ["ablate/reproduce.py", "ablate/_cli.py", "ablate/__main__.py",
                                  "figures/report.py", "analyses/registry.py",
                                  "figures/__init__.py", "analyses/plan.py"])
def test_no_list_of_experiment_names_outside_the_registry(path):
    names = set(registry.names())
    found = [n.value for n in ast.walk(ast.parse((ROOT / path).read_text()))
             if isinstance(n, ast.Constant) and n.value in names]
    assert not found, f"{path} names experiments: {found}"


def test_architecture_md_names_every_layer_and_the_way_to_add_an_experiment():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer in (*LIBRARY, "analyses/", "figures/", "EXPERIMENT = Experiment(",
                  "@register(", "python -m ablate "):
        assert layer.removeprefix("ablate.").replace(".", "/") in text.replace(".", "/"), layer
    assert len(text.splitlines()) <= 70, "one screen"


def test_ruff_is_clean():
    """The style rule of the brief, checked where CI runs: ``ruff check .`` finds nothing."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is part of the test setup: pip install -e '.[dev]'"
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:]
