"""The course's shape: every chapter is committed executed, has a figure, ends in exercises with a
worked solution for each, and the README's table lists every chapter. The derive-it-yourself chapters
keep their stubs and their solutions notebooks pass the checker."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
DERIVE = {"05": "cross_entropy", "06": "softmax", "07": "layernorm"}  # chapter -> exercise of cllm.course.derive
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("[0-9][0-9]_*.ipynb"))  # one per chapter, same name


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _text(cell):
    return "".join(cell["source"])


def _exercises(path):
    """The numbered items of the chapter's '## Exercises' cell, and that cell's text."""
    cells = [c for c in _cells(path) if c["cell_type"] == "markdown" and _text(c).lstrip().startswith("## Exercises")]
    assert len(cells) == 1, f"{path.name}: one '## Exercises' cell expected, found {len(cells)}"
    text = _text(cells[0])
    return re.findall(r"^(\d+)\. ", text, flags=re.M), text


def test_there_are_sixteen_chapters():
    assert [p.name[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(16)]


def test_every_chapter_has_a_solutions_notebook_and_no_other_exists():
    assert [p.name for p in SOLUTIONS] == [p.name for p in CHAPTERS]


@pytest.mark.parametrize("path", CHAPTERS + sorted((NOTEBOOKS / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_executed_without_machine_paths(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code if _text(c).strip()), f"{path.name}: not executed"
    outputs = json.dumps([c.get("outputs", []) for c in code])
    for machine in ("/work/", "/tmp/", "/root/", "/home/"):
        assert machine not in outputs, f"{path.name}: an output shows a machine path ({machine})"
    assert '"output_type": "error"' not in outputs


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_a_figure(path):
    images = [o for c in _cells(path) if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_has_a_worked_solution(path):
    numbers, text = _exercises(path)
    assert numbers == [str(k) for k in range(1, len(numbers) + 1)] and len(numbers) >= 4, (path.name, numbers)
    link = f"solutions/{path.name}"
    assert f"({link})" in text, f"{path.name}: the exercises cell must link to {link}"
    sol = NOTEBOOKS / link
    assert sol.exists(), f"{link} is missing"
    cells = _cells(sol)
    heads = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and _text(c).startswith("## ")]
    exercise_heads = [i for i in heads if re.match(r"## Exercise \d+\b", _text(cells[i]))]
    found = [re.match(r"## Exercise (\d+)", _text(cells[i])).group(1) for i in exercise_heads]
    assert found == numbers, f"{link}: exercise sections {found}, the chapter has {numbers}"
    for i in exercise_heads:  # each solution computes and checks something
        end = min([j for j in heads if j > i], default=len(cells))
        code = "".join(_text(c) for c in cells[i + 1:end] if c["cell_type"] == "code")
        assert re.search(r"\bassert\b|np\.testing\.|assert_allclose", code), \
            f"{link}: {_text(cells[i]).splitlines()[0]} has no checked computation"


@pytest.mark.parametrize("chapter, exercise", sorted(DERIVE.items()))
def test_derive_it_yourself_stub_and_reference(chapter, exercise):
    (path,) = [p for p in CHAPTERS if p.name.startswith(chapter)]
    cells = _cells(path)
    code = [_text(c) for c in cells if c["cell_type"] == "code"]
    assert any("raise NotImplementedError" in c for c in code), f"{path.name}: the stub is gone"
    checks = [c for c in cells if c["cell_type"] == "code" and f'derive.check("{exercise}"' in _text(c)]
    assert checks, f"{path.name}: no derive.check(\"{exercise}\", ...) cell"
    shown = json.dumps(checks[0].get("outputs", []))
    assert "not filled in yet" in shown, f"{path.name}: the committed check should show the stub's answer"
    sol = "".join(_text(c) for c in _cells(NOTEBOOKS / "solutions" / path.name) if c["cell_type"] == "code")
    assert f'derive.check("{exercise}"' in sol and ".ok" in sol, f"solutions/{path.name}: no checked reference"


def test_readme_table_lists_every_chapter_in_order():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"\]\(notebooks/(\d\d_[a-z0-9_]+\.ipynb)\)", readme)
    assert listed == [p.name for p in CHAPTERS]
