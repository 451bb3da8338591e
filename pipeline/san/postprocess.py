"""Official post-processing, computed in bounded memory: masks to full resolution, class scores, labels.

The official order is: upsample mask logits to the padded size, crop to the resized size, resize to the
original size (all bilinear, align_corners False), sigmoid, then S[c] = sum_q softmax(logits)[q, c] * mask[q].
Both resizes are linear and separable, so we fold them into one row matrix and one column matrix
(`resize_matrix`) and produce the full-resolution result a band of rows at a time. A 1080p frame never needs
the 100 x 1080 x 1920 float tensor at once, which is what lets full-resolution class areas run fast on a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.san.preprocess import ImageGeometry

# Upper bound on elements of the per-band [N, Q, rows, W] tensor (about 128 MB in float32).
BAND_ELEMENTS = 32 * 1024 * 1024
# On a GPU, fewer and larger bands of a whole batch save kernel launches, and 1 GB is a small part of its
# memory; on a CPU a band larger than its caches only costs.
BAND_ELEMENTS_BY_DEVICE = {"cpu": BAND_ELEMENTS, "cuda": 8 * BAND_ELEMENTS}


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
    (result,) = postprocess_batch(
        mask_logits[None],
        [probabilities],
        geom,
        return_labels=return_labels,
        return_scores=return_scores,
        regions=[regions],
    )
    return result


def postprocess_batch(
    mask_logits: torch.Tensor,
    probabilities: Sequence[torch.Tensor],
    geom: ImageGeometry,
    *,
    return_labels: bool = True,
    return_scores: bool = False,
    regions: Sequence[torch.Tensor | None] | None = None,
    band_elements: int = BAND_ELEMENTS,
) -> list[PostprocessResult]:
    """`postprocess` for N images of one geometry in one pass of bands, each with its own vocabulary.

    On a GPU the per-image work of a band is a handful of small kernels, so a batch of 64 frames paid 64
    times the launches; here every band is computed for all N images at once. Vocabularies of different
    sizes are padded to the largest with classes scored -inf, which never win the argmax and are dropped
    from the counts, so each image's result is what `postprocess` gives it alone.

    Args:
        mask_logits: [N, Q, h, w].
        probabilities: N tensors [Q, C_i].
        regions: per image, None or bool [R_i, H, W] region masks at the original size.
        band_elements: bound on the [N, Q, rows, W] band tensor's elements.
    """
    device = mask_logits.device
    count, queries, mask_h, mask_w = mask_logits.shape
    if len(probabilities) != count:
        raise ValueError(f"got {count} images' masks but {len(probabilities)} probability matrices")
    regions = list(regions) if regions is not None else [None] * count
    height, width = geom.original
    for masks in regions:
        if masks is not None and tuple(masks.shape[1:]) != (height, width):
            raise ValueError(f"region masks are {tuple(masks.shape[1:])}, the image is {(height, width)}")
    classes = [p.shape[1] for p in probabilities]
    widest = max(classes)
    rows_matrix = resize_matrix(mask_h, geom.padded[0], geom.resized[0], height, device)
    cols_matrix = resize_matrix(mask_w, geom.padded[1], geom.resized[1], width, device)
    # [N, C, Q] class weights, zero for a narrower vocabulary's missing classes, which are then hidden.
    probs_t = torch.zeros(count, widest, queries, device=device)
    for index, probs in enumerate(probabilities):
        probs_t[index, : classes[index]] = probs.float().T
    hidden = None
    if min(classes) < widest:
        hidden = torch.arange(widest, device=device)[None, :] >= torch.tensor(classes, device=device)[:, None]
        hidden = hidden[:, :, None, None]  # [N, C, 1, 1]
    offsets = (torch.arange(count, device=device) * widest)[:, None, None]
    band = max(1, band_elements // max(1, count * queries * width))
    labels = torch.empty(count, height, width, dtype=torch.long, device=device) if return_labels else None
    scores = (
        torch.empty(count, widest, height, width, dtype=torch.float32, device=device)
        if return_scores
        else None
    )
    areas = torch.zeros(count * widest, dtype=torch.long, device=device)
    region_areas = [
        None if masks is None else torch.zeros(masks.shape[0], widest, dtype=torch.long, device=device)
        for masks in regions
    ]
    # Columns first: [N, Q, h, W] is small and shared by every band.
    wide = torch.matmul(mask_logits.float(), cols_matrix.T)
    for top in range(0, height, band):
        bottom = min(height, top + band)
        full = torch.matmul(rows_matrix[top:bottom], wide).sigmoid_()  # [N, Q, rows, W]
        band_scores = torch.matmul(probs_t, full.reshape(count, queries, -1))
        band_scores = band_scores.reshape(count, widest, bottom - top, width)
        if hidden is not None:
            band_scores = band_scores.masked_fill(hidden, float("-inf"))
        band_labels = band_scores.argmax(dim=1)  # [N, rows, W]
        areas += torch.bincount((band_labels + offsets).flatten(), minlength=count * widest)
        for index, masks in enumerate(regions):
            counted = region_areas[index]
            if masks is None or counted is None:
                continue
            for r in range(masks.shape[0]):
                counted[r] += torch.bincount(band_labels[index][masks[r, top:bottom]], minlength=widest)
        if labels is not None:
            labels[:, top:bottom] = band_labels
        if scores is not None:
            scores[:, :, top:bottom] = band_scores
    per_image = areas.reshape(count, widest)
    return [
        PostprocessResult(
            labels=None if labels is None else labels[index],
            areas=per_image[index, : classes[index]],
            scores=None if scores is None else scores[index, : classes[index]],
            region_areas=None if region_areas[index] is None else region_areas[index][:, : classes[index]],
        )
        for index in range(count)
    ]
