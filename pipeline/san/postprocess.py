"""Official post-processing, computed in bounded memory: masks to full resolution, class scores, labels.

The official order is: upsample mask logits to the padded size, crop to the resized size, resize to the
original size (all bilinear, align_corners False), sigmoid, then S[c] = sum_q softmax(logits)[q, c] * mask[q].
Both resizes are linear and separable, so we fold them into one row matrix and one column matrix
(`resize_matrix`) and produce the full-resolution result a band of rows at a time. A 1080p frame never needs
the 100 x 1080 x 1920 float tensor at once, which is what lets full-resolution class areas run fast on a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.san.preprocess import ImageGeometry

# Upper bound on elements of the per-band [Q, rows, W] tensor (about 128 MB in float32).
BAND_ELEMENTS = 32 * 1024 * 1024


@functools.lru_cache(maxsize=256)
def resize_matrix(
    mask_len: int, padded: int, resized: int, original: int, device: torch.device
) -> torch.Tensor:
    """[original, mask_len] matrix equal to: linear upsample to `padded`, crop to `resized`, linear resize to
    `original` (align_corners False), along one axis.

    Cached (read-only: callers never write to it): a stream's frames share one size, and building the
    matrix in float64 for every image cost more than applying it."""
    eye = torch.eye(mask_len, device=device, dtype=torch.float64)[None]
    up = F.interpolate(eye, size=padded, mode="linear", align_corners=False)[..., :resized]
    if resized != original:
        up = F.interpolate(up, size=original, mode="linear", align_corners=False)
    return up[0].T.float().contiguous()


def class_probabilities(class_logits: torch.Tensor) -> torch.Tensor:
    """[Q, C + 1] logits -> [Q, C] probabilities: softmax over all C + 1, background column dropped after."""
    return F.softmax(class_logits.float(), dim=-1)[..., :-1]


@dataclass
class PostprocessResult:
    labels: torch.Tensor | None  # [H, W] int64
    areas: torch.Tensor  # [C] int64
    scores: torch.Tensor | None  # [C, H, W] float32
    region_areas: torch.Tensor | None = None  # [R, C] int64, per region of `regions`


def postprocess(
    mask_logits: torch.Tensor,
    probabilities: torch.Tensor,
    geom: ImageGeometry,
    *,
    return_labels: bool = True,
    return_scores: bool = False,
    regions: torch.Tensor | None = None,
) -> PostprocessResult:
    """Full-resolution labels, per-class pixel counts and (optionally) scores for one image.

    Args:
        mask_logits: [Q, h, w] mask proposal logits at the side-adapter grid.
        probabilities: [Q, C] from `class_probabilities`.
        geom: the image's original/resized/padded sizes.
        regions: bool [R, H, W] region masks at the original size: per-region class pixels are counted
            band by band from the same labels, so no full-resolution label map is needed for them.
    """
    device = mask_logits.device
    queries, mask_h, mask_w = mask_logits.shape
    classes = probabilities.shape[1]
    height, width = geom.original
    rows_matrix = resize_matrix(mask_h, geom.padded[0], geom.resized[0], height, device)
    cols_matrix = resize_matrix(mask_w, geom.padded[1], geom.resized[1], width, device)
    masks = mask_logits.float()
    probs_t = probabilities.float().T.contiguous()  # [C, Q]
    band = max(1, BAND_ELEMENTS // max(1, queries * width))
    labels = torch.empty(height, width, dtype=torch.long, device=device) if return_labels else None
    scores = (
        torch.empty(classes, height, width, dtype=torch.float32, device=device) if return_scores else None
    )
    areas = torch.zeros(classes, dtype=torch.long, device=device)
    if regions is not None and tuple(regions.shape[1:]) != (height, width):
        raise ValueError(f"region masks are {tuple(regions.shape[1:])}, the image is {(height, width)}")
    region_areas = (
        None if regions is None else torch.zeros(regions.shape[0], classes, dtype=torch.long, device=device)
    )
    # Columns first: [Q, h, W] is small and shared by every band.
    wide = torch.matmul(masks, cols_matrix.T)
    for top in range(0, height, band):
        bottom = min(height, top + band)
        full = torch.matmul(rows_matrix[top:bottom], wide).sigmoid_()  # [Q, rows, W]
        band_scores = torch.matmul(probs_t, full.reshape(queries, -1)).reshape(classes, bottom - top, width)
        band_labels = band_scores.argmax(dim=0)
        areas += torch.bincount(band_labels.flatten(), minlength=classes)
        if regions is not None and region_areas is not None:
            for r in range(regions.shape[0]):
                inside = band_labels[regions[r, top:bottom]]
                region_areas[r] += torch.bincount(inside, minlength=classes)
        if labels is not None:
            labels[top:bottom] = band_labels
        if scores is not None:
            scores[:, top:bottom] = band_scores
    return PostprocessResult(labels=labels, areas=areas, scores=scores, region_areas=region_areas)
