"""The package layout: no import circles, and the runtime loads neither onnx, export nor bench.

The import graph is read with `ast` from the source, every `import` statement counted
(module level and inside functions: a lazy import closes a circle just the same).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "export", "bench")


def module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of our packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `name` imports (a name taken from a package counts as its submodule
    when one exists; a submodule's own parent package is not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    assert "engine.checkpoint" in graph["engine.runtime"]            # inside a function
    assert "engine.operators.blur" in graph["engine.operators.registry"]   # `from package import module`
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_one_that_imports_it_back():
    assert circles(import_graph()) == []


def test_kernels_depend_on_nothing_above_them():
    """kernels/ holds kernels and launchers: it may use engine.errors, never the sampler or the schedule."""
    upward = {f"{name} → {target}" for name, targets in import_graph().items() if name.startswith("kernels")
              for target in targets if target.startswith(("engine.", "export", "bench")) and target != "engine.errors"}
    assert upward == set()


def test_the_product_does_not_import_the_tooling():
    """bench/ (benchmarks and bench.aot, which patches Triton) is used by nothing in engine/, kernels/, export/."""
    assert {f"{name} → {target}" for name, targets in import_graph().items() if not name.startswith("bench")
            for target in targets if target.startswith("bench")} == set()


def test_benchmarks_edit_no_import_path():
    assert [p.name for p in sorted((ROOT / "bench").glob("*.py")) if "sys.path" in p.read_text()] == []


SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if "__main__" in p.read_text())


@pytest.mark.parametrize("how", [["-m", "bench.fps"], *([f"bench/{name}.py"] for name in SCRIPTS)], ids=str)
def test_benchmarks_run_as_modules_and_as_scripts(how):
    """A script's folder comes first on its import path: no bench/ file may shadow a package (bench/kernels.py did)."""
    out = subprocess.run([sys.executable, *how, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "usage" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("module", ["engine.runtime", "engine.backends.tensorrt"])
def test_the_runtime_loads_no_exporter_and_no_tooling(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'export', 'bench')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_export_without_onnx_names_the_extra():
    code = "import sys; sys.modules['onnx'] = None; import export.onnx"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "pip install 'video-inverse-engine[onnx]'" in out.stderr


@pytest.mark.parametrize("module", ["engine.evaluate", "engine.data", "engine.build", "engine.solve"])
def test_the_command_lines_keep_their_names(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and f"python -m {module}" in out.stdout, out.stderr[-2000:]


def test_the_build_without_onnx_says_so_in_one_line():
    code = ("import sys, runpy; sys.modules['onnx'] = None; "
            "runpy.run_module('engine.build', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, "--batch", "2"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "pip install 'video-inverse-engine[onnx]'" in out.stderr
