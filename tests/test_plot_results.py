"""scripts/plot_results.py, looked at as a person sees its figure: the PNG decoded back."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colors, image

ROOT = Path(__file__).resolve().parents[1]
PURPLE = np.array(colors.to_rgb("tab:purple"))  # the reference curve's colour


def run_plot(tmp_path, *args):
    rows = [
        {"env_steps": 2000 * i, "episode_return": 40.0 + 10 * i, "return_last10": 40.0 + 9 * i,
         "eval_return": np.nan if i % 2 else 50.0 + 10 * i, "wall_seconds": 600.0 * i}
        for i in range(1, 15)
    ]  # fmt: skip
    csv = tmp_path / "run.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "run.png"
    command = [sys.executable, "scripts/plot_results.py", str(csv), "--out", str(out), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120), out


def purple_pixels(path: Path) -> int:
    pixels = image.imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
    return int((np.abs(pixels - PURPLE).max(-1) < 0.05).sum())


def test_reference_points_are_drawn_beside_the_run_and_absent_without_them(tmp_path):
    done, out = run_plot(tmp_path, "--reference", "25000:111", "50000:289")
    assert done.returncode == 0, done.stderr
    with_reference = purple_pixels(out)
    done, out = run_plot(tmp_path)
    assert done.returncode == 0, done.stderr
    assert with_reference > 100 and purple_pixels(out) == 0  # markers and line, then none


def test_a_malformed_reference_point_is_a_clear_usage_error(tmp_path):
    done, out = run_plot(tmp_path, "--reference", "25000")
    assert done.returncode == 2 and not out.exists()
    assert "--reference takes STEPS:RETURN pairs such as 50000:289, not '25000'" in done.stderr
