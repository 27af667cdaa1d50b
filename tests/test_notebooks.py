"""The chapter notebooks run top to bottom in fast mode, draw figures, and copy no package code."""

import ast
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUTPUT_FOLDERS = ("metrics", "plots", "checkpoints", "videos")


def package_names() -> set:
    """Functions and classes defined anywhere in natural_dreamer/*.py."""
    names = set()
    for path in (ROOT / "natural_dreamer").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
    return names


def code_of(notebook) -> str:
    """The notebook's code cells, with IPython magics and shell lines left out."""
    lines = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            lines += [
                ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))
            ]
    return "\n".join(lines)


def test_chapters_are_numbered_and_end_with_exercises():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, 9)), [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        last = nbformat.read(path, as_version=4).cells[-1]
        assert last.cell_type == "markdown" and "Exercises" in last.source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_keeps_no_second_copy_of_package_code(path):
    tree = ast.parse(code_of(nbformat.read(path, as_version=4)))
    defined = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    assert not defined & package_names(), f"{path.name} redefines {defined & package_names()}"


def outputs_snapshot() -> set:
    return {f"{name}/{p.name}" for name in OUTPUT_FOLDERS for p in (ROOT / name).iterdir()}


def new_runs(before: set, after: set) -> set:
    """Files of runs that had no file before (a training run elsewhere may add checkpoints)."""
    runs_before = {name.rsplit("_", 1)[0] for name in before}
    return {name for name in after - before if name.rsplit("_", 1)[0] not in runs_before}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode_and_draws(path, monkeypatch):
    monkeypatch.setenv("NATURAL_DREAMER_FAST", "1")
    before = outputs_snapshot()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
        or any(re.match("application/vnd.plotly", k) for k in output.get("data", {}))
    ]
    assert images, f"{path.name} drew no figure"
    written = new_runs(before, outputs_snapshot())
    assert not written, f"{path.name} wrote {written} into the repository's output folders"
    assert os.environ["NATURAL_DREAMER_FAST"] == "1"
