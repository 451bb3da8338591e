"""Compacted frames (resized to the model's input size in the decoder) give the same results as the full
frames, at the original resolution: bit for bit on the PIL path, regions included."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode.compact import compact_frame, compact_image
from pipeline.frame_size import resized_size
from pipeline.frames import Frame
from pipeline.regions import RegionMasks, RegionSpec
from pipeline.san import Segmenter, load_checkpoint
from pipeline.san.preprocess import ImageError

REGIONS = (
    RegionSpec("top", ((0, 0), (1, 0), (1, 0.4), (0, 0.4))),
    RegionSpec("tri", ((0, 1), (1, 1), (0.5, 0))),
)


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx ^ yy) & 255], -1)
    return (base + rng.integers(-40, 40, base.shape)).clip(0, 255).astype(np.uint8)


def test_a_frame_larger_than_the_input_is_compacted_and_a_smaller_one_is_not():
    big = Frame("cam", 7, 0.7, picture(720, 1280), 1.0)
    compacted = compact_frame(big)
    assert compacted.image.shape == (*resized_size(720, 1280), 3) == (640, 1138, 3)
    assert compacted.original_size == (720, 1280) and compacted.size == big.size == (720, 1280)
    assert (compacted.frame_index, compacted.pts_seconds, compacted.wall_time) == (7, 0.7, 1.0)
    assert compact_frame(compacted) is compacted  # never twice
    small = Frame("cam", 0, 0.0, picture(64, 96), 1.0)
    assert compact_frame(small) is small  # the replica upscales it; sending it bigger would cost more
    assert compact_image(compacted.image) is compacted.image


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(load_checkpoint("random", model="san_tiny_test"), resizer="pil")


def test_compacted_frames_give_the_full_frames_results(segmenter: Segmenter):
    frames = [picture(700, 1000, seed=1), picture(660, 660, seed=2)]
    vocabularies = [["sky", "road", "car"], ["water", "grass"]]
    masks = [RegionMasks().stacked(REGIONS, f.shape[1], f.shape[0]) for f in frames]
    full = segmenter.segment(frames, vocabularies, return_labels=True, regions=masks)
    small = [compact_image(f) for f in frames]
    assert [s.shape[:2] for s in small] == [(640, 914), (640, 640)]
    sizes = [(700, 1000), (660, 660)]
    compacted = segmenter.segment(
        small, vocabularies, return_labels=True, regions=masks, original_sizes=sizes
    )
    for a, b, frame in zip(full, compacted, frames, strict=True):
        assert np.array_equal(a.areas, b.areas) and a.areas.sum() == frame.shape[0] * frame.shape[1]
        assert np.array_equal(a.labels, b.labels) and b.labels.shape == frame.shape[:2]
        assert np.array_equal(a.region_areas, b.region_areas)
    # Batched into one call or alone, the counts are the same (one device-to-host copy per batch).
    alone = segmenter.segment(small[1:], vocabularies[1:], return_labels=False, original_sizes=sizes[1:])
    assert np.array_equal(alone[0].areas, full[1].areas) and alone[0].labels is None


def test_a_compacted_image_of_the_wrong_size_is_refused(segmenter: Segmenter):
    with pytest.raises(
        ImageError, match=r"images\[0\] is 640 x 640, but a compacted 720 x 1280 frame is 640 x 1138"
    ):
        segmenter.segment([picture(640, 640)], [["a"]], original_sizes=[(720, 1280)])
