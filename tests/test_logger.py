"""Tests for natural_dreamer.logger: the metrics CSV, smoothing and the offline Plotly page."""

import csv
import re
import shutil
import subprocess

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pytest

from natural_dreamer.logger import (
    MetricsLogger,
    build_figure,
    group_columns,
    order_columns,
    plot_metrics,
    read_metrics,
    smooth,
)

CHROMIUM = "chromium"


def read_lines(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def fake_run(csv_path, html_path=None, rows: int = 50) -> None:
    """Log a plausible run: a rising return, falling losses, a sparse eval_return."""
    rng = np.random.default_rng(0)
    with MetricsLogger(csv_path, html_path, title="fake run", plot_every_seconds=1e9) as log:
        for i in range(rows):
            row = {
                "env_steps": 1000 * i,
                "gradient_steps": 100 * i,
                "episode_return": 500 / (1 + np.exp(-(i - 25) / 6)) + rng.normal(0, 30),
                "world_model/reconstruction_loss": 300 * np.exp(-i / 15) + rng.uniform(0, 5),
                "world_model/kl_loss": 1.0 + rng.uniform(0, 0.1),
                "actor/entropy": 1.0 - i / 100,
                "critic/loss": 2 * np.exp(-i / 30),
                "wall_seconds": 10.0 * i,
            }
            if i % 10 == 9:
                row["eval_return"] = 500 / (1 + np.exp(-(i - 25) / 6))
            log.log(row)


# --- CSV ---------------------------------------------------------------------------------


def test_order_columns_puts_counters_first_and_wall_time_last():
    first = ["wall_seconds", "actor/loss", "episode_return", "env_steps", "gradient_steps"]
    assert order_columns(first) == [
        "env_steps",
        "gradient_steps",
        "episode_return",
        "actor/loss",
        "wall_seconds",
    ]
    extended = order_columns(order_columns(first), ["critic/loss"])
    assert extended[-2:] == ["critic/loss", "wall_seconds"]


def test_header_written_once_in_column_order(tmp_path):
    path = tmp_path / "metrics" / "run.csv"
    logger = MetricsLogger(path)
    logger.log({"wall_seconds": 1.5, "actor/loss": 0.25, "env_steps": 0, "gradient_steps": 0})
    logger.log({"env_steps": 1000, "gradient_steps": 10, "actor/loss": -0.5, "wall_seconds": 2})
    logger.log({"env_steps": 2000, "wall_seconds": 3.0})  # missing keys -> empty cells
    lines = read_lines(path)
    assert lines[0] == ["env_steps", "gradient_steps", "actor/loss", "wall_seconds"]
    assert lines[1:] == [
        ["0", "0", "0.25", "1.5"],
        ["1000", "10", "-0.5", "2"],
        ["2000", "", "", "3.0"],
    ]


def test_new_key_extends_header_and_keeps_old_rows(tmp_path):
    path = tmp_path / "run.csv"
    logger = MetricsLogger(path)
    logger.log({"env_steps": 0, "episode_return": 1.0, "wall_seconds": 0.5})
    logger.log({"env_steps": 100, "episode_return": 2.0, "wall_seconds": 1.0})
    logger.log({"env_steps": 200, "critic/loss": 0.75, "gradient_steps": 7, "wall_seconds": 2.0})
    logger.log({"env_steps": 300, "episode_return": 4.0, "critic/loss": 0.5})
    lines = read_lines(path)
    header = ["env_steps", "gradient_steps", "episode_return", "critic/loss", "wall_seconds"]
    assert lines[0] == header
    assert sum(line == header for line in lines) == 1
    frame = read_metrics(path)
    assert frame["env_steps"].tolist() == [0, 100, 200, 300]
    assert frame["episode_return"].tolist()[:2] == [1.0, 2.0]
    assert frame["critic/loss"].isna().tolist() == [True, True, False, False]
    assert frame.loc[2, "gradient_steps"] == 7


def test_resume_truncates_after_checkpoint_and_continues(tmp_path):
    path = tmp_path / "run.csv"
    logger = MetricsLogger(path)
    for step in range(5):
        logger.log({"env_steps": 1000 * step, "episode_return": float(step)})
    # The run crashed after 4000 steps; the last checkpoint was taken at 2000.
    resumed = MetricsLogger(path, resume_from_env_steps=2000)
    resumed.log({"env_steps": 3000, "episode_return": 30.0})
    lines = read_lines(path)
    assert lines[0] == ["env_steps", "episode_return"]
    assert [line[0] for line in lines[1:]] == ["0", "1000", "2000", "3000"]
    assert lines[-1] == ["3000", "30.0"]
    assert resumed.truncate_after(1000) == 2


def test_reopening_appends_and_drops_a_line_cut_by_a_crash(tmp_path):
    path = tmp_path / "run.csv"
    MetricsLogger(path).log({"env_steps": 0, "episode_return": 1.0})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("1000,2.")  # a write interrupted mid-line, no newline
    MetricsLogger(path).log({"env_steps": 1000, "episode_return": 2.5})
    assert read_lines(path) == [["env_steps", "episode_return"], ["0", "1.0"], ["1000", "2.5"]]


def test_log_rejects_text_values(tmp_path):
    with pytest.raises(TypeError):
        MetricsLogger(tmp_path / "run.csv").log({"env_steps": "ten"})


# --- smoothing and figure ------------------------------------------------------------------


def test_smooth_matches_hand_computed_debiased_ema():
    # weight 0.5: m = 0.5, 1.25, 2.125; debias by 1 - 0.5**n = 0.5, 0.75, 0.875.
    np.testing.assert_allclose(smooth([1.0, 2.0, 3.0], weight=0.5), [1.0, 5 / 3, 17 / 7])
    np.testing.assert_allclose(smooth([4.0, 4.0, 4.0]), [4.0, 4.0, 4.0])  # no pull to zero
    np.testing.assert_allclose(smooth([1.0, 2.0], weight=0.0), [1.0, 2.0])
    np.testing.assert_allclose(smooth([1.0, np.nan, 3.0], 0.5), [1.0, np.nan, 7 / 3])
    with pytest.raises(ValueError):
        smooth([1.0], weight=1.0)


def test_group_columns_return_first_then_prefixes_then_other():
    columns = [
        "env_steps",
        "gradient_steps",
        "world_model/kl",
        "actor/loss",
        "eval_return",
        "fps",
        "critic/loss",
        "world_model/reward",
        "episode_return",
        "wall_seconds",
    ]
    assert group_columns(columns) == {
        "return": ["episode_return", "eval_return"],
        "world_model": ["world_model/kl", "world_model/reward"],
        "actor": ["actor/loss"],
        "critic": ["critic/loss"],
        "other": ["fps"],
        "progress": ["gradient_steps", "wall_seconds"],
    }


def test_build_figure_hides_raw_shows_smoothed_and_puts_return_first(tmp_path):
    fake_run(tmp_path / "run.csv")
    figure = build_figure(read_metrics(tmp_path / "run.csv"))
    traces = {trace.name: trace for trace in figure.data}
    assert figure.layout.annotations[0].text == "return"
    assert traces["episode_return"].yaxis == "y"  # the first subplot
    for name in ["episode_return", "eval_return", "reconstruction_loss", "loss", "entropy"]:
        assert traces[f"{name} (raw)"].visible == "legendonly"
        assert traces[name].visible in (None, True)
    assert len(traces["eval_return"].y) == 5  # rows without eval_return are skipped
    assert traces["reconstruction_loss"].yaxis == traces["kl_loss"].yaxis != "y"


def test_pages_for_empty_and_single_row_csv(tmp_path):
    empty = tmp_path / "empty.csv"
    MetricsLogger(empty)  # creates the file, no rows yet
    plot_metrics(empty, tmp_path / "empty.html")
    assert "No data yet" in (tmp_path / "empty.html").read_text()
    single = tmp_path / "single.csv"
    MetricsLogger(single).log({"env_steps": 0, "episode_return": 3.0, "wall_seconds": 1.0})
    plot_metrics(single, tmp_path / "single.html")
    assert "episode_return" in (tmp_path / "single.html").read_text()


def test_page_loads_plotly_only_from_the_local_bundle(tmp_path):
    fake_run(tmp_path / "run.csv", tmp_path / "plots" / "run.html")
    page = (tmp_path / "plots" / "run.html").read_text()
    sources = re.findall(r"<script[^>]*\ssrc=[\"']([^\"']*)", page)
    assert sources == ["plotly.min.js"]
    assert "http" not in " ".join(re.findall(r"<script[^>]*>", page))
    bundle = tmp_path / "plots" / "plotly.min.js"
    assert bundle.stat().st_size > 1_000_000
    fake_run(tmp_path / "run2.csv", tmp_path / "plots" / "run2.html")
    assert sorted(p.name for p in bundle.parent.iterdir()) == [
        "plotly.min.js",
        "run.html",
        "run2.html",
    ]


def test_logger_rebuilds_page_at_most_every_interval_and_on_close(tmp_path):
    html_path = tmp_path / "run.html"
    logger = MetricsLogger(tmp_path / "run.csv", html_path, plot_every_seconds=1e9)
    logger.log({"env_steps": 0, "episode_return": 1.0})
    assert html_path.exists()  # the first row is plotted at once
    html_path.unlink()
    logger.log({"env_steps": 1, "episode_return": 2.0})
    assert not html_path.exists()  # too soon for another rebuild
    logger.close()
    assert html_path.exists()


# --- a real browser ------------------------------------------------------------------------


def run_chromium(tmp_path, *args: str) -> str:
    """Run headless Chromium with networking side channels off; return its stdout."""
    executable = shutil.which(CHROMIUM)
    if executable is None:
        pytest.fail("chromium not found: apt-get install chromium (needed for the page test)")
    command = [
        executable,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_page_renders_offline_in_headless_chromium(tmp_path):
    html_path = tmp_path / "plots" / "run.html"
    fake_run(tmp_path / "run.csv", html_path)
    dom = run_chromium(tmp_path, "--dump-dom", html_path.as_uri())
    assert 'class="main-svg"' in dom  # plotly.js loaded from the local bundle and drew
    # Read names from drawn SVG text, not from the figure JSON also present in the page.
    legend = re.findall(r'class="legend\d*text"[^>]*data-unformatted="([^"]*)"', dom)
    for name in ["episode_return", "eval_return (raw)", "reconstruction_loss", "entropy"]:
        assert name in legend
    titles = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]*)"', dom)
    assert titles == ["return", "world_model", "actor", "critic", "progress"]

    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", html_path.as_uri())
    pixels = imageio.imread(shot).astype(np.float64)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels[..., :3].std() > 5  # not a blank page


def test_read_metrics_of_resumed_run_has_no_duplicate_rows(tmp_path):
    path = tmp_path / "run.csv"
    fake_run(path, rows=10)
    MetricsLogger(path, resume_from_env_steps=4000).log({"env_steps": 5000, "episode_return": 1})
    frame = read_metrics(path)
    assert frame["env_steps"].is_unique
    assert isinstance(frame, pd.DataFrame) and len(frame) == 6


def test_a_csv_removed_mid_run_starts_again_with_its_header(tmp_path):
    path = tmp_path / "metrics" / "run.csv"
    logger = MetricsLogger(path)
    logger.log({"env_steps": 1, "loss": 0.5})
    path.unlink()
    logger.log({"env_steps": 2, "loss": 0.25})
    assert path.read_text().splitlines() == ["env_steps,loss", "2,0.25"]
