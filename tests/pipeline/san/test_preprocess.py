"""The official evaluation sizes for odd shapes, and the GPU resizer staying within a grey level of PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.san import ImageError, Segmenter
from pipeline.san.preprocess import geometry, resize_pil, resize_torch
from tests.pipeline.san.conftest import pattern_image


@pytest.mark.parametrize(
    ("original", "resized", "padded"),
    [
        ((512, 683), (640, 854), (640, 864)),  # the ADE example in the reference sheet
        ((720, 1280), (640, 1138), (640, 1152)),  # parity fixture
        ((512, 512), (640, 640), (640, 640)),
        ((1080, 1920), (640, 1138), (640, 1152)),
        ((481, 641), (640, 853), (640, 864)),  # 852.89 rounds up
        ((100, 3000), (85, 2560), (96, 2560)),  # long side capped at 2560
        ((3000, 100), (2560, 85), (2560, 96)),
        ((1, 1), (640, 640), (640, 640)),
        ((2, 7), (640, 2240), (640, 2240)),
        ((333, 333), (640, 640), (640, 640)),
    ],
)
def test_official_sizes(original: tuple[int, int], resized: tuple[int, int], padded: tuple[int, int]) -> None:
    geom = geometry(*original)
    assert (geom.original, geom.resized, geom.padded) == (original, resized, padded)


@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (721, 1279), (1000, 300)])
def test_torch_resizer_is_within_one_level_of_pil(shape: tuple[int, int]) -> None:
    image = pattern_image(*shape, seed=shape[0])
    size = geometry(*shape).resized
    pil = resize_pil(image, size)
    ours = resize_torch(torch.from_numpy(image).permute(2, 0, 1), size)
    difference = (pil - ours).abs()
    assert difference.max() <= 1.0
    assert difference.mean() < 0.3  # PIL rounds in fixed point; about 1 value in 5 differs by one level


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        "image.png",
    ],
)
def test_bad_images_are_rejected_by_index(tiny_segmenter: Segmenter, bad: object) -> None:
    good = pattern_image(32, 32, seed=0)
    with pytest.raises(ImageError, match=r"images\[1\] must be an H x W x 3 uint8 RGB array"):
        tiny_segmenter.segment([good, bad], [["a"], ["a"]])  # type: ignore[list-item]


def test_image_and_vocabulary_counts_must_match(tiny_segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match="2 images but 1 vocabularies"):
        tiny_segmenter.segment([pattern_image(8, 8, 0)] * 2, [["a"]])
