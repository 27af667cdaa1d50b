"""`pip install -e .`: the package's declared dependencies agree with the pinned versions the
tests run against, and the install makes natural_dreamer importable from anywhere."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pinned() -> dict:
    """requirements.txt as {normalised name: version}."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[normalise(requirement.name)] = next(iter(requirement.specifier)).version
    return pins


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_declared_dependency_admits_the_pinned_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pins = pinned()
    for text in declared:
        requirement = Requirement(text)
        name = normalise(requirement.name)
        assert name in pins, f"{name} is declared in pyproject.toml but not pinned"
        version = pins[name]
        assert requirement.specifier.contains(version), f"{text} refuses the pinned {version}"
    # What the package imports at the top of its modules is declared (not only pinned).
    core = {normalise(Requirement(text).name) for text in project["dependencies"]}
    assert {"torch", "numpy", "gymnasium", "dm-control", "pyyaml", "tqdm"} <= core


def test_the_package_imports_from_any_folder(tmp_path):
    """Installed (scripts/install.sh runs pip install -e .), no sys.path tricks needed."""
    result = subprocess.run(
        [sys.executable, "-c", "import natural_dreamer; print(natural_dreamer.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "natural_dreamer" / "__init__.py"
