"""Comparing a reduced-precision run with a float32 reference, pixel label by pixel label.

bfloat16 keeps 8 bits of mantissa, so it moves class scores by a fraction of a percent; that can only flip a
pixel's label where float32 itself hesitates between two classes. Exact agreement over every pixel is
therefore the wrong test (near-ties flip at random), and so is a tolerance on the scores (it says nothing
about labels). `label_agreement` counts agreement only where the float32 decision is clear: the top-1 score
beats the top-2 score by more than `margin`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_agreement"]


def label_agreement(
    reference_scores: np.ndarray, labels: np.ndarray, margin: float = 0.05
) -> tuple[float, int]:
    """Agreement of `labels` with the reference's argmax where the reference is confident.

    Args:
        reference_scores: float32 [C, H, W] per-class scores of the reference (float32) run.
        labels: [H, W] integer class indices of the run under test (e.g. bfloat16).
        margin: a pixel counts when its reference top-1 minus top-2 score exceeds this.

    Returns:
        (fraction of the counted pixels where `labels` equals the reference argmax, number of counted
        pixels). The fraction is 1.0 when no pixel is counted; check the count.
    """
    scores = np.asarray(reference_scores, dtype=np.float32)
    if scores.ndim != 3:
        raise ValueError(f"reference_scores must be [C, H, W], got shape {scores.shape}")
    if labels.shape != scores.shape[1:]:
        raise ValueError(f"labels are {labels.shape}, the reference scores are {scores.shape[1:]}")
    if scores.shape[0] < 2:
        # One class: every label is decided with an unbounded margin.
        confident = np.ones(labels.shape, dtype=bool)
        reference = np.zeros(labels.shape, dtype=np.int64)
    else:
        top2 = np.partition(scores, -2, axis=0)[-2:]
        confident = (top2[1] - top2[0]) > margin
        reference = scores.argmax(axis=0)
    count = int(confident.sum())
    if count == 0:
        return 1.0, 0
    agree = int((labels[confident] == reference[confident]).sum())
    return agree / count, count
