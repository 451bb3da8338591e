"""Sampling, timestamps, resuming and stats on real decoded files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import DecodeStats, Sampler, VideoDecoder, decode_frames, probe
from pipeline.frames import Frame

MakeVideo = Callable[..., Path]


def frames_of(path: Path, sampler: Sampler, **kwargs: int) -> tuple[list[Frame], DecodeStats]:
    with VideoDecoder(str(path), "cam", sampler, **kwargs) as decoder:
        frames = list(decoder)
    return frames, decoder.stats


def test_fps_sampling_selects_slot_frames(make_video: MakeVideo) -> None:
    path = make_video("clip.mp4", n=75, rate=30)  # 2.5 s
    frames, stats = frames_of(path, Sampler(fps=2))
    assert [f.frame_index for f in frames] == [0, 15, 30, 45, 60]
    assert [f.pts_seconds for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert stats.frames_decoded == 75 and stats.frames_yielded == 5
    assert stats.corrupt_packets == stats.read_errors == stats.missing_pts == 0


def test_default_sampler_is_one_fps(make_video: MakeVideo) -> None:
    path = make_video("clip.webm", "libvpx-vp9", n=65, rate=30)
    frames, _ = frames_of(path, Sampler())
    assert [f.frame_index for f in frames] == [0, 30, 60]


def test_every_n(make_video: MakeVideo) -> None:
    path = make_video("clip.mkv", n=20)
    frames, stats = frames_of(path, Sampler(every=7))
    assert [f.frame_index for f in frames] == [0, 7, 14]
    pts = [f.pts_seconds for f in frames]
    assert pts == sorted(pts) and pts[1] == pytest.approx(7 / 30, abs=1e-3)
    assert stats.frames_yielded == 3 and stats.frames_decoded == 20


def test_vfr_file_sampled_on_pts(make_video: MakeVideo) -> None:
    pts_ms = [0, 100, 150, 900, 1050, 1100, 2500, 2600, 4000, 4010, 4020, 5500]
    path = make_video("vfr.mkv", pts_ms=pts_ms)
    frames, stats = frames_of(path, Sampler(fps=1))
    assert [f.frame_index for f in frames] == [0, 4, 6, 8, 11]
    assert [f.pts_seconds for f in frames] == pytest.approx([0.0, 1.05, 2.5, 4.0, 5.5])
    everything, _ = frames_of(path, Sampler(every=1))
    assert [round(f.pts_seconds * 1000) for f in everything] == pts_ms
    assert stats.frames_decoded == len(pts_ms)


def test_missing_pts_synthesised_from_frame_rate(make_video: MakeVideo) -> None:
    # A raw H.264 elementary stream has no container timestamps at all.
    path = make_video("raw.h264", n=10, rate=30)
    frames, stats = frames_of(path, Sampler(every=1))
    assert stats.missing_pts == 10
    assert [f.pts_seconds for f in frames] == pytest.approx([i / 30 for i in range(10)])
    sampled, _ = frames_of(path, Sampler(fps=10))
    assert [f.frame_index for f in sampled] == [0, 3, 6, 9]


def test_frame_record_fields(make_video: MakeVideo, frame_pattern: Callable[[int], np.ndarray]) -> None:
    path = make_video("clip.mp4", n=10)
    before = time.time()
    frames, _ = frames_of(path, Sampler(every=3))
    assert all(f.stream_id == "cam" for f in frames)
    assert all(before <= f.wall_time <= time.time() for f in frames)
    assert all(f.image.flags.c_contiguous and f.image.dtype == np.uint8 for f in frames)
    assert np.abs(frames[1].image.astype(int) - frame_pattern(3)).mean() < 12


@pytest.mark.parametrize("sampler", [Sampler(fps=4), Sampler(every=5), Sampler(every=1)])
@pytest.mark.parametrize("start", [0, 1, 17, 29, 40])
def test_resume_matches_tail_of_full_decode(make_video: MakeVideo, sampler: Sampler, start: int) -> None:
    # B-frames (default x264 settings) and a short GOP make decode order differ from display order.
    path = make_video("resume.mp4", n=30, gop=8)
    full, _ = frames_of(path, sampler)
    tail, stats = frames_of(path, sampler, start_frame_index=start)
    expected = [f for f in full if f.frame_index >= start]
    assert [f.frame_index for f in tail] == [f.frame_index for f in expected]
    assert [f.pts_seconds for f in tail] == [f.pts_seconds for f in expected]
    for got, want in zip(tail, expected, strict=True):
        assert np.array_equal(got.image, want.image)
    assert stats.frames_decoded == 30 and stats.frames_yielded == len(expected)


def test_decode_frames_generator_fills_stats_and_is_lazy(make_video: MakeVideo) -> None:
    path = make_video("clip.mp4", n=12)
    stats = DecodeStats()
    iterator = decode_frames(str(path), "g", Sampler(every=4), stats=stats)
    assert stats.frames_decoded == 0  # nothing opened until the first next()
    frames = list(iterator)
    assert [f.frame_index for f in frames] == [0, 4, 8]
    assert stats.frames_yielded == 3 and stats.frames_decoded == 12


def test_close_early_releases_decoder(make_video: MakeVideo) -> None:
    path = make_video("clip.mp4", n=30)
    decoder = VideoDecoder(str(path), "s", Sampler(every=1))
    assert next(decoder).frame_index == 0
    decoder.close()
    decoder.close()  # idempotent
    with pytest.raises(StopIteration):
        next(decoder)


def test_negative_start_rejected(make_video: MakeVideo) -> None:
    path = make_video("clip.mp4", n=3)
    with pytest.raises(ValueError, match="start_frame_index"):
        VideoDecoder(str(path), "s", start_frame_index=-1)


def test_path_with_colon_is_a_file_not_a_protocol(make_video: MakeVideo) -> None:
    path = make_video("cam:2024-01-01T10:00.mp4", n=5)
    frames, _ = frames_of(path, Sampler(every=1))
    assert len(frames) == 5
    assert len(list(decode_frames(f"file:{path}", "s", Sampler(every=1)))) == 5


def test_probe_describes_file(make_video: MakeVideo) -> None:
    info = probe(str(make_video("clip.mp4", n=45, rate=30)))
    assert (info.width, info.height, info.codec, info.pixel_format) == (64, 48, "h264", "yuv420p")
    assert info.average_fps == pytest.approx(30)
    assert info.duration_seconds == pytest.approx(1.5, abs=0.05)
    assert info.frame_count == 45
    assert (info.rotation, info.mirrored, info.is_live) == (0, False, False)


def test_probe_without_frame_count(make_video: MakeVideo) -> None:
    info = probe(str(make_video("clip.webm", "libvpx-vp9", n=15)))
    assert info.codec == "vp9" and info.frame_count is None
    assert info.duration_seconds == pytest.approx(0.5, abs=0.05)
