"""Pictures of a segmentation: the label map blended over the image, with a legend of classes and areas.

This is what a new user looks at first, so every class that covers any pixel gets a distinct, stable colour
and its share of the frame in the legend.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALPHA = 0.55


def palette(count: int) -> np.ndarray:
    """`count` well-separated RGB colours (golden-ratio hue steps), the same for the same class index."""
    colours = []
    for index in range(count):
        hue = (index * 0.618033988749895) % 1.0
        saturation, value = (0.75, 0.95) if index % 2 == 0 else (0.9, 0.75)
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.array(colours, dtype=np.uint8).reshape(count, 3)


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    mixed = image.astype(np.float32) * (1 - alpha) + colours[labels].astype(np.float32) * alpha
    return mixed.round().clip(0, 255).astype(np.uint8)


def render_overlay(
    image: np.ndarray, labels: np.ndarray, vocabulary: tuple[str, ...], areas: np.ndarray
) -> Image.Image:
    """The blended label map with a legend panel on the right listing present classes by area."""
    colours = palette(len(vocabulary))
    picture = Image.fromarray(blend(image, labels, colours))
    total = max(int(areas.sum()), 1)
    present = [int(c) for c in np.argsort(-areas) if areas[c] > 0]
    font_size = max(12, min(28, picture.height // 30))
    font = ImageFont.load_default(size=font_size)
    row = font_size + 8
    lines = [f"{vocabulary[c]}  {100.0 * areas[c] / total:.1f}%" for c in present]
    measure = ImageDraw.Draw(picture)
    text_width = max((measure.textlength(line, font=font) for line in lines), default=0)
    panel_width = int(text_width) + row + 24
    canvas = Image.new(
        "RGB", (picture.width + panel_width, max(picture.height, row * len(lines) + 16)), "white"
    )
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for slot, (class_index, line) in enumerate(zip(present, lines, strict=True)):
        top = 8 + slot * row
        left = picture.width + 8
        draw.rectangle(
            [left, top, left + font_size, top + font_size], fill=tuple(int(v) for v in colours[class_index])
        )
        draw.text((left + font_size + 8, top - 2), line, fill="black", font=font)
    return canvas
