"""The hand-off between a live source's reader threads and the thread that iterates it.

A reader must never block: a live socket must be drained or the server drops the connection. So frames
waiting for a slow consumer are dropped oldest first, while events (a connection ended, the source gave
up) are never dropped, since the gaps and errors they become must not be lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import av


@dataclass(slots=True)
class Connection:
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
class Decoded:
    conn: int
    conn_started_wall: float
    index: int
    raw_pts: float | None
    frame: av.VideoFrame
    arrival_wall: float
    frame_seconds: float


@dataclass(slots=True)
class Ended:
    """A connection attempt is over (lost after frames, or failed without any), and why."""

    conn: int
    started_wall: float
    reason: str


@dataclass(slots=True)
class GaveUp:
    error: BaseException


Item = Decoded | Ended | GaveUp


class HandoffClosed(Exception):
    pass


class Handoff:
    """A FIFO of frames and events where frames are dropped (oldest first) when too many wait, and
    events (connection ended, gave up) never are, since gaps and errors must not be lost."""

    def __init__(self, max_frames: int) -> None:
        self._items: deque[Item] = deque()
        self._frames = 0
        self._max_frames = max_frames
        self._cond = threading.Condition()
        self._closed = False

    def put_frame(self, item: Decoded) -> int:
        """Queue `item`; returns how many waiting frames were dropped to make room (0 or 1)."""
        with self._cond:
            if self._closed:
                return 0
            dropped = 0
            if self._frames >= self._max_frames:
                for i, old in enumerate(self._items):
                    if isinstance(old, Decoded):
                        del self._items[i]
                        self._frames -= 1
                        dropped = 1
                        break
            self._items.append(item)
            self._frames += 1
            self._cond.notify()
            return dropped

    def put_event(self, item: Ended | GaveUp) -> None:
        with self._cond:
            if not self._closed:
                self._items.append(item)
                self._cond.notify()

    def get(self) -> Item:
        with self._cond:
            while not self._items:
                if self._closed:
                    raise HandoffClosed
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, Decoded):
                self._frames -= 1
            return item

    def close(self) -> None:
        """No more items; what is queued is still delivered."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def cancel(self) -> list[Item]:
        """No more items; drop what is queued and return it."""
        with self._cond:
            self._closed = True
            dropped = list(self._items)
            self._items.clear()
            self._frames = 0
            self._cond.notify_all()
            return dropped


__all__ = ["Connection", "Decoded", "Ended", "GaveUp", "Handoff", "HandoffClosed", "Item"]
