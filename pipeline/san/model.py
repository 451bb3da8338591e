"""The SAN network as a pure function of tensors: normalized padded images in, masks and embeddings out.

Text encoding, preprocessing, batching by vocabulary and post-processing live in `segmenter.py`; this module
only wires the parts together under the official attribute names, so `load_state_dict(strict=True)` accepts a
released checkpoint's `"model"` dict as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.san.canvas import CanvasLayout, Size
from pipeline.san.clip import ClipFeatures, ClipTextEncoder, ClipVisualExtractor
from pipeline.san.config import SANConfig
from pipeline.san.heads import RecognitionHead
from pipeline.san.side_adapter import SideAdapterNetwork


class TrainingCriterionState(nn.Module):
    """Holds `criterion.empty_weight` (the no-object class weight used in training) so checkpoints load
    strictly; inference never reads it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        weight = torch.ones(num_classes + 1)
        weight[-1] = 0.1
        self.register_buffer("empty_weight", weight)


@dataclass
class SANOutput:
    """Per image: Q mask-proposal logits at 1/16 of the input and Q L2-normalized CLIP embeddings.

    Attributes:
        mask_logits: [B, Q, H/16, W/16].
        mask_embeddings: [B, Q, D], vocabulary-independent; classify with `SAN.classify`.
    """

    mask_logits: torch.Tensor
    mask_embeddings: torch.Tensor


class SAN(nn.Module):
    """Side Adapter Network (Xu et al., CVPR 2023) for open-vocabulary semantic segmentation.

    Args:
        config: a preset from `configs/models/` (see `pipeline.san.config.get_config`).
    """

    def __init__(self, config: SANConfig) -> None:
        super().__init__()
        self.config = config
        self.criterion = TrainingCriterionState(config.num_train_classes)
        self.side_adapter_network = SideAdapterNetwork(config)
        self.clip_visual_extractor = ClipVisualExtractor(config.clip_visual, config.feature_last_layer)
        self.clip_rec_head = RecognitionHead(config.clip_visual, config.feature_last_layer)
        self.ov_classifier = ClipTextEncoder(config.clip_text)
        self._clip_depths = set(config.fusion_map) | {config.feature_last_layer}

    def clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP sees the padded, normalized batch scaled by `clip_resolution` (bilinear, by scale factor)."""
        return F.interpolate(
            images, scale_factor=self.config.clip_resolution, mode="bilinear", align_corners=False
        )

    def extract_clip(self, images: torch.Tensor, grids: list[Size] | None = None) -> ClipFeatures:
        return self.clip_visual_extractor(self.clip_input(images), keep=self._clip_depths, grids=grids)

    def forward(self, images: torch.Tensor, layout: CanvasLayout | None = None) -> SANOutput:
        """Segment normalized images [B, 3, H, W], H and W multiples of 32 (see `preprocess.py`).

        With a `layout`, image b is its own `layout.sizes[b]` padded image in the top-left corner of the
        batch tensor, and its outputs there (mask logits on its own H/16 x W/16 grid, embeddings) are those
        of the image run alone (see `pipeline.san.canvas`); the rest of its mask logits is meaningless.
        """
        clip_grids = side_grids = None
        if layout is not None:
            if tuple(images.shape[2:]) != layout.canvas or len(layout.sizes) != images.shape[0]:
                raise ValueError(
                    f"images are {tuple(images.shape)}, the layout is {len(layout.sizes)} images on a "
                    f"{layout.canvas} canvas"
                )
            if any(size != layout.canvas for size in layout.sizes):
                clip_grids = layout.grids(self.config.clip_visual.patch_size, self.config.clip_resolution)
                side_grids = layout.grids(self.config.side_adapter.patch_size)
        clip = self.extract_clip(images, clip_grids)
        mask_logits, biases = self.side_adapter_network(images, clip, side_grids)
        embeddings = self.clip_rec_head(clip, self.config.feature_last_layer, biases[-1], side_grids)
        return SANOutput(mask_logits=mask_logits, mask_embeddings=embeddings)

    def encode_vocabulary(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class embeddings [C, D] from template tokens [T, C, context]: mean of normalized per-template
        embeddings, renormalized (the official prompt ensembling)."""
        templates, classes, context = tokens.shape
        per_template = self.ov_classifier.encode(tokens.reshape(templates * classes, context))
        mean = per_template.reshape(templates, classes, -1).mean(dim=0)
        return F.normalize(mean, dim=-1)

    def classifier_weights(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """[C + 1, D]: class embeddings plus the learned background row, renormalized and scaled by
        exp(logit_scale), so `mask_embeddings @ weights.T` are the official class logits."""
        rows = torch.cat([class_embeddings, self.ov_classifier.bg_embed.to(class_embeddings.dtype)])
        return F.normalize(rows, dim=-1) * self.ov_classifier.logit_scale.exp().to(class_embeddings.dtype)
