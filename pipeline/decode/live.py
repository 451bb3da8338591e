"""Live network sources (RTSP/RTSPS, HTTP(S) incl. HLS) that survive outages: reconnect, watch for
stalls, and report every outage as a gap.

`VideoDecoder` treats a dropped camera as the end of the stream. A live job must instead keep going for
days across camera reboots, network blips and server restarts, while telling the user exactly which
stretches of time were not analysed. `LiveSource` is that loop:

* Connect and read timeouts come from `SourceOptions` (PyAV's interrupt callback plus FFmpeg socket
  timeouts). On top, a supervisor thread watches every connection: connected but no decoded frame for
  `stall_timeout` (packets that never decode, a trickle of bytes, or silence) aborts it, even when the
  read timeout is longer or FFmpeg is blocked inside one call.
* Aborting FFmpeg from another thread: PyAV has no API for it, and closing a container that another
  thread is reading frees memory under its feet (a crash). What PyAV does have is an interrupt callback
  that FFmpeg polls (about every 100 ms while it waits on a socket), which compares
  `time.monotonic()`, looked up through the `time` global of `av.container.core`, with the call's
  deadline. `_FFmpegInterrupter` stands in for that global and, for the one reader thread being
  aborted, reports a time far past any deadline, so FFmpeg returns AVERROR_EXIT within ~0.1 s. Every
  other thread sees the real clock. If a PyAV release changes this internal, the hook is not installed
  and a reader that does not return within `abandon_after` is abandoned instead: it owns its container
  and closes it when its own timeout fires, and nothing it produces afterwards is used.
* Reconnection follows a `ReconnectPolicy` (capped exponential backoff with jitter, optionally a
  limit on consecutive failed attempts); every attempt is logged.
* `close()` (or setting the `stop` event passed in) ends everything from any state (connecting,
  reading, sleeping in backoff) in well under a second.

Threads: one supervisor per source, and one reader per connection (the only thread that touches that
connection's container). The reader hands *every* decoded frame to the iterating thread, which owns the
timeline, sampling and gap state, so no state is shared between threads except through the hand-off.
The hand-off never blocks the reader: a live socket must be drained or the server drops us, so when the
consumer falls behind the oldest waiting frame is dropped and counted (`LiveStats.frames_dropped`).

Frame numbering and timestamps, across reconnections:

* `frame_index` counts frames as received by us (every decoded frame, dropped ones included), starting
  at 0 and continuing across reconnections. A live source has no stable global frame index: a camera
  restarts its numbering and an HLS join starts wherever the playlist window is, so "the Nth frame since
  the camera booted" is not observable and this is the only index that is.
* `pts_seconds` follows `LiveTimeline`'s rule (see there): the source's own timeline while the source
  keeps it (absolute timestamps, e.g. a live MPEG-TS/HLS encoder that kept running), and otherwise
  (a restart at 0, typical of RTSP, or any backward jump) continued from the last frame's PTS plus the
  wall-clock time that passed, so it never decreases.
* `wall_time` is `time.time()` when the frame was decoded, i.e. its arrival.

Gaps: an outage is the time between the last frame received before a failure and the first frame after
it; it becomes a `Gap` (the `gaps` table's row without job_id) passed to `on_gap` and kept in `gaps`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import av.container.core

from pipeline.decode.decoder import DecodeStats, _decoded_frames
from pipeline.decode.errors import DecodeError, SourceUnreachable, redact
from pipeline.decode.orientation import frame_orientation
from pipeline.decode.sampling import Sampler
from pipeline.decode.source import NETWORK_SCHEMES, SourceOptions, check_protocol, open_source
from pipeline.frames import Frame

log = logging.getLogger(__name__)

# Frame duration assumed when a stream declares no frame rate, as in decoder.py.
_FALLBACK_FRAME_SECONDS = 1 / 30
# A forward step of PTS this much larger than the wall time that passed is not the source's clock
# having kept running through an outage (network latency and probing can make the source look a little
# ahead of our clock, never by seconds).
_CLOCK_TOLERANCE_SECONDS = 2.0
_EPSILON_SECONDS = 1e-6
# How often the supervisor re-checks its deadlines when nothing wakes it.
_POLL_SECONDS = 0.1


# --------------------------------------------------------------------------------------------------
# Policy and records
# --------------------------------------------------------------------------------------------------


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


@dataclass(slots=True)
class LiveStats(DecodeStats):
    """`DecodeStats` for all connections together, plus what happened to the connections.

    `frames_decoded` counts frames received (the next `frame_index`), `frames_dropped` those dropped
    because the consumer fell behind (they still have an index; they were never sampled).

    Attributes:
        attempts: connection attempts made.
        connects: attempts that opened the source.
        losses: connections that ended or failed after delivering at least one frame.
        stalls: connections aborted by the watchdog for delivering no frame within the stall timeout.
        abandoned_readers: reader threads that did not return after being aborted (should stay 0; see
            the module docstring).
        gaps: gaps reported.
    """

    frames_dropped: int = 0
    attempts: int = 0
    connects: int = 0
    losses: int = 0
    stalls: int = 0
    abandoned_readers: int = 0
    gaps: int = 0


# --------------------------------------------------------------------------------------------------
# The timeline rule
# --------------------------------------------------------------------------------------------------


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
    """

    def __init__(self) -> None:
        self.last_pts: float | None = None
        self.last_wall: float | None = None
        self._conn: int | None = None
        self._offset = 0.0
        self._fixed = False  # whether the current connection's offset has been decided
        self._first_conn = True  # the current connection is the first that delivered frames
        self._anchor = 0.0  # where the current connection's first frame goes under rule 3

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
            self._first_conn = self._conn is None
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


# --------------------------------------------------------------------------------------------------
# Aborting a blocked FFmpeg call from another thread
# --------------------------------------------------------------------------------------------------


class _FFmpegInterrupter:
    """Replaces the `time` module as seen by `av.container.core`, to abort chosen threads' FFmpeg calls.

    PyAV's interrupt callback returns "abort" when `time.monotonic()` is past the start of the current
    blocking call plus its timeout, and it runs on the thread making that call. For a thread marked
    aborted, `monotonic()` returns a time that grows by 1e9 s at every call, so the call's start (read
    through the same clock) is always far behind the next poll and the deadline has always passed.
    Everything else, and every other thread, gets the real `time` module.
    """

    _STEP = 1e9

    def __init__(self, real: types.ModuleType) -> None:
        self._time = real
        # Thread ident -> how far its clock has been pushed. No lock: this runs inside FFmpeg's callback,
        # single dict operations are atomic under the GIL, an entry is only ever advanced and removed by
        # its own thread, and `LiveSource` never marks a thread that has finished (see `_abort`).
        self._aborted: dict[int, float] = {}

    def monotonic(self) -> float:
        now = self._time.monotonic()
        if not self._aborted:  # the hot path: nothing is being aborted
            return now
        ident = threading.get_ident()
        bump = self._aborted.get(ident)
        if bump is None:
            return now
        bump += self._STEP
        self._aborted[ident] = bump
        return now + bump

    def abort(self, ident: int) -> None:
        self._aborted.setdefault(ident, 0.0)

    def clear(self, ident: int) -> None:
        self._aborted.pop(ident, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


_INSTALL_LOCK = threading.Lock()
_INTERRUPTER: _FFmpegInterrupter | None = None
_INSTALLED = False


def _install_interrupter() -> _FFmpegInterrupter | None:
    """Install the hook into PyAV once, on the first `LiveSource` (so merely importing the decode package
    changes nothing), or return None and rely on abandoning threads if PyAV's internals changed."""
    global _INTERRUPTER, _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return _INTERRUPTER
        _INSTALLED = True
        core = av.container.core
        current = getattr(core, "time", None)
        if isinstance(current, _FFmpegInterrupter):
            _INTERRUPTER = current
        elif current is time:
            _INTERRUPTER = _FFmpegInterrupter(time)
            core.time = _INTERRUPTER  # type: ignore[attr-defined]
        else:
            log.warning(
                "PyAV %s: av.container.core no longer reads time.monotonic through a module global; live "
                "sources cannot abort a blocked FFmpeg call and will abandon stuck reader threads instead",
                av.__version__,
            )
        return _INTERRUPTER


# --------------------------------------------------------------------------------------------------
# Hand-off between reader threads and the iterating thread
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Connection:
    """One connection attempt and its reader thread; written by the reader, read by the supervisor."""

    id: int
    started_wall: float
    phase: str = "connecting"  # -> "reading" -> "done"
    phase_since: float = field(default_factory=time.monotonic)
    progress: float = field(default_factory=time.monotonic)  # monotonic time of the last frame
    frames: int = 0
    opened: bool = False
    ended_cleanly: bool = False  # end of stream without an error
    error: BaseException | None = None
    abort_reason: str | None = None
    aborted_at: float | None = None
    abandoned: bool = False
    ident: int | None = None
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Decoded:
    conn: int
    conn_started_wall: float
    index: int
    raw_pts: float | None
    frame: av.VideoFrame
    arrival_wall: float
    frame_seconds: float


@dataclass(slots=True)
class _Ended:
    """A connection attempt is over (lost after frames, or failed without any), and why."""

    conn: int
    started_wall: float
    reason: str


@dataclass(slots=True)
class _GaveUp:
    error: BaseException


_Item = _Decoded | _Ended | _GaveUp


class _HandoffClosed(Exception):
    pass


class _Handoff:
    """A FIFO of frames and events where frames are dropped (oldest first) when too many wait, and
    events (connection ended, gave up) never are, since gaps and errors must not be lost."""

    def __init__(self, max_frames: int) -> None:
        self._items: deque[_Item] = deque()
        self._frames = 0
        self._max_frames = max_frames
        self._cond = threading.Condition()
        self._closed = False

    def put_frame(self, item: _Decoded) -> int:
        """Queue `item`; returns how many waiting frames were dropped to make room (0 or 1)."""
        with self._cond:
            if self._closed:
                return 0
            dropped = 0
            if self._frames >= self._max_frames:
                for i, old in enumerate(self._items):
                    if isinstance(old, _Decoded):
                        del self._items[i]
                        self._frames -= 1
                        dropped = 1
                        break
            self._items.append(item)
            self._frames += 1
            self._cond.notify()
            return dropped

    def put_event(self, item: _Ended | _GaveUp) -> None:
        with self._cond:
            if not self._closed:
                self._items.append(item)
                self._cond.notify()

    def get(self) -> _Item:
        with self._cond:
            while not self._items:
                if self._closed:
                    raise _HandoffClosed
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, _Decoded):
                self._frames -= 1
            return item

    def close(self) -> None:
        """No more items; what is queued is still delivered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def cancel(self) -> list[_Item]:
        """No more items; drop what is queued and return it."""
        with self._cond:
            self._closed = True
            dropped = list(self._items)
            self._items.clear()
            self._frames = 0
            self._cond.notify_all()
            return dropped


@dataclass(slots=True)
class _Outage:
    start_pts: float | None
    start_wall: float
    reason: str
    attempts: int = 0


def _short(error: BaseException) -> str:
    if isinstance(error, DecodeError):
        return f"{error.what} ({error.reason})" if error.reason else error.what
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------------


class LiveSource:
    """Sampled `Frame`s of a live network source, for as long as it runs, across reconnections.

    Iterate it from one thread; call `close()` (from any thread, or set `stop`) to end it. The first
    `next()` starts connecting; iteration ends with `StopIteration` after `close()`, after the end of
    the stream when `stop_at_end` is set, or raises the last `DecodeError` when the policy's
    `max_attempts` consecutive attempts failed. See the module docstring for `frame_index`,
    `pts_seconds` and gaps.

    Args:
        source: an rtsp://, rtsps://, http:// or https:// URL (HLS playlists included); checked against
            `options.allowed_protocols` here, so a refused scheme fails at construction.
        stream_id: copied into every `Frame` and `Gap`.
        sampler: which frames to yield; 1 fps on the PTS timeline by default. It sees every received
            frame, so sampling is that of the whole stream, dropped frames aside.
        options: open/read timeouts and the rest, used for every connection. A smaller
            `probe_seconds` shortens every (re)connection, and so every gap.
        reconnect: the backoff policy; unlimited retries by default.
        stall_timeout: seconds a connection (once open) may go without a decoded frame before it is
            aborted and reconnected; `options.read_timeout` by default.
        on_gap: called with each `Gap`, from the iterating thread (or from `close()`'s caller for a
            gap still open at close); exceptions propagate to that caller.
        stop: an event that, once set, closes the source as `close()` does (checked every 0.1 s).
        buffer_frames: decoded frames that may wait for the consumer before the oldest is dropped.
        stop_at_end: end iteration at a clean end of stream (a finished HLS event, a file served over
            HTTP) instead of reconnecting. Off by default because for a camera or a relay an end of
            stream means the server dropped the connection.
        abandon_after: seconds an aborted reader may take to return before it is abandoned.
        rng: random source for the backoff jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        stream_id: str,
        sampler: Sampler | None = None,
        *,
        options: SourceOptions | None = None,
        reconnect: ReconnectPolicy | None = None,
        stall_timeout: float | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        stop: threading.Event | None = None,
        buffer_frames: int = 16,
        stop_at_end: bool = False,
        abandon_after: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.source = os.fspath(source)
        self.options = options or SourceOptions()
        scheme = check_protocol(self.source, self.options.allowed_protocols)
        if scheme not in NETWORK_SCHEMES:
            raise ValueError(
                f"{redact(self.source)}: LiveSource reads network streams (rtsp, rtsps, http, https), "
                f"not {scheme!r}; use VideoDecoder for files"
            )
        self.stall_timeout = self.options.read_timeout if stall_timeout is None else stall_timeout
        if not (math.isfinite(self.stall_timeout) and self.stall_timeout > 0):
            raise ValueError(f"stall_timeout must be a positive number, got {stall_timeout!r}")
        if buffer_frames < 1:
            raise ValueError(f"buffer_frames must be >= 1, got {buffer_frames}")
        self.stream_id = stream_id
        self._interrupter = _install_interrupter()
        self.reconnect = reconnect or ReconnectPolicy()
        self.stats = LiveStats()
        #: The most recent gaps (all of them go to `on_gap`); bounded so a flapping camera cannot grow it.
        self.gaps: deque[Gap] = deque(maxlen=1024)
        self._on_gap = on_gap
        self._stop = stop if stop is not None else threading.Event()
        self._stop_at_end = stop_at_end
        self._abandon_after = abandon_after
        self._rng = rng or random.Random()
        self._selector = (sampler or Sampler()).selector()
        self._handoff = _Handoff(buffer_frames)
        self._index = itertools.count()
        self._conn: _Connection | None = None
        self._supervisor: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Iterating-thread state, guarded by _state_lock because close() may finalise it from elsewhere;
        # re-entrant because on_gap runs under it and may itself call close().
        self._state_lock = threading.RLock()
        self._timeline = LiveTimeline()
        self._last_ended_conn = -1
        self._outage: _Outage | None = None
        self._started_wall: float | None = None
        self._finished = False

    # -- public API ---------------------------------------------------------------------------------

    def start(self) -> LiveSource:
        """Start connecting now rather than at the first `next()`; idempotent."""
        with self._start_lock:
            if self._stop.is_set():
                self._handoff.cancel()  # closed before it started: iteration ends at once
            elif self._supervisor is None:
                self._started_wall = time.time()
                self._supervisor = threading.Thread(
                    target=self._supervise_forever, name=f"live-{self.stream_id}", daemon=True
                )
                self._supervisor.start()
        return self

    @property
    def connected(self) -> bool:
        """Whether a connection is open and reading right now."""
        conn = self._conn
        return conn is not None and conn.phase == "reading"

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __iter__(self) -> LiveSource:
        return self

    def __next__(self) -> Frame:
        if self._finished:
            raise StopIteration
        self.start()
        while True:
            try:
                item = self._handoff.get()
            except _HandoffClosed:
                self._finish("the source was closed")
                raise StopIteration from None
            with self._state_lock:
                if self._finished:
                    raise StopIteration
                if isinstance(item, _Decoded):
                    frame = self._accept(item)
                    if frame is not None:
                        return frame
                elif isinstance(item, _Ended):
                    self._on_ended(item)
                else:
                    self._finish_locked(f"the source gave up ({_short(item.error)})")
                    raise item.error

    def close(self, timeout: float = 1.0) -> None:
        """Stop connecting and reading, wake the iterating thread, and release the connection.

        Returns within about `timeout` seconds from any state. A gap still open (the source was down
        when closed) is reported before returning.
        """
        self._stop.set()
        self._cancel_handoff()
        conn = self._conn
        if conn is not None:
            self._abort(conn, "closed")
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout)
        self._finish("the source was closed")

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- iterating thread ---------------------------------------------------------------------------

    def _accept(self, item: _Decoded) -> Frame | None:
        """Place a received frame on the timeline, close any outage with a gap, and sample it."""
        if item.conn <= self._last_ended_conn:
            return None  # from an abandoned reader, after its connection was written off
        if item.raw_pts is None:
            self.stats.missing_pts += 1
        pts = self._timeline.place(
            item.conn, item.conn_started_wall, item.raw_pts, item.arrival_wall, item.frame_seconds
        )
        if self._outage is not None:
            outage, self._outage = self._outage, None
            start_pts = pts if outage.start_pts is None else outage.start_pts
            self._report(
                Gap(
                    self.stream_id,
                    start_pts,
                    pts,
                    outage.start_wall,
                    item.arrival_wall,
                    _with_attempts(outage.reason, outage.attempts),
                )
            )
        if item.frame.is_corrupt:
            self.stats.corrupt_frames += 1
        if not self._selector.select(item.index, pts):
            return None
        image = frame_orientation(item.frame).apply(item.frame.to_ndarray(format="rgb24"))
        self.stats.frames_yielded += 1
        return Frame(self.stream_id, item.index, pts, image, item.arrival_wall)

    def _on_ended(self, item: _Ended) -> None:
        self._last_ended_conn = max(self._last_ended_conn, item.conn)
        if self._outage is not None:
            self._outage.attempts += 1
            return
        timeline = self._timeline
        if timeline.last_pts is not None and timeline.last_wall is not None:
            # The outage starts at the last frame we have, which is also where coverage stops.
            self._outage = _Outage(timeline.last_pts, timeline.last_wall, item.reason, 1)
        else:
            start = self._started_wall if self._started_wall is not None else item.started_wall
            self._outage = _Outage(None, start, item.reason, 1)

    def _cancel_handoff(self) -> None:
        """Wake the iterating thread for good, dropping waiting frames but not a connection's end: one
        that ended just before a close may not have reached the iterating thread, and its outage must
        still be reported."""
        pending = self._handoff.cancel()
        with self._state_lock:
            for item in pending:
                if isinstance(item, _Ended) and not self._finished:
                    self._on_ended(item)

    def _finish(self, why: str) -> None:
        with self._state_lock:
            self._finish_locked(why)

    def _finish_locked(self, why: str) -> None:
        """Report a gap still open at the end (if the stream had a timeline) and stop iterating."""
        if self._finished:
            return
        self._finished = True
        outage, self._outage = self._outage, None
        timeline = self._timeline
        if outage is None or outage.start_pts is None or timeline.last_wall is None:
            return
        now = time.time()
        end_pts = outage.start_pts + max(0.0, now - timeline.last_wall)
        reason = _with_attempts(outage.reason, outage.attempts) + f"; not recovered before {why}"
        self._report(Gap(self.stream_id, outage.start_pts, end_pts, outage.start_wall, now, reason))

    def _report(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.stats.gaps += 1
        log.info(
            "%s [%s]: gap of %.1f s (pts %.3f -> %.3f): %s",
            redact(self.source),
            self.stream_id,
            gap.wall_seconds,
            gap.start_pts,
            gap.end_pts,
            gap.reason,
        )
        if self._on_gap is not None:
            self._on_gap(gap)

    # -- supervisor thread --------------------------------------------------------------------------

    def _supervise_forever(self) -> None:
        retry = 0  # the number of the next retry: 1 after a lost connection, +1 per failed attempt
        failed = 0  # consecutive attempts that delivered no frame, for max_attempts
        try:
            for conn_id in itertools.count():
                if self._stop.is_set():
                    return
                conn = _Connection(conn_id, time.time())
                self._conn = conn
                self.stats.attempts += 1
                if conn_id == 0:
                    log.info("%s [%s]: connecting", redact(self.source), self.stream_id)
                else:
                    log.info("%s [%s]: reconnecting (retry %d)", redact(self.source), self.stream_id, retry)
                reader = threading.Thread(
                    target=self._read, args=(conn,), name=f"live-{self.stream_id}-{conn_id}", daemon=True
                )
                reader.start()
                self._watch(conn)
                if self._stop.is_set():
                    return
                if conn.ended_cleanly and conn.frames and self._stop_at_end:
                    log.info("%s [%s]: end of stream", redact(self.source), self.stream_id)
                    self._handoff.close()
                    return
                reason = self._reason(conn)
                self._handoff.put_event(_Ended(conn.id, conn.started_wall, reason))
                if conn.frames:
                    self.stats.losses += 1
                    retry, failed = 1, 0
                else:
                    retry, failed = retry + 1, failed + 1
                limit = self.reconnect.max_attempts
                if limit is not None and failed >= limit:
                    error = (
                        conn.error
                        if isinstance(conn.error, DecodeError)
                        else SourceUnreachable(self.source, reason)
                    )
                    log.error(
                        "%s [%s]: giving up after %d attempts without a frame: %s",
                        redact(self.source),
                        self.stream_id,
                        failed,
                        reason,
                    )
                    self._handoff.put_event(_GaveUp(error))
                    self._handoff.close()
                    return
                delay = self.reconnect.delay(retry, self._rng)
                log.warning(
                    "%s [%s]: %s; reconnecting in %.2f s", redact(self.source), self.stream_id, reason, delay
                )
                if self._stop.wait(delay):
                    return
        except BaseException as error:  # a bug here must surface in the iterating thread, not vanish
            log.exception("%s [%s]: live source supervisor failed", redact(self.source), self.stream_id)
            self._handoff.put_event(_GaveUp(error))
            self._handoff.close()
        finally:
            if self._stop.is_set():
                self._cancel_handoff()

    def _watch(self, conn: _Connection) -> None:
        """Wait for the reader of `conn` to finish, aborting it on stall, on close, or past its open
        deadline, and abandoning it if it does not return after an abort."""
        open_deadline = self.options.open_timeout + 1.0  # PyAV's own open timeout should fire first
        while True:
            if conn.done.is_set():
                return
            now = time.monotonic()
            if self._stop.is_set():
                self._abort(conn, "closed")
            elif conn.phase == "connecting" and now - conn.phase_since > open_deadline:
                self._abort(conn, f"connect timed out: no answer within {self.options.open_timeout:g} s")
            elif conn.phase == "reading" and now - conn.progress > self.stall_timeout:
                newly = self._abort(conn, f"stalled: no frames for {self.stall_timeout:g} s")
                self.stats.stalls += int(newly)
            if conn.aborted_at is not None and now - conn.aborted_at > self._abandon_after:
                with conn.lock:
                    if conn.finished:
                        return
                    conn.abandoned = True
                self.stats.abandoned_readers += 1
                log.error(
                    "%s [%s]: reader did not return %.1f s after being aborted (%s); abandoning it",
                    redact(self.source),
                    self.stream_id,
                    self._abandon_after,
                    conn.abort_reason,
                )
                return
            conn.done.wait(_POLL_SECONDS)

    def _abort(self, conn: _Connection, reason: str) -> bool:
        """Ask `conn`'s reader to stop and interrupt its FFmpeg call; False if it was already asked."""
        with conn.lock:
            if conn.abort_reason is not None or conn.finished:
                return False
            conn.abort_reason = reason
            conn.aborted_at = time.monotonic()
            if self._interrupter is not None and conn.ident is not None:
                self._interrupter.abort(conn.ident)
        if reason != "closed":
            log.warning("%s [%s]: %s; aborting the connection", redact(self.source), self.stream_id, reason)
        return True

    def _reason(self, conn: _Connection) -> str:
        if conn.abort_reason is not None:
            return conn.abort_reason
        if not conn.opened:
            return f"connect failed: {_short(conn.error) if conn.error else 'unknown error'}"
        if conn.error is not None:
            return f"connection lost: {_short(conn.error)}"
        return "connection lost: end of stream"

    # -- reader threads -----------------------------------------------------------------------------

    def _read(self, conn: _Connection) -> None:
        """Open the source and hand every decoded frame over until the stream ends, fails or is aborted."""
        with conn.lock:
            conn.ident = threading.get_ident()
            aborted = conn.abort_reason is not None
        try:
            if aborted:
                return
            try:
                opened = open_source(self.source, self.options)
            except DecodeError as error:
                conn.error = error
                return
            try:
                conn.opened = True
                self.stats.connects += 1
                log.info("%s [%s]: connected", redact(self.source), self.stream_id)
                stream = opened.stream
                rate = stream.guessed_rate or stream.average_rate
                frame_seconds = float(1 / rate) if rate else _FALLBACK_FRAME_SECONDS
                conn.progress = time.monotonic()
                conn.phase, conn.phase_since = "reading", conn.progress
                for vframe in _decoded_frames(opened, self.stats):
                    arrival = time.time()
                    conn.progress = time.monotonic()
                    if conn.abort_reason is not None or conn.abandoned:
                        return
                    time_base = vframe.time_base or stream.time_base
                    raw = None if vframe.pts is None or time_base is None else float(vframe.pts * time_base)
                    conn.frames += 1
                    self.stats.frames_decoded += 1
                    item = _Decoded(
                        conn.id, conn.started_wall, next(self._index), raw, vframe, arrival, frame_seconds
                    )
                    self.stats.frames_dropped += self._handoff.put_frame(item)
                # An aborted read can also end the loop quietly (the demuxer gives up after repeated
                # interrupted reads), which is not the source ending.
                conn.ended_cleanly = conn.abort_reason is None
            except DecodeError as error:
                conn.error = error
            finally:
                opened.close()
        except Exception as error:  # anything unexpected ends this connection, not the source
            log.warning("%s [%s]: reader failed", redact(self.source), self.stream_id, exc_info=True)
            conn.error = error
        finally:
            with conn.lock:
                conn.finished = True
                conn.phase = "done"
                if self._interrupter is not None:
                    self._interrupter.clear(threading.get_ident())
            conn.done.set()


def _with_attempts(reason: str, attempts: int) -> str:
    retries = attempts - 1 if attempts else 0
    if retries <= 0:
        return reason
    return f"{reason}; {retries} failed reconnection attempt{'s' if retries != 1 else ''}"


__all__ = ["Gap", "LiveSource", "LiveStats", "LiveTimeline", "ReconnectPolicy"]
