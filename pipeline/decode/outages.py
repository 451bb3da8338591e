"""What a live stream's outages are made of: when to reconnect, the record of an outage, and the rule that
keeps timestamps on one non-decreasing timeline across connections (and across restarted attempts).

Kept apart from the threads and connections of `live.py` and `supervisor.py` because these are plain
values and arithmetic, testable without a server, and shared with the decoder actor, which continues a
stream's timeline after a recovery.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A forward step of PTS this much larger than the wall time that passed is not the source's clock
# having kept running through an outage (network latency and probing can make the source look a little
# ahead of our clock, never by seconds).
_CLOCK_TOLERANCE_SECONDS = 2.0
_EPSILON_SECONDS = 1e-6


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """When to try again after a connection fails or is lost.

    The n-th consecutive retry waits `min(max_delay, initial_delay * factor ** (n - 1))`, scaled by a
    random factor in [1 - jitter, 1 + jitter] so that many streams cut by one network failure do not
    reconnect in lock-step. The count resets once a connection delivers a frame, so a camera that drops
    every hour reconnects after `initial_delay` each time rather than after `max_delay`.

    Attributes:
        initial_delay: seconds before the first retry (>= 0).
        factor: growth per consecutive failure (>= 1).
        max_delay: cap of the delay before jitter (>= initial_delay).
        jitter: relative spread of the delay, 0 to 1.
        max_attempts: consecutive attempts without a frame (the first connection included) before the
            source gives up and raises the last error; None retries forever, as a camera that is off
            for the night should not end a week-long job.
    """

    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_delay) and self.initial_delay >= 0):
            raise ValueError(f"initial_delay must be a finite number >= 0, got {self.initial_delay!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"factor must be a finite number >= 1, got {self.factor!r}")
        if not (math.isfinite(self.max_delay) and self.max_delay >= self.initial_delay):
            raise ValueError(f"max_delay must be finite and >= initial_delay, got {self.max_delay!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_attempts is not None and (isinstance(self.max_attempts, bool) or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be None or >= 1, got {self.max_attempts!r}")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry after a failure)."""
        if retry < 1:
            raise ValueError(f"retry counts from 1, got {retry}")
        # Exponent capped so that a camera that has been off for days cannot overflow the float.
        base = min(self.max_delay, self.initial_delay * self.factor ** min(retry - 1, 64))
        if self.jitter:
            base *= (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base


@dataclass(frozen=True, slots=True)
class Gap:
    """One outage of a live stream: no frame was received between its start and its end.

    Start is the last frame received before the failure, end the first frame received after recovery,
    on both clocks, so the gap lies exactly between two frames of the stream. An outage at the very
    start of a stream (the first connection attempts failed) has no earlier frame: it starts when the
    source started connecting, and its `start_pts` equals `end_pts` because the source's timeline has
    nothing before its first frame. An outage still open when the source is closed or gives up ends at
    that moment, with `end_pts` extrapolated by the wall time, and says so in `reason`.

    Attributes:
        stream_id: the stream it belongs to.
        start_pts, end_pts: seconds on the stream's (monotonic) PTS timeline.
        start_wall, end_wall: `time.time()` seconds.
        reason: what started the outage, e.g. "connection lost: end of stream" or
            "stalled: no frames for 10 s", and how many reconnection attempts it took.
    """

    stream_id: str
    start_pts: float
    end_pts: float
    start_wall: float
    end_wall: float
    reason: str

    @property
    def wall_seconds(self) -> float:
        return self.end_wall - self.start_wall

    def row(self, job_id: str) -> dict[str, Any]:
        """The record as a row of the `gaps` table (`pipeline.storage.schema.GAPS`)."""
        return {
            "job_id": job_id,
            "stream_id": self.stream_id,
            "start_pts": self.start_pts,
            "end_pts": self.end_pts,
            "start_wall": self.start_wall,
            "end_wall": self.end_wall,
            "reason": self.reason,
        }


class LiveTimeline:
    """Places the raw timestamps of successive connections on one non-decreasing PTS timeline.

    The rule, per frame, where `raw` is the frame's PTS x time base as the current connection gives it
    and `offset` is what is added to it (0 on the first connection, so the source's own timeline):

    1. Within a connection, `pts = raw + offset`. A frame without PTS gets the previous PTS plus one
       frame duration. If `pts` would go backwards (an MPEG-TS 33-bit wrap, an encoder restart without
       a disconnect), the offset is moved so that the frame continues from the previous PTS plus the
       wall time since the previous frame (at least one frame duration).
    2. On the first frame with a PTS after a reconnection, `candidate = raw + offset` with the previous
       connection's offset. If `last_pts < candidate <= last_pts + (wall time since the last frame) +
       2 s`, the source's clock evidently kept running through the outage (absolute timestamps), so the
       offset is kept and PTS stays on the source's timeline.
    3. Otherwise (typically RTSP, whose timestamps restart at 0 on every session, or a server that
       restarted its file) the offset is chosen so the frame lands at `last_pts + (wall time from the
       last frame to the start of the new connection)`, at least one frame duration: the source time
       that passed is estimated by the wall time that passed. The start of the connection, not the
       frame's arrival, is used because a new connection first buffers frames while FFmpeg probes the
       stream, and those frames were captured around when it connected. A frame that comes before the
       connection's first PTS is placed at that same point.

    A source that re-sends frames we already have on reconnecting (an HLS playlist window reaching back
    behind the last frame) fails test 2 and is re-placed by rule 3, shifted later by the overlap; the
    timeline stays monotonic at that cost.

    `continue_after` starts a timeline where an earlier one stopped (a new attempt at the stream after
    a recovery): its first connection is then placed like a reconnection, so a stream's PTS never
    decrease across attempts either.
    """

    def __init__(self) -> None:
        self.last_pts: float | None = None
        self.last_wall: float | None = None
        self._continued = False
        self._conn: int | None = None
        self._offset = 0.0
        self._fixed = False  # whether the current connection's offset has been decided
        self._first_conn = True  # the current connection is the first that delivered frames
        self._anchor = 0.0  # where the current connection's first frame goes under rule 3

    def continue_after(self, pts: float, wall: float) -> None:
        """Continue the timeline of an earlier source whose last kept frame had `pts` and arrived at
        `wall` (`time.time()`); call before the first `place`."""
        if self._conn is not None:
            raise RuntimeError("continue_after must come before the first frame is placed")
        self.last_pts, self.last_wall = pts, wall
        self._continued = True

    def place(
        self,
        conn: int,
        conn_started_wall: float,
        raw: float | None,
        arrival_wall: float,
        frame_seconds: float,
    ) -> float:
        """The timeline PTS of a frame of connection `conn` (ids increase) that arrived at `arrival_wall`.

        Args:
            conn: which connection delivered the frame.
            conn_started_wall: `time.time()` when that connection started opening.
            raw: the frame's PTS in seconds as the source gave it, or None when it had none.
            arrival_wall: `time.time()` when the frame was decoded.
            frame_seconds: one frame duration of the stream, for frames without PTS and minimal steps.
        """
        last, last_wall = self.last_pts, self.last_wall
        new_conn = conn != self._conn
        if new_conn:
            self._first_conn = self._conn is None and not self._continued
            self._conn = conn
            self._fixed = False
            if last is not None and last_wall is not None:
                self._anchor = last + max(frame_seconds, conn_started_wall - last_wall)

        if last is None or last_wall is None:
            # The first frame of the stream: the source's own timeline, or 0 when it gives none.
            pts = 0.0 if raw is None else raw
            self._fixed = raw is not None
        elif raw is None:
            pts = self._anchor if new_conn else last + frame_seconds
        elif not self._fixed:
            candidate = raw + self._offset
            if self._first_conn:
                # Frames before the first PTS were placed at 0, 1 frame, ... as placeholders; the
                # source's own timeline wins unless it would go backwards.
                keep = candidate >= last - _EPSILON_SECONDS
            else:
                keep = last < candidate <= last + (arrival_wall - last_wall) + _CLOCK_TOLERANCE_SECONDS
            if not keep:
                self._offset = (self._anchor if new_conn else last + frame_seconds) - raw
            self._fixed = True
            pts = raw + self._offset
        else:
            pts = raw + self._offset
            if pts < last - _EPSILON_SECONDS:
                target = last + max(frame_seconds, arrival_wall - last_wall)
                self._offset += target - pts
                pts = target
        self.last_pts, self.last_wall = pts, arrival_wall
        return pts


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where an earlier attempt at a live stream left off, for the attempt that replaces it.

    A live source cannot replay: the frames an attempt analysed but did not commit before it failed are
    lost. The next attempt continues the timeline after the last committed frame (PTS never decrease
    across attempts) and reports the time from that frame to its own first frame as a gap.

    Attributes:
        pts: `pts_seconds` of the last committed frame.
        wall: when that frame arrived (`time.time()`); the wall time since then estimates the source
            time that passed, as for a reconnection.
        reason: why the frames after it were lost, e.g. "recovery: RayActorError: ...".
    """

    pts: float
    wall: float
    reason: str


class ErrorThrottle:
    """Lets the first of a run of repeated errors through, then at most one per `interval_s`, and counts
    the ones it held back, so that a camera that is off for a night leaves a readable error history (and
    a current last error) instead of one record per reconnection attempt.

    Args:
        interval_s: least time between two errors let through.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise ValueError(f"interval_s must be a finite number >= 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def admit(self) -> int | None:
        """None when this error should be held back; otherwise how many were held back since the last
        one let through."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


__all__ = ["ErrorThrottle", "Gap", "LiveTimeline", "ReconnectPolicy", "ResumePoint"]
