"""A corpus of damaged and unusual videos, each with the one outcome the decoder must produce.

Every file is generated here (PyAV, the ffmpeg CLI, and byte-level damage to valid files), so no media is
checked in. For each case the decoder must either yield well-formed frames (uint8 RGB H x W x 3, strictly
increasing frame_index, finite PTS that never decrease unless the file's own timeline jumps back) or raise
the expected `DecodeError` subclass with a message that names the file, and `probe` must agree. Any other
exception type, or a hang (each case has a 60 s limit), is a bug.

Files are built lazily (only the cases selected with `-k` are made) into one session-wide directory, and
sources shared by several cases (the clip that is cut at 10%, 50% and 90%) are made once.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipeline.decode import (
    DecodeError,
    DecodeStats,
    NotAVideo,
    Sampler,
    SourceOptions,
    decode_frames,
    probe,
)

FFMPEG = shutil.which("ffmpeg")
W, H = 64, 48
# Two decoder threads: frame threading as in production (threads=0 is one per core), but the same
# outcome on every machine, since how many frames a damaged tail costs depends on the thread count.
OPTIONS = SourceOptions(open_timeout=5, read_timeout=5, threads=2)


# --------------------------------------------------------------------------------------------- makers


def _image(i: int, width: int, height: int, noise: np.random.Generator | None) -> np.ndarray:
    """Frame i: random pixels (large packets, so byte offsets map evenly onto frames) or a moving ramp."""
    if noise is not None:
        return noise.integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    img = np.empty((height, width, 3), np.uint8)  # broadcast 1-D ramps: cheap even at 8K
    img[..., 0] = (x * 3 + i * 6) % 256
    img[..., 1] = (y * 4) % 256
    img[..., 2] = (i * 16) % 256
    return img


def write_video(
    path: Path,
    codec: str = "libx264",
    *,
    n: int = 30,
    rate: int = 30,
    size: tuple[int, int] = (W, H),
    pix_fmt: str = "yuv420p",
    noise: bool = False,
    gop: int | None = None,
    pts_ms: list[int] | None = None,
    fmt: str | None = None,
    container_options: dict[str, str] | None = None,
    stream_options: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Encode `n` frames with PyAV (as conftest's make_video, but any size and output format)."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    width, height = size
    rng = np.random.default_rng(0) if noise else None
    with av.open(str(path), "w", format=fmt, options=container_options) as out:
        out.metadata.update(metadata or {})
        stream: Any = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1  # deterministic output, so the byte offsets below are too
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if gop is not None:
            stream.gop_size = gop
        if stream_options:
            stream.options = stream_options
        frames = len(pts_ms) if pts_ms is not None else n
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_image(i, width, height, rng), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def ffmpeg(*args: str | Path) -> None:
    if FFMPEG is None:
        pytest.skip("ffmpeg CLI not installed")
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def lavfi_video(seconds: float = 1.0, size: str = f"{W}x{H}", rate: int = 30) -> list[str]:
    """ffmpeg input arguments for a deterministic synthetic video."""
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def sine(seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def overwrite_middle(data: bytes, n: int = 2000, seed: int = 1) -> bytes:
    out = bytearray(data)
    middle = len(out) // 2
    out[middle : middle + n] = np.random.default_rng(seed).integers(0, 256, n, np.uint8).tobytes()
    return bytes(out)


class Corpus:
    """Builds each case's file on first use into one directory; shared sources are cached by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sources: dict[str, Path] = {}

    def source(self, name: str, make: Callable[[Path], object]) -> bytes:
        """The bytes of a valid source file `name`, made once with `make(path)`."""
        if name not in self._sources:
            path = self.root / "sources" / name
            path.parent.mkdir(exist_ok=True)
            make(path)
            self._sources[name] = path
        return self._sources[name].read_bytes()

    # Shared valid sources: 60 frames of noise, GOP 10, so damage costs only the frames it touches.
    def noisy(self, ext: str, codec: str = "libx264", **kw: Any) -> bytes:
        opts = kw.pop("container_options", None)
        pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        key = f"noisy-{codec}{'-faststart' if opts else ''}.{ext}"
        return self.source(
            key,
            lambda p: write_video(
                p, codec, n=60, gop=10, noise=True, pix_fmt=pix_fmt, container_options=opts, **kw
            ),
        )


# ------------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Frames:
    """The decode succeeds with between `low` and `high` frames (or exactly `indices`) of `shape`."""

    low: int = 1
    high: int | None = None
    indices: list[int] | None = None
    shape: tuple[int, int] = (H, W)
    sampler: Sampler = field(default_factory=lambda: Sampler(every=1))
    pts: list[float] | None = None  # expected pts_seconds (approximately), when pinned
    ordered_pts: bool = True  # PTS never decrease (False where the file's timeline jumps back)
    stats: dict[str, int] | None = None  # DecodeStats counters pinned to exact values


@dataclass(frozen=True)
class Raises:
    """The decode raises exactly `error` (a DecodeError subclass) with `fragment` in its message."""

    error: type[DecodeError]
    fragment: str


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    make: Callable[[Corpus, Path], object]
    expect: Frames | Raises

    def __str__(self) -> str:
        return self.name


def write(data: bytes) -> Callable[[Corpus, Path], object]:
    return lambda corpus, path: path.write_bytes(data)


def from_source(transform: Callable[[Corpus], bytes]) -> Callable[[Corpus, Path], object]:
    return lambda corpus, path: path.write_bytes(transform(corpus))


# ------------------------------------------------------------------------------------------- the cases

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0"
    "00000301010018dd8db00000000049454e44ae426082"
)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" * 50
HTML = (
    b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"
)


def plain_mp4(c: Corpus) -> bytes:
    """30 frames of H.264 in a plain MP4: mdat first, the index (moov) last, as cameras write it."""
    return c.source("plain.mp4", lambda p: write_video(p, n=30))


def faststart_mp4(c: Corpus) -> bytes:
    return c.noisy("mp4", container_options={"movflags": "faststart"})


def mp4_moov_removed(c: Corpus) -> bytes:
    data = plain_mp4(c)
    at = data.rindex(b"moov") - 4  # box = 4-byte size + 4-byte type
    size = int.from_bytes(data[at : at + 4], "big")
    return data[:at] + data[at + size :]


def mp4_moov_renamed_free(c: Corpus) -> bytes:
    data = bytearray(plain_mp4(c))
    at = data.rindex(b"moov")
    data[at : at + 4] = b"free"
    return bytes(data)


def mp4_mdat_zeroed(c: Corpus) -> bytes:
    """Index intact, every sample zeroed: all packets are there, none decodes."""
    data = bytearray(plain_mp4(c))
    at = data.index(b"mdat") - 4
    size = int.from_bytes(data[at : at + 4], "big")
    data[at + 8 : at + size] = bytes(size - 8)
    return bytes(data)


def ts_concat_backwards(c: Corpus) -> bytes:
    """Two MPEG-TS segments back to back, the second starting 10 s earlier (a camera restart)."""
    late = c.source(
        "late.ts", lambda p: ffmpeg(*lavfi_video(1), "-c:v", "libx264", "-output_ts_offset", "10", p)
    )
    early = c.source("early.ts", lambda p: ffmpeg(*lavfi_video(1), "-c:v", "libx264", p))
    return late + early


def pts_jump_forward(c: Corpus, path: Path) -> None:
    ms = [i * 40 for i in range(10)]
    write_video(path, pts_ms=ms + [3_600_000 + t for t in ms], stream_options={"bf": "0"})


def two_video_streams(c: Corpus, path: Path) -> None:
    ffmpeg(*lavfi_video(1), *lavfi_video(1, "32x24"), "-map", "0:v", "-map", "1:v", "-c:v", "libx264", path)


def cover_png(c: Corpus) -> Path:
    c.source("cover.png", lambda p: ffmpeg(*lavfi_video(0.04, "32x32"), "-frames:v", "1", p))
    return c.root / "sources" / "cover.png"


def cover_art_only(c: Corpus, path: Path) -> None:
    args = [
        "-map",
        "0:a",
        "-map",
        "1:v",
        "-c:a",
        "libmp3lame",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
    ]
    ffmpeg(*sine(), "-i", cover_png(c), *args, path)


def cover_art_then_video(c: Corpus, path: Path) -> None:
    args = [
        "-map",
        "0:v",
        "-map",
        "1:v",
        "-c:v:0",
        "png",
        "-disposition:v:0",
        "attached_pic",
        "-c:v:1",
        "libx264",
    ]
    ffmpeg("-i", cover_png(c), *lavfi_video(1), *args, path)


def garbage_middle(codec: str, ext: str) -> Callable[[Corpus], bytes]:
    opts = {"x265-params": "log-level=error"} if codec == "libx265" else None
    return lambda c: overwrite_middle(c.noisy(ext, codec, stream_options=opts))


def latin1_title(c: Corpus) -> bytes:
    """A Matroska title in Latin-1, not UTF-8 (as old taggers write it). PyAV writes only UTF-8, so an
    ASCII title of the same length is patched; MKV stores strings raw, so the file stays valid."""
    data = c.source("titled.mkv", lambda p: write_video(p, n=12, metadata={"title": "cafe-holiday"}))
    assert data.count(b"cafe-holiday") == 1
    return data.replace(b"cafe-holiday", b"caf\xe9-holiday")


def unknown_fourcc(c: Corpus) -> bytes:
    """An AVI whose codec FourCC is damaged: FFmpeg finds the video stream but no decoder for it."""
    data = c.source("mjpeg.avi", lambda p: write_video(p, "mjpeg", n=12, pix_fmt="yuvj420p"))
    return data.replace(b"MJPG", b"ZZZZ")


NOT_A_VIDEO = Raises(NotAVideo, "not a readable video")
AUDIO_ONLY = Raises(NotAVideo, "no video stream; it contains audio")
ALL_30 = Frames(indices=list(range(30)))


def _cases() -> list[Case]:
    cases = [
        Case("zero-bytes", "empty.mp4", write(b""), NOT_A_VIDEO),
        Case(
            "random-bytes-named-mp4",
            "random.mp4",
            write(np.random.default_rng(7).bytes(100_000)),
            NOT_A_VIDEO,
        ),
        Case("text-named-mkv", "notes.mkv", write(b"this is not a video\n" * 100), NOT_A_VIDEO),
        Case("html-named-mp4", "page.mp4", write(HTML), NOT_A_VIDEO),
        Case("pdf-named-avi", "doc.avi", write(PDF), NOT_A_VIDEO),
        # FFmpeg probes content, not names: a picture is a one-frame video, wherever it is.
        Case("png-named-mp4", "image.mp4", write(PNG_1x1), Frames(indices=[0], shape=(1, 1))),
        Case(
            "jpeg-named-mov",
            "photo.mov",
            lambda c, p: write_video(p, "mjpeg", n=1, pix_fmt="yuvj420p", fmt="mjpeg"),
            Frames(indices=[0]),
        ),
        Case("audio-only-mp3", "song.mp3", lambda c, p: ffmpeg(*sine(), "-c:a", "libmp3lame", p), AUDIO_ONLY),
        Case("audio-only-wav", "sound.wav", lambda c, p: ffmpeg(*sine(), p), AUDIO_ONLY),
        Case("audio-only-aac", "sound.aac", lambda c, p: ffmpeg(*sine(), "-c:a", "aac", p), AUDIO_ONLY),
        Case(
            "cover-art-only-mp3",
            "cover.mp3",
            cover_art_only,
            Raises(NotAVideo, "it contains audio, cover art"),
        ),
        Case("cover-art-then-video-mp4", "cover-first.mp4", cover_art_then_video, ALL_30),
        Case("two-video-streams-first-wins", "two.mkv", two_video_streams, ALL_30),
        Case(
            "mkv-named-avi",
            "mkv.avi",
            lambda c, p: write_video(p, n=12, fmt="matroska"),
            Frames(indices=list(range(12))),
        ),
        Case(
            "ts-named-mp4",
            "ts.mp4",
            lambda c, p: write_video(p, n=12, fmt="mpegts"),
            Frames(indices=list(range(12))),
        ),
        # Damaged headers that FFmpeg still parses: they must not surface as a PyAV/Python exception.
        Case(
            "mkv-latin1-title-tag", "latin1.mkv", from_source(latin1_title), Frames(indices=list(range(12)))
        ),
        Case(
            "avi-unknown-fourcc", "fourcc.avi", from_source(unknown_fourcc), Raises(NotAVideo, "no decoder")
        ),
        # A plain MP4 keeps its index (moov) last: without it nothing is readable ...
        Case("mp4-cut-before-moov", "upload.mp4", from_source(lambda c: cut(plain_mp4(c), 0.5)), NOT_A_VIDEO),
        Case("mp4-moov-removed", "nomoov.mp4", from_source(mp4_moov_removed), NOT_A_VIDEO),
        # ... but FFmpeg reads a moov box retyped as 'free' (a known broken-writer repair).
        Case("mp4-moov-renamed-free", "freemoov.mp4", from_source(mp4_moov_renamed_free), ALL_30),
        # Every packet fails to decode: skipped and counted, so the decode is empty rather than an error.
        Case(
            "mp4-mdat-zeroed",
            "zeroed.mp4",
            from_source(mp4_mdat_zeroed),
            Frames(0, 0, stats={"corrupt_packets": 30}),
        ),
        Case("single-frame", "one.mp4", lambda c, p: write_video(p, n=1), Frames(indices=[0])),
        Case(
            "1x1-ffv1",
            "tiny1.mkv",
            lambda c, p: write_video(p, "ffv1", n=5, size=(1, 1), pix_fmt="yuv444p"),
            Frames(indices=list(range(5)), shape=(1, 1)),
        ),
        Case(
            "2x2-h264",
            "tiny2.mp4",
            lambda c, p: write_video(p, n=5, size=(2, 2)),
            Frames(indices=list(range(5)), shape=(2, 2)),
        ),
        Case(
            "33x17-ffv1",
            "odd.mkv",
            lambda c, p: write_video(p, "ffv1", n=5, size=(33, 17), pix_fmt="yuv444p"),
            Frames(indices=list(range(5)), shape=(17, 33)),
        ),
        Case(
            "33x17-mjpeg",
            "odd.avi",
            lambda c, p: write_video(p, "mjpeg", n=5, size=(33, 17), pix_fmt="yuvj420p"),
            Frames(indices=list(range(5)), shape=(17, 33)),
        ),
        # 8K: 106 MB per RGB frame, so sample every 2nd of 3 frames.
        Case(
            "8192x4320-h264",
            "huge.mkv",
            lambda c, p: write_video(p, n=3, size=(8192, 4320), stream_options={"preset": "ultrafast"}),
            Frames(indices=[0, 2], shape=(4320, 8192), sampler=Sampler(every=2)),
        ),
        Case(
            "h264-yuv420p10le",
            "deep.mp4",
            lambda c, p: write_video(p, n=6, pix_fmt="yuv420p10le"),
            Frames(indices=list(range(6))),
        ),
        Case(
            "hevc-yuv420p10le",
            "deep.mkv",
            lambda c, p: write_video(
                p, "libx265", n=6, pix_fmt="yuv420p10le", stream_options={"x265-params": "log-level=error"}
            ),
            Frames(indices=list(range(6))),
        ),
        Case(
            "h264-yuv444p",
            "full-chroma.mp4",
            lambda c, p: write_video(p, n=4, pix_fmt="yuv444p"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "libx264rgb-gbrp",
            "rgb.mkv",
            lambda c, p: write_video(p, "libx264rgb", n=4, pix_fmt="rgb24"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "ffv1-gray",
            "gray.mkv",
            lambda c, p: write_video(p, "ffv1", n=4, pix_fmt="gray"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "ffv1-gray16le",
            "gray16.mkv",
            lambda c, p: write_video(p, "ffv1", n=4, pix_fmt="gray16le"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "ffv1-bgr0",
            "bgr0.mkv",
            lambda c, p: write_video(p, "ffv1", n=4, pix_fmt="bgr0"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "ffv1-yuva444p-alpha",
            "alpha.mkv",
            lambda c, p: write_video(p, "ffv1", n=4, pix_fmt="yuva444p"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "mjpeg-yuvj422p",
            "mjpeg422.avi",
            lambda c, p: write_video(p, "mjpeg", n=4, pix_fmt="yuvj422p"),
            Frames(indices=list(range(4))),
        ),
        Case(
            "gif-animated-bgra",
            "anim.gif",
            lambda c, p: ffmpeg(*lavfi_video(1), "-frames:v", "4", p),
            Frames(indices=list(range(4))),
        ),
        Case(
            "vfr",
            "vfr.mkv",
            lambda c, p: write_video(p, pts_ms=[0, 10, 500, 520, 2000, 2033, 2066, 5000]),
            Frames(indices=[0, 2, 4, 7], sampler=Sampler(fps=2), pts=[0.0, 0.5, 2.0, 5.0]),
        ),
        # One sample at the jump, not 3600 for the slots it skipped.
        Case(
            "pts-jump-forward-1h",
            "jump.mkv",
            pts_jump_forward,
            Frames(indices=[0, 10], sampler=Sampler(fps=1), pts=[0.0, 3600.0]),
        ),
        # The timeline re-anchors at the jump back: one sample per segment.
        Case(
            "pts-jump-backward-ts-concat",
            "restart.ts",
            from_source(ts_concat_backwards),
            Frames(indices=[0, 30], sampler=Sampler(fps=1), ordered_pts=False),
        ),
        Case(
            "raw-h264-no-timestamps",
            "raw.h264",
            lambda c, p: write_video(p, n=10),
            Frames(indices=list(range(10)), pts=[i / 30 for i in range(10)], stats={"missing_pts": 10}),
        ),
        Case(
            "negative-ts-offset-mkv",
            "negative.mkv",
            lambda c, p: ffmpeg(*lavfi_video(1), "-c:v", "libx264", "-output_ts_offset", "-5", p),
            ALL_30,
        ),
        # B-frames: x264 starts DTS below zero and MP4 hides that with an edit list.
        Case(
            "mp4-edit-list-b-frames",
            "editlist.mp4",
            lambda c, p: write_video(p, n=30, stream_options={"bf": "3"}),
            Frames(indices=list(range(30)), pts=[i / 30 for i in range(30)]),
        ),
        # Garbage before the first TS packet: a little is skipped by FFmpeg's probe ...
        Case(
            "ts-1k-garbage-prepended",
            "prefix1k.ts",
            from_source(lambda c: np.random.default_rng(3).bytes(1000) + c.noisy("ts")),
            Frames(indices=list(range(60))),
        ),
        # ... but with 50 KB in front, the probe takes the file for MPEG-PS, which finds no stream
        # (ffprobe fails the same way).
        Case(
            "ts-50k-garbage-prepended",
            "prefix50k.ts",
            from_source(lambda c: np.random.default_rng(3).bytes(50_000) + c.noisy("ts")),
            Raises(NotAVideo, "not a readable video"),
        ),
    ]
    # Cut-off uploads and recordings: frames up to the cut, then a clean end. 60 frames of noise, cut
    # after ~10%, ~50% and ~90% of the bytes.
    expected = {0.1: (1, 8), 0.5: (22, 33), 0.9: (45, 57)}
    for fraction, (low, high) in expected.items():
        pct = round(fraction * 100)
        for ext, make in [
            ("mp4", faststart_mp4),
            ("mkv", lambda c: c.noisy("mkv")),
            ("ts", lambda c: c.noisy("ts")),
        ]:
            data = lambda c, make=make, f=fraction: cut(make(c), f)  # noqa: E731
            cases.append(
                Case(f"truncated-{pct}pct-{ext}", f"cut{pct}.{ext}", from_source(data), Frames(low, high))
            )
    # 2000 random bytes over the middle of 60 noisy frames (GOP 10): the damaged frames are lost or
    # concealed and the decoder resyncs.
    for codec, ext in [
        ("libx264", "mp4"),
        ("libx264", "mkv"),
        ("mpeg4", "avi"),
        ("mjpeg", "avi"),
        ("libx265", "ts"),
        ("libvpx-vp9", "webm"),
    ]:
        make = from_source(garbage_middle(codec, ext))
        cases.append(Case(f"garbage-middle-{codec}-{ext}", f"garbage-{codec}.{ext}", make, Frames(40, 59)))
    return cases


CASES = _cases()


# ---------------------------------------------------------------------------------------------- test


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("decode-corpus"))


def decode(path: Path, sampler: Sampler) -> tuple[list[Any], DecodeStats]:
    stats = DecodeStats()
    return list(decode_frames(str(path), "corpus", sampler, options=OPTIONS, stats=stats)), stats


def check_frames(frames: list[Any], stats: DecodeStats, shape: tuple[int, int]) -> None:
    indexes = [f.frame_index for f in frames]
    assert indexes == sorted(set(indexes)), f"frame_index not strictly increasing: {indexes}"
    assert stats.frames_yielded == len(frames) and stats.frames_decoded >= len(frames)
    for f in frames:
        assert f.stream_id == "corpus"
        assert f.image.dtype == np.uint8 and f.image.shape == (*shape, 3)
        assert isinstance(f.pts_seconds, float) and math.isfinite(f.pts_seconds)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_corpus(corpus: Corpus, case: Case) -> None:
    path = corpus.root / case.filename
    case.make(corpus, path)
    expect = case.expect
    if isinstance(expect, Raises):
        with pytest.raises(DecodeError) as info:
            decode(path, Sampler(every=1))
        assert type(info.value) is expect.error, f"{type(info.value).__name__}: {info.value}"
        assert str(path) in str(info.value) and expect.fragment in str(info.value)
        with pytest.raises(expect.error):  # the up-front job check fails the same way
            probe(path, OPTIONS)
        return
    frames, stats = decode(path, expect.sampler)
    check_frames(frames, stats, expect.shape)
    if expect.indices is not None:
        assert [f.frame_index for f in frames] == expect.indices
    else:
        assert expect.low <= len(frames) <= (expect.high if expect.high is not None else math.inf)
    if expect.sampler.every == 1:  # frame_index counts decoded frames, so all of them show up
        assert [f.frame_index for f in frames] == list(range(len(frames)))
    pts = [f.pts_seconds for f in frames]
    if expect.ordered_pts:
        assert pts == sorted(pts)
    if expect.pts is not None:
        assert pts == pytest.approx(expect.pts, abs=1e-3)
    for counter, value in (expect.stats or {}).items():
        assert getattr(stats, counter) == value, stats
    info = probe(path, OPTIONS)  # what a job sees up front agrees with what the decoder yields
    assert (info.height, info.width) == expect.shape
