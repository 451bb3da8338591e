"""Byte-level fuzzing of the decoder: damaged files may cost frames, never the worker.

Small valid files in six container/codec pairs are mutated (bits flipped, byte runs inserted, deleted,
overwritten or copied from elsewhere in the file, the file truncated) at offsets Hypothesis chooses, half
of them in the first KiB where the headers are, and decoded. Whatever the damage, only a
`DecodeError` may escape, and every frame that comes out must be well formed. Runs are derandomized and
bounded (examples and per-example deadline), so CI sees the same inputs every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import DecodeError, DecodeStats, Sampler, SourceOptions, decode_frames, probe

OPTIONS = SourceOptions(open_timeout=2, read_timeout=2, threads=1)

# (file name, codec, pix_fmt, container options): small enough that one decode takes milliseconds.
SEEDS = [
    ("h264.mp4", "libx264", "yuv420p", {"movflags": "faststart"}),
    ("h264.mkv", "libx264", "yuv420p", None),
    ("h264.ts", "libx264", "yuv420p", None),
    ("mjpeg.avi", "mjpeg", "yuvj420p", None),
    ("vp9.webm", "libvpx-vp9", "yuv420p", None),
    ("ffv1.mkv", "ffv1", "yuv444p", None),
]
FRAMES, WIDTH, HEIGHT = 8, 32, 24

FUZZ = settings(
    max_examples=1200,
    deadline=5000,  # ms; a decode that takes this long on an 8-frame file is as good as hung
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _write_seed(path: Path, codec: str, pix_fmt: str, container_options: dict[str, str] | None) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=container_options) as out:
        stream: Any = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.codec_context.thread_count = 1
        stream.gop_size = 4
        for i in range(FRAMES):
            image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


class Seeds(dict[str, bytes]):
    """The seed files' bytes by name; a short repr keeps Hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


@pytest.fixture(scope="session")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    root = tmp_path_factory.mktemp("fuzz-seeds")
    made = Seeds()
    for name, codec, pix_fmt, opts in SEEDS:
        try:
            av.codec.Codec(codec, "w")
        except Exception:
            continue  # this PyAV wheel lacks the encoder; fuzz the others
        _write_seed(root / name, codec, pix_fmt, opts)
        made[name] = (root / name).read_bytes()
    assert made, "no encoder available for any seed file"
    return made


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Mutation:
    """One edit at `at` (taken modulo the current length, so every value lands inside the file)."""

    kind: str  # flip | insert | delete | overwrite | copy | truncate
    at: int
    data: bytes = b""  # inserted/overwritten bytes, or for flip the XOR masks
    length: int = 0  # bytes deleted, or copied from `source`
    source: int = 0  # where `copy` takes its bytes from (modulo the length)

    def apply(self, buf: bytearray) -> bytearray:
        if not buf:
            return bytearray(self.data) if self.kind in ("insert", "overwrite") else buf
        at = self.at % len(buf)
        if self.kind == "flip":
            for k, mask in enumerate(self.data):
                buf[(at + k) % len(buf)] ^= mask or 1
        elif self.kind == "insert":
            buf[at:at] = self.data
        elif self.kind == "delete":
            del buf[at : at + self.length]
        elif self.kind == "overwrite":
            buf[at : at + len(self.data)] = self.data
        elif self.kind == "copy":  # valid-looking data in the wrong place: packets, headers, timestamps
            start = self.source % len(buf)
            buf[at:at] = buf[start : start + self.length]
        elif self.kind == "truncate":
            del buf[at:]
        return buf


# Headers are where damage does the most, so half the offsets fall in the first KiB.
offsets = st.one_of(st.integers(min_value=0, max_value=1024), st.integers(min_value=0, max_value=1 << 20))
# Runs of structure-looking bytes as well as noise: zeros, 0xff, sizes and counts at their extremes,
# MPEG-TS sync bytes, start codes, box names.
byte_runs = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.sampled_from(
        [b"\x00" * 16, b"\xff" * 16, b"\x47" * 4, b"\x00\x00\x00\x01", b"\x00\x00\x01\xb3", b"moov"]
    ),
    st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]).flatmap(
        lambda n: st.sampled_from([n.to_bytes(4, "big"), n.to_bytes(4, "little"), n.to_bytes(8, "big")])
    ),
    st.integers(min_value=1, max_value=4096).map(lambda n: bytes(n)),
)
lengths = st.integers(min_value=1, max_value=2048)
mutations = st.one_of(
    st.builds(Mutation, st.just("flip"), offsets, st.binary(min_size=1, max_size=8)),
    st.builds(Mutation, st.just("insert"), offsets, byte_runs),
    st.builds(Mutation, st.just("delete"), offsets, length=lengths),
    st.builds(Mutation, st.just("overwrite"), offsets, byte_runs),
    st.builds(Mutation, st.just("copy"), offsets, length=lengths, source=offsets),
    st.builds(Mutation, st.just("truncate"), offsets),
)
damage = st.lists(mutations, min_size=1, max_size=6)


def mutated(seeds: Seeds, name: str, edits: list[Mutation]) -> bytes:
    buf = bytearray(seeds[name])
    for edit in edits:
        buf = edit.apply(buf)
    return bytes(buf)


# ------------------------------------------------------------------------------------------------- tests


def decode_checked(path: Path, sampler: Sampler, options: SourceOptions = OPTIONS) -> DecodeStats:
    """Decode `path`, checking each frame as it comes (not keeping images: a damaged header may claim
    a huge frame size) and returning the stats; only DecodeError may escape."""
    stats = DecodeStats()
    last_index = -1
    for frame in decode_frames(str(path), "fuzz", sampler, options=options, stats=stats):
        image = frame.image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] > 0 and image.shape[1] > 0
        assert frame.frame_index > last_index, "frame_index must strictly increase"
        assert isinstance(frame.pts_seconds, float) and math.isfinite(frame.pts_seconds)
        assert frame.stream_id == "fuzz"
        last_index = frame.frame_index
    assert stats.frames_yielded <= stats.frames_decoded
    return stats


@pytest.mark.timeout(120)
@FUZZ
@given(name=st.sampled_from([name for name, *_ in SEEDS]), edits=damage)
def test_mutated_files_decode_or_raise_decode_error(
    seeds: Seeds, scratch: Path, name: str, edits: list[Mutation]
) -> None:
    """Every frame the decoder can recover, or a DecodeError naming the file."""
    if name not in seeds:
        return
    path = scratch / name
    path.write_bytes(mutated(seeds, name, edits))
    try:
        decode_checked(path, Sampler(every=1))
    except DecodeError as exc:
        assert str(path) in str(exc), f"error does not name the file: {exc}"


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=800)
@given(
    name=st.sampled_from([name for name, *_ in SEEDS]),
    edits=damage,
    fps=st.sampled_from([0.5, 7.0, 1000.0]),
    threads=st.sampled_from([1, 2]),
)
def test_mutated_files_probe_and_sample_by_time(
    seeds: Seeds, scratch: Path, name: str, edits: list[Mutation], fps: float, threads: int
) -> None:
    """The probe (used to validate jobs up front), fps sampling (which trusts PTS) and frame-threaded
    decoding (the default, which reports a bad packet's error frames later) survive damage too."""
    if name not in seeds:
        return
    path = scratch / f"probe-{name}"
    path.write_bytes(mutated(seeds, name, edits))
    options = dataclasses.replace(OPTIONS, threads=threads)
    try:
        info = probe(path, options)
    except DecodeError:
        pass
    else:
        assert info.width >= 0 and info.height >= 0
        assert info.average_fps is None or math.isfinite(info.average_fps)
        assert info.duration_seconds is None or math.isfinite(info.duration_seconds)
    with contextlib.suppress(DecodeError):
        decode_checked(path, Sampler(fps=fps), options)
