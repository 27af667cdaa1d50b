"""Draw every figure of the README and docs/results.md from the CSVs committed in docs/results/.

    python scripts/results_figures.py                     # all of docs/figures/<figure>.png
    python scripts/results_figures.py --only pendulum     # one figure
    python scripts/results_figures.py --out /tmp/figures  # somewhere else

Each figure shows, for every run in it, the mean of the last 10 training episodes of the
sampling policy (a line: what the paper reports) and the evaluations of the policy's mode
(dots of the same colour), against the official DreamerV3 curve where one is published (the
mean of its seeds through the published points, and the seeds' minimum to maximum as a band
or error bars where known) or against the task's target. The title names the seeds, the
commits the runs were trained with and the kinds of host.

To add a seed, add one Run line to its figure in FIGURES below and commit its CSV. A figure
whose CSVs are all missing is skipped with a printed line; a missing run of a figure that has
others is left out of it, also with a line. Each run's last-10 mean at the official curve's
points (or at its last row) is printed, for the tables of docs/results.md.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The kinds of host the runs were made on (2 CPU cores each), long for titles, short for legends.
HOSTS = {
    "amx": ("Intel Sapphire Rapids with AMX", "Sapphire Rapids, AMX"),
    "bf16": ("AMD EPYC with AVX-512 BF16", "EPYC, AVX-512 BF16"),
    "avx2": ("AMD EPYC, AVX2 only", "EPYC, AVX2 only"),
}


@dataclass(frozen=True)
class Official:
    """A published curve: (env steps, mean, min, max) per point; min and max None where only
    the mean is published (danijar/dreamerv3 score files; training episodes of the
    sampling policy, mean over seeds)."""

    label: str
    points: tuple


@dataclass(frozen=True)
class Run:
    """One committed CSV: docs/results/<csv>, the seed, the commit it was trained with
    (where it was resumed on later commits, the one it started on) and the host kind (a
    key of HOSTS). label says what sets it apart from the figure's other runs, if anything."""

    csv: str
    seed: int
    commit: str
    host: str
    label: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class Figure:
    """docs/figures/<name>.png: runs against an official curve or a target, x up to steps."""

    name: str
    title: str
    steps: int
    runs: tuple
    official: Official | None = None
    target: float | None = None


# The official curves at small budgets (x = env steps; Atari: frames).
PROPRIO_WALKER = Official(
    "official DreamerV3, 5 seeds",
    ((25_000, 111, 88, 156), (50_000, 289, 206, 448), (100_000, 475, 298, 714),
     (200_000, 799, None, None), (500_000, 881, None, None)),
)  # fmt: skip
VISION_WALKER = Official(
    "official DreamerV3, 10 seeds",
    ((25_000, 240, None, None), (50_000, 420, None, None), (100_000, 639, 454, 844),
     (200_000, 875, None, None), (500_000, 944, None, None)),
)  # fmt: skip
PROPRIO_SWINGUP = Official(
    "official DreamerV3, 5 seeds",
    ((25_000, 225, None, None), (50_000, 322, None, None), (100_000, 528, 502, 599),
     (200_000, 788, None, None), (500_000, 856, None, None)),
)  # fmt: skip
PROPRIO_SWINGUP_SPARSE = Official(
    "official DreamerV3 (greedy)",
    ((25_000, 0, None, None), (50_000, 3, None, None), (100_000, 25, None, None),
     (200_000, 178, None, None), (500_000, 504, None, None)),
)  # fmt: skip
ATARI_PONG = Official(
    "official DreamerV3 (current code)",
    ((25_000, -20, None, None), (50_000, -21, None, None), (100_000, -20, None, None),
     (200_000, -13, None, None), (400_000, -5, None, None)),
)  # fmt: skip

ON, OFF = "gradient on", "gradient off"  # the replay value loss's gradient, in the last figure
FIGURES = (
    Figure("pendulum", "Pendulum-v1 (pendulum)", 20_000, target=-200, runs=(
        Run("pendulum_seed0.csv", 0, "fe15b3a", "bf16"),
        Run("pendulum_replay_value_grad_off_seed1.csv", 1, "ac8e7c8", "amx"),
        Run("pendulum_replay_value_grad_off_seed2.csv", 2, "39535fe", "amx"),
    )),
    Figure("cartpole", "CartPole-v1 (cartpole)", 50_000, target=475, runs=(
        Run("cartpole_seed0.csv", 0, "fe15b3a", "bf16"),
    )),
    Figure("walker_walk_proprio", "walker_walk from vectors, 12M, train ratio 512 "
           "(walker_walk_proprio)", 100_000, official=PROPRIO_WALKER, runs=(
        Run("walker_walk_proprio_12m_ratio512_seed0.csv", 0, "4fb8917", "bf16"),
    )),
    Figure("walker_walk", "walker_walk from 64x64 pixels, 12M, train ratio 512 (walker_walk)",
           100_000, official=VISION_WALKER, runs=(
        Run("walker_walk_12m_ratio512_seed0.csv", 0, "b4e3f1a", "bf16"),
    )),
    Figure("cartpole_swingup_proprio", "cartpole_swingup from vectors, 12M, train ratio 512 "
           "(cartpole_swingup_proprio)", 100_000, official=PROPRIO_SWINGUP, runs=(
        Run("cartpole_swingup_proprio_12m_ratio512_seed0.csv", 0, "9b13b63", "amx"),
    )),
    Figure("walker_walk_proprio_1m", "walker_walk from vectors, 1M model (against the 12M "
           "official curve)", 100_000, official=PROPRIO_WALKER, runs=(
        Run("walker_walk_proprio_1m_ratio512_seed0.csv", 0, "7253f82", "amx", "ratio 512"),
        Run("walker_walk_proprio_laptop_seed0.csv", 0, "cc499bc", "amx", "ratio 128"),
        Run("walker_walk_proprio_laptop_dynamics_gamma099_bf16_seed0.csv", 0, "5a07ea4",
            "amx", "ratio 128, dynamics grad, gamma 0.99"),
    )),
    Figure("cartpole_swingup_sparse", "cartpole_swingup_sparse: greedy vs Plan2Explore "
           "(earlier layout)", 50_000, official=PROPRIO_SWINGUP_SPARSE, runs=(
        Run("cartpole_swingup_sparse_greedy_seed0.csv", 0, "b1277ff", "amx", "greedy"),
        Run("cartpole_swingup_sparse_plan2explore_seed0.csv", 0, "b1277ff", "amx",
            "plan2explore"),
    )),
    Figure("atari_pong", "Atari Pong (atari_pong, earlier layout), x = frames", 400_000,
           official=ATARI_PONG, runs=(Run("atari_pong_seed0.csv", 0, "7f0264b", "amx"),)),
    Figure("pendulum_replay_value_grad", "Pendulum-v1: the replay value loss's gradient into "
           "the world model", 20_000, target=-200, runs=(
        Run("pendulum_official_layout_seed0.csv", 0, "59340f1", "amx", ON, dashed=True),
        Run("pendulum_official_layout_batched_grads_seed0.csv", 0, "904ad85", "amx",
            ON, dashed=True),
        Run("pendulum_official_layout_seed0_13k.csv", 0, "7253f82", "amx", ON, dashed=True),
        Run("pendulum_official_layout_seed1_13k.csv", 1, "448a288", "amx", ON, dashed=True),
        Run("pendulum_replay_value_grad_off_seed0.csv", 0, "ac8e7c8", "amx", OFF),
        Run("pendulum_replay_value_grad_off_seed1.csv", 1, "ac8e7c8", "amx", OFF),
        Run("pendulum_replay_value_grad_off_seed2.csv", 2, "39535fe", "amx", OFF),
    )),
)  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    names = [figure.name for figure in FIGURES]
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--only", nargs="+", choices=names, default=names, metavar="FIGURE")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for figure in FIGURES:
        if figure.name in args.only:
            draw(figure, args.results, args.out)
    return 0


def draw(figure: Figure, results: Path, out: Path) -> Path | None:
    """Draw one figure into out/<name>.png from the CSVs under results; None when none of
    its CSVs is there."""
    frames = []
    for run in figure.runs:
        path = results / run.csv
        if path.is_file():
            frames.append((run, pd.read_csv(path)))
        else:
            print(f"{figure.name}: {run.csv} is not there; left out")
    if not frames:
        print(f"{figure.name}: skipped (no CSV)")
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    if figure.official is not None:
        draw_official(ax, figure.official, figure.steps)
    if figure.target is not None:
        ax.axhline(figure.target, color="tab:red", linestyle="--", linewidth=1,
                   label=f"target {figure.target:g}")  # fmt: skip
    for index, (run, frame) in enumerate(frames):
        draw_run(ax, frame, run, color=f"C{index}")
        print(f"{figure.name}: {run_label(run)}: {describe(frame, figure)}")
    ax.scatter([], [], s=18, color="w", edgecolors="k", label="dots: evaluations (policy mode)")
    ax.set_xlim(0, figure.steps * 1.02)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.set_title(f"{figure.title}\n{provenance([run for run, _ in frames])}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    path = out / f"{figure.name}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def draw_official(ax, official: Official, steps: int) -> None:
    """The mean through the published points up to steps (black, dashed), the range of the
    seeds as a band between neighbouring points that both have one, and as error bars."""
    points = [point for point in official.points if point[0] <= steps]
    x, mean = [p[0] for p in points], [p[1] for p in points]
    ax.plot(x, mean, color="k", linestyle="--", marker="D", markersize=4, linewidth=1.2,
            label=f"{official.label}: mean")  # fmt: skip
    ranged = [p for p in points if p[2] is not None]
    if not ranged:
        return
    label = f"{official.label}: min to max"
    for left, right in zip(points, points[1:], strict=False):
        if left[2] is not None and right[2] is not None:
            ax.fill_between([left[0], right[0]], [left[2], right[2]], [left[3], right[3]],
                            color="0.6", alpha=0.25, linewidth=0, label=label)  # fmt: skip
            label = None
    low = [p[1] - p[2] for p in ranged]
    high = [p[3] - p[1] for p in ranged]
    ax.errorbar([p[0] for p in ranged], [p[1] for p in ranged], yerr=[low, high], fmt="none",
                ecolor="0.35", capsize=4, linewidth=1, label=label)  # fmt: skip


def draw_run(ax, frame: pd.DataFrame, run: Run, color: str) -> None:
    """One run's last-10 mean (line) and its evaluations (dots), in color."""
    rows = frame.dropna(subset=["return_last10"])
    few = len(rows) < 10  # a run just started: its rows as points, so it can be seen
    ax.plot(rows["env_steps"], rows["return_last10"], color=color, linewidth=2,
            linestyle="--" if run.dashed else "-", marker="o" if few else None, markersize=6,
            label=run_label(run))  # fmt: skip
    if "eval_return" in frame:
        rows = frame.dropna(subset=["eval_return"])
        ax.scatter(rows["env_steps"], rows["eval_return"], s=18, color=color, edgecolors="k",
                   zorder=3)  # fmt: skip


def run_label(run: Run) -> str:
    """The legend entry: what sets the run apart, its seed, commit and host."""
    prefix = f"{run.label}, " if run.label else ""
    return f"{prefix}seed {run.seed}, {run.commit}, {HOSTS[run.host][1]}"


def provenance(runs: list) -> str:
    """The title's second line: the seeds, the commits and the hosts, each named once."""

    def once(values) -> str:
        return ", ".join(dict.fromkeys(str(value) for value in values))

    seeds = once(run.seed for run in runs)
    commits = once(run.commit for run in runs)
    hosts = once(HOSTS[run.host][0] for run in runs)
    seed_word = "seed" if len({run.seed for run in runs}) == 1 else "seeds"
    commit_word = "commit" if len({run.commit for run in runs}) == 1 else "commits"
    return f"{seed_word} {seeds}; {commit_word} {commits}; {hosts}; 2 CPU cores"


def last10_at(frame: pd.DataFrame, steps: float) -> float | None:
    """The last-10 mean at steps: the row there, or interpolated between the rows either
    side; None past the last row."""
    rows = frame.dropna(subset=["return_last10"])
    x, y = rows["env_steps"].to_numpy(float), rows["return_last10"].to_numpy(float)
    if len(x) == 0 or steps > x[-1] or steps < x[0]:
        return None
    return float(np.interp(steps, x, y))


def describe(frame: pd.DataFrame, figure: Figure) -> str:
    """The run's last-10 mean at the official curve's points within its budget, then at its
    last row."""
    marks = [point[0] for point in figure.official.points] if figure.official else []
    parts = []
    for steps in marks:
        value = last10_at(frame, steps) if steps <= figure.steps else None
        if value is not None:
            parts.append(f"{steps / 1000:g}k {value:.1f}")
    rows = frame.dropna(subset=["return_last10"])
    last = rows.iloc[-1]
    parts.append(f"last row {last['env_steps'] / 1000:g}k {last['return_last10']:.1f}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
