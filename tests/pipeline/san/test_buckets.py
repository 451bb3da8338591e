"""Which padded sizes share a forward: one canvas per group, no member paying more than `max_padding`."""

from __future__ import annotations

import pytest

from pipeline.san.buckets import plan_buckets

WIDE = (640, 1152)  # 16:9 (1080p, 720p)
FOUR_THREE = (640, 864)
SQUARE = (640, 640)
PORTRAIT = (1152, 640)


def test_no_padding_allowed_gives_one_bucket_per_size_in_batch_order() -> None:
    sizes = [SQUARE, WIDE, SQUARE, FOUR_THREE, WIDE]
    buckets = plan_buckets(sizes, 0.0)
    assert {bucket.canvas: bucket.members for bucket in buckets} == {
        WIDE: [1, 4],
        FOUR_THREE: [3],
        SQUARE: [0, 2],
    }


def test_a_size_joins_a_canvas_only_within_its_padding_budget() -> None:
    # 640x864 on a 640x1152 canvas pays 1/3 extra; 640x640 pays 0.8; portrait on a wide canvas pays 2.2.
    sizes = [WIDE, FOUR_THREE, SQUARE, PORTRAIT]
    assert [(b.canvas, b.members) for b in plan_buckets(sizes, 0.34)] == [
        (WIDE, [0, 1]),
        (PORTRAIT, [3]),
        (SQUARE, [2]),
    ]
    assert [(b.canvas, b.members) for b in plan_buckets(sizes, 0.33)] == [
        (WIDE, [0]),
        (PORTRAIT, [3]),
        (FOUR_THREE, [1]),
        (SQUARE, [2]),
    ]
    # At 0.8 the portrait frame may grow the wide canvas to 1152 x 1152 (both pay exactly 0.8), after which
    # 640x864 would pay 1.4 there and starts its own canvas, which the square frame joins (0.35).
    assert [(b.canvas, b.members) for b in plan_buckets(sizes, 0.8)] == [
        ((1152, 1152), [0, 3]),
        (FOUR_THREE, [1, 2]),
    ]


def test_a_canvas_grows_to_hold_both_orientations_when_allowed() -> None:
    (bucket,) = plan_buckets([WIDE, PORTRAIT, SQUARE], 2.24)
    assert bucket.canvas == (1152, 1152)
    assert bucket.members == [0, 1, 2]


def test_the_plan_does_not_depend_on_batch_order() -> None:
    sizes = [SQUARE, FOUR_THREE, WIDE, (640, 960), PORTRAIT]
    plan = {b.canvas: sorted(sizes[i] for i in b.members) for b in plan_buckets(sizes, 0.5)}
    backwards = sizes[::-1]
    assert {b.canvas: sorted(backwards[i] for i in b.members) for b in plan_buckets(backwards, 0.5)} == plan


def test_negative_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="max_padding"):
        plan_buckets([SQUARE], -0.1)
