"""Shared SAN test objects: a tiny model with deterministic random weights and its segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.san import SAN, Segmenter, load_checkpoint


@pytest.fixture(scope="session")
def tiny_model() -> SAN:
    return load_checkpoint("random", model="san_tiny_test", seed=7)


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_model: SAN) -> Segmenter:
    torch.set_num_threads(2)
    return Segmenter(tiny_model, device="cpu")


def pattern_image(height: int, width: int, seed: int) -> np.ndarray:
    """A structured RGB image (gradients, a disc, noise) so masks and classes vary across pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    disc = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 4) ** 2
    image[disc] = rng.integers(0, 256, 3)
    image = image + rng.integers(-20, 20, image.shape)
    return image.clip(0, 255).astype(np.uint8)
