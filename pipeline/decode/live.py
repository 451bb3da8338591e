"""Live network sources (RTSP/RTSPS, HTTP(S) incl. HLS) that survive outages: reconnect, watch for
stalls, and report every outage as a gap.

`VideoDecoder` treats a dropped camera as the end of the stream. A live job must instead keep going for
days across camera reboots, network blips and server restarts, while telling the user exactly which
stretches of time were not analysed. `LiveSource` is that loop, in two halves that share nothing but a
`Handoff` (`handoff.py`):

* the connection side (`supervisor.py`): connect and read timeouts, the stall watchdog, aborting or
  abandoning a stuck reader, and reconnection with backoff; one supervisor thread per source and one
  reader thread per connection, the reader handing over *every* decoded frame (the oldest waiting frame
  is dropped and counted when the consumer falls behind, `LiveStats.frames_dropped`);
* this module, the iterating thread: it owns the timeline, sampling and gap state, turns the frames
  handed over into sampled `Frame`s and the connections that ended into gaps.

`ReconnectPolicy`, `Gap` and `LiveTimeline` live in `outages.py`. `close()` (or setting the `stop` event
passed in) ends everything from any state (connecting, reading, sleeping in backoff) in well under a
second.

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
A source that replaces an earlier attempt at the stream (after a crash of the machinery around it) is
given a `ResumePoint`: it starts inside an outage that began at the last committed frame, so its timeline
continues from there and the frames lost in between become a gap like any other outage. `on_status`
follows the outages as they happen ("reconnecting" with each failed attempt's reason, "running" at the
first frame after), for a status that shows a camera that cannot be reached.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.decode.errors import redact
from pipeline.decode.handoff import Connection, Decoded, Ended, Handoff, HandoffClosed
from pipeline.decode.interrupt import install_interrupter
from pipeline.decode.orientation import frame_orientation
from pipeline.decode.outages import Gap, LiveTimeline, ReconnectPolicy, ResumePoint
from pipeline.decode.sampling import Sampler
from pipeline.decode.source import NETWORK_SCHEMES, SourceOptions, check_protocol
from pipeline.decode.supervisor import LiveStats, LiveSupervisor, short_error
from pipeline.frames import Frame

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Outage:
    start_pts: float | None
    start_wall: float
    reason: str
    attempts: int = 0


class LiveSource(LiveSupervisor):
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
        resume: where an earlier attempt at the stream left off: the timeline continues after it and
            the time up to this source's first frame is reported as a gap with its reason.
        on_status: called with ("reconnecting", reason) each time a connection attempt fails or a
            connection is lost, and with ("running", None) at the first frame after that, from the
            iterating thread; not called while closing. For a stream status that shows a camera
            that cannot be reached, rather than one that looks healthy and analyses nothing.
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
        resume: ResumePoint | None = None,
        on_status: Callable[[str, str | None], None] | None = None,
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
        self._interrupter = install_interrupter()
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
        self._handoff = Handoff(buffer_frames)
        self._index = itertools.count()
        self._conn: Connection | None = None
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
        self._on_status = on_status
        if resume is not None:
            self._timeline.continue_after(resume.pts, resume.wall)
            # An outage already open: the first frame closes it with a gap, as after a reconnection.
            self._outage = _Outage(resume.pts, resume.wall, resume.reason, 1)

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
            except HandoffClosed:
                self._finish("the source was closed")
                raise StopIteration from None
            with self._state_lock:
                if self._finished:
                    raise StopIteration
                if isinstance(item, Decoded):
                    frame = self._accept(item)
                    if frame is not None:
                        return frame
                elif isinstance(item, Ended):
                    self._on_ended(item)
                else:
                    self._finish_locked(f"the source gave up ({short_error(item.error)})")
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

    def _accept(self, item: Decoded) -> Frame | None:
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
            self._status("running", None)
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

    def _on_ended(self, item: Ended) -> None:
        self._last_ended_conn = max(self._last_ended_conn, item.conn)
        self._status("reconnecting", item.reason)
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

    def _status(self, status: str, reason: str | None) -> None:
        if self._on_status is not None and not self._stop.is_set():
            self._on_status(status, reason)

    def _cancel_handoff(self) -> None:
        """Wake the iterating thread for good, dropping waiting frames but not a connection's end: one
        that ended just before a close may not have reached the iterating thread, and its outage must
        still be reported."""
        pending = self._handoff.cancel()
        with self._state_lock:
            for item in pending:
                if isinstance(item, Ended) and not self._finished:
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


def _with_attempts(reason: str, attempts: int) -> str:
    retries = attempts - 1 if attempts else 0
    if retries <= 0:
        return reason
    return f"{reason}; {retries} failed reconnection attempt{'s' if retries != 1 else ''}"


__all__ = ["Gap", "LiveSource", "LiveTimeline", "ReconnectPolicy", "ResumePoint"]
