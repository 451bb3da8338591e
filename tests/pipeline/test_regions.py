"""Regions: the pixel and edge rules against exact rational arithmetic, tilings that count every pixel once,
areas per region, the mask cache, and validation messages under their field paths."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.jobs.checks import Checker
from pipeline.regions import (
    RegionError,
    RegionMasks,
    RegionSpec,
    check_inside,
    check_regions,
    parse_regions,
    region_areas,
    region_mask,
)

# Small enough that no edge of the test polygons (coordinates multiples of 1/4 within 16) passes between
# a pixel centre and its nudged point: that point is then decided exactly like the documented infinitesimal.
EPSILON = Fraction(1, 10**6)


def brute_force_mask(polygon: list[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """The documented rule, independently and exactly: centre (i + 1/2, j + 1/2) moved by (+eps, +eps^2),
    then the plain even-odd test in rational arithmetic (the moved point is on no edge and at no vertex's y)."""
    points = [(Fraction(x), Fraction(y)) for x, y in polygon]
    edges = list(zip(points, points[1:] + points[:1], strict=True))
    mask = np.zeros((height, width), dtype=bool)
    for j in range(height):
        qy = j + Fraction(1, 2) + EPSILON**2
        for i in range(width):
            qx = i + Fraction(1, 2) + EPSILON
            inside = False
            for (x0, y0), (x1, y1) in edges:
                if (y0 > qy) != (y1 > qy) and qx < x0 + (qy - y0) * (x1 - x0) / (y1 - y0):
                    inside = not inside
            mask[j, i] = inside
    return mask


def rect(name: str, x0: float, y0: float, x1: float, y1: float, units: str = "fraction") -> RegionSpec:
    return RegionSpec(name, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)), units)  # type: ignore[arg-type]


def parse(value, path: str = "streams[0].regions"):
    c = Checker(Path("/specs"))
    return parse_regions(c, value, path), c.problems


# ------------------------------------------------------------------------------------------ pixel rule


def test_triangle_count_follows_the_documented_rule_exactly():
    """Vertices on pixel centres: the legs hold the centres right of / below them (counted), the
    hypotenuse the centres whose nudge leaves the triangle (not counted): i + j <= 8, 45 pixels."""
    triangle = [(0.5, 0.5), (9.5, 0.5), (0.5, 9.5)]
    for order in (triangle, triangle[::-1]):  # orientation does not matter
        mask = region_mask(RegionSpec("t", tuple(order), "pixels"), 12, 11)
        assert mask.sum() == 45
        np.testing.assert_array_equal(mask, brute_force_mask(order, 12, 11))
    j, i = np.nonzero(mask)
    assert (i + j).max() == 8 and i.min() == 0 and j.min() == 0


def test_random_polygons_match_the_exact_rule():
    """Concave and self-intersecting polygons with vertices on a quarter-pixel grid, so many centres lie
    exactly on edges and at vertices' heights: the vectorised masks equal the rational brute force."""
    rng = np.random.default_rng(11)
    width, height = 13, 10
    for _ in range(40):
        count = int(rng.integers(3, 9))
        xs = rng.integers(0, 4 * width + 1, count) / 4
        ys = rng.integers(0, 4 * height + 1, count) / 4
        polygon = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        mask = region_mask(RegionSpec("p", tuple(polygon), "pixels"), width, height)
        np.testing.assert_array_equal(mask, brute_force_mask(polygon, width, height), err_msg=str(polygon))


@pytest.mark.parametrize("width", [1, 2, 7, 8, 33])
def test_left_and_right_halves_count_every_pixel_once(width: int):
    """Odd widths put the split on a column of centres (x = 3.5 of 7): it goes to the right half."""
    height = 5
    left = region_mask(rect("left", 0, 0, 0.5, 1), width, height)
    right = region_mask(rect("right", 0.5, 0, 1, 1), width, height)
    assert not (left & right).any()
    assert (left | right).all()
    assert left.sum() == (width // 2) * height


def test_regions_sharing_slanted_edges_tile_the_frame():
    """Any split of the frame by a shared edge (floats not exact in binary included): each pixel once."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        width, height = (int(n) for n in rng.integers(1, 40, 2))
        a, b = (float(v) for v in rng.random(2))
        left = RegionSpec("l", ((0, 0), (a, 0), (b, 1), (0, 1)))
        right = RegionSpec("r", ((1, 1), (b, 1), (a, 0), (1, 0)))  # the other way round
        count = region_mask(left, width, height).astype(int) + region_mask(right, width, height)
        assert (count == 1).all(), (width, height, a, b)


def test_quadrants_and_whole_frame_counts_per_class():
    """On a random label map, the four quadrants' class counts add up to the whole frame's."""
    rng = np.random.default_rng(3)
    height, width, classes = 37, 51, 6
    labels = rng.integers(0, classes, (height, width)).astype(np.uint8)
    quadrants = [
        rect(f"q{k}", x, y, x + 0.5, y + 0.5)
        for k, (x, y) in enumerate([(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)])
    ]
    whole = rect("whole", 0, 0, 1, 1)
    masks = RegionMasks().get([*quadrants, whole], width, height)
    areas = region_areas(labels, masks, classes)
    expected = np.bincount(labels.ravel(), minlength=classes)
    np.testing.assert_array_equal(areas["whole"].pixels, expected)
    np.testing.assert_array_equal(sum(areas[q.name].pixels for q in quadrants), expected)
    assert sum(areas[q.name].total for q in quadrants) == height * width == areas["whole"].total


@pytest.mark.parametrize("width", [10, 11])
def test_left_plus_right_areas_equal_the_whole_frame(width: int):
    rng = np.random.default_rng(width)
    labels = rng.integers(0, 4, (9, width)).astype(np.int32)
    masks = RegionMasks().get([rect("left", 0, 0, 0.5, 1), rect("right", 0.5, 0, 1, 1)], width, 9)
    areas = region_areas(labels, masks, num_classes=5)  # class 4 never occurs: a zero, still reported
    whole = np.bincount(labels.ravel(), minlength=5)
    np.testing.assert_array_equal(areas["left"].pixels + areas["right"].pixels, whole)
    assert areas["left"].pixels.dtype == np.int64 and areas["left"].pixels[4] == 0
    assert areas["left"].total + areas["right"].total == 9 * width


def test_overlapping_regions_both_count_shared_pixels():
    labels = np.zeros((10, 10), dtype=np.uint8)
    masks = RegionMasks().get([rect("a", 0, 0, 0.6, 1), rect("b", 0.4, 0, 1, 1)], 10, 10)
    areas = region_areas(labels, masks, 1)
    assert areas["a"].total == areas["b"].total == 60
    assert (masks["a"] & masks["b"]).sum() == 20


def test_pixel_and_fraction_units_agree():
    fraction = RegionSpec("f", ((0.25, 0.125), (0.75, 0.25), (0.5, 0.875)))
    pixels = RegionSpec("p", ((10, 2), (30, 4), (20, 14)), "pixels")
    np.testing.assert_array_equal(region_mask(fraction, 40, 16), region_mask(pixels, 40, 16))
    assert region_mask(fraction, 40, 16).sum() > 0


def test_region_areas_rejects_mismatches():
    labels = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="mask of region 'a'"):
        region_areas(labels, {"a": np.ones((4, 5), dtype=bool)}, 1)
    with pytest.raises(ValueError, match="beyond the 2 classes"):
        region_areas(labels + 3, {"a": np.ones((4, 4), dtype=bool)}, 2)


# ------------------------------------------------------------------------------------------ mask cache


def test_mask_cache_computes_once_per_size_and_evicts_the_oldest():
    regions = (rect("a", 0, 0, 0.5, 1),)
    cache = RegionMasks(max_entries=2)
    first = cache.stacked(regions, 8, 4)
    assert cache.stacked(regions, 8, 4) is first and not first.flags.writeable
    assert first.shape == (1, 4, 8) and np.array_equal(cache.get(regions, 8, 4)["a"], first[0])
    cache.stacked(regions, 16, 8)
    cache.stacked(regions, 8, 4)  # refreshed: 16x8 is now the oldest
    cache.stacked(regions, 32, 16)
    assert len(cache) == 2 and cache.stacked(regions, 8, 4) is first
    assert cache.stacked(regions, 16, 8) is not None and len(cache) == 2  # recomputed, 32x16 evicted


def test_mask_cache_refuses_regions_that_do_not_fit_the_frame():
    outside = RegionSpec("gate", ((0, 0), (100, 0), (100, 50)), "pixels")
    with pytest.raises(RegionError, match=r"region 'gate': point 1 \(100, 0\) is outside the 64x48 frame"):
        RegionMasks().get([outside], 64, 48)
    check_inside(outside, 100, 50)  # on the frame's border is inside
    sliver = RegionSpec("sliver", ((0, 0), (1, 0), (1, 0.001)))
    with pytest.raises(RegionError, match="'sliver' contains no pixel centre of the 20x10 frame"):
        RegionMasks().get([sliver], 20, 10)
    with pytest.raises(RegionError, match="'sliver' contains no pixel centre"):
        check_regions([outside, sliver], 100, 50)  # what a decoder checks at every new frame size
    check_regions([outside], 100, 50)


# ------------------------------------------------------------------------------------------ validation


def test_parse_valid_regions_and_round_trip():
    value = [
        {"name": " lot ", "polygon": [[0, 0], [1, 0], [0.5, 1]]},
        {"name": "gate", "polygon": [[10, 20], [30, 20], [30, 40]], "units": "pixels"},
    ]
    regions, problems = parse(value)
    assert problems == []
    assert regions[0] == RegionSpec("lot", ((0.0, 0.0), (1.0, 0.0), (0.5, 1.0)), "fraction")
    assert regions[1].units == "pixels"
    assert parse([r.to_dict() for r in regions])[0] == regions
    assert parse(None) == ((), [])


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ({"name": "a"}, "streams[0].regions", "must be a list of regions"),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "colour": 1}],
            "streams[0].regions[0].colour",
            "unknown key",
        ),
        ([{"polygon": [[0, 0], [1, 0], [1, 1]]}], "streams[0].regions[0].name", "is required"),
        (
            [{"name": " ", "polygon": [[0, 0], [1, 0], [1, 1]]}],
            "streams[0].regions[0].name",
            "non-empty string",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0]]}],
            "streams[0].regions[0].polygon",
            "at least three points",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1.5]]}],
            "streams[0].regions[0].polygon[2]",
            "y must be within 0..1",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [1]]}],
            "streams[0].regions[0].polygon[2]",
            "must be a point [x, y]",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [".5", 1]]}],
            "streams[0].regions[0].polygon[2]",
            "x must be a finite number",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [float("nan"), 1]]}],
            "streams[0].regions[0].polygon[2]",
            "finite",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [True, 1]]}],
            "streams[0].regions[0].polygon[2]",
            "finite number",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [-1, 0], [5, 5]], "units": "pixels"}],
            "streams[0].regions[0].polygon[1]",
            "x must be >= 0",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "units": "px"}],
            "streams[0].regions[0].units",
            "fraction or pixels",
        ),
        (
            [{"name": "a", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]}],
            "streams[0].regions[0].polygon",
            "encloses no area",
        ),
        ([{"name": "a", "polygon": "0,0 1,0 1,1"}], "streams[0].regions[0].polygon", "list of [x, y] points"),
        (["lot"], "streams[0].regions[0]", "must be a mapping"),
    ],
)
def test_validation_errors_name_the_field(value, path: str, message: str):
    regions, problems = parse(value)
    assert any(p == path and message in m for p, m in problems), problems
    assert all(r.name == "a" for r in regions)  # a region keeps its name (alerts may refer to it)


def test_duplicate_names_are_reported_and_all_problems_collected():
    triangle = [[0, 0], [1, 0], [1, 1]]
    value = [
        {"name": "Lane", "polygon": triangle},
        {"name": "lane", "polygon": triangle},
        {"name": "x", "polygon": [[0, 0], [2, 0], [1, 1]]},
    ]
    regions, problems = parse(value)
    assert [(r.name, len(r.polygon)) for r in regions] == [("Lane", 3), ("x", 0)]
    assert problems == [
        ("streams[0].regions[1].name", "'lane' duplicates streams[0].regions[0].name"),
        ("streams[0].regions[2].polygon[1]", "x must be within 0..1 (a fraction of the frame), got 2"),
    ]


def test_a_broken_region_still_claims_its_name():
    value = [
        {"name": "lane", "polygon": [[0, 0], [1, 0]]},
        {"name": "LANE", "polygon": [[0, 0], [1, 0], [1, 1]]},
    ]
    assert parse(value)[1] == [
        ("streams[0].regions[0].polygon", "needs at least three points, got 2"),
        ("streams[0].regions[1].name", "'LANE' duplicates streams[0].regions[0].name"),
    ]
