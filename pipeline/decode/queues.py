"""A bounded hand-off between the decode thread and whatever consumes its frames.

Decoding runs ahead of segmentation, so the buffer between them needs a bound (a 4K frame is 25 MB) and a
policy for when it is full, which depends on the source:

* `block` (files): the decoder waits. Nothing is lost and a file simply decodes as fast as the model can
  segment it.
* `drop_oldest` (live cameras): the decoder never waits, because a blocked reader stops draining the
  socket and the camera or server disconnects it; instead the oldest queued frame is discarded and
  counted, so the consumer always works on the freshest frames and lag stays bounded.

`close()` ends a stream gracefully (consumers drain what is queued), `cancel()` abandons it (queued frames
are discarded); both wake every blocked producer and consumer so no thread hangs on shutdown.
`queue.Queue` offers neither a drop policy nor a way to wake waiters, hence this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Generic, Literal, TypeVar

from pipeline.frames import Frame

T = TypeVar("T")

QueuePolicy = Literal["block", "drop_oldest"]


class QueueClosed(Exception):
    """Raised by `put` once the queue is closed, and by `get` once it is closed and drained."""


class FrameQueue(Generic[T]):
    """A bounded, thread-safe FIFO with a full-queue policy and close/cancel.

    Generic so that tests and other stages can pass any item; the decode stage passes `Frame`.
    """

    def __init__(self, maxsize: int, policy: QueuePolicy = "block") -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"policy must be 'block' or 'drop_oldest', got {policy!r}")
        self.maxsize = maxsize
        self.policy: QueuePolicy = policy
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._dropped = 0
        # Coroutines waiting in `get_async`, woken from the producer's thread through their own loop.
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def dropped(self) -> int:
        """Items discarded by `drop_oldest` (not those discarded by `cancel`)."""
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, item: T, timeout: float | None = None) -> None:
        """Add `item`; with `block`, wait for room (up to `timeout` seconds, then `queue.Full`).

        Raises:
            QueueClosed: the queue was closed or cancelled, before or while waiting; the producer should
                stop decoding.
        """
        with self._not_full:
            if self._closed:
                raise QueueClosed
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_oldest":
                    self._items.popleft()
                    self._dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise queue.Full
                        self._not_full.wait(remaining)
                    if self._closed:
                        raise QueueClosed
            self._items.append(item)
            self._not_empty.notify()
            self._wake_async()

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting up to `timeout` seconds (then `queue.Empty`).

        Raises:
            QueueClosed: the queue is closed and empty, or was cancelled.
        """
        with self._not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise QueueClosed
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise queue.Empty
                self._not_empty.wait(remaining)
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def close(self) -> None:
        """No more puts; consumers still receive what is queued, then `QueueClosed`."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
            self._wake_async()

    def cancel(self) -> None:
        """Close and discard everything queued, for shutting a stream down without draining it."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._not_empty.notify_all()
            self._not_full.notify_all()
            self._wake_async()

    async def get_async(self, timeout: float | None = None) -> T:
        """`get` for a coroutine: waits without a thread, so one event loop can consume the queues of
        many streams (a thread pool would make streams queue for its few threads).

        Raises:
            QueueClosed: the queue is closed and empty, or was cancelled.
            queue.Empty: nothing arrived within `timeout` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    self._not_full.notify()
                    return item
                if self._closed:
                    raise QueueClosed
                woken: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, woken))
            remaining = None if deadline is None else deadline - loop.time()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(woken, remaining)
            except TimeoutError:
                raise queue.Empty from None
            finally:
                with self._lock:
                    if (loop, woken) in self._async_waiters:
                        self._async_waiters.remove((loop, woken))

    def _wake_async(self) -> None:
        """Wake every `get_async` waiter (called with the lock held, from any thread)."""
        for loop, woken in self._async_waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting there
                loop.call_soon_threadsafe(_resolve, woken)
        self._async_waiters.clear()

    def __iter__(self) -> Iterator[T]:
        """Yield items until the queue is closed and drained (or cancelled)."""
        while True:
            try:
                yield self.get()
            except QueueClosed:
                return


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def frame_queue(maxsize: int, live: bool) -> FrameQueue[Frame]:
    """A frame queue with the policy that suits the source: `drop_oldest` if `live`, else `block`."""
    return FrameQueue[Frame](maxsize, "drop_oldest" if live else "block")
