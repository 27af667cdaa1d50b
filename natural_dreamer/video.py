"""MP4 videos of episodes and of "dreams" (real frames beside the world model's predictions).

Encoding uses imageio with the ffmpeg binary shipped inside the imageio-ffmpeg wheel, so no
system ffmpeg is needed. Frames are (N, H, W, 3) uint8 RGB throughout.
"""

import os
import secrets
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from natural_dreamer.utils import naming_write_errors

MIN_HEIGHT = 256  # pixels; 64x64 observations are upscaled to at least this height
MACRO_BLOCK = 16  # H.264 encodes 16x16 blocks; other sizes get resized by ffmpeg (blurry)
SEPARATOR_WIDTH = 2  # pixels between the two halves of a side-by-side frame
QUALITY = 8  # imageio's 0-10 scale; 8 is x264 crf 10, crisp for flat-coloured game frames


def _check_frames(frames, name: str = "frames") -> np.ndarray:
    """`frames` as an (N, H, W, 3) uint8 array with N, H, W > 0, else ValueError."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got dtype {frames.dtype}")
    if min(frames.shape[:3]) == 0:
        raise ValueError(f"{name} must hold at least one non-empty frame, got {frames.shape}")
    return frames


def upscale_frames(frames, min_height: int = MIN_HEIGHT) -> np.ndarray:
    """Enlarge frames for viewing, exactly as `write_video` does before encoding.

    Each pixel becomes an s x s block (nearest neighbour, s = ceil(min_height / H), at least
    1), then black rows and columns are added at the bottom and right so both sides are
    multiples of 16. Input (N, H, W, 3) uint8; output (N, H2, W2, 3) uint8 with
    H2 = 16 * ceil(s * H / 16) and W2 = 16 * ceil(s * W / 16).
    """
    frames = _check_frames(frames)
    N, H, W, _ = frames.shape
    scale = max(1, -(-min_height // H))  # ceil division
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, s*H, s*W, 3)
    pad_h = -big.shape[1] % MACRO_BLOCK
    pad_w = -big.shape[2] % MACRO_BLOCK
    return np.pad(big, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))  # (N, H2, W2, 3)


def write_video(path: str | os.PathLike, frames, fps: float = 30) -> str:
    """Encode frames as an H.264 MP4 at `path` and return the path as a string.

    `frames`: a sequence or array of shape (N, H, W, 3), dtype uint8. They are enlarged by
    `upscale_frames` (a 64x64 frame becomes 256x256). The parent folder is created, and the
    video is written to a temporary file in the same folder then renamed, so `path` is
    either absent or complete. Raises ValueError for a bad shape, dtype or zero frames.
    """
    frames = upscale_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the .mp4 suffix on the temporary name: ffmpeg picks the container from it.
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.mp4")
    try:
        with naming_write_errors(path):
            writer = imageio.get_writer(
                temporary,
                format="FFMPEG",
                fps=fps,
                codec="libx264",
                quality=QUALITY,
                pixelformat="yuv420p",  # the format every browser and player can decode
                macro_block_size=MACRO_BLOCK,
                ffmpeg_log_level="quiet",  # a failure comes back as our exception, in one line
            )
            with writer:
                for frame in frames:
                    writer.append_data(frame)
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return str(path)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a video file into an (N, H, W, 3) uint8 array of all its frames."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video at {path}")
    with imageio.get_reader(path, format="FFMPEG") as reader:
        frames = [np.asarray(frame) for frame in reader]
    if not frames:
        raise ValueError(f"{path} holds no frames")
    return np.stack(frames)  # (N, H, W, 3)


def side_by_side(real, predicted, gap: int = SEPARATOR_WIDTH) -> np.ndarray:
    """Put each real frame left of its predicted frame, split by a white bar `gap` px wide.

    Both inputs must be (N, H, W, 3) uint8 arrays of the same shape; the result is
    (N, H, 2W + gap, 3) uint8. Used for "dream" videos: observations beside the world
    model's open-loop reconstructions of them.
    """
    real = _check_frames(real, "real")
    predicted = _check_frames(predicted, "predicted")
    if real.shape != predicted.shape:
        raise ValueError(f"real {real.shape} and predicted {predicted.shape} differ in shape")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    N, H, _, _ = real.shape
    separator = np.full((N, H, gap, 3), 255, dtype=np.uint8)  # (N, H, gap, 3)
    return np.concatenate([real, separator, predicted], axis=2)  # (N, H, 2W + gap, 3)
