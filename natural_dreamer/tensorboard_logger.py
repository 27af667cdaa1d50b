"""TensorBoard events: the metric rows as scalars, the evaluation and dream videos as GIFs.

    python main.py pendulum --logger csv,tensorboard
    tensorboard --logdir metrics

A run writes `metrics/<run>/events.out.tfevents.*`; every row's column becomes a scalar
plotted against env_steps, and each video becomes an animated image in the Images tab (the
way TensorBoard shows videos). The events are written with the tensorboard package's own
writer, so TensorFlow is not needed.
"""

import io
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def gif_bytes(frames: np.ndarray, fps: float = 30) -> bytes:
    """Encode (N, H, W, 3) uint8 frames as a looping animated GIF."""
    images = [Image.fromarray(frame) for frame in frames]
    out = io.BytesIO()
    duration = round(1000 / fps)  # milliseconds per frame
    images[0].save(
        out, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
    return out.getvalue()


class TensorBoardLogger:
    """Write metric rows and videos of one run into `logdir` as TensorBoard events.

    resume_from_env_steps: a resumed run marks its restart, so TensorBoard drops the events
    logged after the checkpoint by the run that was stopped (as the CSV truncates its rows).
    """

    def __init__(self, logdir: str | Path, resume_from_env_steps: int | None = None):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(self.logdir), flush_secs=30)
        if resume_from_env_steps:
            restart = SessionLog(status=SessionLog.START)
            self._write(Event(step=resume_from_env_steps + 1, session_log=restart))

    def log(self, row: dict) -> None:
        """One metrics row: every finite number but env_steps becomes a scalar at env_steps."""
        values = [
            Summary.Value(tag=name, simple_value=float(value))
            for name, value in row.items()
            if name != "env_steps" and value is not None and math.isfinite(float(value))
        ]
        self._write(Event(step=int(row["env_steps"]), summary=Summary(value=values)))
        self.writer.flush()

    def video(self, tag: str, frames: np.ndarray, env_steps: int, fps: float = 30) -> None:
        """(N, H, W, 3) uint8 frames as an animated image under `tag`."""
        N, H, W, _ = frames.shape
        image = Summary.Image(
            height=H, width=W, colorspace=3, encoded_image_string=gif_bytes(frames, fps)
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._write(Event(step=int(env_steps), summary=summary))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _write(self, event: Event) -> None:
        event.wall_time = time.time()
        self.writer.add_event(event)
