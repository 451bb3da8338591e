"""SAN's side adapter: a small ViT, trained from scratch, that turns query tokens into mask proposals.

It reads the full-resolution image, adds CLIP features at a few depths ("fusion") and hands its query
tokens and pixel map to the mask decoder (`heads.py`). Attribute names mirror the official timm-based module
tree (`vit_model.blocks.{i}.attn.qkv`, `fusion_layers.layer_{j}.input_proj.{0,1}`), which is what the
released checkpoints are keyed by.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.san.canvas import Size, key_mask, resize_each
from pipeline.san.clip import ClipFeatures, canvas_grid_embedding, resize_grid_embedding
from pipeline.san.config import SANConfig, SideAdapterConfig
from pipeline.san.heads import MaskDecoder


class SideAttention(nn.Module):
    """timm-style multi-head self-attention with a fused qkv projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if attn_mask is None else attn_mask.to(qkv.dtype)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class SideMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SideBlock(nn.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6, exact GELU), as timm builds it for the side adapter."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = SideAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = SideMlp(width, width * mlp_ratio)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images)


class SideViT(nn.Module):
    """Container whose attribute names match the official `side_adapter_network.vit_model` keys."""

    def __init__(self, config: SideAdapterConfig) -> None:
        super().__init__()
        self.native_grid = (config.native_grid, config.native_grid)
        self.patch_embed = PatchEmbed(config.patch_size, config.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.native_grid**2, config.width))
        self.blocks = nn.ModuleList(
            SideBlock(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map (eps 1e-6), as in SAN's fusion layers."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class AddFusion(nn.Module):
    """Project a CLIP feature map to the side width, resize it to the side grid and add it to patch tokens."""

    def __init__(self, clip_width: int, side_width: int) -> None:
        super().__init__()
        self.input_proj = nn.Sequential(ChannelLayerNorm(clip_width), nn.Conv2d(clip_width, side_width, 1))

    def forward(
        self,
        patch_tokens: torch.Tensor,
        clip_map: torch.Tensor,
        grid: tuple[int, int],
        grids: tuple[list[Size], list[Size]] | None = None,
    ) -> torch.Tensor:
        """`grids`, for images on a larger canvas: (each image's CLIP grid, each image's side grid), so each
        image's own CLIP map is resized to its own side grid."""
        projected = self.input_proj(clip_map)
        if grids is None:
            projected = F.interpolate(projected, size=grid, mode="bilinear", align_corners=False)
        else:
            projected = resize_each(projected, grids[0], grids[1], grid, _bilinear)
        return patch_tokens + projected.flatten(2).transpose(1, 2)


def _bilinear(maps: torch.Tensor, size: Size) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class SideAdapterNetwork(nn.Module):
    """Predicts Q mask proposals and the attention biases that steer CLIP's recognition blocks.

    Args:
        config: the SAN preset (side ViT shape, fusion map, decoder shape, CLIP width and heads).
    """

    def __init__(self, config: SANConfig) -> None:
        super().__init__()
        side = config.side_adapter
        self.num_queries = side.num_queries
        self.vit_model = SideViT(side)
        self.query_embed = nn.Parameter(torch.zeros(1, side.num_queries, side.width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, side.num_queries, side.width))
        # Keyed by side index; `clip_source` says which CLIP depth feeds each one.
        self.clip_source = {side_idx: clip_idx for clip_idx, side_idx in config.fusion_map.items()}
        self.fusion_layers = nn.ModuleDict(
            {
                f"layer_{side_idx}": AddFusion(config.clip_visual.width, side.width)
                for side_idx in self.clip_source
            }
        )
        self.mask_decoder = MaskDecoder(
            in_channels=side.width,
            heads=config.clip_visual.heads,
            layers=config.decoder.attn_bias_layers,
            embed_channels=config.decoder.embed_channels,
            mlp_channels=config.decoder.mlp_channels,
            mlp_layers=config.decoder.mlp_layers,
        )

    def _fuse(
        self,
        side_idx: int,
        x: torch.Tensor,
        clip: ClipFeatures,
        grid: tuple[int, int],
        side_grids: list[Size] | None,
    ) -> torch.Tensor:
        if side_idx not in self.clip_source:
            return x
        queries, patches = x[:, : self.num_queries], x[:, self.num_queries :]
        fusion = self.fusion_layers[f"layer_{side_idx}"]
        grids = None
        if side_grids is not None:
            if clip.image_grids is None:
                raise ValueError("images on a canvas need CLIP features computed with their grids")
            grids = (clip.image_grids, side_grids)
        patches = fusion(patches, clip.spatial_map(self.clip_source[side_idx]), grid, grids)
        return torch.cat([queries, patches], dim=1)

    def _position(self, batch: int, grid: Size, grids: list[Size] | None, dtype: torch.dtype) -> torch.Tensor:
        """Query and patch position embeddings: [Q + L, Ws] for the grid, or [B, Q + L, Ws] per image."""
        native, queries = self.vit_model.native_grid, self.query_pos_embed[0]
        if grids is None:
            pos = torch.cat([queries, resize_grid_embedding(self.vit_model.pos_embed[0], native, grid)])
        else:
            per_image = canvas_grid_embedding(self.vit_model.pos_embed[0], native, grids, grid)
            pos = torch.cat([queries.expand(batch, -1, -1), per_image], dim=1)
        return pos.to(dtype)

    def forward_features(
        self, images: torch.Tensor, clip: ClipFeatures, grids: list[Size] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the side ViT on normalized, padded images [B, 3, H, W].

        Args:
            grids: image b's own side grid when the images lie on a larger canvas (`pipeline.san.canvas`).

        Returns:
            query tokens [B, Q, Ws] and the pixel map [B, Ws, H/16, W/16] after the last block.
        """
        patches = self.vit_model.patch_embed(images)
        batch, width, grid_h, grid_w = patches.shape
        grid = (grid_h, grid_w)
        pos = self._position(batch, grid, grids, patches.dtype)
        mask = (
            None if grids is None else key_mask(grids, grid, self.num_queries, patches.dtype, patches.device)
        )
        x = torch.cat(
            [self.query_embed.to(patches.dtype).expand(batch, -1, -1), patches.flatten(2).transpose(1, 2)], 1
        )
        # The position embedding is re-added before every block, not only the first (official behaviour).
        x = self._fuse(0, x + pos, clip, grid, grids)
        blocks = self.vit_model.blocks
        for number, block in enumerate(blocks, start=1):
            x = self._fuse(number, block(x, mask), clip, grid, grids)
            if number < len(blocks):
                x = x + pos
        queries = x[:, : self.num_queries]
        pixel_map = x[:, self.num_queries :].transpose(1, 2).reshape(batch, width, grid_h, grid_w)
        return queries, pixel_map

    def forward(
        self, images: torch.Tensor, clip: ClipFeatures, grids: list[Size] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mask logits [B, Q, H/16, W/16] and one attention bias [B, heads, Q, H/16, W/16] per bias layer."""
        queries, pixel_map = self.forward_features(images, clip, grids)
        return self.mask_decoder(queries, pixel_map)
