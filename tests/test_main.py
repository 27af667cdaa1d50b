"""The real entry point, end to end: train, checkpoint, resume, plot, video, bad input."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import main
from natural_dreamer.video import read_video

ROOT = Path(__file__).resolve().parent.parent


def run_main(*args, outdir, timeout=240, cwd=ROOT):
    """main.py with these arguments, then --outdir unless outdir is None (exactly as typed)."""
    outdir_args = [] if outdir is None else ["--outdir", str(outdir)]
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args, *outdir_args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(script, *args, timeout=240):
    """Run one of scripts/ from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def repository_files():
    """The repository's top level, and the smoke run's names in its output folders."""
    names = {p.name for p in ROOT.iterdir()}
    for folder in ("metrics", "plots", "checkpoints", "videos"):
        names |= {f"{folder}/{p.name}" for p in (ROOT / folder).glob("smoke*")}
    return names


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    before = repository_files()
    result = run_main("smoke", outdir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result, before


def test_nothing_is_written_outside_the_given_outdir(smoke_run):
    _, _, before = smoke_run
    assert repository_files() == before


def test_smoke_writes_every_output(smoke_run):
    out = smoke_run[0]
    metrics = pd.read_csv(out / "metrics" / "smoke_run.csv")
    assert list(metrics.columns[:3]) == ["env_steps", "gradient_steps", "episode_return"]
    assert metrics["env_steps"].is_monotonic_increasing and metrics["env_steps"].iloc[-1] == 600
    assert metrics["gradient_steps"].iloc[-1] == 100  # (600 - 200 prefill) * 16 / 64
    assert metrics["world_model/loss"].notna().any()
    # Both ways of reporting (pitfall 11): the sampling policy's training episodes, and the
    # evaluation episodes of its mode at each checkpoint.
    assert metrics["return_last10"].notna().all() and metrics["eval_return"].notna().any()
    assert (out / "plots" / "smoke_run.html").is_file() and (
        out / "plots" / "plotly.min.js"
    ).is_file()
    names = sorted(p.name for p in (out / "checkpoints").glob("*.pth"))
    assert names == ["smoke_run_0.05k.pth", "smoke_run_0.1k.pth", "smoke_run_latest.pth"]
    assert (out / "checkpoints" / "smoke_run.yml").is_file()
    videos = sorted((out / "videos").glob("smoke_run_0.1k_eval_*.mp4"))
    assert videos, list((out / "videos").iterdir())
    frames = read_video(videos[0])
    assert frames.shape[0] == 201 and frames.shape[-1] == 3  # reset frame + 200 steps


def test_the_start_up_line_says_how_this_machine_computes(smoke_run):
    first = smoke_run[1].stderr.splitlines()[0]
    why_threads = r"(\d+ free core|\d+ of \d+ cores busy|OMP_NUM_THREADS)"
    assert re.search(rf"threads [1-9]\d* \({why_threads}", first), first
    assert re.search(r"precision (bf16|fp32) \(", first), first
    assert re.search(r"compile (on|off) \(", first), first


def test_each_log_line_projects_the_rest_of_the_run_at_the_last_intervals_pace(smoke_run):
    # Rows at 200 (prefill ends), 280 (the 20th update: a run's first row), 400 and 600 env
    # steps of a 600-step budget: no ETA while only prefill has been seen, then the last
    # interval's seconds per env step times what is left (at 400: the 200 steps to come at
    # the pace of the 120 from 280).
    lines = [line for line in smoke_run[1].stdout.splitlines() if " | env " in line]
    steps = [line.split(" | ")[1] for line in lines]
    assert steps == ["env 200", "env 280", "env 400", "env 600"]
    walls = [float(line.split(" | ")[6].rstrip("s")) for line in lines]
    etas = [line.split(" | eta ")[1] for line in lines]
    assert etas[0] == "-" and etas[3] == "0 s", etas
    expected = (walls[2] - walls[1]) * 200 / 120
    # The rows print whole seconds: up to 1 s of rounding in each wall, 200/120 times that.
    assert etas[2].endswith(" s") and abs(float(etas[2][:-2]) - expected) <= 2.5, etas


def test_the_first_eta_after_prefill_leaves_out_a_slow_start(tmp_path):
    """torch.compile builds its graphs in the first updates (a minute or more), which the
    rest never repeat: the ETA's pace starts at the 3rd update, so a slow first update does
    not inflate the first projection (CartPole: 92 min at 2k when 53 were left)."""
    from natural_dreamer import load_config
    from natural_dreamer.loop import Trainer

    trainer = Trainer(load_config("smoke", {"train.video": False}), root=tmp_path, quiet=True)
    train_step, calls = trainer.agent.train_step, []

    def slow_first_update(batch):
        calls.append(len(calls))
        if len(calls) == 1:
            time.sleep(6.0)  # as a compile warm-up would
        return train_step(batch)

    trainer.agent.train_step = slow_first_update
    eta, etas = trainer.eta, []
    trainer.eta = lambda row: etas.append(eta(row)) or etas[-1]
    trainer.train()
    rows = pd.read_csv(tmp_path / "metrics" / "smoke_run.csv")
    # Rows at the prefill's end, after the 20th update (the first row of a run), 400 and 600.
    assert rows["env_steps"].tolist() == [200, 280, 400, 600]
    assert rows["gradient_steps"].tolist() == [0, 20, 50, 100]
    assert etas[0] == "-" and etas[1].endswith(" s"), etas
    # 320 env steps left at the pace of the updates from the 3rd to the 20th: with the 6 s of
    # the first update counted in, the 80 steps since the prefill would project 24 s or more.
    assert 0.0 < float(etas[1][:-2]) < 6.0 * (600 - 280) / (280 - 200), etas


def test_eta_is_the_last_intervals_seconds_per_env_step_times_the_steps_left():
    """Trainer.eta on set marks, where the pace of the last interval, of the whole run and
    of the interval since the warm-up mark all give different answers."""
    from types import SimpleNamespace

    from natural_dreamer.loop import Trainer

    run = SimpleNamespace(
        config=SimpleNamespace(train=SimpleNamespace(steps=1000)),
        eta_mark=None,
        env_steps=0,
        gradient_steps=0,
    )

    def row_at(wall_seconds, env_steps, gradient_steps):
        run.env_steps, run.gradient_steps = env_steps, gradient_steps
        return Trainer.eta(run, {"wall_seconds": wall_seconds})

    assert row_at(5.0, 200, 0) == "-"  # the first row: no interval before it
    run.eta_mark = (10.0, 250, 3)  # as gradient_step sets it at the 3rd update
    # 30 s for the 150 env steps since the 3rd update: 0.2 s each, 600 left = 120 s
    # (the whole run's pace, 40 s / 400, would say 60 s)
    assert row_at(40.0, 400, 50) == "2 min"
    # 6 s for the last 200: 0.03 s each, 400 left = 12 s (whole run: 46 / 600 * 400 = 31 s;
    # since the warm-up mark: 36 / 350 * 400 = 41 s)
    assert row_at(46.0, 600, 100) == "12 s"
    # An interval without gradient steps gives no pace; the next one is measured from it.
    assert row_at(50.0, 700, 100) == "-"
    # 25 s for the last 100: 0.25 s each, 200 left = 50 s (from the row before: 29 s)
    assert row_at(75.0, 800, 150) == "50 s"
    run.config.train.steps = 1_000_000
    # 90 s for the last 100: 0.9 s each, 999,100 left = 899,190 s = 249.775 h
    assert row_at(165.0, 900, 200) == "249.8 h"


def test_return_last10_is_the_mean_of_the_last_ten_training_episodes(tmp_path):
    """Pitfall 11: episodes with returns 1, 2, ..., 12 go through Trainer.step as finished
    episodes; the row after the 3rd has return_last10 = mean(1, 2, 3) = 2.0 and the row
    after the 12th has mean(3, ..., 12) = 7.5 (episode_return: that row's own episodes)."""
    from types import SimpleNamespace

    from natural_dreamer import load_config
    from natural_dreamer.loop import Trainer

    trainer = Trainer(load_config("smoke", {"train.video": False}), root=tmp_path, quiet=True)
    trainer.envs.close()

    class Episodes:  # the collector's interface: one environment, an episode each step
        count = 1
        returns = iter(range(1, 13))

        def step(self, policy):
            return [{"return": float(next(self.returns)), "length": 1}]

    rows = []
    trainer.collector, trainer.logger = Episodes(), SimpleNamespace(log=rows.append)
    bar = SimpleNamespace(update=lambda n: None, set_postfix=lambda **kwargs: None)
    try:
        for _ in range(3):
            trainer.step(bar)
        trainer.log_row()
        for _ in range(9):
            trainer.step(bar)
        trainer.log_row()
    finally:
        trainer.eval_env.close()
    assert trainer.env_steps == 12 and trainer.gradient_steps == 0  # still in prefill
    assert [row["return_last10"] for row in rows] == [2.0, 7.5]
    assert [row["episode_return"] for row in rows] == [2.0, 8.0]  # mean(1..3), mean(4..12)


@pytest.mark.parametrize("episodes, expected", [(3, [3.0]), (1, [1.0]), (0, [])])
def test_eval_return_is_the_mean_of_train_eval_episodes(tmp_path, monkeypatch, episodes, expected):
    """train.eval_episodes evaluation episodes at each checkpoint, their mean reported once
    with the next row (0: none), and the training's random stream left as it was."""
    import torch

    from natural_dreamer import load_config
    from natural_dreamer.loop import Trainer

    config = load_config("smoke", {"train.video": False, "train.eval_episodes": episodes})
    trainer = Trainer(config, root=tmp_path, quiet=True)
    scores = {0: 1.0, 1: 2.0, 2: 6.0}
    seen = []

    def evaluate(suffix, index):
        seen.append(index)
        torch.rand(5)  # an episode draws from the stream; the caller must put it back
        return scores[index]

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    state = torch.get_rng_state()
    try:
        trainer.save_and_evaluate(final=True)
    finally:
        trainer.envs.close()
        trainer.eval_env.close()
    assert seen == list(range(episodes))
    assert trainer.interval["eval_return"] == expected
    assert torch.equal(torch.get_rng_state(), state)


def test_inspect_policy_reads_the_smoke_checkpoint(smoke_run):
    checkpoint = smoke_run[0] / "checkpoints" / "smoke_run_0.1k.pth"
    result = run_script("inspect_policy.py", str(checkpoint), "--rows", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.splitlines()
    assert out[0].startswith("smoke_run_0.1k.pth: 600 env steps, 100 gradient steps")
    assert out[1] == "replayed actions (mean±std)" and len(out[2:6]) == 4
    assert out[6].startswith("actor on 64 replayed states: entropy ")
    assert "imagined advantages" in out[7] and "max(1, S) 1.00" in out[7]


def test_diagnose_walker_reads_a_checkpoint_and_its_csv(smoke_run):
    """scripts/diagnose_walker.py on the smoke run (Pendulum: the bins are the walker's, the
    sections and numbers must all be there)."""
    checkpoint = smoke_run[0] / "checkpoints" / "smoke_run_0.1k.pth"
    result = run_script("diagnose_walker.py", str(checkpoint), "--batches", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "1. Reward head on replayed states (896 states)" in out  # 16 x (64 - 8 burn-in)
    for policy in ("actor mean", "actor samples", "2x std", "uniform"):
        assert out.count(f"| {policy} |") == 2  # imagined and real
    assert "Reward head along those episodes" in out and "correlation" in out
    assert "From smoke_run.csv" in out and "| 600 |" in out  # the CSV's last training row


def test_render_quality_trains_a_world_model_on_both_kinds_of_frame():
    """scripts/render_quality.py (design.md's evidence for env.fast_render) runs end to end:
    it called Dreamer.update with an old signature and failed after collecting, unnoticed."""
    result = run_script("render_quality.py", "--episodes", "1", "--updates", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "collected 501 steps per variant" in out and "pixel difference" in out
    for split in ("train", "held-out"):
        label = f"| {split} world_model/image_loss |"
        row = next(line for line in out.splitlines() if label in line)
        full, fast = (float(cell) for cell in row.strip("|").split("|")[1:])
        assert 0 < full < 1e5 and 0 < fast < 1e5  # finite summed squared errors of real frames


def test_resume_continues_the_same_run(smoke_run, tmp_path):
    out = smoke_run[0]
    result = run_main("smoke", "--resume", "0.1k", "--max_steps", "1000", outdir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics" / "smoke_run.csv")
    steps = metrics["env_steps"].tolist()
    assert steps == sorted(steps) and len(set(steps)) == len(steps), steps  # no duplicate rows
    assert steps[-1] == 1000 and metrics["gradient_steps"].iloc[-1] == 200
    header_lines = (out / "metrics" / "smoke_run.csv").read_text().count("env_steps")
    assert header_lines == 1


def test_unknown_config_lists_available(tmp_path):
    result = run_main("walker_wlak", outdir=tmp_path)
    assert result.returncode == 2
    assert "unknown config 'walker_wlak'" in result.stderr and "smoke" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed"], "error: '--seed' has no value; options come in pairs: --KEY VALUE"),
        (
            ["--seed", "3", "--envs"],
            "error: '--envs' has no value; options come in pairs: --KEY VALUE",
        ),
        (["seed", "3"], "error: expected --KEY before 'seed'"),
        (["--seed", "3", "4", "--envs"], "error: expected --KEY before '4'"),
    ],
    ids=["key-without-value", "last-key-without-value", "value-without-key", "two-values"],
)
def test_options_out_of_pairs_stop_with_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = run_main("smoke", "--outdir", str(out), *args, outdir=None, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == message + "\n" and result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # not even the --outdir folder


@pytest.mark.parametrize("args", [[], ["--outdir", "out"]], ids=["no-arguments", "only-outdir"])
def test_no_config_says_so_and_shows_the_usage(tmp_path, args):
    before = repository_files()
    result = run_main(*args, outdir=None, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""  # a bad input, as every other
    assert result.stderr.splitlines() == ["error: no CONFIG given", main.USAGE]
    assert list(tmp_path.iterdir()) == [] and repository_files() == before


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_shows_the_usage_and_starts_nothing(tmp_path, flag):
    before = repository_files()
    result = run_main(flag, outdir=None, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout == main.USAGE + "\n"  # that line alone
    assert list(tmp_path.iterdir()) == [] and repository_files() == before


def test_unknown_key_names_closest(tmp_path):
    result = run_main("smoke", "--world_model.batch_sise", "8", outdir=tmp_path)
    assert result.returncode == 2 and "world_model.batch_size" in result.stderr
    assert not (tmp_path / "metrics").exists()


def test_resume_without_checkpoint_lists_existing(smoke_run):
    out = smoke_run[0]
    result = run_main("smoke", "--resume", "7k", outdir=out)
    assert result.returncode == 2
    assert "0.05k" in result.stderr and "latest" in result.stderr


def test_a_run_cannot_be_trained_by_two_processes_at_once(smoke_run, tmp_path):
    """A second main.py on a run that another process is training stops before touching its
    files; once the holder is gone (here: its lock file closed), --resume works again."""
    import fcntl

    out = tmp_path / "out"
    shutil.copytree(smoke_run[0], out)
    lock = out / "checkpoints" / "smoke_run.lock"
    csv = out / "metrics" / "smoke_run.csv"
    rows = csv.read_text()
    with open(lock, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running trainer holds it
        holder.truncate(0)
        holder.write("process 12345 on somewhere")
        holder.flush()
        result = run_main("smoke", "--resume", "latest", outdir=out)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is being trained by process 12345 on somewhere" in result.stderr
    assert "Traceback" not in result.stderr
    assert csv.read_text() == rows  # nothing written
    again = run_main("smoke", "--resume", "latest", "--max_steps", "1100", outdir=out)
    assert again.returncode == 0, again.stderr[-2000:]


def smoke_in_background(outdir, *args, rows: int):
    """`main.py smoke` in a process of its own, returned once its CSV holds `rows` rows."""
    process = subprocess.Popen(
        [sys.executable, "main.py", "smoke", "--outdir", str(outdir), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    csv = outdir / "metrics" / "smoke_run.csv"
    while time.time() < deadline and not (csv.exists() and csv.read_text().count("\n") > rows):
        time.sleep(0.5)
    return process


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_saves_and_exits(tmp_path, sig, status):
    process = smoke_in_background(tmp_path, "--max_steps", "100000", rows=2)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-2000:]
    assert (tmp_path / "checkpoints" / "smoke_run_latest.pth").is_file()
    name = signal.Signals(sig).name
    said = stderr.index(f"{name}: stopping after the current step, then saving 'smoke_run_latest'")
    assert said < stderr.index("--resume latest")  # acknowledged before the save, not after


def test_a_killed_run_resumes_from_the_latest_saved_every_save_minutes(tmp_path):
    """SIGKILL (the kernel's out-of-memory killer, a power cut) runs no handler, so what
    survives is what was saved: train.save_minutes saves latest at an episode's end between
    checkpoints, and the run resumes from it."""
    import torch

    args = ["--max_steps", "100000", "--train.checkpoint_every", "100000"]  # no checkpoint
    args += ["--train.save_minutes", "0.001"]  # at every episode's end
    process = smoke_in_background(tmp_path, *args, rows=3)
    process.kill()
    process.communicate(timeout=60)
    assert not list((tmp_path / "checkpoints").glob("smoke_run_[0-9]*.pth"))
    state = torch.load(tmp_path / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    steps = state["counters"]["env_steps"]
    assert steps >= 400 and steps % 200 == 0  # training had begun; at an episode's end
    assert state["counters"]["gradient_steps"] > 0
    args = ["--resume", "latest", "--max_steps", str(steps + 200), "--train.checkpoint_every"]
    result = run_main("smoke", *args, "100000", outdir=tmp_path)  # save_minutes may change
    assert result.returncode == 0, result.stderr[-2000:]


def test_dmc_pixels_run_a_few_steps_with_dream_video(tmp_path):
    args = [
        "walker_walk",
        *("--max_steps", "120", "--env.time_limit", "60", "--model.preset", "1m"),
        *("--world_model.batch_size", "2", "--world_model.batch_length", "8"),
        *("--behavior.horizon", "3", "--train.prefill", "60", "--train.train_ratio", "16"),
        *("--train.checkpoint_every", "2", "--train.log_every", "60"),
    ]
    result = run_main(*args, outdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    dream = sorted((tmp_path / "videos").glob("walker_walk_run_*_dream.mp4"))
    assert dream, os.listdir(tmp_path / "videos")
    frames = read_video(dream[-1]).astype(np.int16)
    # An episode of 60 env steps at action repeat 2: the first observation and 30 more. Each
    # frame is 64x64 real, a 2 px white bar, 64x64 predicted (64x130), upscaled 4 times
    # (256x520), then padded with black to a multiple of 16 (256x528).
    assert frames.shape == (31, 256, 528, 3)
    real, bar, predicted, padding = (
        frames[:, :, a:b] for a, b in [(0, 256), (256, 264), (264, 520), (520, 528)]
    )
    assert bar.mean() > 235 and padding.mean() < 20, (bar.mean(), padding.mean())
    # A world model trained for 60 env steps does not reproduce the real frames.
    difference = np.abs(real - predicted).mean()  # about 90 here; 0.2 for identical halves
    assert difference > 10, difference


def test_a_new_run_never_overwrites_another(smoke_run):
    out = smoke_run[0]
    before = (out / "metrics" / "smoke_run.csv").read_bytes()
    result = run_main("smoke", outdir=out)
    assert result.returncode == 2 and "--resume latest" in result.stderr
    assert (out / "metrics" / "smoke_run.csv").read_bytes() == before


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("world_model.batch_length", "1", "batch_length must be an int >= 2"),
        ("train.train_ratio", "0", "train_ratio must be a float > 0"),
        ("env.image_size", "40", "multiple of 16"),
        ("world_model.batch_size", "-3", "batch_size must be an int >= 1"),
        ("env.task", "Pendulum-v99", "Pendulum-v99"),
        ("world_model.batch_size", "eight", "batch_size must be int"),
        ("train.steps", "[1,2", "train.steps must be int"),
        ("env.suite", "mujoco", "dmc"),
        ("precision", "fp16", "precision must be one of auto, bf16, fp32"),
        ("optimizer.world_model_lr", "-1", "optimizer.world_model_lr must be a float > 0"),
        ("optimizer.world_model_lr", ".nan", "optimizer.world_model_lr must be a float > 0"),
        ("model.unimix", "2", "model.unimix must be a float in [0, 1)"),
        ("compile", "maybe", "compile must be one of auto, true, false"),
    ],
)
def test_impossible_values_stop_with_one_line(tmp_path, key, value, message):
    result = run_main("smoke", f"--{key}", value, outdir=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "checkpoints").exists()


def test_unknown_dmc_task_names_the_close_ones(tmp_path):
    result = run_main("smoke", "--env.suite", "dmc", "--env.task", "walker_wlak", outdir=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "walker_walk" in result.stderr and "suite.ALL_TASKS" in result.stderr
    assert not (tmp_path / "metrics").exists()


def test_truncated_checkpoint_is_named(smoke_run):
    out = smoke_run[0]
    good = (out / "checkpoints" / "smoke_run_0.05k.pth").read_bytes()
    (out / "checkpoints" / "smoke_run_cut.pth").write_bytes(good[: len(good) // 2])
    result = run_main("smoke", "--resume", "cut", outdir=out)
    assert result.returncode == 2 and "smoke_run_cut.pth" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_another_model_lists_the_differences(smoke_run):
    out = smoke_run[0]
    result = run_main("smoke", "--resume", "0.05k", "--model.preset", "12m", outdir=out)
    assert result.returncode == 2 and "model.preset" in result.stderr


class CodeOnLoad:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_cannot_run_code(smoke_run, tmp_path):
    import torch

    out = smoke_run[0]
    marker = tmp_path / "code_ran"
    torch.save({"agent": CodeOnLoad(marker)}, out / "checkpoints" / "smoke_run_evil.pth")
    result = run_main("smoke", "--resume", "evil", outdir=out)
    assert result.returncode == 2 and "smoke_run_evil.pth" in result.stderr
    assert not marker.exists()


def test_resume_is_exact(tmp_path):
    """600 steps + checkpoint + resume + 400 steps == 1000 steps uninterrupted (CPU, one seed).

    Also shows that one seed gives the same numbers on one machine.
    """
    import torch

    split, whole = tmp_path / "split", tmp_path / "whole"
    assert run_main("smoke", outdir=split).returncode == 0
    result = run_main("smoke", "--resume", "latest", "--max_steps", "1000", outdir=split)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_main("smoke", "--max_steps", "1000", outdir=whole)
    assert result.returncode == 0, result.stderr[-3000:]
    a = pd.read_csv(split / "metrics" / "smoke_run.csv")
    b = pd.read_csv(whole / "metrics" / "smoke_run.csv")
    assert a["wall_seconds"].is_monotonic_increasing  # the resumed clock goes on, not back
    machine = ["wall_seconds", "memory/resident_mb"]  # the machine's, not the run's, numbers
    pd.testing.assert_frame_equal(a.drop(columns=machine), b.drop(columns=machine))
    a = torch.load(split / "checkpoints" / "smoke_run_latest.pth", weights_only=True)["agent"]
    b = torch.load(whole / "checkpoints" / "smoke_run_latest.pth", weights_only=True)["agent"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_stops_training_and_names_the_loss(tmp_path):
    # A learning rate of 1e30 blows the world model up on its first update.
    args = ("--optimizer.world_model_lr", "1e30", "--optimizer.warmup", "1")
    result = run_main("smoke", *args, outdir=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "world_model loss became" in result.stderr and "at gradient step 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "checkpoints").glob("*.pth"))  # nothing bad was saved
    assert pd.read_csv(tmp_path / "metrics" / "smoke_run.csv")["env_steps"].tolist() == [200]


@pytest.mark.parametrize(
    "name",
    ["x/../../../../tmp/ndescape", "../up", "/abs/path", "a\\b", "..", ".hidden", "", "a" * 65],
)
def test_a_run_name_cannot_leave_the_output_folders(tmp_path, name):
    """Separators, '..', absolute paths, empty and very long names: refused in one line."""
    outdir = tmp_path / "out"
    result = run_main("smoke", "--run_name", name, outdir=outdir)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "run_name" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_a_resume_suffix_cannot_leave_the_checkpoint_folder(tmp_path):
    result = run_main("smoke", "--resume", "../../etc/passwd", outdir=tmp_path)
    assert result.returncode == 2 and "--resume suffix" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_written_path_is_a_file_in_an_output_folder(tmp_path):
    from natural_dreamer import load_config
    from natural_dreamer.loop import Trainer

    trainer = Trainer(load_config("smoke"), root=tmp_path, quiet=True)
    assert trainer.path("videos", "smoke_run_1k_dream.mp4") == tmp_path / "videos" / (
        "smoke_run_1k_dream.mp4"
    )
    for folder, name in [("metrics", "../x.csv"), ("metrics", "/tmp/x"), ("..", "x"), ("", "x")]:
        with pytest.raises(ValueError, match="refusing to write"):
            trainer.path(folder, name)
    trainer.envs.close()
    trainer.eval_env.close()


@pytest.mark.parametrize("outdir", ["/proc/natural_dreamer", "/etc/hostname/inside"])
def test_an_outdir_that_cannot_be_written_stops_before_any_work(outdir):
    result = run_main("smoke", outdir=outdir, timeout=60)
    assert result.returncode == 2 and "cannot write to --outdir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs as --outdir: room for the plot bundle and one smoke checkpoint only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)])
    assert result.returncode == 0, "the disk-full tests need to mount a tmpfs (root)"
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_ends_in_one_line_and_the_run_resumes(small_disk):
    result = run_main("smoke", "--max_steps", "2000", outdir=small_disk)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and last.startswith("error: cannot write ")
    assert "No space left on device" in last and "MB free there" in last and "needs" in last
    checkpoints = sorted(p.name for p in (small_disk / "checkpoints").iterdir())
    # The run's lock (checkpoints/<run>.lock), its config, the last good checkpoint, no temp file.
    expected = ["smoke_run.lock", "smoke_run.yml", "smoke_run_0.05k.pth", "smoke_run_latest.pth"]
    assert checkpoints == expected
    rows = pd.read_csv(small_disk / "metrics" / "smoke_run.csv")["env_steps"].tolist()
    assert rows == [200, 280, 400]  # 280: the first row, after the 20th update
    # Once there is room again the run continues from its newest checkpoint.
    subprocess.run(["mount", "-o", "remount,size=100m", str(small_disk)], check=True)
    result = run_main("smoke", "--max_steps", "1000", "--resume", "latest", outdir=small_disk)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.read_csv(small_disk / "metrics" / "smoke_run.csv")["env_steps"].tolist()
    assert rows == [200, 280, 400, 600, 800, 1000]


def test_a_read_only_output_folder_ends_in_one_line(small_disk):
    subprocess.run(["mount", "-o", "remount,size=100m", str(small_disk)], check=True)
    assert run_main("smoke", outdir=small_disk).returncode == 0
    before = {p.name: p.read_bytes() for p in (small_disk / "checkpoints").iterdir()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = run_main("smoke", "--max_steps", "1000", "--resume", "latest", outdir=small_disk)
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in (small_disk / "checkpoints").iterdir()} == before


def test_a_nan_from_the_environment_is_named_where_it_appears(tmp_path):
    args = ("--env.suite", "toy", "--env.task", "counter_nan", "--env.time_limit", "100")
    result = run_main("smoke", *args, outdir=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the environment returned a non-finite 'vector' (collecting, at env step" in (
        result.stderr
    )


def test_a_nan_in_the_actor_is_named_while_acting(smoke_run, tmp_path):
    import torch

    out = smoke_run[0]
    state = torch.load(out / "checkpoints" / "smoke_run_0.1k.pth", weights_only=True)
    state["agent"]["behavior.actor.out.weight"][:] = float("nan")
    torch.save(state, out / "checkpoints" / "smoke_run_nanactor.pth")
    result = run_main("smoke", "--resume", "nanactor", "--max_steps", "700", outdir=out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the actor's output became non-finite while acting (collecting" in result.stderr
    assert "the newest checkpoint is the last good state" in result.stderr


def test_an_exported_agent_is_small_and_loads_safely(smoke_run, tmp_path):
    import torch

    from natural_dreamer import AttrDict, Dreamer
    from natural_dreamer.envs import make_env

    out = smoke_run[0]
    checkpoint = out / "checkpoints" / "smoke_run_0.1k.pth"
    result = subprocess.run(
        [sys.executable, "scripts/export_agent.py", str(checkpoint), str(tmp_path / "a.pth")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "a.pth").stat().st_size < checkpoint.stat().st_size / 2  # no replay
    assert (tmp_path / "a.csv").read_text() == (out / "metrics" / "smoke_run.csv").read_text()
    state = torch.load(tmp_path / "a.pth", weights_only=True)
    assert set(state) == {"agent", "config", "counters"} and state["counters"]["gradient_steps"]
    config = AttrDict(state["config"])
    env = make_env(config.env, seed=0)
    Dreamer(env.obs_space, env.action_size, env.discrete, config).load_state_dict(state["agent"])


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes: what a command must leave as it found it."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_eval_plays_a_checkpoint_and_keeps_the_run_as_it_was(smoke_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(smoke_run[0], out)
    before = snapshot(out)
    result = run_main("smoke", "--resume", "0.1k", "--eval", "3", outdir=out)
    assert result.returncode == 0, result.stderr[-2000:]
    returns = [float(x) for x in re.findall(r"episode \d/3: return (-?[\d.]+)", result.stdout)]
    assert len(returns) == 3
    mean, std = map(float, re.search(r"mean (-?[\d.]+), std ([\d.]+)", result.stdout).groups())
    assert mean == pytest.approx(np.mean(returns), abs=0.1)
    assert std == pytest.approx(np.std(returns), abs=0.1)
    # Nothing of the run changed; the two new files are the best and the worst episode.
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    new = sorted(str(k) for k in after.keys() - before.keys())
    best, worst = max(returns), min(returns)
    assert new == sorted(
        [
            f"videos/smoke_run_0.1k_evaluate3_best_{best:.0f}.mp4",
            f"videos/smoke_run_0.1k_evaluate3_worst_{worst:.0f}.mp4",
        ]
    )
    frames = read_video(out / new[0])
    assert len(frames) == 201  # the first frame and one per step of a 200-step episode
    # The policy's mode and seeds of its own: the same returns again, and a second pair of
    # videos beside the first instead of over them.
    again = run_main("smoke", "--resume", "0.1k", "--eval", "3", outdir=out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.findall(r"return (-?[\d.]+)", again.stdout) == [f"{r:.1f}" for r in returns]
    assert (out / "videos" / f"smoke_run_0.1k_evaluate3_best_{best:.0f}_2.mp4").is_file()
    assert {k: v for k, v in snapshot(out).items() if k in after} == after


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume", "7k", "--eval", "2"], "no checkpoint smoke_run_7k.pth; checkpoints of"),
        (["--resume", "latest", "--eval", "0"], "--eval takes a number of episodes >= 1"),
        (["--resume", "latest", "--eval", "-3"], "--eval takes a number of episodes >= 1"),
        (["--resume", "latest", "--eval", "two"], "--eval takes a number of episodes >= 1"),
        (["--eval", "2"], "--eval N needs the checkpoint to play"),
        (
            ["--resume", "latest", "--eval", "2", "--model.preset", "12m"],
            "was made with a different config (model.preset: checkpoint '1m', now '12m')",
        ),
    ],
)
def test_eval_refuses_bad_input_in_one_line_and_writes_nothing(smoke_run, tmp_path, args, message):
    out = tmp_path / "out"
    shutil.copytree(smoke_run[0], out)
    before = snapshot(out)
    result = run_main("smoke", *args, outdir=out)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert snapshot(out) == before


def test_eval_refuses_a_checkpoint_of_another_config(smoke_run, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    # The smoke run's checkpoint under the pendulum run's name: its config says smoke.
    shutil.copy(smoke_run[0] / "checkpoints" / "smoke_run_0.1k.pth", out / "checkpoints")
    (out / "checkpoints" / "smoke_run_0.1k.pth").rename(out / "checkpoints" / "pendulum_run_1k.pth")
    result = run_main("pendulum", "--resume", "1k", "--eval", "1", outdir=out)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pendulum_run_1k.pth was made with a different config" in result.stderr
    assert "config_name: checkpoint 'smoke', now 'pendulum'" in result.stderr
    assert not (out / "videos").exists()
