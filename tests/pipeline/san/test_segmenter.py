"""Batching: one forward per image size whatever the vocabularies, and results independent of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.san import Segmenter
from tests.pipeline.san.conftest import pattern_image

STREET = ["road", "car, automobile", "person", "building"]
NATURE = ["water", "tree", "sky"]
ONE = ["anything"]


def count_forwards(segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    original = segmenter.model.forward

    def counting(images: torch.Tensor, layout=None):
        shapes.append(tuple(images.shape))
        return original(images, layout)

    monkeypatch.setattr(segmenter.model, "forward", counting)
    return shapes


def test_same_size_frames_with_different_vocabularies_share_one_forward(
    tiny_segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [pattern_image(60, 80, seed) for seed in range(4)]
    vocabularies = [STREET, NATURE, STREET, ONE]
    shapes = count_forwards(tiny_segmenter, monkeypatch)
    results = tiny_segmenter.segment(images, vocabularies)
    assert shapes == [(4, 3, 640, 864)]
    for result, vocabulary in zip(results, vocabularies, strict=True):
        assert result.vocabulary == tuple(vocabulary)
        assert result.areas.shape == (len(vocabulary),)
        assert result.labels.shape == (60, 80)
        assert int(result.areas.sum()) == 60 * 80
        np.testing.assert_array_equal(
            result.areas, np.bincount(result.labels.ravel(), minlength=len(vocabulary))
        )


def test_results_do_not_depend_on_the_rest_of_the_batch(tiny_segmenter: Segmenter) -> None:
    images = [
        pattern_image(60, 80, 1),
        pattern_image(90, 70, 2),
        pattern_image(60, 80, 3),
        pattern_image(30, 30, 4),
    ]
    vocabularies = [STREET, NATURE, NATURE, STREET]
    batched = tiny_segmenter.segment(images, vocabularies, return_scores=True)
    for index, (image, vocabulary) in enumerate(zip(images, vocabularies, strict=True)):
        alone = tiny_segmenter.segment([image], [vocabulary], return_scores=True)[0]
        np.testing.assert_allclose(batched[index].scores, alone.scores, rtol=0, atol=1e-5)
        margin = np.sort(alone.scores, axis=0)
        decided = (margin[-1] - margin[-2]) > 1e-4 if len(vocabulary) > 1 else np.ones(image.shape[:2], bool)
        np.testing.assert_array_equal(batched[index].labels[decided], alone.labels[decided])


def test_a_vocabulary_answer_is_the_same_in_any_company(tiny_segmenter: Segmenter) -> None:
    """The same frame asked with two vocabularies in one batch gets each vocabulary's own answer."""
    image = pattern_image(64, 64, 9)
    street_alone = tiny_segmenter.segment([image], [STREET], return_scores=True)[0]
    nature_alone = tiny_segmenter.segment([image], [NATURE], return_scores=True)[0]
    mixed = tiny_segmenter.segment([image, image], [STREET, NATURE], return_scores=True)
    np.testing.assert_allclose(mixed[0].scores, street_alone.scores, atol=1e-5)
    np.testing.assert_allclose(mixed[1].scores, nature_alone.scores, atol=1e-5)
    assert mixed[0].scores.shape[0] == 4 and mixed[1].scores.shape[0] == 3


def test_scores_only_when_asked_and_labels_optional(tiny_segmenter: Segmenter) -> None:
    image = pattern_image(40, 50, 5)
    plain = tiny_segmenter.segment([image], [NATURE])[0]
    assert plain.scores is None and plain.labels is not None
    areas_only = tiny_segmenter.segment([image], [NATURE], return_labels=False)[0]
    assert areas_only.labels is None
    np.testing.assert_array_equal(areas_only.areas, plain.areas)
    with_scores = tiny_segmenter.segment([image], [NATURE], return_scores=True)[0]
    assert with_scores.scores.dtype == np.float32 and with_scores.scores.shape == (3, 40, 50)
    np.testing.assert_array_equal(with_scores.scores.argmax(0), plain.labels)


def test_no_gradients_are_recorded(tiny_segmenter: Segmenter) -> None:
    before = [p.grad for p in tiny_segmenter.model.parameters()]
    tiny_segmenter.segment([pattern_image(32, 32, 0)], [ONE])
    assert all(p.grad is None for p in tiny_segmenter.model.parameters()) and all(g is None for g in before)


def test_bfloat16_autocast_on_cpu_stays_close(tiny_model: torch.nn.Module) -> None:
    image = pattern_image(48, 48, 3)
    fp32 = Segmenter(tiny_model, dtype=torch.float32).segment([image], [STREET], return_scores=True)[0]
    bf16 = Segmenter(tiny_model, dtype=torch.bfloat16).segment([image], [STREET], return_scores=True)[0]
    assert np.abs(fp32.scores - bf16.scores).max() < 0.1 * np.abs(fp32.scores).max()


def test_float16_on_cpu_is_refused(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="float16 inference needs a CUDA device"):
        Segmenter(tiny_model, dtype=torch.float16)
