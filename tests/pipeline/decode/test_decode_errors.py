"""Bad inputs: user-actionable errors that name the input, and damaged files that decode what they can."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import (
    DecodeError,
    DecodeStats,
    NotAVideo,
    ProtocolNotAllowed,
    Sampler,
    SourceNotFound,
    SourceOptions,
    VideoDecoder,
    decode_frames,
    probe,
    source_scheme,
)
from pipeline.decode.errors import redact
from pipeline.decode.source import _container_options
from pipeline.frames import Frame

MakeVideo = Callable[..., Path]


def decode_all(path: Path) -> tuple[list[Frame], DecodeStats]:
    with VideoDecoder(str(path), "s", Sampler(every=1)) as decoder:
        frames = list(decoder)
    return frames, decoder.stats


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(SourceNotFound, match=r"nope\.mp4") as info:
        VideoDecoder(str(path), "s")
    assert info.value.source == str(path)
    with pytest.raises(SourceNotFound):
        next(decode_frames(str(path), "s"))  # the generator raises on first next()
    with pytest.raises(SourceNotFound):
        probe(f"file://{path}")


def _write_audio(path: Path, cover_art: bool) -> None:
    codec = "libmp3lame" if path.suffix == ".mp3" else "aac"
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    with av.open(str(path), "w") as out:
        audio = out.add_stream(codec, rate=44100)
        if cover_art:
            cover = out.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
            cover.disposition = av.stream.Disposition.attached_pic
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in [*cover.encode(image), *cover.encode()]:
                out.mux(packet)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1152
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)


@pytest.mark.parametrize("kind", ["zero-bytes", "text", "audio-only", "cover-art-only", "directory"])
def test_not_a_video(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"input-{kind}.mp4"
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 10)
    elif kind == "audio-only":
        path = path.with_suffix(".m4a")
        _write_audio(path, cover_art=False)
    elif kind == "cover-art-only":
        path = path.with_suffix(".mp3")
        _write_audio(path, cover_art=True)
    else:
        path.mkdir()
    with pytest.raises(NotAVideo) as info:
        VideoDecoder(str(path), "s")
    assert str(path) in str(info.value)
    assert info.value.source == str(path)
    with pytest.raises(NotAVideo):
        probe(str(path))


@pytest.mark.parametrize(
    "source",
    [
        "concat:/etc/hostname|/etc/hostname",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "subfile,,start,0,end,0,,:file:/etc/passwd",
        "ftp://127.0.0.1/video.mp4",
        "FTP://127.0.0.1/video.mp4",
        "data:video/mp4;base64,AAAA",
        "pipe:0",
        "fd:3",
        "async:file:/etc/passwd",
        "cache:http://127.0.0.1/x.mp4",
        "tcp://127.0.0.1:1",
        "gopher://127.0.0.1/x",
    ],
)
def test_protocol_not_allowed(source: str) -> None:
    with pytest.raises(ProtocolNotAllowed) as info:
        VideoDecoder(source, "s")
    assert info.value.source == source
    assert "not allowed" in str(info.value)
    with pytest.raises(ProtocolNotAllowed):
        probe(source)


def test_allowlist_is_configurable(make_video: MakeVideo) -> None:
    files_only = SourceOptions(allowed_protocols=frozenset({"file"}))
    with pytest.raises(ProtocolNotAllowed, match="allowed: file"):
        VideoDecoder("http://127.0.0.1:1/x.mp4", "s", options=files_only)
    no_files = SourceOptions(allowed_protocols=frozenset({"https"}))
    with pytest.raises(ProtocolNotAllowed):
        VideoDecoder(str(make_video("clip.mp4", n=2)), "s", options=no_files)


@pytest.mark.parametrize(
    ("source", "scheme"),
    [
        ("/videos/a.mp4", "file"),
        ("relative/a.mp4", "file"),
        ("./cam:1.mp4", "file"),
        ("/data/cam:1.mp4", "file"),
        ("file:/a.mp4", "file"),
        ("file:///a.mp4", "file"),
        ("HTTPS://host/a.mp4", "https"),
        ("rtsp://user:pw@cam/stream", "rtsp"),
        ("rtsps://cam/stream", "rtsps"),
        ("concat:a|b", "concat"),
        ("subfile,,start,0,end,1,,:a.mp4", "subfile"),
        ("cam:1.mp4", "cam"),  # as FFmpeg reads it; write ./cam:1.mp4 for the file
    ],
)
def test_source_scheme_follows_ffmpeg(source: str, scheme: str) -> None:
    assert source_scheme(source) == scheme


def test_ffmpeg_protocol_whitelist_is_set() -> None:
    options = SourceOptions()
    assert _container_options("file", options)["protocol_whitelist"] == "file"
    for scheme in ("http", "https", "rtsp", "rtsps"):
        whitelist = _container_options(scheme, options)["protocol_whitelist"].split(",")
        assert scheme in whitelist
        assert not {"file", "concat", "subfile", "data", "pipe", "fd"} & set(whitelist)
    rtsp = _container_options("rtsp", SourceOptions(read_timeout=2.5))
    assert rtsp["rtsp_transport"] == "tcp"
    assert "2500000" in (rtsp.get("timeout"), rtsp.get("stimeout"))


@pytest.mark.parametrize(
    ("name", "container_options"),
    [("cut.mkv", None), ("cut.ts", None), ("cut.mp4", {"movflags": "faststart"})],
)
def test_truncated_file_yields_frames_before_cut(
    make_video: MakeVideo, name: str, container_options: dict[str, str] | None
) -> None:
    path = make_video(name, n=60, gop=10, noise=True, container_options=container_options)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    frames, _ = decode_all(path)
    assert 20 <= len(frames) < 60
    assert [f.frame_index for f in frames] == list(range(len(frames)))


def test_truncated_mp4_without_index_is_not_a_video(make_video: MakeVideo) -> None:
    # A plain MP4 writes its index (moov) last, so a cut-off upload has no index and nothing is readable.
    path = make_video("cut.mp4", n=30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAVideo, match=r"cut\.mp4"):
        VideoDecoder(str(path), "s")


@pytest.mark.parametrize(
    ("codec", "name"), [("mpeg4", "bad.mp4"), ("libx264", "bad.mp4"), ("mjpeg", "bad.avi")]
)
def test_garbage_in_the_middle_is_skipped_and_counted(make_video: MakeVideo, codec: str, name: str) -> None:
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    path = make_video(name, codec, n=60, gop=10, noise=True, pix_fmt=pix_fmt)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(1).integers(0, 256, 2000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    frames, stats = decode_all(path)
    assert 40 <= stats.frames_decoded < 60
    assert stats.corrupt_packets + stats.read_errors >= 1
    assert stats.frames_yielded == len(frames)


def test_errors_survive_pickling_for_ray() -> None:
    error = SourceNotFound("/data/x.mp4", "gone")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is SourceNotFound and clone.source == "/data/x.mp4" and str(clone) == str(error)
    assert isinstance(clone, DecodeError)


def test_messages_redact_credentials_and_tokens() -> None:
    source = "rtsp://admin:hunter2@10.0.0.5:554/stream?token=abc"
    error = ProtocolNotAllowed(source)
    assert "hunter2" not in str(error) and "abc" not in str(error)
    assert "admin" in str(error) and "10.0.0.5" in str(error)
    assert error.source == source
    assert redact("/plain/path.mp4") == "/plain/path.mp4"
