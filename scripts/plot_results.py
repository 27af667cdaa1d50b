"""Draw the README's learning curves: one PNG per run from its metrics CSV, or several runs
compared in one PNG (the mean of the last 10 training episodes and the evaluations of each).

    python scripts/plot_results.py metrics/pendulum_seed0.csv --target -200 \
        --out docs/figures/pendulum.png
    python scripts/plot_results.py metrics/a.csv metrics/b.csv --labels greedy plan2explore \
        --out docs/figures/compare.png
    python scripts/plot_results.py metrics/walker.csv --reference 50000:289 100000:475 \
        --reference_label "official, 5 seeds" --out docs/figures/walker.png
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("csv", type=Path, nargs="+", help="one run, or several to compare")
    parser.add_argument("--labels", nargs="+", default=None, help="one per CSV when comparing")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, default=None, help="draw the target return")
    parser.add_argument("--title", default=None)
    parser.add_argument(
        "--reference", nargs="+", default=[], metavar="STEPS:RETURN",
        help="points of another agent's curve to draw beside this one, e.g. 50000:289",
    )  # fmt: skip
    parser.add_argument("--reference_label", default="reference")
    args = parser.parse_args()
    if args.labels is not None and len(args.labels) != len(args.csv):
        parser.error(f"{len(args.csv)} CSV files but {len(args.labels)} --labels")
    try:
        reference = [parse_point(text) for text in args.reference]
    except ValueError as error:
        parser.error(str(error))

    many = len(args.csv) > 2  # then the legend goes below the axes, where it hides no curve
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if len(args.csv) == 1:
        plot_one(ax, args.csv[0], args.title)
    else:
        plot_many(ax, args.csv, args.labels or [path.stem for path in args.csv], args.title)
    if args.target is not None:
        ax.axhline(
            args.target,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"target {args.target:g}",
        )
    if reference:
        steps, returns = zip(*sorted(reference), strict=True)
        ax.plot(
            steps, returns, color="tab:purple", linestyle=":", marker="D", markersize=6,
            markeredgecolor="k", label=args.reference_label,
        )  # fmt: skip
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if many:  # below the axes; the saved image grows to hold it
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        fig.savefig(args.out, bbox_inches="tight")
    else:
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out)
    print(f"wrote {args.out}")


def parse_point(text: str) -> tuple:
    """Parse "50000:289" into (50000.0, 289.0); anything else is a ValueError saying why."""
    steps, colon, value = text.partition(":")
    try:
        return float(steps), float(value if colon else "missing")
    except ValueError:
        message = f"--reference takes STEPS:RETURN pairs such as 50000:289, not {text!r}"
        raise ValueError(message) from None


def plot_one(ax, path: Path, title: str | None) -> None:
    """Training episodes, their running mean and the evaluations of one run."""
    frame = pd.read_csv(path)
    rows = frame.dropna(subset=["episode_return"])
    ax.plot(
        rows["env_steps"],
        rows["episode_return"],
        alpha=0.35,
        label="training episodes (interval mean)",
    )
    plot_curves(ax, frame, label="", line_color="C1", dot_color="k")
    hours = frame["wall_seconds"].iloc[-1] / 3600
    ax.set_title(title or f"{path.stem} ({hours:.2f} h on a 2-core CPU)")


def plot_many(ax, paths: list, labels: list, title: str | None) -> None:
    """Each run's mean of the last 10 training episodes (line) and evaluations (dots)."""
    for index, (path, label) in enumerate(zip(paths, labels, strict=True)):
        frame = pd.read_csv(path)
        hours = frame["wall_seconds"].iloc[-1] / 3600
        plot_curves(ax, frame, f"{label} ({hours:.2f} h): ", f"C{index}", f"C{index}")
    ax.set_title(title or " vs ".join(labels))


def plot_curves(ax, frame, label: str, line_color: str, dot_color: str) -> None:
    """The mean of the last 10 training episodes (line) and the evaluations of the task
    actor's mode (dots) of one run, their legend entries prefixed with label."""
    rows = frame.dropna(subset=["return_last10"])
    ax.plot(
        rows["env_steps"],
        rows["return_last10"],
        color=line_color,
        linewidth=2,
        label=f"{label}mean of last 10 training episodes",
    )
    if "eval_return" in frame:
        rows = frame.dropna(subset=["eval_return"])
        ax.scatter(
            rows["env_steps"],
            rows["eval_return"],
            s=18,
            color=dot_color,
            edgecolors="k",
            label=f"{label}evaluation (policy mode)",
        )


if __name__ == "__main__":
    main()
