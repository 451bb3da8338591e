"""`paced`: a file's frames released at the file's own frame rate (`realtime: true`), with a fake clock so
the schedule is checked exactly and without waiting, plus one short test on the real clock."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.decode.pacing import paced
from pipeline.frames import Frame

IMAGE = np.zeros((2, 2, 3), np.uint8)


def frames(*pts: float) -> list[Frame]:
    return [Frame("cam", i, p, IMAGE, 0.0) for i, p in enumerate(pts)]


class FakeClock:
    """A clock that only moves when slept on (or when a test moves it), recording every sleep."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def release_times(source: list[Frame], clock: FakeClock, stall: float = 0.0) -> list[float]:
    """When each frame is yielded; the consumer spends `stall` seconds on the first frame it receives."""
    times = []
    for _ in paced(source, clock=clock, sleep=clock.sleep):
        times.append(clock.now)
        if len(times) == 1:
            clock.now += stall
    return times


def test_frames_are_released_on_their_timestamps():
    clock = FakeClock()
    assert release_times(frames(5.0, 5.04, 5.08, 5.5), clock) == pytest.approx([100.0, 100.04, 100.08, 100.5])


def test_a_stalled_consumer_gets_late_frames_at_once_then_the_schedule_resumes():
    clock = FakeClock()
    times = release_times(frames(0.0, 0.1, 0.2, 0.3, 0.4), clock, stall=0.25)
    # Frames 1 and 2 fell due during the stall: released at once, none dropped; frame 3 is on time again.
    assert times == pytest.approx([100.0, 100.25, 100.25, 100.3, 100.4])


def test_backwards_timestamps_are_not_waited_for_and_restart_the_schedule():
    clock = FakeClock()
    times = release_times(frames(0.0, 1.0, 2.0, 0.0, 0.5, 1.0), clock)
    assert times == pytest.approx([100.0, 101.0, 102.0, 102.0, 102.5, 103.0])


def test_a_forward_jump_is_waited_out_in_full():
    clock = FakeClock()
    assert release_times(frames(0.0, 600.0), clock) == pytest.approx([100.0, 700.0])
    assert clock.sleeps == pytest.approx([600.0])


def test_frames_without_a_finite_timestamp_pass_at_once():
    clock = FakeClock()
    times = release_times(frames(float("nan"), 1.0, float("inf"), 2.0), clock)
    assert times == pytest.approx([100.0, 100.0, 100.0, 101.0])


def test_empty_input_and_order_are_kept():
    clock = FakeClock()
    assert list(paced([], clock=clock, sleep=clock.sleep)) == []
    source = frames(0.0, 0.0, 0.01)
    released = list(paced(source, clock=clock, sleep=clock.sleep))
    assert [(f.frame_index, f.pts_seconds) for f in released] == [
        (f.frame_index, f.pts_seconds) for f in source
    ]


def test_real_clock_takes_the_sequence_duration():
    source = frames(*(i * 0.05 for i in range(10)))
    began = time.monotonic()
    assert [f.frame_index for f in paced(source)] == list(range(10))
    assert time.monotonic() - began >= 0.45


def test_stop_ends_a_long_wait_and_the_iteration():
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    received = []
    began = time.monotonic()
    for frame in paced(frames(0.0, 60.0, 120.0), stop):
        received.append(frame.frame_index)
    assert received == [0]
    assert time.monotonic() - began < 5.0


def test_a_set_stop_yields_nothing_more_even_for_frames_already_due():
    stop = threading.Event()
    it = paced(frames(0.0, 0.0, 0.0), stop)
    assert next(it).frame_index == 0
    stop.set()
    assert list(it) == []


def test_a_held_frame_arrives_when_it_is_released() -> None:
    """Its wall time is the release, not the decode ahead of time, so latency counts from arrival."""
    decoded_at = time.time()
    frames = [Frame("cam", i, i * 0.1, IMAGE, decoded_at) for i in range(3)]
    released = []
    for frame in paced(frames):
        released.append((time.time(), frame.wall_time))
    for i, (now, wall) in enumerate(released[1:], start=1):
        assert wall >= decoded_at + i * 0.1 - 0.01, "wall time stamped before the frame was due"
        assert abs(now - wall) < 0.05
