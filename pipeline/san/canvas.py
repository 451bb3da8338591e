"""Images of different padded sizes in one forward pass: each keeps its own padded size on a shared canvas.

SAN's output for an image depends on its padded size in four places: the position embeddings (resized to the
token grid), attention (every token sees every other token of the image, padding included), the CLIP map
resized onto the side-adapter grid (fusion) and the attention bias max-pooled onto the CLIP grid. A
`CanvasLayout` lets a batch put image i in the top-left corner of a larger canvas and still compute exactly
what a batch of image i alone computes: position embeddings and both resizes are done per image on its own
grid, and the tokens outside an image's own grid are hidden from its attention by a key mask of -inf (so
they get exactly zero weight). Everything else in the network works per token or per pixel.

The grids below follow the network's own arithmetic: a stride-`s` patch convolution on an `h`-row input gives
`h // s` rows, and CLIP's input is the padded image scaled by `clip_resolution` (`floor(h * scale)` rows, as
`F.interpolate` computes it). Scaling by a fixed factor maps every output pixel to the same input position
whatever the input's size, and an image's last CLIP input row only reads rows of its own padded size, so the
CLIP input needs no per-image treatment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.san.buckets import Size

Resize = Callable[[torch.Tensor, Size], torch.Tensor]


@dataclass(frozen=True)
class CanvasLayout:
    """Image i of the batch is an `sizes[i]` padded image in the top-left corner of a `canvas`-sized tensor.

    Attributes:
        canvas: (height, width) of the batch tensor; at least every image's size in both dimensions.
        sizes: each image's own padded (height, width), the size it would be run at alone.
    """

    canvas: Size
    sizes: tuple[Size, ...]

    def __post_init__(self) -> None:
        for height, width in self.sizes:
            if height > self.canvas[0] or width > self.canvas[1]:
                raise ValueError(f"an image of {height} x {width} does not fit a {self.canvas} canvas")

    def grids(self, stride: int, scale: float = 1.0) -> list[Size]:
        """Each image's token grid after scaling by `scale` and a stride-`stride` patch convolution."""
        return [(math.floor(h * scale) // stride, math.floor(w * scale) // stride) for h, w in self.sizes]


def key_mask(
    grids: Sequence[Size], canvas_grid: Size, prefix: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive attention mask [B, 1, 1, prefix + H*W] over tokens laid out as `prefix` always-visible tokens
    (CLS, queries) followed by a row-major canvas grid: 0 for the tokens inside image b's own grid, -inf
    for the rest."""
    rows = torch.arange(canvas_grid[0], device=device)[:, None]
    cols = torch.arange(canvas_grid[1], device=device)[None, :]
    masks = []
    for height, width in grids:
        outside = ((rows >= height) | (cols >= width)).flatten()
        masks.append(torch.cat([outside.new_zeros(prefix), outside]))
    hidden = torch.stack(masks)[:, None, None, :]
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, float("-inf"))


def resize_each(
    maps: torch.Tensor, sources: Sequence[Size], targets: Sequence[Size], canvas: Size, resize: Resize
) -> torch.Tensor:
    """Resize image b's `sources[b]` top-left corner of `maps` [B, C, h, w] to `targets[b]` with `resize`,
    into the top-left corner of a zero [B, C, *canvas] tensor. Images sharing a (source, target) pair are
    resized in one call."""
    out = maps.new_zeros(maps.shape[0], maps.shape[1], *canvas)
    groups: dict[tuple[Size, Size], list[int]] = defaultdict(list)
    for index, pair in enumerate(zip(sources, targets, strict=True)):
        groups[pair].append(index)
    for (source, target), members in groups.items():
        index = torch.tensor(members, device=maps.device)
        crop = maps.index_select(0, index)[:, :, : source[0], : source[1]]
        out[index, :, : target[0], : target[1]] = resize(crop, target)
    return out


def grid_tokens(maps: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> row-major tokens [B, h*w, C]."""
    return maps.flatten(2).transpose(1, 2)
