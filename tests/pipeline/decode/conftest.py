"""Fixtures that make small real videos with PyAV, so decode tests need no checked-in media and no
ffmpeg CLI. Videos are tiny (64x48, tens of frames) to keep the whole module fast on a 2-core runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

WIDTH, HEIGHT = 64, 48


def pattern(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Frame i of a moving test pattern: a horizontal ramp that shifts with i and a bright vertical bar
    that moves 4 px per frame (so consecutive frames differ clearly even after lossy coding and their
    order is checkable), a vertical ramp, and a white top-left block (so rotations and flips are
    distinguishable)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (x * 3 + i * 6) % 256
    img[..., 1] = y * 4
    img[..., 2] = 40
    bar = (i * 4) % (width - 4)
    img[:, bar : bar + 4] = (255, 255, 0)
    img[: height // 4, : width // 4] = 255
    return img


def encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


MakeVideo = Callable[..., Path]


@pytest.fixture
def make_video(tmp_path: Path) -> MakeVideo:
    """Factory: `make_video(name, codec="libx264", ...) -> Path`; skips the test if the encoder is
    missing from the PyAV wheel.

    Keyword arguments: n (frames), rate, pix_fmt, pts_ms (explicit per-frame PTS in ms, for VFR; implies
    a 1/1000 time base), rotation/hflip/vflip (display matrix), gop, noise (random frames, which compress
    badly and so give large packets for corruption tests), stream_options, container_options, audio.
    """

    def make(
        name: str,
        codec: str = "libx264",
        *,
        n: int = 30,
        rate: int = 30,
        pix_fmt: str = "yuv420p",
        pts_ms: Sequence[int] | None = None,
        rotation: float | None = None,
        hflip: bool = False,
        vflip: bool = False,
        gop: int | None = None,
        noise: bool = False,
        stream_options: dict[str, str] | None = None,
        container_options: dict[str, str] | None = None,
    ) -> Path:
        if not encoder_available(codec):
            pytest.skip(f"this PyAV wheel has no {codec} encoder")
        path = tmp_path / name
        rng = np.random.default_rng(0)
        frames = len(pts_ms) if pts_ms is not None else n
        with av.open(str(path), "w", options=container_options) as out:
            stream: Any = out.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
            if pts_ms is not None:
                stream.time_base = Fraction(1, 1000)
                stream.codec_context.time_base = Fraction(1, 1000)
            if gop is not None:
                stream.gop_size = gop
            if stream_options:
                stream.options = stream_options
            if rotation is not None or hflip or vflip:
                stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
            try:
                stream.codec_context.open()
            except av.error.FFmpegError as exc:
                pytest.skip(f"this PyAV wheel's {codec} cannot encode {pix_fmt}: {exc}")
            for i in range(frames):
                img = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) if noise else pattern(i)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                if pts_ms is not None:
                    frame.pts = pts_ms[i]
                    frame.time_base = Fraction(1, 1000)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return path

    return make


@pytest.fixture
def h264_mp4(make_video: MakeVideo) -> Path:
    """30 frames at 30 fps (1 s) of the moving pattern, H.264 in MP4."""
    return make_video("clip.mp4", "libx264")


@pytest.fixture
def frame_pattern() -> Callable[..., np.ndarray]:
    """The generator of the test pattern, for comparing decoded pixels with what was encoded."""
    return pattern
