"""FrameQueue policies and shutdown: no lost frames with `block`, bounded lag with `drop_oldest`, and no
thread left hanging after close/cancel."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.decode import FrameQueue, QueueClosed, frame_queue
from pipeline.frames import Frame


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run fn in a thread; the list receives its result or the exception it raised."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_block_policy_applies_backpressure_and_loses_nothing() -> None:
    q: FrameQueue[int] = FrameQueue(2, "block")
    q.put(0)
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.05)
    thread, result = in_thread(lambda: q.put(2))
    time.sleep(0.05)
    assert thread.is_alive()  # producer waits for room
    assert q.get() == 0
    thread.join(2)
    assert not thread.is_alive() and result == [None]
    assert [q.get(), q.get()] == [1, 2]
    assert q.dropped == 0


def test_block_policy_producer_consumer_threads() -> None:
    q: FrameQueue[int] = FrameQueue(3, "block")

    def produce() -> None:
        for i in range(500):
            q.put(i)
        q.close()

    thread, _ = in_thread(produce)
    assert list(q) == list(range(500))
    thread.join(2)


def test_drop_oldest_never_blocks_and_counts_drops() -> None:
    q: FrameQueue[int] = FrameQueue(3, "drop_oldest")
    started = time.monotonic()
    for i in range(10):
        q.put(i)
    assert time.monotonic() - started < 0.5
    assert q.dropped == 7 and len(q) == 3
    assert [q.get(), q.get(), q.get()] == [7, 8, 9]  # the freshest frames survive


def test_get_timeout() -> None:
    q: FrameQueue[int] = FrameQueue(1)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_close_wakes_blocked_consumer() -> None:
    q: FrameQueue[int] = FrameQueue(2)
    thread, result = in_thread(q.get)
    time.sleep(0.05)
    q.close()
    thread.join(2)
    assert not thread.is_alive() and isinstance(result[0], QueueClosed)


def test_close_wakes_blocked_producer_and_drains() -> None:
    q: FrameQueue[int] = FrameQueue(1, "block")
    q.put(1)
    thread, result = in_thread(lambda: q.put(2))
    time.sleep(0.05)
    q.close()
    thread.join(2)
    assert not thread.is_alive() and isinstance(result[0], QueueClosed)
    assert q.get() == 1  # close keeps what was queued for consumers
    with pytest.raises(QueueClosed):
        q.get()
    with pytest.raises(QueueClosed):
        q.put(3)


def test_cancel_discards_and_wakes_everyone() -> None:
    full: FrameQueue[int] = FrameQueue(1)
    full.put(1)
    producer, produced = in_thread(lambda: full.put(2))
    empty: FrameQueue[int] = FrameQueue(1)
    consumer, consumed = in_thread(empty.get)
    time.sleep(0.05)
    full.cancel()
    empty.cancel()
    producer.join(2)
    consumer.join(2)
    assert isinstance(produced[0], QueueClosed) and isinstance(consumed[0], QueueClosed)
    assert len(full) == 0 and full.closed
    with pytest.raises(QueueClosed):
        full.get()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        FrameQueue(0)
    with pytest.raises(ValueError):
        FrameQueue(1, "newest")  # type: ignore[arg-type]


def test_frame_queue_policy_by_liveness() -> None:
    frame = Frame("s", 0, 0.0, np.zeros((1, 1, 3), np.uint8), 0.0)
    live = frame_queue(1, live=True)
    live.put(frame)
    live.put(frame)
    assert live.policy == "drop_oldest" and live.dropped == 1
    assert frame_queue(1, live=False).policy == "block"


def test_get_async_receives_items_from_producer_threads_in_order() -> None:
    """Many queues fed by their own threads, consumed on one event loop without any thread of its own."""
    queues = [FrameQueue[int](2, "block") for _ in range(8)]

    def produce(q: FrameQueue[int]) -> None:
        for i in range(50):
            q.put(i)
            if i % 7 == 0:
                time.sleep(0.001)
        q.close()

    async def consume(q: FrameQueue[int]) -> list[int]:
        got = []
        while True:
            try:
                got.append(await q.get_async(timeout=5))
            except QueueClosed:
                return got

    async def main() -> list[list[int]]:
        threads = [threading.Thread(target=produce, args=(q,), daemon=True) for q in queues]
        for thread in threads:
            thread.start()
        results = await asyncio.gather(*(consume(q) for q in queues))
        for thread in threads:
            thread.join(timeout=5)
        return list(results)

    assert asyncio.run(main()) == [list(range(50))] * len(queues)


def test_get_async_times_out_and_is_woken_by_close_and_cancel() -> None:
    async def main() -> None:
        empty = FrameQueue[int](1)
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            await empty.get_async(timeout=0.1)
        assert 0.09 <= time.monotonic() - started < 2
        assert not empty._async_waiters, "a timed-out waiter must not stay registered"
        for end in ("close", "cancel"):
            q = FrameQueue[int](1)
            threading.Timer(0.05, getattr(q, end)).start()
            started = time.monotonic()
            with pytest.raises(QueueClosed):
                await q.get_async(timeout=10)
            assert time.monotonic() - started < 2, f"{end} did not wake the waiter"

    asyncio.run(main())


def test_a_hung_queue_does_not_delay_another_on_the_same_loop() -> None:
    """One stream whose source never delivers must not hold up another stream's frames."""

    async def main() -> float:
        hung, busy = FrameQueue[int](1), FrameQueue[int](1)
        waiters = [asyncio.ensure_future(hung.get_async(timeout=30)) for _ in range(20)]
        threading.Thread(
            target=lambda: [busy.put(i) for i in range(200)] and busy.close(), daemon=True
        ).start()
        started = time.monotonic()
        count = 0
        while True:
            try:
                await busy.get_async(timeout=5)
                count += 1
            except QueueClosed:
                break
        took = time.monotonic() - started
        hung.cancel()
        for waiter in waiters:
            with pytest.raises(QueueClosed):
                await waiter
        assert count == 200
        return took

    assert asyncio.run(main()) < 5
