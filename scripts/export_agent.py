"""Export a trained agent small enough to ship: its weights, config and counters, no replay.

    python scripts/export_agent.py checkpoints/pendulum_official_layout_seed0_latest.pth \
        notebooks/assets/pendulum_1m_seed0.pth

A training checkpoint also holds the replay buffer and the optimisers' moments (10 MB for
the 1m preset on Pendulum); chapter 8 needs only what the agent is. The file holds tensors,
numbers, strings, lists and dicts, so it loads with torch.load(weights_only=True). The run's
metrics CSV is copied beside it (same name, .csv), for the chapter's training curve.
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from natural_dreamer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

KEEP_COUNTERS = ("env_steps", "gradient_steps", "policy_steps", "returns")


def export(checkpoint: Path, out: Path, metrics: Path | None = None) -> Path:
    """Write the agent of `checkpoint` to `out` (and the run's CSV beside it); returns out."""
    state = load_checkpoint(checkpoint)
    counters = {key: state["counters"][key] for key in KEEP_COUNTERS}
    agent = {key: value.clone() for key, value in state["agent"].items()}
    save_checkpoint({"agent": agent, "config": state["config"], "counters": counters}, out)
    if metrics is None:
        run = checkpoint.name.rsplit("_", 1)[0]
        metrics = checkpoint.parent.parent / "metrics" / f"{run}.csv"
    if metrics.is_file():
        shutil.copyfile(metrics, out.with_suffix(".csv"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--metrics", type=Path, help="the run's CSV (default: found by name)")
    args = parser.parse_args()
    out = export(args.checkpoint, args.out, args.metrics)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB) and {out.with_suffix('.csv').name}", file=sys.stderr)


if __name__ == "__main__":
    main()
