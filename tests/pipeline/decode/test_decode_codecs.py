"""Every codec/container pair the PyAV wheel can write decodes to the right RGB uint8 pixels.

Pixels are compared with the encoded pattern (lossy codecs, so a tolerance) frame by frame, which checks
colour conversion, frame order and that no frame is lost or duplicated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import Sampler, VideoDecoder

MakeVideo = Callable[..., Path]
HEIGHT, WIDTH = 48, 64  # the size conftest's make_video writes

CODECS = [
    pytest.param("libx264", "mp4", "yuv420p", {}, id="h264-mp4"),
    pytest.param("libx264", "mkv", "yuv420p", {}, id="h264-mkv"),
    pytest.param("mpeg4", "mp4", "yuv420p", {}, id="mpeg4-mp4"),
    pytest.param("mjpeg", "avi", "yuvj420p", {}, id="mjpeg-avi"),
    pytest.param("libvpx-vp9", "webm", "yuv420p", {}, id="vp9-webm"),
    pytest.param("libx265", "mp4", "yuv420p", {"x265-params": "log-level=error"}, id="hevc-mp4"),
    pytest.param("libsvtav1", "mp4", "yuv420p", {}, id="av1-svt-mp4"),
    pytest.param("libaom-av1", "mkv", "yuv420p", {"cpu-used": "8"}, id="av1-aom-mkv"),
]


def decode_all(path: Path) -> list:
    with VideoDecoder(str(path), "s", Sampler(every=1)) as decoder:
        frames = list(decoder)
    assert decoder.stats.frames_decoded == len(frames)
    return frames


@pytest.mark.parametrize(("codec", "ext", "pix_fmt", "opts"), CODECS)
def test_codec_decodes_to_rgb(
    make_video: MakeVideo,
    frame_pattern: Callable[[int], np.ndarray],
    codec: str,
    ext: str,
    pix_fmt: str,
    opts: dict[str, str],
) -> None:
    path = make_video(f"clip.{ext}", codec, n=12, pix_fmt=pix_fmt, stream_options=opts)
    frames = decode_all(path)
    assert [f.frame_index for f in frames] == list(range(12))
    pts = [f.pts_seconds for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 12
    assert pts[1] - pts[0] == pytest.approx(1 / 30, abs=2e-3)
    for i, frame in enumerate(frames):
        assert frame.stream_id == "s"
        assert frame.image.dtype == np.uint8 and frame.image.shape == (HEIGHT, WIDTH, 3)
        # The closest source frame must be frame i itself: catches reordering and off-by-one.
        errors = [np.abs(frame.image.astype(int) - frame_pattern(j)).mean() for j in range(12)]
        assert int(np.argmin(errors)) == i
        assert errors[i] < 12, f"frame {i} differs from the source by {errors[i]:.1f} on average"


@pytest.mark.parametrize(
    ("codec", "pix_fmt"),
    [("libx264", "yuv420p10le"), ("libx265", "yuv420p10le"), ("libvpx-vp9", "yuv420p10le")],
)
def test_10bit_decodes_to_8bit_rgb(
    make_video: MakeVideo, frame_pattern: Callable[[int], np.ndarray], codec: str, pix_fmt: str
) -> None:
    opts = {"x265-params": "log-level=error"} if codec == "libx265" else {}
    path = make_video("deep.mkv", codec, n=6, pix_fmt=pix_fmt, stream_options=opts)
    frames = decode_all(path)
    assert len(frames) == 6
    for i, frame in enumerate(frames):
        assert frame.image.dtype == np.uint8 and frame.image.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(frame.image.astype(int) - frame_pattern(i)).mean() < 12


def test_gray_decodes_to_rgb(make_video: MakeVideo, frame_pattern: Callable[[int], np.ndarray]) -> None:
    path = make_video("gray.mkv", "ffv1", n=4, pix_fmt="gray")
    frames = decode_all(path)
    assert len(frames) == 4
    for i, frame in enumerate(frames):
        image = frame.image
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        # Gray expands to equal channels; ffv1 is lossless, so only the RGB->Y->RGB rounding remains.
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        luma = frame_pattern(i).astype(float) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(image[..., 0] - luma).mean() < 4
