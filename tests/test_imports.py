"""The package's modules import one another one way: no import circle.

A circle works only while its modules happen to be imported in one order, and a reader of
any module in it must read the others first. Every import statement counts, those inside
functions too (the lazy ones), because each of them runs sooner or later. Importing a
submodule also runs its package's __init__.py first; that link is how packages work and is
not counted, so `natural_dreamer/envs/__init__.py` may import the suites that import base.py.
"""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "natural_dreamer"
# Inside natural_dreamer.envs, what a suite may import: the contract and the GL selection.
ENV_FOUNDATIONS = {"natural_dreamer.envs.base", "natural_dreamer.envs.mujoco_gl"}


def module_name(path: Path, package: Path) -> str:
    """natural_dreamer/envs/dmc.py -> "natural_dreamer.envs.dmc"; an __init__.py names its
    package ("natural_dreamer.envs")."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str, modules: set) -> set:
    """The modules in `modules` that the file at `path` (module `name`) imports anywhere."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: "from .base import Env", "from . import toy"
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from package import module" imports the module; "from module import name" the
            # module, whose name is then the longest prefix below that is one of `modules`.
            targets += [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_graph(package: Path) -> dict:
    """{module: the package's modules it imports} for every .py file under `package`."""
    files = {module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    return {name: imported(path, name, set(files)) for name, path in files.items()}


def circle(graph: dict) -> list:
    """One import circle of `graph` as [a, b, ..., a], or [] when its imports run one way."""
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it against the import arrows
    return []


def test_the_package_has_no_import_circle():
    graph = import_graph(PACKAGE)
    assert "natural_dreamer.envs.dmc" in graph["natural_dreamer.envs"]  # the parse sees imports
    assert "natural_dreamer.config" in graph["natural_dreamer.envs"]
    found = circle(graph)
    assert not found, "import circle: " + " -> ".join(found)


def test_each_environment_suite_imports_only_the_contract_and_gl_selection():
    """base <- each suite <- envs/__init__.py: no suite leans on another, or on the package."""
    graph = import_graph(PACKAGE)
    suites = [name for name in graph if name.startswith("natural_dreamer.envs.")]
    assert {"natural_dreamer.envs.atari", "natural_dreamer.envs.toy"} <= set(suites)
    for name in suites:
        inside = {module for module in graph[name] if module.startswith("natural_dreamer.envs")}
        assert inside <= ENV_FOUNDATIONS - {name}, (name, sorted(inside))


def test_the_check_finds_a_circle_closed_by_an_import_inside_a_function(tmp_path):
    """The shape the environments once had: a.py imports b at the top, and b imports a
    inside a function; also relative imports and a package's __init__.py."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from pkg.a import thing\n")
    (package / "sub" / "__init__.py").write_text("from . import leaf\n")
    (package / "sub" / "leaf.py").write_text("from ..b import helper\n")
    graph = import_graph(package)
    assert graph["pkg.sub"] == {"pkg.sub.leaf"} and graph["pkg.sub.leaf"] == {"pkg.b"}
    found = circle(graph)
    assert found[0] == found[-1] and set(found) == {"pkg.a", "pkg.b"}
    (package / "b.py").write_text("def helper():\n    pass\n")
    assert circle(import_graph(package)) == []
