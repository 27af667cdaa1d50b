"""Nothing lost, nothing overwritten: planted links, a stop at any moment, the way on after a
fault before the first checkpoint, hostile configs and checkpoints, a damaged metrics CSV,
and bad input that writes nothing (docs/failures.md, issue 43)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_main import ROOT, run_main

from natural_dreamer import load_config
from natural_dreamer.checkpoint import CheckpointError, claim_run, save_checkpoint
from natural_dreamer.config import (
    ConfigError,
    check_memory,
    memory_needed,
    read_yaml,
    save_config,
)
from natural_dreamer.files import refuse_links
from natural_dreamer.logger import MetricsLogger, read_metrics
from natural_dreamer.loop import OUTPUT_FOLDERS
from natural_dreamer.video import write_video

GB = 2**30


def one_line_error(result, status=2):
    """The process stopped with `status` and said why in one line, with no traceback."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# 1. Links planted in an output folder.


@pytest.fixture
def victim(tmp_path):
    """A file outside --outdir that a planted link points at."""
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_run_whose_files_are_links_is_refused(tmp_path, victim):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "smoke_run.lock").symlink_to(victim)
    line = one_line_error(run_main("smoke", outdir=out))
    assert "smoke_run.lock is a symbolic link" in line
    assert victim.read_text() == "precious\n"
    for planted in ("checkpoints/smoke_run.yml", "metrics/smoke_run.csv", "plots/smoke_run.html"):
        other = tmp_path / planted.replace("/", "_")
        (other / planted).parent.mkdir(parents=True)
        (other / planted).symlink_to(victim)
        with pytest.raises(ValueError, match="symbolic link"):
            refuse_links(other, OUTPUT_FOLDERS, "smoke_run")


def test_an_output_folder_that_is_a_link_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    line = one_line_error(run_main("smoke", outdir=out))
    assert "checkpoints is a symbolic link" in line
    assert list(elsewhere.iterdir()) == []


def test_no_write_follows_a_link_planted_at_a_final_or_temporary_name(tmp_path, victim):
    """Each writer replaces a link at its file's name (a rename) instead of writing through
    it, and its temporary names are not the predictable ones of before."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path, latest = folder / "run_1k.pth", folder / "run_latest.pth"
    for name in (path, latest, folder / ".run_1k.pth.tmp", folder / ".run_latest.pth.tmp"):
        name.symlink_to(victim)
    save_checkpoint({"a": torch.ones(3)}, path, latest=latest)
    config_path = folder / "run.yml"
    config_path.symlink_to(victim)
    save_config(load_config("smoke"), config_path)
    video = tmp_path / "videos" / "run_eval.mp4"
    video.parent.mkdir()
    video.symlink_to(victim)
    write_video(video, torch.zeros(2, 16, 16, 3, dtype=torch.uint8).numpy())
    assert victim.read_text() == "precious\n"
    for written in (path, latest, config_path, video):
        assert written.is_file() and not written.is_symlink(), written
    assert path.stat().st_ino == latest.stat().st_ino  # latest: a second name, not a link
    lock = folder / "run.lock"
    lock.symlink_to(victim)
    with pytest.raises(CheckpointError, match="symbolic link"):
        claim_run(lock)
    assert victim.read_text() == "precious\n"


def test_a_link_planted_at_the_csv_mid_run_is_not_followed(tmp_path, victim):
    csv = tmp_path / "metrics" / "run.csv"
    logger = MetricsLogger(csv)
    logger.log({"env_steps": 1, "loss": 0.5})
    csv.unlink()
    csv.symlink_to(victim)
    with pytest.raises(OSError):
        logger.log({"env_steps": 2, "loss": 0.4})
    assert victim.read_text() == "precious\n"


# 2. A stop signal at any moment: the compile warm-up's compiler dies with Ctrl-C, and the
# terminal's `tee` with it.

# main.py, whose first gradient step waits on a child process in the process group as
# torch.compile waits on the C++ compiler: Ctrl-C kills that child too, and the step fails.
COMPILING = textwrap.dedent(
    """
    import subprocess, sys
    from natural_dreamer.dreamer import Dreamer

    train_step = Dreamer.train_step

    def compiling_train_step(self, batch):
        if not getattr(Dreamer, "compiled_once", False):
            compiler = subprocess.run(["sleep", "120"])  # killed by the group's SIGINT
            if compiler.returncode:
                raise RuntimeError(f"C++ compile error: the compiler exited {compiler.returncode}")
            Dreamer.compiled_once = True
        return train_step(self, batch)

    Dreamer.train_step = compiling_train_step
    sys.argv[0] = "main.py"
    exec(compile(open("main.py").read(), "main.py", "exec"))
    """
)


def test_ctrl_c_in_the_compile_warm_up_through_a_dead_tee_saves_latest(tmp_path):
    """`python main.py smoke | tee run.log`, Ctrl-C while the first update compiles: the
    whole process group gets SIGINT, so the compiler and tee die with it. The run saves
    `latest`, exits 130, writes nothing into the broken pipe that ends it in a traceback,
    and --resume latest goes on."""
    out = tmp_path / "out"
    tee = subprocess.Popen(
        ["tee", str(tmp_path / "run.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        process_group=0,  # a terminal's foreground group: tee, then python in it
    )
    args = ["smoke", "--max_steps", "100000", "--outdir", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", COMPILING, *args],
        cwd=ROOT,
        stdout=tee.stdin,
        stderr=subprocess.STDOUT,
        process_group=tee.pid,
    )
    tee.stdin.close()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not compiler_running(process.pid):
            time.sleep(0.2)
        assert compiler_running(process.pid), "the first update never started compiling"
        os.killpg(tee.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 130, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        process.kill()
        tee.kill()
    assert tee.wait() == -signal.SIGINT  # the pipe's reader died with the signal
    state = torch.load(out / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    assert state["counters"]["gradient_steps"] == 0 and state["counters"]["env_steps"] > 200
    result = run_main("smoke", "--resume", "latest", "--max_steps", "300", outdir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(out / "metrics" / "smoke_run.csv")["env_steps"].iloc[-1] == 300


def compiler_running(pid: int) -> bool:
    """Whether process `pid` has a `sleep` child (the stand-in compiler)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "sleep":
                return True
        except OSError:
            continue
    return False


# 3. A fault before the first checkpoint is no dead end.


@pytest.fixture
def stopped_before_a_checkpoint(tmp_path):
    """An output folder whose run failed before its first checkpoint: metrics and a plot,
    no checkpoint (as after NaN from the environment, or a kill during the first save)."""
    out = tmp_path / "out"
    (out / "metrics").mkdir(parents=True)
    (out / "plots").mkdir()
    (out / "checkpoints").mkdir()
    (out / "metrics" / "smoke_run.csv").write_text("env_steps,episode_return\n200,-1000.0\n")
    (out / "plots" / "smoke_run.html").write_text("<html></html>\n")
    (out / "checkpoints" / ".smoke_run_0.05k.pth.tmp").write_bytes(b"half a checkpoint")
    return out


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh(stopped_before_a_checkpoint):
    out = stopped_before_a_checkpoint
    line = one_line_error(run_main("smoke", "--resume", "latest", outdir=out))
    assert "start it afresh with the same command without --resume" in line
    result = run_main("smoke", "--max_steps", "300", outdir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moved aside to metrics/smoke_run.partial-1.csv" in result.stdout
    kept = (out / "metrics" / "smoke_run.partial-1.csv").read_text()
    assert kept == "env_steps,episode_return\n200,-1000.0\n"
    assert (out / "plots" / "smoke_run.partial-1.html").read_text() == "<html></html>\n"
    rows = pd.read_csv(out / "metrics" / "smoke_run.csv")["env_steps"].tolist()
    assert rows[0] == 200 and rows[-1] == 300, rows  # the new run's own rows
    # 8. A budget below what is done already says so and leaves the run's config as it was.
    config = (out / "checkpoints" / "smoke_run.yml").read_bytes()
    line = one_line_error(run_main("smoke", "--resume", "latest", "--max_steps", "250", outdir=out))
    assert "has done 300 env steps already" in line
    assert (out / "checkpoints" / "smoke_run.yml").read_bytes() == config


# 5. Hostile configs.

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def test_an_alias_bomb_is_refused_without_building_it(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(ALIAS_BOMB)
    started = time.time()
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(path)
    assert time.time() - started < 2  # nine levels would fill the machine's memory
    value = "&a [x, x, x, x, x, x, x, x, x]"  # an anchor alone is harmless; an alias is not
    with pytest.raises(ConfigError) as error:
        load_config("smoke", {"train.steps": "y" * 10**6})
    assert len(str(error.value)) < 300  # a value in a message is cut short
    with pytest.raises(ConfigError):
        load_config("smoke", {"train.steps": f"[{value}, *a, *a]"})


def test_keys_that_size_memory_are_checked_against_the_machine(tmp_path):
    out = tmp_path / "out"
    line = one_line_error(run_main("smoke", "--world_model.batch_size", "100000000", outdir=out))
    assert "more memory than the machine" in line and "world_model.batch_size" in line
    # A capacity the budget never fills: only its address space, which no machine has.
    line = one_line_error(
        run_main("smoke", "--train.replay_capacity", "1000000000000000", outdir=out)
    )
    assert "train.replay_capacity" in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["walker_walk", "crafter", "atari_pong", "walker_walk_proprio"])
def test_the_shipped_configs_fit_a_24_gb_machine(name):
    config = load_config(name)
    pixels = config.env.obs != "proprio" or config.env.suite in ("atari", "crafter")
    size = config.env.image_size
    space = {"image": ((size, size, 3), "uint8")} if pixels else {"vector": ((24,), "float32")}
    check_memory(config, space, 6, have=24 * GB)
    replay, _ = memory_needed(config, space, 6)
    if name == "crafter":  # 1M steps into a 1M-step buffer of 64x64x3 frames: about 12 GB
        assert 11 * GB < replay < 13 * GB
    huge = {"train.replay_capacity": 10**12, "train.steps": 10**12}
    with pytest.raises(ConfigError, match="train.replay_capacity 1000000000000"):
        check_memory(load_config(name, huge), space, 6, have=24 * GB)


# 6. Odd checkpoints.


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from natural_dreamer.loop import Trainer

    root = tmp_path_factory.mktemp("odd")
    trainer = Trainer(load_config("smoke", {"train.video": False}), root=root, quiet=True)
    yield trainer
    trainer.close()


def odd_checkpoints(state: dict) -> dict:
    """Files a --resume may find, each not a checkpoint this version can continue."""
    no_counters = {key: value for key, value in state.items() if key != "counters"}
    return {
        "text": "root:x:0:0:root:/root:/bin/bash\n",
        "list": [1, 2, 3],
        "nocounters": no_counters,
        "emptybuffer": state,  # an untrained trainer's: no replayed step yet
        "badcounter": {**state, "counters": {**state["counters"], "returns": "many"}},
    }


def test_odd_checkpoints_are_refused_in_one_line(trainer):
    folder = trainer.root / "checkpoints"
    folder.mkdir(exist_ok=True)
    for suffix, content in odd_checkpoints(trainer.state_dict()).items():
        path = folder / f"smoke_run_{suffix}.pth"
        if isinstance(content, str):
            path.write_text(content)
        else:
            torch.save(content, path)
        with pytest.raises(CheckpointError, match=f"smoke_run_{suffix}.pth"):
            trainer.resume(suffix)
    (folder / "smoke_run_passwd.pth").symlink_to("/etc/passwd")
    with pytest.raises(CheckpointError, match="symbolic link"):
        trainer.resume("passwd")


def test_a_text_file_as_checkpoint_exits_2_in_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "smoke_run_latest.pth").symlink_to("/etc/passwd")
    line = one_line_error(run_main("smoke", "--resume", "latest", outdir=tmp_path))
    assert "smoke_run_latest.pth" in line


# 7. The metrics CSV.


def test_a_csv_cut_mid_line_by_another_process_keeps_every_row_whole(tmp_path, capsys):
    csv = tmp_path / "metrics" / "run.csv"
    logger = MetricsLogger(csv, tmp_path / "plots" / "run.html", plot_every_seconds=1e9)
    logger.log({"env_steps": 1, "loss": 0.5})
    logger.log({"env_steps": 2, "loss": 0.25})
    text = csv.read_text()
    csv.write_text(text[: len(text) - 4])  # another process cut the last row short
    logger.log({"env_steps": 3, "loss": 0.125})
    assert csv.read_text() == "env_steps,loss\n1,0.5\n3,0.125\n"
    # A row damaged by an older version (a partial line with a row appended to it) is left
    # out when the page is drawn and when the run resumes, not an error.
    csv.write_text("env_steps,loss\n1,0.5\n2,0.23,0.125\n3,0.125\n")
    assert read_metrics(csv)["env_steps"].tolist() == [1, 3]
    logger.close()
    MetricsLogger(csv, resume_from_env_steps=3)
    assert csv.read_text() == "env_steps,loss\n1,0.5\n3,0.125\n"


def test_a_page_that_cannot_be_written_is_a_warning_and_the_row_is_kept(tmp_path, capsys):
    (tmp_path / "plots").write_text("a file where the plots folder should be")
    csv = tmp_path / "metrics" / "run.csv"
    logger = MetricsLogger(csv, tmp_path / "plots" / "run.html")
    logger.log({"env_steps": 1, "loss": 0.5})
    logger.close()
    assert csv.read_text() == "env_steps,loss\n1,0.5\n"
    assert "warning: cannot write the page" in capsys.readouterr().err


# 8. Smaller: bad input writes nothing; odd but valid names and values.


@pytest.mark.parametrize(
    "args",
    [["--resume", "7k"], ["--env.task", "NoSuchTask-v0"]],
    ids=["missing-checkpoint", "unknown-task"],
)
def test_bad_input_creates_no_output_folder(tmp_path, args):
    out = tmp_path / "out"
    result = run_main("smoke", *args, outdir=out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not out.exists()


def test_an_empty_outdir_is_refused(tmp_path):
    result = run_main("smoke", "--outdir", "", outdir=None, cwd=tmp_path)
    assert one_line_error(result) == "error: --outdir needs a folder, got ''"
    assert list(tmp_path.iterdir()) == []


def test_a_run_name_of_digits_is_a_name():
    assert load_config("smoke", [("run_name", "2024")]).run_name == "2024"
    assert load_config("smoke", [("train.steps", "2024")]).train.steps == 2024
