"""Draw the README's learning curves: one PNG per run from its metrics CSV.

    python scripts/plot_results.py metrics/pendulum_seed0.csv --target -200 \
        --out docs/figures/pendulum.png
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
    parser.add_argument("csv", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=float, default=None, help="draw the target return")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    frame = pd.read_csv(args.csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    rows = frame.dropna(subset=["episode_return"])
    ax.plot(
        rows["env_steps"],
        rows["episode_return"],
        alpha=0.35,
        label="training episodes (interval mean)",
    )
    rows = frame.dropna(subset=["return_last10"])
    ax.plot(
        rows["env_steps"],
        rows["return_last10"],
        linewidth=2,
        label="mean of last 10 training episodes",
    )
    if "eval_return" in frame:
        rows = frame.dropna(subset=["eval_return"])
        ax.scatter(
            rows["env_steps"],
            rows["eval_return"],
            s=18,
            color="k",
            label="evaluation (policy mode)",
        )
    if args.target is not None:
        ax.axhline(
            args.target,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"target {args.target:g}",
        )
    hours = frame["wall_seconds"].iloc[-1] / 3600
    ax.set_title(args.title or f"{args.csv.stem} ({hours:.2f} h on a 2-core CPU)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
