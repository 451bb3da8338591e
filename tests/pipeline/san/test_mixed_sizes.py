"""Frames of several sizes and vocabularies in one forward per bucket, each with its result alone.

A bucket puts images of different padded sizes on one canvas (`pipeline.san.canvas`): position embeddings and
resizes are per image and padding tokens are hidden from attention, so each image's scores equal those of the
image run by itself (up to float rounding of the longer reductions). Without the masking the scores of these
images move by whole units, so the comparisons below fail on any leak of the canvas into an image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.san import SAN, Segmenter, get_config
from pipeline.san.buckets import plan_buckets
from pipeline.san.preprocess import geometry
from pipeline.san.weights import init_random_weights
from tests.pipeline.san.conftest import pattern_image
from tests.pipeline.san.parity_fixtures import CASES, case_arrays, case_meta
from tests.pipeline.san.test_parity import assert_close, run_case
from tests.pipeline.san.test_parity import segmenter as parity_segmenter
from tests.pipeline.san.test_segmenter import count_forwards

# Four frame sizes, four padded sizes: 640x864, 640x640, 640x1152 and the portrait 832x640.
IMAGES = [
    pattern_image(60, 80, 1),
    pattern_image(30, 30, 2),
    pattern_image(90, 160, 3),
    pattern_image(90, 70, 4),
]
VOCABULARIES = [
    ["road", "car, automobile", "person", "building"],
    ["water", "tree", "sky"],
    ["anything"],
    ["grass", "roof", "shadow", "field", "fence"],
]


def assert_same_as_alone(batched: Segmenter, alone: Segmenter) -> None:
    results = batched.segment(IMAGES, VOCABULARIES, return_scores=True)
    for index, (image, vocabulary) in enumerate(zip(IMAGES, VOCABULARIES, strict=True)):
        own = alone.segment([image], [vocabulary], return_scores=True)[0]
        result = results[index]
        assert result.scores.shape == own.scores.shape == (len(vocabulary), *image.shape[:2])
        np.testing.assert_allclose(result.scores, own.scores, rtol=0, atol=1e-4, err_msg=f"image {index}")
        top = np.sort(own.scores, axis=0)
        decided = (top[-1] - top[-2]) > 1e-3 if len(vocabulary) > 1 else np.ones(image.shape[:2], bool)
        np.testing.assert_array_equal(result.labels[decided], own.labels[decided])
        assert int(result.areas.sum()) == image.shape[0] * image.shape[1]


def test_four_sizes_and_four_vocabularies_run_as_one_forward(
    tiny_model: SAN, tiny_segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched = Segmenter(tiny_model, device="cpu", max_padding=float("inf"))
    shapes = count_forwards(batched, monkeypatch)
    batched.segment(IMAGES, VOCABULARIES)
    assert shapes == [(4, 3, 832, 1152)]
    assert_same_as_alone(batched, tiny_segmenter)


def test_one_forward_per_bucket_of_the_plan(
    tiny_model: SAN, tiny_segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    batched = Segmenter(tiny_model, device="cpu", max_padding=0.5)
    plan = plan_buckets([geometry(*image.shape[:2]).padded for image in IMAGES], 0.5)
    # 640x864 joins 640x1152 (1/3 extra), 640x640 joins the portrait 832x640 (0.3 extra).
    assert sorted(sorted(bucket.members) for bucket in plan) == [[0, 2], [1, 3]]
    shapes = count_forwards(batched, monkeypatch)
    batched.segment(IMAGES, VOCABULARIES)
    assert shapes == [(len(bucket.members), 3, *bucket.canvas) for bucket in plan]
    assert_same_as_alone(batched, tiny_segmenter)


def test_default_on_cpu_is_one_forward_per_size(
    tiny_segmenter: Segmenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny_segmenter.max_padding == 0.0
    shapes = count_forwards(tiny_segmenter, monkeypatch)
    tiny_segmenter.segment(IMAGES, VOCABULARIES)
    assert sorted(shapes) == sorted((1, 3, *geometry(*image.shape[:2]).padded) for image in IMAGES)


def test_scaled_clip_grids_of_a_patch_14_model(tmp_path: Path) -> None:
    """SAN-L/14's arithmetic (CLIP at 0.7 of the padded size, 14-pixel patches) leaves CLIP grids that are
    not a fixed fraction of the side grids; a tiny model with that wiring checks the per-image grids."""
    preset = json.loads((Path(__file__).parents[3] / "pipeline/san/presets/san_tiny_test.json").read_text())
    preset.update(name="san_tiny_l14_test", clip_resolution=0.7)
    preset["clip_visual"].update(patch_size=14, image_size=56)
    path = tmp_path / "san_tiny_l14_test.json"
    path.write_text(json.dumps(preset))
    torch.manual_seed(0)
    model = init_random_weights(SAN(get_config(path)), seed=3)
    assert_same_as_alone(
        Segmenter(model, device="cpu", max_padding=float("inf")), Segmenter(model, device="cpu")
    )


def test_the_parity_images_in_one_forward_match_the_official_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The released B/16 architecture with the parity weights: the 512x512 and 720x1280 parity images (padded
    640x640 and 640x1152) in one forward still give the official scores of each image."""
    model = parity_segmenter().model
    batched = Segmenter(model, device="cpu", resizer="pil", max_padding=float("inf"))
    shapes = count_forwards(batched, monkeypatch)
    images = [case_arrays(name)["image_uint8"] for name in CASES]
    vocabularies = [case_meta(name)["vocabulary"] for name in CASES]
    results = batched.segment(images, vocabularies, return_scores=True)
    assert shapes == [(2, 3, 640, 1152)]
    for name, result in zip(CASES, results, strict=True):
        alone = run_case(name)["result"]
        np.testing.assert_allclose(result.scores, alone.scores, rtol=0, atol=1e-4, err_msg=name)
        official = case_arrays(name)
        assert_close(f"{name} scores, every 8th pixel", result.scores[:, ::8, ::8], official["sem_seg_sub"])


def test_switches_are_checked_up_front(tiny_model: SAN) -> None:
    with pytest.raises(ValueError, match="max_padding must be >= 0"):
        Segmenter(tiny_model, device="cpu", max_padding=-1.0)
    with pytest.raises(ValueError, match="pin_memory stages frames for a CUDA device"):
        Segmenter(tiny_model, device="cpu", pin_memory=True)
    assert Segmenter(tiny_model, device="cpu").pin_memory is False
