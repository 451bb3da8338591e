"""Display-matrix rotation and mirroring are applied the way FFmpeg-based players show the video.

The PyAV-only tests pin the expected orientation for each matrix; the ffmpeg-CLI tests check our frames
against `ffmpeg`'s own auto-rotated output, the ground truth for "what users see".
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import Sampler, VideoDecoder, probe
from pipeline.decode.orientation import Orientation

MakeVideo = Callable[..., Path]
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")

# (degrees ccw as PyAV's set_display_rotation takes them, hflip, vflip) -> how the raw pixels must be
# turned: np.rot90 count k, then an optional vertical flip. Established with ffmpeg 5.1's autorotate.
ORIENTATIONS = [
    ((0, False, False), (0, False)),
    ((0, False, True), (0, True)),
    ((0, True, False), (2, True)),
    ((0, True, True), (2, False)),
    ((90, False, False), (1, False)),
    ((90, False, True), (1, True)),
    ((90, True, False), (3, True)),
    ((90, True, True), (3, False)),
    ((180, False, False), (2, False)),
    ((-90, False, False), (3, False)),
]


def variants(image: np.ndarray) -> dict[tuple[int, bool], np.ndarray]:
    out = {}
    for k in range(4):
        rotated = np.rot90(image, k)
        out[(k, False)] = rotated
        out[(k, True)] = rotated[::-1]
    return out


def closest(image: np.ndarray, reference: np.ndarray) -> tuple[tuple[int, bool], float]:
    """Which of the 8 orientations of `reference` `image` matches, and how well (mean abs error)."""
    scores = {
        key: float(np.abs(image.astype(int) - v.astype(int)).mean())
        for key, v in variants(reference).items()
        if v.shape == image.shape
    }
    best = min(scores, key=lambda key: scores[key])
    return best, scores[best]


def first_frame(path: Path) -> np.ndarray:
    with VideoDecoder(str(path), "s", Sampler(every=1)) as decoder:
        return next(decoder).image


@pytest.mark.parametrize(("matrix", "expected"), ORIENTATIONS, ids=[str(m) for m, _ in ORIENTATIONS])
def test_display_matrix_applied(
    make_video: MakeVideo,
    frame_pattern: Callable[[int], np.ndarray],
    matrix: tuple[float, bool, bool],
    expected: tuple[int, bool],
) -> None:
    degrees, hflip, vflip = matrix
    path = make_video("rot.mp4", n=2, rotation=degrees, hflip=hflip, vflip=vflip)
    image = first_frame(path)
    match, error = closest(image, frame_pattern(0))
    assert match == expected and error < 12
    info = probe(str(path))
    assert (info.width, info.height) == (image.shape[1], image.shape[0])


def test_rotation_names() -> None:
    # The matrices PyAV's set_display_rotation(90), (-90) and (0, hflip=True) write.
    rot90_ccw = Orientation.from_display_matrix([0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30])
    assert (rot90_ccw.rotation, rot90_ccw.mirrored) == (90, False)
    rot90_cw = Orientation.from_display_matrix([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30])
    assert (rot90_cw.rotation, rot90_cw.mirrored) == (270, False)
    hflip = Orientation.from_display_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30])
    assert (hflip.rotation, hflip.mirrored) == (0, True)
    image = np.arange(6).reshape(2, 3)
    assert np.array_equal(rot90_ccw.apply(image), np.rot90(image))
    assert np.array_equal(rot90_cw.apply(image), np.rot90(image, -1))


@cache
def _ffmpeg_help() -> str:
    assert FFMPEG is not None
    return subprocess.run([FFMPEG, "-hide_banner", "-h", "full"], capture_output=True, text=True).stdout


def ffmpeg_first_frame(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The first frame as the ffmpeg CLI displays it (autorotate is on by default)."""
    assert FFMPEG is not None
    raw = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    assert len(raw) == int(np.prod(shape)), "ffmpeg produced a frame of another size"
    return np.frombuffer(raw, np.uint8).reshape(shape)


@needs_ffmpeg
@pytest.mark.parametrize("matrix", [m for m, _ in ORIENTATIONS], ids=[str(m) for m, _ in ORIENTATIONS])
def test_matches_ffmpeg_autorotate(make_video: MakeVideo, matrix: tuple[float, bool, bool]) -> None:
    degrees, hflip, vflip = matrix
    path = make_video("rot.mp4", n=2, rotation=degrees, hflip=hflip, vflip=vflip)
    ours = first_frame(path)
    theirs = ffmpeg_first_frame(path, ours.shape)
    # ffmpeg rotates before converting to RGB, we after, so chroma interpolation differs slightly.
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3


@needs_ffmpeg
def test_ffmpeg_rotate_tag(make_video: MakeVideo, tmp_path: Path) -> None:
    """A file tagged the way users do it with the ffmpeg CLI."""
    assert FFMPEG is not None
    source = make_video("plain.mp4", n=3)
    tagged = tmp_path / "tagged.mp4"
    if "display_rotation" in _ffmpeg_help():  # ffmpeg >= 6
        cmd = [
            FFMPEG,
            "-v",
            "error",
            "-display_rotation:v:0",
            "90",
            "-i",
            str(source),
            "-c",
            "copy",
            str(tagged),
        ]
    else:
        cmd = [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(source),
            "-c",
            "copy",
            "-metadata:s:v",
            "rotate=90",
            str(tagged),
        ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    ours = first_frame(tagged)
    assert ours.shape == (64, 48, 3)
    theirs = ffmpeg_first_frame(tagged, ours.shape)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3
    info = probe(str(tagged))
    assert (info.width, info.height, info.rotation % 180) == (48, 64, 90)
