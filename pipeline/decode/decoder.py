"""Turn a video source into the sampled, upright RGB `Frame`s the segmenter consumes.

Real-world video is damaged more often than not (cut-off uploads, glitched camera streams), and one bad
packet must not cost the rest of a multi-hour stream, so decode errors are skipped and counted in
`DecodeStats` rather than raised. Only problems a user must act on (see `errors.py`) are raised.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.error

from pipeline.decode.errors import redact
from pipeline.decode.orientation import frame_orientation
from pipeline.decode.sampling import Sampler
from pipeline.decode.seek import SeekResult, SeekUnsafe, describe_fallback, seek_frames
from pipeline.decode.source import OpenedSource, SourceOptions, map_read_error, open_source
from pipeline.frames import Frame

log = logging.getLogger(__name__)

# A demuxer that fails this many reads in a row without producing a packet is not going to recover
# (garbage to the end of the file); stopping beats spinning on it forever.
_MAX_CONSECUTIVE_READ_ERRORS = 32

# Frame duration assumed for synthesising a missing PTS when the stream declares no frame rate at all.
_FALLBACK_FRAME_SECONDS = 1 / 30


@dataclass(slots=True)
class DecodeStats:
    """Counters for one decode, for monitoring how healthy a source is.

    Attributes:
        frames_decoded: the frame_index of the next frame: every frame the decoder produced, plus the
            frames before the keyframe a resumed decode sought to (`frames_skipped_by_seek`).
        frames_yielded: frames selected by the sampler and handed out (at or after start_frame_index).
        corrupt_packets: packets the decoder rejected; skipped, their frames are lost.
        corrupt_frames: frames FFmpeg flagged as damaged (error-concealed) but still yielded if sampled,
            since a concealed frame is usually still worth segmenting.
        read_errors: demuxer errors recovered by reading on (damaged container data).
        missing_pts: frames without a PTS whose timestamp was synthesised (previous + 1/frame rate).
        frames_skipped_by_seek: frames before the keyframe a resumed decode sought to, never decoded
            (so the decoding work was `frames_decoded - frames_skipped_by_seek`).
    """

    frames_decoded: int = 0
    frames_yielded: int = 0
    corrupt_packets: int = 0
    corrupt_frames: int = 0
    read_errors: int = 0
    missing_pts: int = 0
    frames_skipped_by_seek: int = 0


def decode_frames(
    source: str | os.PathLike[str],
    stream_id: str,
    sampler: Sampler | None = None,
    *,
    start_frame_index: int = 0,
    resume_pts: float | None = None,
    options: SourceOptions | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[Frame]:
    """Yield the sampled frames of `source` as upright RGB uint8 `Frame`s, in presentation order.

    The source is opened on the first `next()` (so errors from `open_source` surface there) and closed
    when the iterator is exhausted or closed. Pass `stats` to watch the counters; `VideoDecoder` does the
    same with an object to hold them.

    Args:
        source: a file path or an allowed URL.
        stream_id: copied into every `Frame`.
        sampler: which frames to yield; `Sampler()` (1 fps) by default.
        start_frame_index: skip, without yielding, frames before this index, to resume a stream. Indexes
            and sampling are exactly those of a full decode; see `iter_frames` for how.
        resume_pts: PTS of frame `start_frame_index - 1` in the decode that produced the output so far
            (the last committed frame). A file is resumed by seeking only when it is given and the file
            agrees with it; otherwise it is decoded from the start.
        options: timeouts, allowlist and threads.
        stats: filled in while iterating.
    """
    opened = open_source(source, options)
    try:
        yield from iter_frames(
            opened,
            stream_id,
            sampler,
            start_frame_index=start_frame_index,
            resume_pts=resume_pts,
            stats=stats,
        )
    finally:
        opened.close()


def iter_frames(
    opened: OpenedSource,
    stream_id: str,
    sampler: Sampler | None = None,
    *,
    start_frame_index: int = 0,
    resume_pts: float | None = None,
    stats: DecodeStats | None = None,
) -> Iterator[Frame]:
    """Decode an already opened source; the caller owns (and closes) `opened`.

    Timestamps are PTS x time base. A frame without a PTS (raw H.264/HEVC elementary streams have none)
    gets the previous frame's time plus one frame duration, or 0.0 if it is the first frame, and is
    counted in `stats.missing_pts`: sampling needs a monotonic clock, and a synthesised one is better than
    dropping the frame. The frame duration is 1 / `guessed_rate` (FFmpeg's av_guess_frame_rate, which
    also reads the codec's timing info), falling back to `average_rate`: for raw streams `average_rate`
    is a 25 fps placeholder while the SPS knows the real rate.

    Resuming (`start_frame_index` > 0) of a local file whose `resume_pts` (PTS of the frame before the
    resume point in the earlier decode) is known seeks to the keyframe before the resume point on a
    second handle of the file, after establishing from the file's packets which frame index that
    keyframe has (see `seek.py`); `stats.frames_skipped_by_seek` counts the frames it did not decode.
    Without `resume_pts`, or when the packets cannot pin down the index (no timestamps, damaged or
    discarded packets, timestamps that jump back, a PTS that disagrees with `resume_pts`), the seek
    fails, or a decoded frame does not match the prediction before the resume point, it decodes from
    the start and skips the prefix, as a network source always does: exact, only slower. Skipped
    frames are decoded but not converted to RGB.
    """
    if start_frame_index < 0:
        raise ValueError(f"start_frame_index must be >= 0, got {start_frame_index}")
    stats = stats if stats is not None else DecodeStats()
    if start_frame_index > 0 and resume_pts is not None and opened.scheme == "file":
        try:
            yield from _resume_by_seek(opened, stream_id, sampler, start_frame_index, resume_pts, stats)
            return
        except SeekUnsafe as reason:
            describe_fallback(opened, start_frame_index, reason)
            _reset(stats)
    selector = (sampler or Sampler()).selector()
    clock = _Clock(opened, stats)
    frame_index = -1

    for vframe in _decoded_frames(opened, stats):
        frame_index += 1
        stats.frames_decoded += 1
        if vframe.is_corrupt:
            stats.corrupt_frames += 1
        pts_seconds = clock.pts(vframe)
        # The selector must see every frame, skipped ones included, to stay in step with a full decode.
        if not selector.select(frame_index, pts_seconds) or frame_index < start_frame_index:
            continue
        yield _frame(vframe, stream_id, frame_index, pts_seconds, stats)


def _resume_by_seek(
    opened: OpenedSource,
    stream_id: str,
    sampler: Sampler | None,
    start: int,
    resume_pts: float,
    stats: DecodeStats,
) -> Iterator[Frame]:
    """Frames from `start` on, decoded after a seek on a fresh handle of the file (so that `opened`
    stays at the start for the fallback); raises `SeekUnsafe` before the first frame when it cannot."""
    seeker = open_source(opened.source, opened.options)
    try:
        selector = (sampler or Sampler()).selector()
        result = SeekResult()
        clock = _Clock(seeker, stats)
        positioned = False
        for frame_index, vframe in seek_frames(
            seeker,
            start,
            selector,
            lambda: _decoded_frames(seeker, stats),
            result,
            expect_pts=resume_pts,
        ):
            if not positioned:
                positioned = True
                stats.frames_skipped_by_seek = result.skipped
                clock.last_pts = result.last_seconds
            stats.frames_decoded = frame_index + 1
            if vframe.is_corrupt:
                stats.corrupt_frames += 1
            pts_seconds = clock.pts(vframe)
            if selector.select(frame_index, pts_seconds):
                yield _frame(vframe, stream_id, frame_index, pts_seconds, stats)
        stats.frames_decoded = result.next_index
        stats.frames_skipped_by_seek = result.skipped
    finally:
        seeker.close()


class _Clock:
    """Seconds of each decoded frame: PTS x time base, or the previous frame's plus one frame duration
    when a frame has none."""

    def __init__(self, opened: OpenedSource, stats: DecodeStats) -> None:
        self.stream = opened.stream
        rate = self.stream.guessed_rate or self.stream.average_rate
        self.frame_seconds = float(1 / rate) if rate else _FALLBACK_FRAME_SECONDS
        self.stats = stats
        self.last_pts: float | None = None

    def pts(self, vframe: av.VideoFrame) -> float:
        time_base = vframe.time_base or self.stream.time_base
        if vframe.pts is None or time_base is None:
            self.stats.missing_pts += 1
            pts_seconds = 0.0 if self.last_pts is None else self.last_pts + self.frame_seconds
        else:
            pts_seconds = float(vframe.pts * time_base)
        self.last_pts = pts_seconds
        return pts_seconds


def _frame(vframe: av.VideoFrame, stream_id: str, frame_index: int, pts: float, stats: DecodeStats) -> Frame:
    image = frame_orientation(vframe).apply(vframe.to_ndarray(format="rgb24"))
    stats.frames_yielded += 1
    return Frame(stream_id, frame_index, pts, image, time.time())


def _reset(stats: DecodeStats) -> None:
    """Zero the counters an abandoned seek attempt touched, so they describe the decode that counts."""
    for counter in dataclasses.fields(DecodeStats):
        setattr(stats, counter.name, 0)


def _decoded_frames(opened: OpenedSource, stats: DecodeStats) -> Iterator[av.VideoFrame]:
    """Every decoded frame of the chosen stream, skipping packets the decoder or demuxer rejects.

    PyAV's demux generator dies with the first read error, but the demuxer itself can usually resync
    past damaged bytes, so a fresh `demux()` continues from where the error left off.
    """
    container, stream = opened.container, opened.stream
    consecutive_errors = 0
    while True:
        try:
            for packet in container.demux(stream):
                consecutive_errors = 0
                try:
                    frames = stream.decode(packet)
                except av.error.FFmpegError:
                    stats.corrupt_packets += 1
                    continue
                yield from frames
            return
        except (av.error.FFmpegError, OSError) as exc:
            error = map_read_error(opened, exc)
            if error is not None:
                raise error from exc
            stats.read_errors += 1
            consecutive_errors += 1
            if consecutive_errors >= _MAX_CONSECUTIVE_READ_ERRORS:
                log.warning(
                    "%s: giving up after %d consecutive read errors (last: %s); treating as end of stream",
                    redact(opened.source),
                    consecutive_errors,
                    exc,
                )
                return


class VideoDecoder:
    """A decode of one source that keeps its `DecodeStats` and can be closed early.

    Opens the source in the constructor, so a bad source fails where the decoder is created (job
    validation, actor start-up) rather than at the first frame. Iterate it once; use it as a context
    manager or call `close()` to release the file or connection if you stop early.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        stream_id: str,
        sampler: Sampler | None = None,
        *,
        start_frame_index: int = 0,
        resume_pts: float | None = None,
        options: SourceOptions | None = None,
    ) -> None:
        if start_frame_index < 0:
            raise ValueError(f"start_frame_index must be >= 0, got {start_frame_index}")
        self.source = os.fspath(source)
        self.stream_id = stream_id
        self.stats = DecodeStats()
        self._opened = open_source(source, options)
        self._frames = iter_frames(
            self._opened,
            stream_id,
            sampler,
            start_frame_index=start_frame_index,
            resume_pts=resume_pts,
            stats=self.stats,
        )

    @property
    def opened(self) -> OpenedSource:
        """The open container and stream, e.g. for `is_live` to pick a queue policy."""
        return self._opened

    def __iter__(self) -> VideoDecoder:
        return self

    def __next__(self) -> Frame:
        try:
            return next(self._frames)
        except BaseException:
            # Exhausted or failed: release the file or socket now, not whenever GC runs.
            self.close()
            raise

    def close(self) -> None:
        self._frames.close()
        self._opened.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
