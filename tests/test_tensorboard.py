"""TensorBoard events, read back the way TensorBoard reads them (EventAccumulator)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from natural_dreamer import ConfigError, load_config
from natural_dreamer.tensorboard_logger import TensorBoardLogger


def read_events(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def decode_gif(encoded: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(encoded)) as gif:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])


def test_scalars_and_a_video_read_back(tmp_path):
    frames = np.zeros((6, 16, 24, 3), np.uint8)
    for t in range(6):
        frames[t, :, 4 * t : 4 * t + 4] = (255, 0, 0)  # a red bar moving right
    logger = TensorBoardLogger(tmp_path)
    logger.log({"env_steps": 100, "world_model/loss": 2.5, "eval_return": float("nan")})
    logger.log({"env_steps": 200, "world_model/loss": 1.5, "eval_return": 7.0})
    logger.video("video/eval", frames, env_steps=200)
    logger.close()

    events = read_events(tmp_path)
    loss = events.Scalars("world_model/loss")
    assert [(e.step, e.value) for e in loss] == [(100, 2.5), (200, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval_return")] == [(200, 7.0)]  # no NaN
    assert "env_steps" not in events.Tags()["scalars"]  # it is the x axis
    (image,) = events.Images("video/eval")
    assert (image.step, image.width, image.height) == (200, 24, 16)
    assert np.array_equal(decode_gif(image.encoded_image_string), frames)


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    for step in (100, 200, 300):
        logger.log({"env_steps": step, "loss": 1.0})
    logger.close()
    logger = TensorBoardLogger(tmp_path, resume_from_env_steps=200)
    logger.log({"env_steps": 300, "loss": 2.0})
    logger.close()
    loss = read_events(tmp_path).Scalars("loss")
    assert [(e.step, e.value) for e in loss] == [(100, 1.0), (200, 1.0), (300, 2.0)]


def test_training_with_the_tensorboard_logger_writes_scalars_and_both_videos(tmp_path):
    from natural_dreamer.loop import Trainer

    overrides = {
        "logger": "tensorboard",
        "env.suite": "toy",
        "env.task": "counter",
        "env.obs": "pixels",
        "env.time_limit": 20,
        "train.steps": 60,
        "train.prefill": 40,
        "train.log_every": 20,
        "train.checkpoint_every": 5,
        "world_model.batch_size": 2,
        "world_model.batch_length": 8,
    }
    trainer = Trainer(load_config("smoke", overrides), root=tmp_path, quiet=True)
    trainer.train()
    assert not (tmp_path / "metrics" / "smoke_run.csv").exists()  # tensorboard alone
    events = read_events(tmp_path / "metrics" / "smoke_run")
    assert {"world_model/loss", "gradient_steps", "eval_return"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("gradient_steps")] == [20, 40, 60]
    eval_video = events.Images("video/eval")[-1]
    assert decode_gif(eval_video.encoded_image_string).shape == (21, 64, 64, 3)
    dream = decode_gif(events.Images("video/dream")[-1].encoded_image_string)
    assert dream.shape[1:] == (64, 130, 3)  # real frames beside predicted ones


def test_an_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match="logger must be"):
        load_config("smoke", {"logger": "wandb"})
    assert load_config("smoke", {"logger": "csv,tensorboard"}).logger == "csv,tensorboard"
