"""The decoder actor's flow control without Ray: replies collected in frame order as they complete, the
commit clock, the connection status mirrored into a real Redis job store, and the error throttle."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors.flow import CommitClock, ConnectionStatus, InFlight
from pipeline.decode.outages import ErrorThrottle
from pipeline.frames import Frame
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore


def frame(i: int) -> Frame:
    return Frame("s", i, i / 10, np.zeros((1, 1, 3), np.uint8), 1000.0 + i)


class Response:
    """Stands in for a Serve DeploymentResponse: awaited through a future the test resolves."""

    def __init__(self) -> None:
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.cancelled = False

    async def reply(self) -> str:
        return await self.future

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_replies_are_collected_in_frame_order_as_soon_as_the_head_is_answered() -> None:
    async def scenario() -> None:
        window = InFlight(limit=3)
        sent = [Response() for _ in range(3)]
        for i, response in enumerate(sent):
            window.add(frame(i), response, response.reply())
        assert window.full and len(window) == 3
        sent[1].future.set_result("one")  # answered out of order: waits for frame 0
        await window.wait(set(), timeout=0.05)
        assert list(window.ready()) == []
        sent[0].future.set_result("zero")
        await window.wait(set(), timeout=1.0)  # returns at once: the head is answered
        got = [(f.frame_index, reply) for f, reply in window.ready()]
        assert got == [(0, "zero"), (1, "one")]
        assert len(window) == 1 and not window.full

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_failed_reply_raises_in_order_and_cancel_abandons_the_rest() -> None:
    async def scenario() -> None:
        window = InFlight(limit=4)
        sent = [Response() for _ in range(3)]
        for i, response in enumerate(sent):
            window.add(frame(i), response, response.reply())
        sent[0].future.set_result("zero")
        sent[1].future.set_exception(RuntimeError("replica died"))
        await asyncio.sleep(0)
        replies = window.ready()
        assert next(replies)[1] == "zero"
        with pytest.raises(RuntimeError, match="replica died"):
            next(replies)
        window.cancel()
        assert len(window) == 0 and sent[2].cancelled

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_wait_returns_when_another_future_is_done() -> None:
    async def scenario() -> None:
        window = InFlight(limit=2)
        getter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, getter.set_result, 7)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await window.wait({getter}, timeout=5.0)
        assert getter.done() and loop.time() - began < 2.0

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_commit_clock_commits_within_the_interval_at_any_rate() -> None:
    clock = FakeClock()
    commits = CommitClock(flush_frames=4, interval_s=10.0, clock=clock)
    assert commits.decide(0) == (False, False)
    assert commits.decide(1) == (False, False)  # one frame, interval not over: keep it
    assert commits.wait_s(1, cap=0.5) == 0.5
    clock.now += 9.8
    assert commits.wait_s(1, cap=0.5) == pytest.approx(0.2)
    assert commits.wait_s(0, cap=0.5) == 0.5  # nothing waiting: no reason to wake early
    clock.now += 0.2
    assert commits.decide(1) == (True, True)  # 1 fps: committed after 10 s, not after 4 frames
    commits.handed_over(1, committed=True)
    assert commits.decide(4) == (True, False)  # a full batch goes over without forcing a commit
    commits.handed_over(4, committed=False)
    clock.now += 10.0
    assert commits.decide(0) == (True, True)  # what the writer holds gets committed on time
    commits.handed_over(0, committed=True)
    assert commits.handed == 0 and commits.decide(0) == (False, False)
    commits.handed_over(2, committed=False)
    commits.restart()  # a new attempt: the writer holds nothing
    assert commits.handed == 0 and commits.decide(0) == (False, False)


def test_commit_clock_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CommitClock(flush_frames=0, interval_s=1.0)
    with pytest.raises(ValueError):
        CommitClock(flush_frames=1, interval_s=0.0)


def test_error_throttle_lets_one_through_per_interval_and_counts_the_rest() -> None:
    clock = FakeClock()
    throttle = ErrorThrottle(30.0, clock=clock)
    assert throttle.admit() == 0
    clock.now += 1
    assert throttle.admit() is None
    clock.now += 10
    assert throttle.admit() is None
    clock.now += 19
    assert throttle.admit() == 2  # 30 s after the first: let through, with the two held back
    assert throttle.admit() is None
    with pytest.raises(ValueError):
        ErrorThrottle(-1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with EmbeddedRedis(tmp_path / "redis") as server:
        job_store = JobStore.from_url(server.url)
        job_store.create_job("job", {}, ["cam"])
        job_store.set_status("job", "running")
        job_store.set_stream_status("job", "cam", "running")
        yield job_store


def test_connection_status_shows_reconnecting_with_rate_limited_errors(store: JobStore) -> None:
    status = ConnectionStatus(store, "job", "cam", error_interval_s=30.0)
    clock = FakeClock()
    status.throttle = ErrorThrottle(30.0, clock=clock)
    status("reconnecting", "connect failed: could not connect (Connection refused)")
    assert store.stream_status("job", "cam") == "reconnecting"
    for _ in range(5):
        clock.now += 2
        status("reconnecting", "connect failed: could not connect (Connection refused)")
    clock.now += 30
    status("reconnecting", "connect failed: could not connect (Connection refused)")
    errors = store.errors("job", "cam")
    assert [e["kind"] for e in errors] == ["reconnecting", "reconnecting"]
    assert errors[0]["message"] == "connect failed: could not connect (Connection refused)"
    assert errors[1]["message"].endswith("(5 more failed attempts since the last report)")
    status("running", None)
    assert store.stream_status("job", "cam") == "running"
    store.set_stream_status("job", "cam", "cancelled")
    status("reconnecting", "connection lost: end of stream")  # too late: the final status stands
    assert store.stream_status("job", "cam") == "cancelled"
