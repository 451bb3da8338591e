"""The decoder actor's flow control, apart from the actor so each piece can be tested on its own: the
window of frames in flight to the segmentation pool, the clock that decides when answers are committed,
and the mirror of a live source's connection state into the stream's status.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from actors.service.metrics import ray_metrics
from pipeline.decode.outages import ErrorThrottle
from pipeline.frames import Frame
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import JobStateError
from pipeline.jobs.stream_metrics import record_reconnect

log = logging.getLogger(__name__)


class InFlight:
    """Frames sent to the pool, answered in any order, collected in frame order as soon as they can be.

    Each reply is awaited by its own task, so a reply is taken the moment it and every frame before it
    are answered, not when the window is full or the source ends; the writer needs frame order, so an
    answered frame waits only for frames sent before it.

    Args:
        limit: frames in flight at most (`max_in_flight`): enough to fill batches across replicas,
            bounded so a stalled pool holds at most this many frames.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._items: collections.deque[tuple[Frame, Any, asyncio.Future[Any]]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.limit

    def add(self, frame: Frame, response: Any, reply: Awaitable[Any]) -> None:
        """Track `frame`, sent as `response` (kept to cancel it), whose answer `reply` awaits."""
        task = asyncio.ensure_future(reply)
        # A task abandoned with an error (the attempt failed first) must not log "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._items.append((frame, response, task))

    def ready(self) -> Iterator[tuple[Frame, Any]]:
        """Pop (frame, reply) for each answered frame at the head, in frame order; a failed reply raises
        its error here, leaving the frames after it in flight."""
        while self._items and self._items[0][2].done():
            frame, _, task = self._items.popleft()
            yield frame, task.result()

    async def wait(self, others: set[asyncio.Future[Any]], timeout: float) -> None:
        """Wait until the head frame is answered, one of `others` is done, or `timeout` seconds pass."""
        waits = set(others)
        if self._items:
            waits.add(self._items[0][2])
        if waits:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)

    def cancel(self) -> None:
        """Abandon every frame in flight (the attempt is over): cancel the requests and their waiters."""
        while self._items:
            _, response, task = self._items.popleft()
            task.cancel()
            with contextlib.suppress(Exception):
                response.cancel()


@dataclass(frozen=True, slots=True)
class CommittedFrame:
    """The last frame this actor saw committed: a new attempt of a live stream continues after it."""

    frame_index: int
    pts_seconds: float
    wall_time: float


class CommitClock:
    """When answered frames go to the writer, and when they are committed.

    Frames are handed over in batches of `flush_frames` (few writer calls at high frame rates), and
    whenever `interval_s` has passed since the last commit they are handed over with `commit=True`, so
    that at any frame rate an answered frame is in Parquet within about `interval_s`: the promise a live
    dashboard needs, and the bound on what a crash can lose.

    Args:
        flush_frames: answered frames that make a batch.
        interval_s: longest time between commits while there is something to commit.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, flush_frames: int, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if flush_frames < 1:
            raise ValueError(f"flush_frames must be >= 1, got {flush_frames}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.flush_frames = flush_frames
        self.interval_s = interval_s
        self._clock = clock
        self.last_commit = clock()
        self.handed = 0  # frames handed to the writer since the last commit

    def restart(self) -> None:
        """A new attempt: the writer holds nothing and the interval starts now."""
        self.last_commit = self._clock()
        self.handed = 0

    def decide(self, answered: int) -> tuple[bool, bool]:
        """(hand over now, with commit) for `answered` frames waiting to be handed over."""
        commit = bool(answered or self.handed) and self._clock() - self.last_commit >= self.interval_s
        return commit or answered >= self.flush_frames, commit

    def handed_over(self, frames: int, committed: bool) -> None:
        """`frames` went to the writer; `committed` when that call committed everything it holds."""
        if committed:
            self.last_commit = self._clock()
            self.handed = 0
        else:
            self.handed += frames

    def wait_s(self, answered: int, cap: float) -> float:
        """How long the caller may wait before `decide` may change its mind: until the commit is due
        when something waits to be committed, else `cap`."""
        if not (answered or self.handed):
            return cap
        return min(cap, max(0.0, self.last_commit + self.interval_s - self._clock()))


class ConnectionStatus:
    """Mirrors a live source's connection state into the stream's status, for `LiveSource(on_status=)`.

    `reconnecting` while the source cannot connect or lost its connection, `running` again at the first
    frame; each failed attempt's error is recorded, rate-limited by an `ErrorThrottle`, so `sanstream
    status` shows why a camera delivers nothing instead of a healthy-looking stream without rows.
    Store errors are logged, never raised: they must not end the source's thread.
    """

    def __init__(self, store: JobStore, job_id: str, stream_id: str, error_interval_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.stream_id = stream_id
        self.throttle = ErrorThrottle(error_interval_s)

    def __call__(self, status: str, reason: str | None) -> None:
        previous = None
        try:
            previous = self.store.set_stream_status(self.job_id, self.stream_id, status)
        except JobStateError:
            pass  # already stopping (interrupted, cancelled): the driver's status stands
        except Exception:
            log.warning("stream %s: could not set status %s", self.stream_id, status, exc_info=True)
        if status == "reconnecting" and previous == "running":
            self._count_reconnect()
        if status != "reconnecting" or reason is None:
            return
        held = self.throttle.admit()
        if held is None:
            return
        if held:
            reason += f" ({held} more failed attempt{'s' if held != 1 else ''} since the last report)"
        try:
            self.store.record_error(self.job_id, self.stream_id, "reconnecting", reason)
        except Exception:
            log.warning("stream %s: could not record %r", self.stream_id, reason, exc_info=True)

    def _count_reconnect(self) -> None:
        """One reconnection: the stream went from running to reconnecting. The status script returns the
        previous status atomically, so each such transition is counted exactly once; failed attempts
        while already reconnecting are not counted again."""
        try:
            record_reconnect(self.store, self.job_id, self.stream_id)
        except Exception:
            log.warning("stream %s: could not count a reconnection", self.stream_id, exc_info=True)
        ray_metrics().reconnected(self.job_id, self.stream_id)
