"""Tests for natural_dreamer.video: MP4 round trip, upscaling, side-by-side frames."""

import re

import numpy as np
import pytest

from natural_dreamer.video import read_video, side_by_side, upscale_frames, write_video

SQUARE = 12  # side of the moving square, in pixels of the 64x64 frames


def moving_square(num_frames: int = 20, size: int = 64) -> tuple[np.ndarray, list]:
    """Frames of a yellow square moving diagonally on dark blue, and its top-left corners."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    frames[..., 2] = 60
    corners = []
    for t in range(num_frames):
        row, col = 5 + t, 3 + 2 * t
        frames[t, row : row + SQUARE, col : col + SQUARE] = (255, 220, 0)
        corners.append((row, col))
    return frames, corners


def test_round_trip_keeps_frames_and_square_position(tmp_path):
    frames, corners = moving_square()
    path = write_video(tmp_path / "square.mp4", frames, fps=30)
    decoded = read_video(path)

    assert decoded.shape == (20, 256, 256, 3)  # 64 px upscaled by 4, already a multiple of 16
    assert decoded.dtype == np.uint8
    # Average each 4x4 block to undo the upscaling; H.264 changes pixels only slightly.
    small = decoded.reshape(20, 64, 4, 64, 4, 3).mean(axis=(2, 4))  # (N, 64, 64, 3)
    assert np.abs(small - frames).mean() < 10
    for frame, (row, col) in zip(small, corners, strict=True):
        rows, cols = np.nonzero(frame[..., 0] > 128)  # the square is the only red area
        assert abs(rows.mean() - (row + (SQUARE - 1) / 2)) < 1
        assert abs(cols.mean() - (col + (SQUARE - 1) / 2)) < 1


def test_write_video_creates_folder_and_leaves_no_temporary_file(tmp_path):
    frames, _ = moving_square(num_frames=3)
    target = tmp_path / "videos" / "nested" / "run_1k_eval.mp4"
    assert write_video(target, list(frames)) == str(target)  # a list of frames works too
    assert [p.name for p in target.parent.iterdir()] == ["run_1k_eval.mp4"]


def test_upscale_frames_is_nearest_neighbour_padded_to_multiples_of_16():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 64, 130, 3), dtype=np.uint8)
    big = upscale_frames(frames)
    assert big.shape == (2, 256, 528, 3)  # 130 * 4 = 520, padded to 528
    np.testing.assert_array_equal(big[:, ::4, :520:4], frames)
    assert not big[:, :, 520:].any()  # the padding is black
    tall = upscale_frames(np.zeros((1, 300, 17, 3), dtype=np.uint8))
    assert tall.shape == (1, 304, 32, 3)  # already tall enough: scale 1, padding only


def test_side_by_side_shape_and_white_separator():
    real, _ = moving_square(num_frames=4)
    predicted = 255 - real
    both = side_by_side(real, predicted)
    assert both.shape == (4, 64, 64 * 2 + 2, 3)
    assert both.dtype == np.uint8
    np.testing.assert_array_equal(both[:, :, :64], real)
    np.testing.assert_array_equal(both[:, :, 64:66], 255)
    np.testing.assert_array_equal(both[:, :, 66:], predicted)


@pytest.mark.parametrize(
    "frames, message",
    [
        # one frame without the N axis
        (
            np.zeros((64, 64, 3), dtype=np.uint8),
            "frames must have shape (N, H, W, 3), got (64, 64, 3)",
        ),
        # RGBA
        (
            np.zeros((2, 64, 64, 4), dtype=np.uint8),
            "frames must have shape (N, H, W, 3), got (2, 64, 64, 4)",
        ),
        # floats
        (
            np.zeros((2, 64, 64, 3), dtype=np.float32),
            "frames must be uint8 in [0, 255], got dtype float32",
        ),
        # no frames
        (
            np.zeros((0, 64, 64, 3), dtype=np.uint8),
            "frames must hold at least one non-empty frame, got (0, 64, 64, 3)",
        ),
        ([], "frames must have shape (N, H, W, 3), got (0,)"),  # np.asarray([]) is 1-D
    ],
    ids=["ndim", "channels", "dtype", "zero-frames", "empty-list"],
)
def test_write_video_rejects_bad_frames(tmp_path, frames, message):
    # The package's own message, not a ValueError numpy or ffmpeg raises on the way.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        write_video(tmp_path / "bad.mp4", frames)
    assert not any(tmp_path.iterdir())


def test_side_by_side_rejects_mismatched_or_non_uint8_inputs():
    frames, _ = moving_square(num_frames=2)
    with pytest.raises(ValueError, match="differ in shape"):
        side_by_side(frames, frames[:1])
    with pytest.raises(ValueError, match="uint8"):
        side_by_side(frames, frames.astype(np.float32) / 255)


def test_read_video_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "absent.mp4")
