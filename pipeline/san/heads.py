"""SAN's two heads: the mask/attention-bias decoder and the CLIP recognition head steered by the bias."""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.san.canvas import Size, resize_each
from pipeline.san.clip import ClipFeatures, ResidualAttentionBlock
from pipeline.san.config import ClipVisualConfig

# Additive mask value the official model uses to hide tokens (a float bias, not -inf).
HIDDEN = -100.0


class MLP(nn.Module):
    """`num_layers` affine layers with ReLU between them; 1x1 convs when `conv` (for [B, C, H, W] maps)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, conv: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        make = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.layers = nn.ModuleList(make(i, o) for i, o in pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Turns side-adapter queries and pixels into mask logits and per-head attention biases.

    Args:
        in_channels: side-adapter width.
        heads: CLIP attention heads; each gets its own bias channel.
        layers: number of distinct bias sets (1 in the released models: reused by every deep block).
    """

    def __init__(
        self,
        in_channels: int,
        heads: int,
        layers: int,
        embed_channels: int,
        mlp_channels: int,
        mlp_layers: int,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.layers = layers
        self.query_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_layers)
        self.pix_mlp = MLP(in_channels, mlp_channels, embed_channels, mlp_layers, conv=True)
        self.attn_mlp = MLP(in_channels, mlp_channels, embed_channels * heads * layers, mlp_layers, conv=True)
        self.bias_scaling = nn.Linear(1, 1)

    def forward(
        self, queries: torch.Tensor, pixel_map: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """queries [B, Q, Ws], pixel_map [B, Ws, h, w] -> (mask logits [B, Q, h, w], [bias [B, heads, Q, h, w]])."""
        query = self.query_mlp(queries)
        pixels = self.pix_mlp(pixel_map)
        batch, channels, height, width = pixels.shape
        mask_logits = torch.einsum("bqc,bchw->bqhw", query, pixels)
        attn = self.attn_mlp(pixel_map).reshape(batch, self.layers, self.heads, channels, height, width)
        bias = torch.einsum("bqc,blnchw->blnqhw", query, attn)
        bias = bias * self.bias_scaling.weight[0, 0] + self.bias_scaling.bias[0]
        return mask_logits, list(bias.unbind(dim=1))


class RecognitionHead(nn.Module):
    """CLIP's deeper blocks, run on [SLS x Q ; CLS ; patches] where each SLS token's attention is biased.

    The Q "SLS" tokens start as copies of the split-point CLS token. SLS rows see only themselves and the
    patches (through the predicted bias); CLS and patch rows never see SLS tokens, so they evolve as in plain
    CLIP. Attention is computed for the two row groups separately, which keeps the mask at Q x N per image
    and head instead of N x N, with identical results.
    """

    def __init__(self, config: ClipVisualConfig, first_block: int) -> None:
        super().__init__()
        self.heads = config.heads
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(config.width, config.heads) for _ in range(config.layers - first_block)
        )
        self.ln_post = nn.LayerNorm(config.width)
        self.proj = nn.Parameter(torch.zeros(config.width, config.output_dim))

    def build_masks(
        self, bias: torch.Tensor, clip: ClipFeatures, side_grids: list[Size] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive masks for SLS rows [B, heads, Q, N] and for CLS/patch rows [1 or B, 1, 1 + L, N].

        Args:
            bias: [B, heads, Q, h, w] on the side-adapter grid; max-pooled to the CLIP grid here.
            side_grids: image b's own side grid when the images lie on a larger canvas: its bias is pooled
                from that grid to its own CLIP grid, and the tokens outside its grid are hidden.
        """
        grid = clip.grid
        batch, heads, queries, height, width = bias.shape
        flat = bias.reshape(batch, heads * queries, height, width)
        if side_grids is None:
            pooled = F.adaptive_max_pool2d(flat, grid)
        else:
            if clip.image_grids is None:
                raise ValueError("images on a canvas need CLIP features computed with their grids")
            pooled = resize_each(flat, side_grids, clip.image_grids, grid, F.adaptive_max_pool2d)
        pooled = pooled.reshape(batch, heads, queries, grid[0] * grid[1])
        length = pooled.shape[-1]
        total = queries + 1 + length
        sls_mask = pooled.new_full((queries, queries + 1), HIDDEN)
        sls_mask.fill_diagonal_(0.0)
        sls_mask = torch.cat([sls_mask.expand(batch, heads, -1, -1), pooled], dim=-1)
        rest_mask = pooled.new_zeros(1, 1, 1 + length, total)
        rest_mask[..., :queries] = HIDDEN
        if side_grids is not None and clip.key_mask is not None:
            # CLIP's key mask covers [CLS ; patches]; the SLS keys in front are visible as above.
            outside = F.pad(clip.key_mask, (queries, 0)).to(sls_mask.dtype)
            sls_mask = sls_mask + outside
            rest_mask = rest_mask + outside
        return sls_mask, rest_mask

    def forward(
        self, clip: ClipFeatures, split: int, bias: torch.Tensor, side_grids: list[Size] | None = None
    ) -> torch.Tensor:
        """L2-normalized mask embeddings [B, Q, D] from CLIP tokens at depth `split` and bias [B,heads,Q,h,w]
        (`side_grids`: see `build_masks`)."""
        tokens = clip.tokens[split]
        queries = bias.shape[2]
        sls = tokens[:, :1].expand(-1, queries, -1)
        x = torch.cat([sls, tokens], dim=1)
        sls_mask, rest_mask = self.build_masks(bias, clip, side_grids)
        last = len(self.resblocks) - 1
        for index, block in enumerate(self.resblocks):
            q, k, v = block.project_qkv(block.ln_1(x))
            attended = F.scaled_dot_product_attention(q[:, :, :queries], k, v, attn_mask=sls_mask.to(q.dtype))
            if index == last:
                # Only the SLS tokens are read after the final block; skip the CLS/patch rows.
                x = x[:, :queries]
            else:
                rest = F.scaled_dot_product_attention(
                    q[:, :, queries:], k, v, attn_mask=rest_mask.to(q.dtype)
                )
                attended = torch.cat([attended, rest], dim=2)
            x = x + block.merge_heads(attended)
            x = x + block.mlp(block.ln_2(x))
        embeddings = self.ln_post(x[:, :queries]) @ self.proj.to(x.dtype)
        return F.normalize(embeddings, dim=-1)
