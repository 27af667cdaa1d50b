"""scripts/results_figures.py on the committed CSVs: every figure it lists is drawn, and read
back it is a real picture; a figure without its CSVs is skipped with a line."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "results_figures.py"


def load_script():
    spec = importlib.util.spec_from_file_location("results_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args):
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def assert_a_real_picture(path: Path) -> None:
    pixels = image.imread(path)  # (H, W, 3 or 4) floats in [0, 1]
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), pixels.shape
    height, width = pixels.shape[:2]
    assert 300 <= height <= 2000 and 500 <= width <= 2500, (path.name, pixels.shape)
    rgb = pixels[..., :3]
    inked = (rgb.min(-1) < 0.5).mean()  # dark pixels: text, lines, dots
    coloured = (rgb.max(-1) - rgb.min(-1) > 0.3).mean()  # the runs' curves
    assert inked > 0.005 and coloured > 0.001, (path.name, inked, coloured)


def test_every_figure_with_committed_csvs_is_drawn_as_a_real_picture(tmp_path):
    done = run_script("--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    drawn = 0
    for figure in load_script().FIGURES:
        present = [run for run in figure.runs if (ROOT / "docs/results" / run.csv).is_file()]
        path = tmp_path / f"{figure.name}.png"
        if present:
            assert_a_real_picture(path)
            drawn += 1
        else:
            assert not path.exists()
            assert f"{figure.name}: skipped (no CSV)" in done.stdout
    assert drawn >= 8  # the pendulum to the replay value study: all committed


def test_missing_csvs_leave_a_run_out_or_skip_the_figure(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(ROOT / "docs/results/pendulum_seed0.csv", results)
    out = tmp_path / "figures"
    done = run_script(
        "--results", str(results), "--out", str(out), "--only", "pendulum", "cartpole"
    )
    assert done.returncode == 0, done.stderr
    assert (
        "pendulum: pendulum_replay_value_grad_off_seed1.csv is not there; left out" in done.stdout
    )
    assert "cartpole: skipped (no CSV)" in done.stdout
    assert_a_real_picture(out / "pendulum.png")
    assert sorted(path.name for path in out.iterdir()) == ["pendulum.png"]


def test_the_last10_mean_at_a_step_is_its_row_or_between_the_rows_either_side():
    script = load_script()
    frame = pd.DataFrame(
        {"env_steps": [2000, 4000, 6000, 8000], "return_last10": [10.0, np.nan, 30.0, 50.0]}
    )
    assert script.last10_at(frame, 6000) == 30.0
    assert script.last10_at(frame, 7000) == 40.0
    assert script.last10_at(frame, 4000) == 20.0  # a row without a mean is passed over
    assert script.last10_at(frame, 9000) is None and script.last10_at(frame, 1000) is None
