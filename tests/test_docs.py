"""The documentation pages hold what the README and the chapters point to."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_pitfall_the_chapters_cite_is_written_down_with_tests_that_exist():
    page = (ROOT / "docs" / "pitfalls.md").read_text()
    numbers = {int(n) for n in re.findall(r"^(\d+)\. \*\*", page, flags=re.M)}
    assert numbers == set(range(1, 12))
    cited = set()
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        text = "".join("".join(cell["source"]) for cell in cells)
        cited |= {int(n) for n in re.findall(r"pitfall (\d+)", text)}
    assert cited and cited <= numbers
    # Every test a pitfall names exists, in the file it names (the last file named before it).
    named = re.findall(r"`(?:tests/(\w+\.py)::)?(test_\w+)`", page)
    assert len(named) >= 11
    current = None
    for file, test in named:
        current = file or current
        tree = ast.parse((ROOT / "tests" / current).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert test in functions, (current, test)


def test_the_readme_links_only_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def test_the_shipped_agent_of_chapter_8_loads_safely():
    import torch

    from natural_dreamer import Dreamer
    from natural_dreamer.config import saved_config
    from natural_dreamer.envs import make_env

    path = ROOT / "notebooks" / "assets" / "pendulum_1m_seed0.pth"
    assert path.stat().st_size < 5 * 2**20  # small enough to ship
    state = torch.load(path, weights_only=True)
    config = saved_config(state["config"])  # made before behavior.actor_outscale existed
    assert config.config_name == "pendulum" and config.seed == 0
    assert state["counters"]["env_steps"] == 20_000
    env = make_env(config.env, seed=0)
    Dreamer(env.obs_space, env.action_size, env.discrete, config).load_state_dict(state["agent"])
    assert path.with_suffix(".csv").is_file()
