"""The layers under `python -m engine.solve`: the command line on top, nothing imports it, each layer below
imports only the layers under it, and none below the command line knows of argparse.

Read with `ast` from the source (every import statement, module level or inside a function).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOLVE_MAX_LINES = 300

#: top to bottom; a module may import modules of its own layer or of a layer under it, never above
LAYERS = (
    ("engine.solve",),
    ("engine.runners",),
    ("engine.runners.sharded",),
    ("engine.runners.whole", "engine.runners.windows"),
    ("engine.output", "engine.job_checks", "engine.runners.progress"),
    ("engine.job_input",),
    ("engine.job",),
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` (under `root`) names in an import statement, and every `package.name` of a
    `from package import name`."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_no_module_imports_the_command_line():
    """engine.solve is the top: no module of engine/, bench/ or export/ imports it (they call the layers below)."""
    offenders = [str(path.relative_to(ROOT)) for path in sources("engine", "bench", "export")
                 if path != ROOT / "engine" / "solve.py" and "engine.solve" in imported(path)]
    assert offenders == []


def test_the_import_check_sees_every_spelling(tmp_path):
    """The check above catches `import engine.solve`, `from engine.solve import …`, `from engine import solve`
    and a relative `from . import solve` inside engine/ (so it can fail)."""
    (tmp_path / "engine").mkdir()
    spellings = ["import engine.solve", "from engine.solve import main", "from engine import solve",
                 "from . import solve"]
    for i, line in enumerate(spellings):
        path = tmp_path / "engine" / f"m{i}.py"
        path.write_text(f"def f():\n    {line}\n")
        assert "engine.solve" in imported(path, tmp_path), line
    (tmp_path / "engine" / "clean.py").write_text("from engine.job import Job\n")
    assert "engine.solve" not in imported(tmp_path / "engine" / "clean.py", tmp_path)


def test_solve_is_the_command_line_alone():
    lines = len((ROOT / "engine" / "solve.py").read_text().splitlines())
    assert lines <= SOLVE_MAX_LINES, f"engine/solve.py has {lines} lines; the run belongs in the layers below it"


@pytest.mark.parametrize("layer", range(1, len(LAYERS)))
def test_each_layer_imports_only_the_layers_under_it(layer):
    above = {name for names in LAYERS[:layer] for name in names}
    for name in LAYERS[layer]:
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        path = path if path.exists() else path.with_suffix("") / "__init__.py"
        found = imported(path)
        assert not found & above, f"{name} imports {sorted(found & above)}, a layer above it"
        assert not found & {"argparse", "engine.cli"}, f"{name} knows of the command line: {sorted(found)}"
