"""Sampler logic on synthetic timelines (no video needed): the rules in `sampling.py`'s docstring."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decode.sampling import Sampler


def selected(sampler: Sampler, times: list[float]) -> list[int]:
    selector = sampler.selector()
    return [i for i, t in enumerate(times) if selector.select(i, t)]


def test_default_is_one_fps() -> None:
    assert Sampler() == Sampler(fps=1.0)
    times = [i / 30 for i in range(95)]
    assert selected(Sampler(), times) == [0, 30, 60, 90]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 0},
        {"fps": -1},
        {"fps": math.inf},
        {"fps": math.nan},
        {"every": 0},
        {"every": 1.5},
        {"every": True},
        {"fps": 1, "every": 2},
    ],
)
def test_invalid_sampler_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Sampler(**kwargs)  # type: ignore[arg-type]


def test_every_n_uses_frame_index_not_time() -> None:
    times = [0.0, 5.0, 5.0, 1.0, 7.0, 8.0, 9.0]  # timestamps are irrelevant for `every`
    assert selected(Sampler(every=3), times) == [0, 3, 6]
    assert selected(Sampler(every=1), times) == list(range(7))


def test_fps_at_ntsc_rate_and_offset_origin() -> None:
    # 29.97 fps starting at PTS 10 s (MPEG-TS streams rarely start at 0): slots at 10 + k/2.
    times = [10 + i * 1001 / 30000 for i in range(70)]
    assert selected(Sampler(fps=2), times) == [0, 15, 30, 45, 60]


def test_fps_exact_slot_hit_despite_float_rounding() -> None:
    # Frame 10 is exactly at 1/3 s; float error must not push it past the slot.
    times = [i / 30 for i in range(31)]
    assert selected(Sampler(fps=3), times) == [0, 10, 20, 30]


def test_fps_higher_than_source_selects_every_frame_once() -> None:
    times = [i / 10 for i in range(20)]
    assert selected(Sampler(fps=100), times) == list(range(20))


def test_vfr_timeline() -> None:
    times = [0.0, 0.1, 0.15, 0.9, 1.05, 1.1, 2.5, 2.6, 4.0, 4.01, 4.02, 5.5]
    # Slots 0,1,2,3,4,5 s: 0.0 -> slot 0; 1.05 -> slot 1; 2.5 -> slot 2; 4.0 -> slots 3+4 (one frame);
    # 5.5 -> slot 5.
    assert selected(Sampler(fps=1), times) == [0, 4, 6, 8, 11]


def test_huge_forward_jump_selects_one_frame_not_thousands() -> None:
    times = [i / 30 for i in range(30)] + [1e6 + i / 30 for i in range(60)]
    picks = selected(Sampler(fps=1), times)
    # 0 s, then the first frame after the jump, then one per second on the (original) grid.
    assert picks == [0, 30, 60]


def test_backward_jump_reanchors_instead_of_stalling() -> None:
    # A wrap back to ~0 after 100 s: without re-anchoring nothing would be selected for 100 s.
    times = [100 + i / 10 for i in range(25)] + [i / 10 for i in range(25)]
    picks = selected(Sampler(fps=1), times)
    assert picks == [0, 10, 20, 25, 35, 45]


def test_selectors_are_independent() -> None:
    sampler = Sampler(fps=1)
    a, b = sampler.selector(), sampler.selector()
    assert a.select(0, 0.0) and b.select(0, 5.0)
    assert not a.select(1, 0.5)
    assert b.select(1, 6.0)


@settings(max_examples=200, deadline=None)
@given(
    fps=st.floats(min_value=0.1, max_value=60),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
)
def test_monotonic_timeline_properties(fps: float, steps: list[float]) -> None:
    """On any monotonic timeline: the first frame is selected, there is at most one pick per slot (never
    more than span x fps + 1 picks), and a frame a full period after the last pick is always picked (the
    sampler never stalls)."""
    times = []
    t = 0.0
    for step in steps:
        t += step
        times.append(t)
    picks = selected(Sampler(fps=fps), times)
    assert picks[0] == 0
    period = 1 / fps
    assert len(picks) <= math.floor((times[-1] - times[0]) * fps + 1e-6) + 1
    picked = set(picks)
    last = 0
    for i, ti in enumerate(times):
        if i in picked:
            last = i
        else:
            assert ti - times[last] < period + 1e-5
