"""The package's layering: the core library, the course's tools (cllm/course) and the measurement lab
(cllm/lab) in their own rooms; no import cycles; no sys.path edits; one set of presets."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cllm

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cllm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set:
    """Every cllm module that ``name`` imports anywhere in its file (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # `import cllm.ops.attention as a` -> the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name and t != "cllm":
                found.add(t)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def is_core(name: str) -> bool:
    return not (name.startswith(("cllm.course", "cllm.lab")) or name == "cllm.__main__")


def test_the_graph_sees_known_edges():  # the checker itself must see imports, or the tests below prove nothing
    assert "cllm.model" in GRAPH["cllm.train"]
    assert "cllm.ops" in GRAPH["cllm.model"]
    assert "cllm.lab.torch_reference" in GRAPH["cllm.lab.compare_torch"]   # a lazy import inside a function
    assert "cllm._atomic" in GRAPH["cllm.tokenizer"]


def test_no_import_cycle():
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == "open":
                cycle = stack[stack.index(m):] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_core_imports_neither_course_nor_lab():
    bad = sorted(f"{n} imports {m}" for n, deps in GRAPH.items() if is_core(n) for m in deps if not is_core(m))
    assert not bad, bad
    assert any(n.startswith("cllm.course.") for n in GRAPH) and any(n.startswith("cllm.lab.") for n in GRAPH)


def test_only_the_rooms_import_ipywidgets_torch_and_matplotlib():
    rooms = {"ipywidgets": ("cllm.course.widgets",), "torch": ("cllm.lab.",), "matplotlib": ("cllm.plots",)}
    for lib, allowed in rooms.items():
        pattern = re.compile(rf"^\s*(import|from)\s+{lib}\b", re.M)
        users = sorted(n for n, p in MODULES.items() if pattern.search(p.read_text(encoding="utf-8")))
        assert users and all(u.startswith(allowed) for u in users), (lib, users)


def test_no_sys_path_edits():
    edit = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove)\b|\[|\+?=)")
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "tests").rglob("*.py"))
    bad = [str(p.relative_to(ROOT)) for p in files if edit.search(p.read_text(encoding="utf-8"))]
    assert not bad, bad


def test_gradcheck_means_one_thing():
    check = ("assert cllm.gradcheck is sys.modules['cllm.gradcheck'] and callable(cllm.gradcheck); "
             "from cllm.gradcheck import check_op; assert cllm.gradcheck is sys.modules['cllm.gradcheck']; print('ok')")
    for first in ("import sys, cllm; cllm.gradcheck; ",                      # the package's name first
                  "import sys, cllm; from cllm.gradcheck import check_model; "):  # the submodule first
        out = subprocess.run([sys.executable, "-c", first + check], capture_output=True, text=True, cwd=ROOT)
        assert out.stdout.strip() == "ok", out.stderr
    import numpy as np

    x = np.arange(3.0)
    report = cllm.gradcheck(lambda: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x})  # the function, called
    assert report.max_rel_error < 1e-8


def test_presets_are_the_ones_everything_uses():
    from cllm.config import PRESETS
    from cllm.lab import bench_optim

    assert set(PRESETS) == {"tiny", "small", "seed"}
    assert cllm.Model(PRESETS["seed"].model, seed=0).num_params() == 19_244_544
    assert bench_optim.SEED_CONFIG is PRESETS["seed"].model
    from conftest import tiny_config

    assert tiny_config() == PRESETS["tiny"].model
