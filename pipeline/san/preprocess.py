"""The official evaluation preprocessing: short side to 640 (long side capped at 2560), CLIP normalization,
zero padding to a multiple of 32.

Two resizers give the same geometry: PIL's BILINEAR on uint8 (what the official evaluation uses, bit-exact)
and torch's antialiased bilinear, which runs on the GPU for video throughput and stays within one grey level
of PIL (see tests). `Resizer = "auto"` picks PIL on CPU and torch on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.frame_size import MAX_LONG_SIDE, SHORT_SIDE, SIZE_DIVISIBILITY, padded_size, resized_size

__all__ = [
    "MAX_LONG_SIDE",
    "SHORT_SIDE",
    "SIZE_DIVISIBILITY",
    "ImageError",
    "ImageGeometry",
    "Resizer",
    "check_image",
    "choose_resizer",
    "geometry",
    "normalize_and_pad",
    "padded_size",
    "resize_pil",
    "resize_torch",
    "resized_size",
]

# OpenAI CLIP statistics on the 0..255 scale.
PIXEL_MEAN = (0.48145466 * 255.0, 0.4578275 * 255.0, 0.40821073 * 255.0)
PIXEL_STD = (0.26862954 * 255.0, 0.26130258 * 255.0, 0.27577711 * 255.0)

Resizer = Literal["auto", "pil", "torch"]


class ImageError(ValueError):
    """An input image the model cannot take (wrong shape or dtype); the message names the image."""


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes along the preprocessing path of one image: original, resized (before padding), padded."""

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]


def geometry(height: int, width: int) -> ImageGeometry:
    resized = resized_size(height, width)
    return ImageGeometry(original=(height, width), resized=resized, padded=padded_size(*resized))


def check_image(image: object, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = (
            f"array of shape {image.shape} and dtype {image.dtype}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ImageError(f"images[{index}] must be an H x W x 3 uint8 RGB array, got {described}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"images[{index}] is empty ({image.shape[0]} x {image.shape[1]})")
    return image


def resize_pil(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 HxWx3 -> float [3, h, w] on the 0..255 scale, resized by PIL BILINEAR (official path)."""
    resized = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return torch.from_numpy(resized).permute(2, 0, 1).float()


def resize_torch(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] (any device) -> float [3, h, w]: antialiased bilinear, rounded to uint8 levels like PIL."""
    if tuple(image.shape[1:]) == size:
        return image.float()
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].round_().clamp_(0, 255)


def normalize_and_pad(images: list[torch.Tensor], padded: tuple[int, int]) -> torch.Tensor:
    """Stack 0..255 float images [3, h, w] into a normalized batch [B, 3, H, W], zero-padded after
    normalization (bottom/right) like detectron2's ImageList."""
    device = images[0].device
    mean = torch.tensor(PIXEL_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(3, 1, 1)
    batch = torch.zeros(len(images), 3, *padded, device=device)
    for slot, image in enumerate(images):
        batch[slot, :, : image.shape[1], : image.shape[2]] = (image - mean) / std
    return batch


def choose_resizer(resizer: Resizer, device: torch.device) -> Literal["pil", "torch"]:
    if resizer == "auto":
        return "torch" if device.type == "cuda" else "pil"
    return resizer
