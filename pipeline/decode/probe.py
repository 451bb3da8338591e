"""Describe a video source without decoding it all, for the CLI and for validating jobs up front.

Validating at submission time turns "job failed on worker 17 an hour later" into an immediate, named
error (the probe raises the same `errors.py` types as the decoder), and the numbers let a scheduler
estimate work (frames x sampling rate) before committing GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import av.error

from pipeline.decode.orientation import IDENTITY, Orientation, frame_orientation
from pipeline.decode.source import OpenedSource, SourceOptions, open_source

# Packets to read looking for the first decodable frame (to learn the orientation) before giving up;
# bounded so a probe of a damaged file stays fast.
_MAX_PROBE_PACKETS = 64


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a job needs to know about a source.

    Attributes:
        source: the source string as given.
        width, height: size of the images the decoder yields, i.e. after rotation (a portrait phone video
            stored as 1920x1080 reports 1080x1920).
        codec: FFmpeg's codec name ("h264", "hevc", "vp9", ...).
        pixel_format: the decoded pixel format ("yuv420p", "yuv420p10le", "gray", ...), if known.
        average_fps: average frame rate, if the container declares or FFmpeg could estimate one.
        duration_seconds: length of the video, if known (None for live streams).
        frame_count: number of frames, if the container records it (MP4 does, MKV/WebM do not).
        rotation: counter-clockwise degrees (0/90/180/270) the decoder rotates frames by to display them.
        mirrored: whether frames are also mirrored left-right after rotating.
        is_live: whether the source is a live stream (see `OpenedSource.is_live`).
    """

    source: str
    width: int
    height: int
    codec: str
    pixel_format: str | None
    average_fps: float | None
    duration_seconds: float | None
    frame_count: int | None
    rotation: int
    mirrored: bool
    is_live: bool


def probe(source: str | os.PathLike[str], options: SourceOptions | None = None) -> VideoInfo:
    """Open `source`, read its headers and first frame, and describe it.

    Raises the same errors as `open_source`. The first frame is decoded because rotation lives in frame
    side data, which PyAV does not expose on the stream.
    """
    with open_source(source, options) as opened:
        stream = opened.stream
        orientation = _first_frame_orientation(opened)
        width, height = stream.codec_context.width, stream.codec_context.height
        if orientation.transpose:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            source=opened.source,
            width=width,
            height=height,
            codec=stream.codec_context.name,
            pixel_format=stream.codec_context.pix_fmt,
            average_fps=float(rate) if rate else None,
            duration_seconds=_duration_seconds(opened),
            frame_count=stream.frames or None,
            rotation=orientation.rotation,
            mirrored=orientation.mirrored,
            is_live=opened.is_live,
        )


def _duration_seconds(opened: OpenedSource) -> float | None:
    stream = opened.stream
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if opened.container.duration:
        return opened.container.duration / av.time_base
    return None


def _first_frame_orientation(opened: OpenedSource) -> Orientation:
    """Orientation of the first frame that decodes; identity if none does within a few packets."""
    stream = opened.stream
    try:
        for n, packet in enumerate(opened.container.demux(stream)):
            if n >= _MAX_PROBE_PACKETS:
                break
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError:
                continue
            if frames:
                return frame_orientation(frames[0])
    except (av.error.FFmpegError, OSError):
        pass
    return IDENTITY
