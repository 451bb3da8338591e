"""The demo's synthetic clip: decodable H.264 of the promised length and size, scene-like, deterministic."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.sample_video import sample_frame, write_sample_video


def decode(path: Path) -> tuple[list[np.ndarray], list[int], av.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, pts = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
        return frames, pts, stream


def test_default_clip_decodes_to_100_scene_frames(tmp_path: Path) -> None:
    start = time.perf_counter()
    path = write_sample_video(tmp_path / "clips" / "sample.mp4")
    elapsed = time.perf_counter() - start
    assert path == tmp_path / "clips" / "sample.mp4"
    assert elapsed < 5.0  # about 0.6 s on a CPU core; generous for a loaded CI machine
    frames, pts, stream = decode(path)
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert stream.average_rate == 10
    assert len(frames) == 100 and {f.shape for f in frames} == {(360, 640, 3)}
    assert pts == sorted(pts) and len(set(pts)) == 100
    assert float((pts[-1] - pts[0]) * stream.time_base) == pytest.approx(9.9)

    first = frames[0].astype(int)
    sky, road, river = first[20, 40], first[int(0.61 * 360), 300], first[int(0.86 * 360), :].mean(axis=0)
    assert sky[2] > sky[0] + 80  # blue sky
    assert abs(road[0] - road[2]) < 20 and 80 < road[1] < 140  # grey road
    assert river[2] > river[0] + 80 and river[2] > river[1]  # blue water
    grass = first[int(0.45 * 360), 300]
    assert grass[1] > grass[0] + 40 and grass[1] > grass[2] + 40

    def red_columns(frame: np.ndarray) -> np.ndarray:
        band = frame[int(0.52 * 360) : int(0.70 * 360)].astype(int)
        red = (band[..., 0] > 150) & (band[..., 1] < 80) & (band[..., 2] < 80)
        return np.flatnonzero(red.any(axis=0))

    car_0, car_20 = red_columns(frames[0]), red_columns(frames[20])
    assert len(car_0) > 60 and len(car_20) > 60  # the car is in view from the first frame
    assert car_20.mean() > car_0.mean() + 100  # and drives to the right
    assert np.abs(frames[0].astype(int) - frames[50].astype(int)).mean() > 1.0
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(99))


def test_clip_is_deterministic_and_sized_as_asked(tmp_path: Path) -> None:
    a = write_sample_video(tmp_path / "a.mkv", seconds=2, fps=5, size=(120, 160))
    b = write_sample_video(tmp_path / "b.mkv", seconds=2, fps=5, size=(120, 160))
    frames_a, _, _ = decode(a)
    frames_b, _, _ = decode(b)
    assert len(frames_a) == 10 and frames_a[0].shape == (120, 160, 3)
    assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b, strict=True))
    assert np.array_equal(sample_frame(7, 5, 2, (120, 160)), sample_frame(7, 5, 2, (120, 160)))


@pytest.mark.parametrize("size", [(121, 160), (120, 10), (0, 0)])
def test_sizes_that_yuv420p_cannot_hold_are_refused(tmp_path: Path, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="both even and >= 32"):
        write_sample_video(tmp_path / "x.mp4", size=size)
    assert not (tmp_path / "x.mp4").exists()
