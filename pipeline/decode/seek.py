"""Resume a file decode at frame N by seeking instead of decoding the N frames before it.

A recovered stream of a two-hour file must not decode the file again from the start: at 1080p that is
minutes of CPU per recovery, and recoveries come in bursts when a node dies. The catch is the frame index.
Rows are keyed by `frame_index`, the position of the frame in a decode from the start, and a container seek
lands on a keyframe by timestamp without saying how many frames came before it. Guessing it from the
frame rate (`pts x rate`) is wrong for variable frame rates, B-frame delays and edit lists, and a wrong
index silently writes rows under other frames' indexes.

So the index is established, not guessed:

1. `scan_packets` demuxes (does not decode) the file from the start up to the first keyframe after N
   packets, and keeps every packet's PTS. Demuxing reads bytes; it costs a small fraction of decoding.
   When every packet carries a PTS, no PTS repeats, nothing is flagged corrupt or discarded (MP4 edit
   lists), the file starts with a keyframe and no packet after a keyframe shows a PTS at or before one
   that preceded that keyframe (so presentation order is PTS order, with no wrap or splice), then frame
   i of a full decode is the packet with the i-th smallest PTS, as long as every packet decodes.
2. That last condition is invisible to a demuxer: damaged packets that a full decode drops shift every
   later index. So the caller must know the PTS of frame N-1 from the decode that produced the output
   so far (the last committed frame), and the scan must agree with it: a dropped frame before N-1 makes
   frame N-1 a different packet, whose PTS differs, since no two packets share one.
3. The decode seeks to the last keyframe at or before frame N-1, and the first decoded keyframe fixes
   the index by its PTS rank. Every frame decoded before frame N must then carry exactly the PTS the
   scan predicts; any difference, an index that cannot be fixed, or a seek error abandons the seek
   before a frame was handed out, and the caller decodes from the start as before.
4. The sampler is fed the predicted PTS of frames 0..N-1, so it selects exactly what a full decode
   selects from frame N on.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np

from pipeline.decode.errors import redact
from pipeline.decode.sampling import FrameSelector
from pipeline.decode.source import OpenedSource

log = logging.getLogger(__name__)

# Seconds two PTS may differ by and still be "the same frame" when one of them went through float
# storage (Parquet, Redis); real frames are at least a millisecond apart.
_PTS_MATCH_SECONDS = 1e-6
# Seeks to ever earlier keyframes before giving up, for containers whose seek may overshoot.
_SEEK_TRIES = 4
# Containers that store each packet's timestamp with the packet (MP4 sample tables, Matroska blocks,
# MPEG-TS PES headers), so that a packet found by seeking carries the same PTS as when it was read in
# sequence. AVI (and raw streams) number packets as they are read: after damage, sequential reading and
# the index disagree about which packet is "frame 27", although the numbers match.
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "matroska", "webm", "mpegts"})


class SeekUnsafe(Exception):
    """Seeking cannot reproduce a decode from the start for this file; the reason says why."""


@dataclass(frozen=True, slots=True)
class PacketIndex:
    """Presentation order of a file's first frames, from its packets.

    Attributes:
        pts: PTS of the scanned packets in time-base units, sorted: `pts[i]` is frame i's PTS.
        keyframes: sorted PTS of the scanned keyframe packets.
        time_base: the stream's time base.
        complete: the scan reached the end of the file, so `pts` holds every frame.
    """

    pts: np.ndarray
    keyframes: np.ndarray
    time_base: Fraction
    complete: bool

    def seconds(self, i: int) -> float:
        """Frame i's PTS in seconds, computed exactly as the decoder computes it."""
        return float(int(self.pts[i]) * self.time_base)

    def rank(self, pts: int) -> int:
        """Index of the first frame whose PTS is at or after `pts`."""
        return int(np.searchsorted(self.pts, pts, side="left"))


def scan_packets(opened: OpenedSource, frames_needed: int) -> PacketIndex:
    """Demux `opened` from its current (start) position until the first keyframe after `frames_needed`
    packets, or the end; raises `SeekUnsafe` when the packets do not pin down frame indexes (see the
    module docstring)."""
    container, stream = opened.container, opened.stream
    formats = set(container.format.name.split(","))
    if not formats & SEEKABLE_FORMATS:
        raise SeekUnsafe(f"{container.format.name} files do not keep timestamps with their packets")
    time_base = stream.time_base
    if time_base is None:
        raise SeekUnsafe("the stream has no time base")
    # Compact arrays: a resume deep into a long file scans hundreds of thousands of packets.
    pts = array("q")
    keyframes = array("q")
    before_keyframe = -math.inf  # highest PTS of every packet before the latest keyframe
    highest = -math.inf
    complete = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at the end
            if packet.is_keyframe and len(pts) >= frames_needed:
                complete = False
                break
            if packet.pts is None:
                raise SeekUnsafe("a packet has no timestamp")
            if packet.is_corrupt or packet.is_discard:
                raise SeekUnsafe("a packet is flagged corrupt or discarded")
            if not pts and not packet.is_keyframe:
                raise SeekUnsafe("the file does not start with a keyframe")
            if packet.is_keyframe:
                before_keyframe = highest
                keyframes.append(packet.pts)
            if packet.pts <= before_keyframe:
                raise SeekUnsafe("timestamps jump backwards across a keyframe")
            pts.append(packet.pts)
            highest = max(highest, packet.pts)
    except (av.error.FFmpegError, OSError) as exc:
        raise SeekUnsafe(f"reading packets failed ({exc})") from exc
    ordered = np.sort(np.frombuffer(pts, dtype=np.int64))
    if ordered.size > 1 and not np.all(np.diff(ordered) > 0):
        raise SeekUnsafe("two packets share a timestamp")
    return PacketIndex(
        ordered, np.sort(np.frombuffer(keyframes, dtype=np.int64)), Fraction(time_base), complete
    )


@dataclass(slots=True)
class SeekResult:
    """What `seek_frames` did, filled in as it goes.

    Attributes:
        next_index: index of the next frame (after the last one decoded).
        skipped: frames before the keyframe the seek landed on, never decoded.
        last_seconds: PTS of frame start-1 in seconds, from which a following frame without PTS is
            timed, as a full decode would.
    """

    next_index: int = 0
    skipped: int = 0
    last_seconds: float | None = None


def seek_frames(
    opened: OpenedSource,
    start: int,
    selector: FrameSelector,
    decode: Callable[[], Iterator[av.VideoFrame]],
    result: SeekResult,
    expect_pts: float,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame index, frame) for every frame at or after `start`, decoded after a seek.

    Raises `SeekUnsafe` before yielding anything when the seek cannot be trusted, never after.

    Args:
        opened: the source, freshly opened (positioned at its start).
        start: the first frame index wanted (>= 1).
        selector: sampler state; advanced here over frames 0..start-1 with the scanned PTS.
        decode: starts decoding `opened` from its current position (`_decoded_frames(opened, stats)`).
        result: filled with the position, the frames the seek skipped and the PTS of frame start-1.
        expect_pts: PTS of frame start-1 in an earlier decode from the start (or from an earlier
            resume, which was exact in turn); the scan must agree.
    """
    index = scan_packets(opened, start)
    if len(index.pts) < start:
        raise SeekUnsafe(f"the file has {len(index.pts)} frames, fewer than the {start} to skip")
    last_before = index.seconds(start - 1)
    if abs(last_before - expect_pts) > _PTS_MATCH_SECONDS:
        raise SeekUnsafe(
            f"frame {start - 1} has PTS {last_before:.6f} s in the file but {expect_pts:.6f} s in the "
            "previous run (damaged packets before it?)"
        )

    def confirmed() -> None:
        """The index holds up to frame start-1: bring the sampler there, as a full decode would."""
        for i in range(start):
            selector.select(i, index.seconds(i))
        result.next_index = start
        result.last_seconds = last_before

    if index.complete and len(index.pts) == start:
        confirmed()
        result.skipped = start
        return  # every frame is before `start`: nothing left to decode
    frames, position = _land(opened, index, start, decode)
    result.skipped = position - 1
    stream_base = opened.stream.time_base
    if position == start:
        confirmed()
    for vframe in frames:
        if position < start:
            if vframe.pts != index.pts[position] or vframe.time_base not in (None, stream_base):
                raise SeekUnsafe(f"frame {position} decoded with a PTS the packets do not predict")
            position += 1
            if position == start:
                confirmed()
            continue
        yield position, vframe
        position += 1
        result.next_index = position
    if position < start:
        raise SeekUnsafe(f"the decode after the seek ended before frame {start}")


def _land(
    opened: OpenedSource, index: PacketIndex, start: int, decode: Callable[[], Iterator[av.VideoFrame]]
) -> tuple[Iterator[av.VideoFrame], int]:
    """Seek to the keyframe at or before frame start-1 (so that frame start-1's PTS checks the index
    before anything is handed out) and decode up to the first keyframe; returns the decoding iterator
    and the index of the frame after that keyframe.

    Containers without an index (MPEG-TS) seek by bisecting timestamps and may land after the target;
    then an earlier keyframe is tried, a few times."""
    last = int(np.searchsorted(index.keyframes, index.pts[start - 1], side="right")) - 1
    if last < 0:
        raise SeekUnsafe("no keyframe before the resume point")
    keyframes = {int(k) for k in index.keyframes}
    stream_base = opened.stream.time_base
    targets = [int(index.keyframes[k]) for k in range(last, max(last - _SEEK_TRIES, -1), -1)]
    if last < _SEEK_TRIES:
        targets.append(int(index.pts[0]) - 1)  # before the first frame: the start of the file
    for target in targets:
        try:
            opened.container.seek(target, backward=True, stream=opened.stream)
        except (av.error.FFmpegError, OSError) as exc:
            raise SeekUnsafe(f"the container cannot seek ({exc})") from exc
        frames = decode()
        for vframe in frames:
            if vframe.pts is None or vframe.time_base not in (None, stream_base):
                raise SeekUnsafe("a decoded frame's timestamp is missing or in another time base")
            if (vframe.key_frame and vframe.pts in keyframes) or vframe.pts > index.pts[start - 1]:
                break
            # Otherwise a leading picture of an open GOP (it refers to frames before the keyframe), or
            # what a decoder makes of a landing on a packet the container calls a keyframe and the
            # codec does not (AVI indexes flag every packet): before a real keyframe, not handed out.
        else:
            continue  # landed at the end
        position = index.rank(vframe.pts)
        if vframe.key_frame and vframe.pts in keyframes and position < start:
            return frames, position + 1
    raise SeekUnsafe(f"seeking kept landing after frame {start - 1}")


def describe_fallback(opened: OpenedSource, start: int, reason: SeekUnsafe) -> None:
    """Log why a resume decodes from the start, once per resume; it is slow, not wrong."""
    log.info(
        "%s: resuming at frame %d by decoding from the start, not by seeking: %s",
        redact(opened.source),
        start,
        reason,
    )
