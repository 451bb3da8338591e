"""Our `SAN` modules against an independent, purely functional statement of the official formulas.

`official_formulas.py` was written from the reference sheet without reading our modules and is itself
checked against the official outputs (test_official_formulas.py). Here both run on small inputs of several
shapes, for the tiny test preset and for the real B/16 and L/14 architectures (which exercise the 0.7 CLIP
scale, remainder pixels dropped by the patch conv and irregular adaptive max-pool windows).
"""

from __future__ import annotations

import functools

import numpy as np
import open_clip
import pytest
import torch

from pipeline.san import SAN, Segmenter, get_config
from pipeline.san.postprocess import class_probabilities, postprocess
from pipeline.san.preprocess import ImageGeometry
from pipeline.san.vocabulary import template_prompts
from tests.pipeline.san import official_formulas as of

PRESETS = {"tiny": "san_tiny_test", "san_vit_b_16": "san_vit_b_16", "san_vit_large_14": "san_vit_large_14"}
VOCABULARY = ("water", "car, automobile", "tree")


@functools.cache
def pair(name: str) -> tuple[dict[str, torch.Tensor], SAN]:
    cfg = of.config_for(name)
    state = of.deterministic_state_dict(cfg, seed=5)
    model = SAN(get_config(PRESETS[name]))
    model.load_state_dict(state, strict=True)
    return state, model.eval()


def normalized_input(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, height, width, generator=generator)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("name", "height", "width"),
    [
        ("tiny", 64, 64),
        ("tiny", 96, 160),
        ("tiny", 128, 96),
        ("san_vit_b_16", 64, 96),
        ("san_vit_large_14", 96, 128),
    ],
)
def test_forward_matches_the_official_formulas(name: str, height: int, width: int) -> None:
    state, model = pair(name)
    cfg = of.config_for(name)
    tokenizer = open_clip.get_tokenizer(get_config(PRESETS[name]).tokenizer)
    tokens = torch.stack([tokenizer(prompts) for prompts in template_prompts(VOCABULARY)])
    images = normalized_input(height, width, seed=height + width)
    with torch.inference_mode():
        reference_classifier = of.text_classifier(state, cfg, tokens)
        reference = of.forward(state, cfg, images, reference_classifier)
        ours = model(images)
        classifier = Segmenter(model).classifier(VOCABULARY)
    assert relative_error(classifier, reference_classifier) < 1e-5
    assert relative_error(ours.mask_logits[0], reference["mask_preds"]) < 1e-4
    assert relative_error(ours.mask_embeddings[0], reference["mask_embs"]) < 1e-4
    logits = ours.mask_embeddings[0] @ classifier.T
    assert relative_error(logits, reference["class_logits"]) < 1e-4


@pytest.mark.parametrize(
    ("original", "resized", "padded"),
    [((48, 80), (640, 1067), (640, 1088)), ((700, 500), (896, 640), (896, 640))],
)
def test_postprocess_matches_the_official_order(
    original: tuple[int, int], resized: tuple[int, int], padded: tuple[int, int]
) -> None:
    """Our banded, separable post-processing equals upsample -> crop -> resize -> sigmoid -> combine."""
    generator = torch.Generator().manual_seed(1)
    masks = torch.randn(10, padded[0] // 16, padded[1] // 16, generator=generator) * 8
    logits = torch.randn(10, 4, generator=generator) * 3
    reference = of.postprocess(masks, logits, padded, resized, original)
    result = postprocess(
        masks, class_probabilities(logits), ImageGeometry(original, resized, padded), return_scores=True
    )
    assert relative_error(result.scores, reference) < 3e-5
    margin = reference.topk(2, dim=0).values
    decided = (margin[0] - margin[1]) > 1e-5
    assert torch.equal(result.labels[decided], reference.argmax(0)[decided])
    assert int(result.areas.sum()) == original[0] * original[1]
    np.testing.assert_array_equal(
        result.areas.numpy(), np.bincount(result.labels.flatten().numpy(), minlength=3)
    )
