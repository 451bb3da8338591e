"""Regions of interest: named polygons of a stream's frame, and how many pixels of each class lie in them.

A stream may name parts of its view (`regions: [{name: lane, polygon: [[x, y], ...], units: pixels}]`) so
that class areas, and alerts on them, can be measured per region as well as for the whole frame.

Coordinates are "fraction" (default: 0..1 of the frame's width and height, so one spec fits every
resolution a source may switch to) or "pixels" (0..width, 0..height, the edges of the pixel grid: pixel
column i spans x in [i, i + 1]). Fractions are scaled to pixels as x * width, y * height, in float64.

The pixel rule. Pixel (column i, row j) belongs to a region when its centre (i + 0.5, j + 0.5) is inside
the polygon by the even-odd rule (a crossing-number test: a ray from the centre towards +x crosses the
polygon's edges an odd number of times). Self-intersecting polygons are allowed and follow the same rule;
regions may overlap, and a pixel in two regions counts in both.

The edge rule. A centre exactly on an edge or a vertex is decided as if it were moved by an infinitesimal
step to the right (+x) and an even smaller step down (+y, rows grow downwards): it belongs to the region
on its right, and on a horizontal edge to the region below. Equivalently, an edge from y0 to y1 (y0 < y1)
is crossed by the centre's ray when y0 <= y < y1 (half-open, as in most rasterisers) and the centre lies
strictly left of the edge; horizontal edges are never crossed. Each edge is tested with its end points
ordered by y, so the test of an edge does not depend on which polygon it belongs to or in which direction
the polygon runs: two regions that share an edge (the same two vertices, in the same units) never both
take a centre on it, and together they take exactly the centres their union takes. Halves, quadrants or
any tiling of the frame therefore count every pixel exactly once. The arithmetic is float64; with
coordinates that are exact in binary (integers, halves, quarters, and fractions such as 0.25 of an even
size) every decision, on edges included, is exact.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.jobs.checks import Checker, describe, join_path, show

UNITS = ("fraction", "pixels")
# Bounds on what one stream may ask for: each region is a mask per frame size, each point an edge to test.
MAX_REGIONS = 100
MAX_POLYGON_POINTS = 1000
# Frame sizes whose masks `RegionMasks` keeps (a source rarely changes resolution; a few cover it).
DEFAULT_CACHED_SIZES = 8

Units = Literal["fraction", "pixels"]
Point = tuple[float, float]


class RegionError(ValueError):
    """A region does not fit the frame it is applied to (outside it, or covering no pixel of it)."""


@dataclass(frozen=True)
class RegionSpec:
    """One named region of a stream's frame.

    Attributes:
        name: unique within the stream (compared case-insensitively); the key of its areas.
        polygon: at least three (x, y) points, in order; the last is joined back to the first.
        units: "fraction" (0..1 of width and height) or "pixels" (0..width, 0..height).
    """

    name: str
    polygon: tuple[Point, ...]
    units: Units = "fraction"

    def to_dict(self) -> dict[str, Any]:
        """The job-spec form, which `parse_regions` reads back to an equal `RegionSpec`."""
        return {"name": self.name, "polygon": [[x, y] for x, y in self.polygon], "units": self.units}


@dataclass(frozen=True)
class RegionAreas:
    """Pixels of each class inside one region of one frame.

    Attributes:
        pixels: int64 [C], pixels of the region labelled with class c (zeros included).
        total: pixels in the region (the mask's size); `pixels` sums to it.
    """

    pixels: np.ndarray
    total: int


# ------------------------------------------------------------------------------------------ validation


def parse_regions(c: Checker, value: Any, path: str = "regions") -> tuple[RegionSpec, ...]:
    """Validate a stream's `regions` list (None or absent: no regions), recording problems on `c`.

    As everywhere in the spec, the result means something only when `c` recorded no problems. Every entry
    with a usable name is returned (a broken polygon as an empty one), so that duplicate names and the
    regions alerts refer to are checked in the same pass as the polygons.
    """
    items = c.bounded_list(value, path, "regions", MAX_REGIONS) or []
    regions: list[RegionSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        region = _parse_region(c, item, f"{path}[{i}]")
        if region is not None and c.distinct_name(seen, region.name, path, i):
            regions.append(region)
    return tuple(regions)


def _parse_region(c: Checker, value: Any, path: str) -> RegionSpec | None:
    """The region, its polygon empty when invalid; None when it has no usable name."""
    raw = c.mapping(value, path, ("name", "polygon", "units"))
    if raw is None:
        return None
    for required in ("name", "polygon"):
        if required not in raw:
            c.error(join_path(path, required), "is required")
    name = c.string(raw["name"], join_path(path, "name")) if "name" in raw else None
    units = _parse_units(c, raw.get("units"), join_path(path, "units"))
    polygon = None
    if "polygon" in raw and units is not None:
        polygon = _parse_polygon(c, raw["polygon"], join_path(path, "polygon"), units)
    if name is None:
        return None
    return RegionSpec(name=name, polygon=polygon or (), units=units or "fraction")


def _parse_units(c: Checker, value: Any, path: str) -> Units | None:
    if value is None:
        return "fraction"
    if value not in UNITS:
        c.error(path, f"must be {' or '.join(UNITS)}, got {show(value)}")
        return None
    return value


def _parse_polygon(c: Checker, value: Any, path: str, units: Units) -> tuple[Point, ...] | None:
    if not isinstance(value, list | tuple):
        c.error(path, f"must be a list of [x, y] points, got {describe(value)}")
        return None
    if len(value) < 3:
        c.error(path, f"needs at least three points, got {len(value)}")
        return None
    if len(value) > MAX_POLYGON_POINTS:
        c.error(path, f"has {len(value)} points; at most {MAX_POLYGON_POINTS} are allowed")
        return None
    points = [_parse_point(c, item, f"{path}[{i}]", units) for i, item in enumerate(value)]
    if any(p is None for p in points):
        return None
    polygon = tuple(p for p in points if p is not None)
    if _collinear(polygon):
        c.error(path, "encloses no area: its points are all on one line")
        return None
    return polygon


def _parse_point(c: Checker, value: Any, path: str, units: Units) -> Point | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        c.error(path, f"must be a point [x, y], got {describe(value)}")
        return None
    coords: list[float] = []
    for axis, number in zip("xy", value, strict=True):
        coord = _coordinate(number)
        if coord is None:
            c.error(path, f"{axis} must be a finite number, got {describe(number)}")
        elif units == "fraction" and not 0.0 <= coord <= 1.0:
            c.error(path, f"{axis} must be within 0..1 (a fraction of the frame), got {show(number)}")
        elif units == "pixels" and coord < 0.0:
            c.error(path, f"{axis} must be >= 0 (pixels from the top-left corner), got {show(number)}")
        else:
            coords.append(coord)
    return (coords[0], coords[1]) if len(coords) == 2 else None


def _coordinate(value: Any) -> float | None:
    """A finite float from an int or float (not a bool, which YAML makes of `yes`), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _collinear(polygon: Sequence[Point]) -> bool:
    """Whether every point lies on one line (or all coincide): such a polygon can contain no pixel."""
    x0, y0 = polygon[0]
    others = [(x - x0, y - y0) for x, y in polygon[1:] if (x, y) != (x0, y0)]
    if not others:
        return True
    ux, uy = others[0]
    return all(ux * vy - uy * vx == 0.0 for vx, vy in others[1:])


def check_inside(region: RegionSpec, width: int, height: int) -> None:
    """Raise `RegionError` when a pixel-unit region has a point outside a width x height frame.

    Fractions always fit; pixel coordinates can only be checked once the frame size is known, which is
    after decoding starts (and again whenever a source changes resolution).
    """
    if region.units == "fraction":
        return
    for i, (x, y) in enumerate(region.polygon):
        if x > width or y > height:
            raise RegionError(
                f"region {region.name!r}: point {i} ({x:g}, {y:g}) is outside the {width}x{height} frame "
                f"(pixel coordinates run from 0 to the width and height)"
            )


# --------------------------------------------------------------------------------------- rasterisation


def pixel_polygon(region: RegionSpec, width: int, height: int) -> np.ndarray:
    """float64 [N, 2] vertices in pixel coordinates (fractions scaled by width and height)."""
    points = np.asarray(region.polygon, dtype=np.float64).reshape(-1, 2)
    if region.units == "fraction":
        points = points * np.array([width, height], dtype=np.float64)
    return points


def region_mask(region: RegionSpec, width: int, height: int) -> np.ndarray:
    """bool [height, width]: the pixels whose centres are inside `region` (module docstring: pixel and edge rules).

    Vectorised over pixel centres, one edge at a time: an edge toggles, on each row it spans, every
    centre left of it. Centres left of the edge form a prefix of the row (the test is monotonic in x), so
    the edge marks where its prefix ends and one cumulative XOR along each row gives the parity, in
    O(edges * rows + width * height).
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be at least 1x1, got {width}x{height}")
    points = pixel_polygon(region, width, height)
    centres_x = np.arange(width, dtype=np.float64) + 0.5
    centres_y = np.arange(height, dtype=np.float64) + 0.5
    # toggles[j, k] = 1: the centres of row j in columns < k are left of one more edge.
    toggles = np.zeros((height, width + 1), dtype=np.uint8)
    for a, b in zip(points, np.roll(points, -1, axis=0), strict=True):
        _toggle_edge(toggles, a, b, centres_x, centres_y)
    parity = np.bitwise_xor.accumulate(toggles[:, ::-1], axis=1)[:, ::-1]
    return parity[:, 1:].astype(bool)


def _toggle_edge(
    toggles: np.ndarray, a: np.ndarray, b: np.ndarray, centres_x: np.ndarray, centres_y: np.ndarray
) -> None:
    """Mark, per row the edge a-b spans, the end of the prefix of centres strictly left of it."""
    (x0, y0), (x1, y1) = (a, b) if a[1] < b[1] else (b, a)  # by y: the same test in every polygon
    if y0 == y1:
        return  # horizontal: no centre's ray crosses it under the half-open rule
    rows = np.flatnonzero((y0 <= centres_y) & (centres_y < y1))
    if rows.size == 0:
        return
    # Centre (x, y) is left of the edge when x < x0 + (y - y0) * (x1 - x0) / (y1 - y0); multiplied out
    # (y1 - y0 > 0) to keep the comparison exact for coordinates exact in binary.
    left = (centres_x - x0) * (y1 - y0)  # non-decreasing in x, so a row's "left of" centres are a prefix
    right = (centres_y[rows] - y0) * (x1 - x0)
    ends = np.searchsorted(left, right, side="left")  # how many centres have left < right
    np.bitwise_xor.at(toggles, (rows, ends), 1)


class RegionMasks:
    """Masks of a stream's regions per frame size, computed once and kept for the last few sizes (LRU).

    Keyed by (regions, width, height), so one cache may serve several streams (size it for them) and a
    change of regions never reuses stale masks. The masks are read-only: they are shared by every frame.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHED_SIZES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[tuple[RegionSpec, ...], int, int], np.ndarray] = OrderedDict()

    def stacked(self, regions: Sequence[RegionSpec], width: int, height: int) -> np.ndarray:
        """bool [R, height, width]: mask r is `regions[r]`'s. Raises `RegionError` when a region is outside
        the frame or covers no pixel centre of it (its areas and alerts would mean nothing)."""
        key = (tuple(regions), width, height)
        masks = self._entries.get(key)
        if masks is not None:
            self._entries.move_to_end(key)
            return masks
        masks = np.stack([_checked_mask(region, width, height) for region in key[0]]) if key[0] else None
        if masks is None:
            masks = np.zeros((0, height, width), dtype=bool)
        masks.setflags(write=False)
        self._entries[key] = masks
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return masks

    def get(self, regions: Sequence[RegionSpec], width: int, height: int) -> dict[str, np.ndarray]:
        """{region name: bool [height, width] mask}; see `stacked`."""
        masks = self.stacked(regions, width, height)
        return {region.name: masks[i] for i, region in enumerate(regions)}

    def __len__(self) -> int:
        return len(self._entries)


def check_regions(regions: Sequence[RegionSpec], width: int, height: int) -> None:
    """Raise `RegionError` unless every region fits a width x height frame and covers a pixel centre of it:
    what a decoder checks whenever a stream's frame size changes, before any frame goes to a replica."""
    for region in regions:
        _checked_mask(region, width, height)


def _checked_mask(region: RegionSpec, width: int, height: int) -> np.ndarray:
    check_inside(region, width, height)
    mask = region_mask(region, width, height)
    if not mask.any():
        raise RegionError(
            f"region {region.name!r} contains no pixel centre of the {width}x{height} frame; enlarge it"
        )
    return mask


# ------------------------------------------------------------------------------------------------ areas


def region_areas(
    labels: np.ndarray, masks: Mapping[str, np.ndarray], num_classes: int
) -> dict[str, RegionAreas]:
    """Per region, pixels of each class: `labels` is the frame's H x W class-index map (any integer
    dtype, values in 0..num_classes-1) and `masks` the regions' H x W bool masks (`RegionMasks.get`)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be an H x W map, got shape {labels.shape}")
    areas: dict[str, RegionAreas] = {}
    for name, mask in masks.items():
        if mask.shape != labels.shape:
            raise ValueError(f"mask of region {name!r} is {mask.shape}, labels are {labels.shape}")
        pixels = np.bincount(labels[mask].astype(np.int64, copy=False), minlength=num_classes)
        if pixels.size > num_classes:
            raise ValueError(f"labels hold class {pixels.size - 1}, beyond the {num_classes} classes")
        areas[name] = RegionAreas(pixels=pixels.astype(np.int64, copy=False), total=int(pixels.sum()))
    return areas
