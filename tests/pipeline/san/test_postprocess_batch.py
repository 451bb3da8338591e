"""Post-processing a batch of one geometry in one pass: each image's result is the official one for it.

Images of a batch share the band loop whatever their vocabularies (narrower ones padded with classes that
can never win); the reference is the official order (upsample, crop, resize, sigmoid, combine) per image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.san.postprocess import class_probabilities, postprocess_batch
from pipeline.san.preprocess import geometry
from tests.pipeline.san import official_formulas as of

GEOM = geometry(45, 70)  # resized 640 x 996, padded 640 x 1024: mask grid 40 x 64
CLASSES = [4, 2, 1, 4, 3]


def inputs() -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
    generator = torch.Generator().manual_seed(5)
    masks = torch.randn(len(CLASSES), 10, GEOM.padded[0] // 16, GEOM.padded[1] // 16, generator=generator) * 8
    logits = [torch.randn(10, c + 1, generator=generator) * 3 for c in CLASSES]
    left = torch.zeros(*GEOM.original, dtype=torch.bool)
    left[:, :35] = True
    band = torch.zeros(*GEOM.original, dtype=torch.bool)
    band[10:30] = True
    regions: list[torch.Tensor | None] = [
        torch.stack([left, ~left, band]),
        None,
        torch.stack([band]),
        None,
        None,
    ]
    return masks, logits, regions


@pytest.mark.parametrize("band_elements", [32 * 1024 * 1024, 5_000])  # one band, and bands of 1 row
def test_each_image_gets_its_official_result(band_elements: int) -> None:
    masks, logits, regions = inputs()
    results = postprocess_batch(
        masks,
        [class_probabilities(x) for x in logits],
        GEOM,
        return_scores=True,
        regions=regions,
        band_elements=band_elements,
    )
    for index, result in enumerate(results):
        reference = of.postprocess(masks[index], logits[index], GEOM.padded, GEOM.resized, GEOM.original)
        assert result.scores.shape == (CLASSES[index], *GEOM.original)
        assert float((result.scores - reference).abs().max()) <= 3e-5 * float(reference.abs().max())
        if CLASSES[index] > 1:
            top = reference.topk(2, dim=0).values
            decided = (top[0] - top[1]) > 1e-5
            assert torch.equal(result.labels[decided], reference.argmax(0)[decided])
        else:
            assert not result.labels.any()
        labels = result.labels.numpy()
        np.testing.assert_array_equal(
            result.areas.numpy(), np.bincount(labels.ravel(), minlength=CLASSES[index])
        )
        if regions[index] is None:
            assert result.region_areas is None
            continue
        expected = [np.bincount(labels[m.numpy()], minlength=CLASSES[index]) for m in regions[index]]
        np.testing.assert_array_equal(result.region_areas.numpy(), np.stack(expected))


def test_batched_equals_one_image_at_a_time() -> None:
    masks, logits, regions = inputs()
    probabilities = [class_probabilities(x) for x in logits]
    batched = postprocess_batch(masks, probabilities, GEOM, return_scores=True, regions=regions)
    for index in range(len(CLASSES)):
        (alone,) = postprocess_batch(
            masks[index : index + 1],
            probabilities[index : index + 1],
            GEOM,
            return_scores=True,
            regions=regions[index : index + 1],
        )
        torch.testing.assert_close(batched[index].scores, alone.scores, rtol=0, atol=1e-6)
        assert torch.equal(batched[index].areas, alone.areas)


def test_mismatched_inputs_are_refused() -> None:
    masks, logits, _ = inputs()
    with pytest.raises(ValueError, match="probability matrices"):
        postprocess_batch(masks, [class_probabilities(logits[0])], GEOM)
    wrong = torch.ones(1, 10, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="region masks are"):
        postprocess_batch(masks[:1], [class_probabilities(logits[0])], GEOM, regions=[wrong])
