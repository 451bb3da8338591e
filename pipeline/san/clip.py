"""The frozen CLIP parts of SAN: transformer blocks, the visual feature extractor and the text tower.

Parameter names follow open_clip/OpenAI CLIP exactly (`ln_1`, `attn.in_proj_weight`, `mlp.c_fc`, ...) so the
released SAN checkpoints load unchanged. The blocks are our own rather than open_clip's because SAN needs a
per-image additive attention mask on a batch-first layout, which we feed to
`F.scaled_dot_product_attention` (fused kernels on GPU) instead of going through `nn.MultiheadAttention`.
`nn.MultiheadAttention` is still used as the parameter container so the key names match.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.san.canvas import Size, key_mask, resize_each
from pipeline.san.config import ClipTextConfig, ClipVisualConfig


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation; the released weights were trained with it, so exact GELU is wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP transformer block on batch-first tokens [B, L, W].

    Args:
        width: token width W.
        heads: attention heads (W must divide evenly).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split packed q/k/v projections into [B, heads, L, head_dim] each."""
        batch, length, width = x.shape
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """[B, heads, L, head_dim] -> output projection on [B, L, W]."""
        batch, heads, length, head_dim = out.shape
        out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)
        return F.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        q, k, v = self.project_qkv(self.ln_1(x))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        x = x + self.merge_heads(attended)
        return x + self.mlp(self.ln_2(x))


def resize_grid_embedding(
    grid_embedding: torch.Tensor, source_hw: tuple[int, int], target_hw: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resize a flattened [N, C] grid of position embeddings to another grid size.

    SAN runs CLIP and the side ViT at resolutions other than the ones their position embeddings were learned
    at, and the official model resizes them on every forward (bicubic, align_corners False, no antialias).
    """
    if source_hw == target_hw:
        return grid_embedding
    channels = grid_embedding.shape[-1]
    grid = grid_embedding.reshape(1, source_hw[0], source_hw[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=target_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(target_hw[0] * target_hw[1], channels)


def canvas_grid_embedding(
    grid_embedding: torch.Tensor, source_hw: Size, grids: list[Size], canvas: Size
) -> torch.Tensor:
    """[B, H*W, C]: the [N, C] grid embedding resized to image b's own grid `grids[b]` (as
    `resize_grid_embedding` does for an image alone), in the top-left corner of an H x W canvas grid of zeros.
    """
    channels = grid_embedding.shape[-1]
    native = grid_embedding.reshape(1, source_hw[0], source_hw[1], channels).permute(0, 3, 1, 2)

    def resize(maps: torch.Tensor, size: Size) -> torch.Tensor:
        if size == source_hw:
            return maps
        return F.interpolate(maps, size=size, mode="bicubic", align_corners=False)

    sources = [source_hw] * len(grids)
    placed = resize_each(native.expand(len(grids), -1, -1, -1), sources, grids, canvas, resize)
    return placed.flatten(2).transpose(1, 2)


@dataclass
class ClipFeatures:
    """CLIP token sequences [B, 1 + h*w, W] (CLS first) after selected depths, on an h x w patch grid.

    `tokens[k]` is the sequence after CLIP block k-1 (`tokens[0]` right after `ln_pre`). When the batch
    holds images of several sizes on one canvas (`pipeline.san.canvas`), `image_grids[b]` is image b's own
    grid in the top-left corner of the h x w canvas grid, and `key_mask` hides the rest from attention.
    """

    tokens: dict[int, torch.Tensor]
    grid: tuple[int, int]
    image_grids: list[Size] | None = None
    key_mask: torch.Tensor | None = None

    def spatial_map(self, index: int) -> torch.Tensor:
        """Patch tokens of depth `index` as a feature map [B, W, h, w]."""
        seq = self.tokens[index][:, 1:]
        return seq.transpose(1, 2).reshape(seq.shape[0], seq.shape[2], *self.grid)

    def cls_token(self, index: int) -> torch.Tensor:
        return self.tokens[index][:, 0]


class ClipVisualExtractor(nn.Module):
    """CLIP's image tower up to the split point: patch embedding, `ln_pre` and the first blocks.

    Args:
        config: CLIP visual dimensions.
        num_blocks: how many blocks run here (SAN's `feature_last_layer`); the rest belong to the
            recognition head.
    """

    def __init__(self, config: ClipVisualConfig, num_blocks: int) -> None:
        super().__init__()
        width = config.width
        self.native_grid = (config.native_grid, config.native_grid)
        self.patch_size = config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.native_grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, config.heads) for _ in range(num_blocks))

    def forward(self, images: torch.Tensor, keep: set[int], grids: list[Size] | None = None) -> ClipFeatures:
        """Run the shallow CLIP blocks on normalized images [B, 3, H, W].

        Args:
            keep: depths whose token sequences are returned (see `ClipFeatures`).
            grids: image b's own patch grid when the images lie on a larger canvas (`pipeline.san.canvas`);
                None when every image fills the batch tensor.
        """
        patches = self.conv1(images)
        batch, width, grid_h, grid_w = patches.shape
        x = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1)
        pos = self.positional_embedding.to(x.dtype)
        mask = None
        if grids is None:
            pos = torch.cat([pos[:1], resize_grid_embedding(pos[1:], self.native_grid, (grid_h, grid_w))])
        else:
            per_image = canvas_grid_embedding(pos[1:], self.native_grid, grids, (grid_h, grid_w))
            pos = torch.cat([pos[:1].expand(batch, 1, width), per_image], dim=1)
            mask = key_mask(grids, (grid_h, grid_w), 1, x.dtype, x.device)
        x = self.ln_pre(x + pos)
        tokens = {0: x} if 0 in keep else {}
        for depth, block in enumerate(self.resblocks, start=1):
            x = block(x, attn_mask=mask)
            if depth in keep:
                tokens[depth] = x
        return ClipFeatures(tokens=tokens, grid=(grid_h, grid_w), image_grids=grids, key_mask=mask)


class ClipTextEncoder(nn.Module):
    """CLIP's text tower plus SAN's learned background embedding (`ov_classifier` in the checkpoint)."""

    def __init__(self, config: ClipTextConfig) -> None:
        super().__init__()
        self.context_length = config.context_length
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(config.width, config.heads) for _ in range(config.layers)
        )
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.ln_final = nn.LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.zeros(config.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        self.bg_embed = nn.Parameter(torch.zeros(1, config.embed_dim))
        # Saved by the official model (it re-registers open_clip's mask as a persistent buffer); we keep it
        # so checkpoints load strictly, but attention uses SDPA's built-in causal masking.
        causal = torch.full((config.context_length, config.context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalized text embeddings [N, D] for token ids [N, context_length] (EOT has the largest id)."""
        x = self.token_embedding(tokens) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x, is_causal=True)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return F.normalize(eot @ self.text_projection, dim=-1)
