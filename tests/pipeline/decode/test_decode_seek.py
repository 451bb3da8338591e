"""Resuming a file at frame N by seeking (`pipeline.decode.seek`): the frames handed out, their indexes,
PTS and pixels, must be exactly those of a decode from the start, and the decoder must really skip the
prefix. Containers and files where a seek cannot be trusted must fall back to decoding from the start,
still exactly.

Files are made with PyAV (`make_video`); the damaged and unusual ones come from the decode corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import DecodeStats, Sampler, VideoDecoder, decode_frames
from pipeline.frames import Frame
from tests.pipeline.decode.conftest import MakeVideo
from tests.pipeline.decode.test_decode_corpus import CASES, OPTIONS, Corpus, Raises


def decode(path: Path, sampler: Sampler, start: int = 0, resume_pts: float | None = None):
    with VideoDecoder(str(path), "s", sampler, start_frame_index=start, resume_pts=resume_pts) as decoder:
        frames = list(decoder)
    return frames, decoder.stats


def assert_tail(full: list[Frame], tail: list[Frame], start: int) -> None:
    expected = [f for f in full if f.frame_index >= start]
    assert [f.frame_index for f in tail] == [f.frame_index for f in expected]
    assert [f.pts_seconds for f in tail] == [f.pts_seconds for f in expected]
    for got, want in zip(tail, expected, strict=True):
        assert np.array_equal(got.image, want.image), got.frame_index


def pts_before(path: Path, start: int) -> float:
    """PTS of frame start-1 in a full decode: what the committed output of an earlier run says."""
    every, _ = decode(path, Sampler(every=1))
    return every[start - 1].pts_seconds


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("bframes.mp4", {}),  # libx264 defaults: B-frames, so decode order differs from display order
        ("bframes.mkv", {}),
        ("opengop.mkv", {"x264-params": "open-gop=1"}),  # leading pictures refer to the GOP before
        ("zerolatency.mkv", {"tune": "zerolatency"}),  # no B-frames
        ("stream.ts", {}),  # no index: the seek bisects timestamps and may overshoot
    ],
)
@pytest.mark.parametrize("sampler", [Sampler(every=1), Sampler(fps=7), Sampler(every=4)], ids=str)
def test_resume_by_seek_matches_a_full_decode(
    make_video: MakeVideo, name: str, options: dict[str, str], sampler: Sampler
) -> None:
    path = make_video(name, n=120, gop=25, stream_options=options or None)
    everything, _ = decode(path, Sampler(every=1))
    full, _ = decode(path, sampler)
    sought = 0
    for start in (1, 24, 25, 26, 61, 100, 119, 120):
        tail, stats = decode(path, sampler, start, everything[start - 1].pts_seconds)
        assert_tail(full, tail, start)
        assert stats.frames_decoded == 120 and stats.frames_yielded == len(tail)
        sought += stats.frames_skipped_by_seek > 0
    assert sought >= 5, "the resumes decoded from the start instead of seeking"


def test_resume_of_a_long_file_decodes_only_the_last_gop(make_video: MakeVideo) -> None:
    path = make_video("long.mp4", n=600, gop=30)
    full, _ = decode(path, Sampler(every=1))
    tail, stats = decode(path, Sampler(every=1), 570, full[569].pts_seconds)
    assert_tail(full, tail, 570)
    assert stats.frames_decoded == 600
    # Only frames from the keyframe before 570 on were decoded: at most a GOP before the resume point.
    assert 570 - 30 <= stats.frames_skipped_by_seek <= 569
    assert stats.frames_decoded - stats.frames_skipped_by_seek <= 30 + 30


def test_resume_at_the_end_decodes_nothing(make_video: MakeVideo) -> None:
    path = make_video("done.mkv", n=40, gop=10)
    tail, stats = decode(path, Sampler(every=1), 40, pts_before(path, 40))
    assert tail == [] and stats.frames_decoded == 40 and stats.frames_skipped_by_seek == 40


@pytest.mark.parametrize(
    ("name", "codec", "why"),
    [
        ("clip.avi", "mpeg4", "avi numbers packets as it reads them"),
        ("raw.h264", "libx264", "no timestamps"),
    ],
)
def test_containers_without_packet_timestamps_are_decoded_from_the_start(
    make_video: MakeVideo, name: str, codec: str, why: str
) -> None:
    path = make_video(name, codec, n=60, gop=10)
    full, _ = decode(path, Sampler(every=1))
    tail, stats = decode(path, Sampler(every=1), 45, full[44].pts_seconds)
    assert_tail(full, tail, 45)
    assert stats.frames_skipped_by_seek == 0, why


def test_without_the_pts_of_the_frame_before_it_decodes_from_the_start(make_video: MakeVideo) -> None:
    """Only the earlier run knows whether damaged packets shifted the indexes, so no PTS, no seek."""
    path = make_video("clip.mp4", n=60, gop=10)
    full, _ = decode(path, Sampler(every=1))
    tail, stats = decode(path, Sampler(every=1), 45)
    assert_tail(full, tail, 45)
    assert stats.frames_skipped_by_seek == 0


def test_a_pts_that_disagrees_with_the_file_makes_it_decode_from_the_start(make_video: MakeVideo) -> None:
    path = make_video("clip.mkv", n=60, gop=10)
    full, _ = decode(path, Sampler(every=1))
    # As if a damaged packet had cost the earlier run one frame: its frame 44 is the file's frame 45.
    tail, stats = decode(path, Sampler(every=1), 45, full[45].pts_seconds)
    assert_tail(full, tail, 45)
    assert stats.frames_skipped_by_seek == 0


# Damaged and unusual files from the decode corpus: damage before the resume point (that a full decode
# skips) must never shift an index; truncation, edit lists, VFR, PTS jumps and negative timestamps
# must resume exactly. A few cases stand for each kind, to keep the module quick.
CORPUS_CASES = [
    case
    for case in CASES
    if not isinstance(case.expect, Raises)
    and any(
        key in case.name
        for key in (
            "garbage-middle",
            "truncated-50pct",
            "edit-list",
            "vfr",
            "pts-jump",
            "negative-ts",
            "ts-1k-garbage",
            "two-video-streams",
        )
    )
]


@pytest.fixture(scope="module")
def seek_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("seek-corpus"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CORPUS_CASES, ids=str)
def test_resume_of_damaged_and_unusual_files_matches_a_full_decode(seek_corpus: Corpus, case) -> None:
    path = seek_corpus.root / case.filename
    case.make(seek_corpus, path)
    stats = DecodeStats()
    full = list(decode_frames(str(path), "s", Sampler(every=1), options=OPTIONS, stats=stats))
    total = stats.frames_decoded
    for start in sorted({max(1, total // 3), max(1, (2 * total) // 3), total}):
        if start > len(full):
            continue
        tail = list(
            decode_frames(
                str(path),
                "s",
                Sampler(every=1),
                start_frame_index=start,
                resume_pts=full[start - 1].pts_seconds,
                options=OPTIONS,
            )
        )
        assert_tail(full, tail, start)
