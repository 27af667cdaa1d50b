"""The chapter notebooks: numbered 01..08, each ending with exercises; each runs top to bottom
in fast mode, draws figures, writes nothing into the repository's output
folders, and keeps no second copy of package code."""

import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
OUTPUT_FOLDERS = ("metrics", "plots", "checkpoints", "videos")
# A guard against a hung cell, not a benchmark: on an idle 2-core machine each chapter takes
# well under CONTRACT.md's 2 minutes in fast mode, but a loaded CI machine may be slower.
# (Time them with: python -m pytest tests/test_notebooks.py -k fast_mode --durations=0)
CELL_TIMEOUT_SECONDS = 600
MAX_NOTEBOOK_BYTES = 1_000_000  # figures at modest dpi, no embedded plotly.js
FIGURE_TYPES = ("image/png", "application/vnd.plotly.v1+json")


def package_names() -> set:
    """Every function and class defined anywhere in natural_dreamer/**/*.py, plus the names
    assigned at module or class level (constants, class attributes)."""
    names = set()
    for path in (ROOT / "natural_dreamer").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
        for scope in scopes:
            for statement in scope.body:
                targets = []
                if isinstance(statement, ast.Assign):
                    targets = statement.targets
                elif isinstance(statement, ast.AnnAssign):
                    targets = [statement.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def cell_definitions(source: str) -> set:
    """Names of the functions and classes a code cell defines, at any depth. IPython line
    magics and shell lines (% and !) are dropped first; so is a cell magic's %% line."""
    python = "\n".join(
        line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
    )
    return {
        node.name
        for node in ast.walk(ast.parse(python))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def figures(notebook) -> list:
    """The outputs of a notebook that hold a rendered figure."""
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if any(kind in output.get("data", {}) for kind in FIGURE_TYPES)
    ]


def run_prefixes() -> set:
    """Names of the runs that already have outputs: each run writes its metrics CSV and its
    resolved config (checkpoints/<run>.yml) when it starts."""
    found = {p.stem for p in (ROOT / "metrics").glob("*.csv")}
    return found | {p.stem for p in (ROOT / "checkpoints").glob("*.yml")}


def output_files() -> set:
    return {
        str(p.relative_to(ROOT))
        for name in OUTPUT_FOLDERS
        if (ROOT / name).is_dir()
        for p in (ROOT / name).rglob("*")
        if p.is_file()
    }


def unexplained(new_files: set, runs: set) -> set:
    """New files that belong to no run that existed before. A training run started by hand
    may keep adding checkpoints and rows while the tests run; a notebook's run would be new.
    (Temporary files are named ".<final name>.tmp".)"""

    def of_known_run(path: str) -> bool:
        name = Path(path).name.lstrip(".")
        return any(name.startswith((f"{run}_", f"{run}.")) for run in runs)

    return {path for path in new_files if not of_known_run(path)}


def test_chapters_are_numbered_and_end_with_exercises():
    numbers = [int(path.name[:2]) for path in NOTEBOOKS]
    assert numbers == list(range(1, 9)), [path.name for path in NOTEBOOKS]
    for path in NOTEBOOKS:
        last = nbformat.read(path, as_version=4).cells[-1]
        assert last.cell_type == "markdown", f"{path.name} must end with a markdown cell"
        assert "Exercises" in last.source, f"{path.name}: the last cell has no Exercises"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_keeps_no_second_copy_of_package_code(path):
    package = package_names()
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            copied = cell_definitions(cell.source) & package
            assert not copied, (
                f"{path.name} cell {index} defines {sorted(copied)}, which natural_dreamer "
                "already defines: import it, or give a teaching version its own name (my_...)"
            )


def test_the_copy_check_catches_a_redefinition():
    assert "two_hot" in package_names() and "forward" in package_names()
    assert cell_definitions("%matplotlib inline\ndef two_hot(x, bins):\n    pass") == {"two_hot"}
    assert cell_definitions("!ls\nclass Scratch:\n    def forward(self):\n        pass") == {
        "Scratch",
        "forward",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_small_and_carries_its_figures(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is too large to read on GitHub"
    assert figures(nbformat.read(path, as_version=4)), (
        f"{path.name} is stored without figures; regenerate it (see notebooks/README.md)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode_and_draws(path, monkeypatch):
    monkeypatch.setenv("NATURAL_DREAMER_FAST", "1")  # the kernel inherits the environment
    runs, before = run_prefixes(), output_files()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # cwd = notebooks/, as nbmake
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert figures(notebook), f"{path.name} drew no figure"
    written = unexplained(output_files() - before, runs)
    assert not written, f"{path.name} wrote {sorted(written)} into the repository's outputs"
