"""bfloat16 labels agree with float32 where float32 is sure (issue "Frames/s close to the hardware", item 5).

Runs the `sanref-v2` parity model (tests/pipeline/san/test_parity.py) on the smaller parity image in float32
and in bfloat16 on CPU. The larger parity image is left out: none of its pixels has a float32 top-2 margin
above 0.05 (its largest is about 0.019), so it would count nothing. `bench/bf16_agreement.py` runs the same
check on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.san import Segmenter
from pipeline.san.numerics import label_agreement
from tests.pipeline.san.parity_fixtures import case_arrays, case_meta
from tests.pipeline.san.test_parity import run_case, segmenter

CASE = "open_512x512_upscale"
MARGIN = 0.05
MIN_AGREEMENT = 0.99


def test_label_agreement_counts_only_confident_pixels() -> None:
    # 3 classes on a 2 x 3 image; top-1 minus top-2 per pixel: row 0 0.5, 0.01, 0.3; row 1 0.2, 0.06, 0.
    scores = np.zeros((3, 2, 3), np.float32)
    scores[:, 0, 0] = [0.7, 0.2, 0.1]
    scores[:, 0, 1] = [0.40, 0.39, 0.1]
    scores[:, 0, 2] = [0.1, 0.2, 0.5]
    scores[:, 1, 0] = [0.1, 0.5, 0.3]
    scores[:, 1, 1] = [0.2, 0.46, 0.4]
    scores[:, 1, 2] = [0.3, 0.3, 0.3]
    labels = np.array([[0, 1, 2], [2, 1, 0]])  # wrong at (0, 1) (a near-tie) and (1, 0) (confident)
    fraction, count = label_agreement(scores, labels, margin=0.05)
    assert count == 4
    assert fraction == pytest.approx(3 / 4)
    assert label_agreement(scores, labels, margin=0.25) == (1.0, 2)
    assert label_agreement(scores, labels, margin=0.9) == (1.0, 0)
    with pytest.raises(ValueError, match="labels are"):
        label_agreement(scores, labels[:, :2])


def test_bf16_labels_agree_with_fp32_on_parity_image() -> None:
    image = case_arrays(CASE)["image_uint8"]
    vocabulary = case_meta(CASE)["vocabulary"]
    reference = run_case(CASE)["result"]  # float32 Segmenter with return_scores=True, shared with test_parity
    assert reference.scores is not None
    bf16 = Segmenter(segmenter().model, device="cpu", dtype=torch.bfloat16, resizer="pil")
    result = bf16.segment([image], [vocabulary])[0]
    assert result.labels is not None
    fraction, count = label_agreement(reference.scores, result.labels, margin=MARGIN)
    # About 70% of this image's pixels have a float32 margin above 0.05 (manifest: median 0.053).
    assert count >= result.labels.size // 2, f"only {count} of {result.labels.size} pixels are confident"
    assert fraction >= MIN_AGREEMENT, f"bf16 agrees with fp32 on {fraction:.4%} of {count} confident pixels"
