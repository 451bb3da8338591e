"""A synthetic, scene-like video for `sanstream demo` and the tests: no download, no licensing, no surprises.

The clip is drawn, not random: sky, grass, a road with lane marks, a river, trees, a red car driving along
the road and a small figure walking on the grass. Those are the classes a demo vocabulary names
("sky, grass, road, car, person, water, tree"), so even a real model has something sensible to find,
and the moving car and figure make the per-class curves change over time. Everything is a function of
the frame index, so two calls give the same pixels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Vertical layout as fractions of the height: (top, bottom) of each band.
_SKY = (0.0, 0.38)
_ROAD = (0.52, 0.70)
_VERGE = (0.70, 0.80)  # grass between road and river, where the figure walks
_RIVER = (0.80, 0.93)

Color = tuple[int, int, int]


def _fill_rect(image: np.ndarray, top: float, left: float, bottom: float, right: float, color: Color) -> None:
    """Paint a rectangle given in pixel coordinates, clipped to the image (shapes may be partly outside)."""
    h, w = image.shape[:2]
    y0, y1 = max(round(top), 0), min(round(bottom), h)
    x0, x1 = max(round(left), 0), min(round(right), w)
    if y0 < y1 and x0 < x1:
        image[y0:y1, x0:x1] = color


def _fill_disc(image: np.ndarray, cy: float, cx: float, radius: float, color: Color) -> None:
    h, w = image.shape[:2]
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, h)
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image[y0:y1, x0:x1][inside] = color


def _background(height: int, width: int) -> np.ndarray:
    """Everything that does not move: sky gradient, sun, grass, road with markings, trees."""
    rng = np.random.default_rng(20230618)  # fixed seed: texture is part of the deterministic scene
    image = np.empty((height, width, 3), dtype=np.uint8)
    sky_end = int(_SKY[1] * height)
    t = np.linspace(0.0, 1.0, sky_end)[:, None]
    top, horizon = np.array([60, 120, 205]), np.array([195, 222, 245])
    image[:sky_end] = ((1 - t) * top + t * horizon).astype(np.uint8)[:, None, :]
    _fill_disc(image, 0.12 * height, 0.82 * width, 0.05 * height, (255, 236, 160))

    grass = np.array([72, 148, 58], dtype=np.int16)
    noise = rng.integers(-14, 15, size=(height - sky_end, width, 1), dtype=np.int16)
    image[sky_end:] = np.clip(grass + noise, 0, 255).astype(np.uint8)

    road_top, road_bottom = _ROAD[0] * height, _ROAD[1] * height
    road = np.array([108, 108, 112], dtype=np.int16)
    rows = slice(round(road_top), round(road_bottom))
    grit = rng.integers(-6, 7, size=(rows.stop - rows.start, width, 1), dtype=np.int16)
    image[rows] = np.clip(road + grit, 0, 255).astype(np.uint8)
    edge = max(height // 180, 1)
    _fill_rect(image, road_top + edge, 0, road_top + 2 * edge, width, (235, 235, 235))
    _fill_rect(image, road_bottom - 2 * edge, 0, road_bottom - edge, width, (235, 235, 235))
    middle, dash, gap = (road_top + road_bottom) / 2, 0.06 * width, 0.04 * width
    x = 0.0
    while x < width:
        _fill_rect(image, middle - edge, x, middle + edge, x + dash, (240, 210, 60))
        x += dash + gap

    for cx in (0.12 * width, 0.33 * width, 0.9 * width):  # trees on the far side of the road
        _fill_rect(image, 0.42 * height, cx - 0.008 * width, 0.52 * height, cx + 0.008 * width, (96, 62, 34))
        _fill_disc(image, 0.40 * height, cx, 0.055 * height, (34, 100, 40))
    return image


def _draw_clouds(image: np.ndarray, t: float) -> None:
    h, w = image.shape[:2]
    for i, (y, speed) in enumerate(((0.08, 0.02), (0.2, 0.035), (0.14, 0.028))):  # speed: widths per second
        cx = ((0.35 * i + t * speed) % 1.3 - 0.15) * w
        for dx, dy, r in ((0.0, 0.0, 0.035), (0.035, 0.01, 0.028), (-0.035, 0.012, 0.025)):
            _fill_disc(image, (y + dy) * h, cx + dx * w, r * h, (246, 248, 252))


def _draw_river(image: np.ndarray, t: float) -> None:
    """Water with ripples that drift sideways, so the river is a band that moves but stays in place."""
    h, w = image.shape[:2]
    top, bottom = round(_RIVER[0] * h), round(_RIVER[1] * h)
    yy, xx = np.mgrid[top:bottom, 0:w].astype(np.float32)
    ripple = np.sin(xx / (0.02 * w) + yy / (0.01 * h) - 3.0 * t)
    base = np.array([38, 92, 168], dtype=np.float32)
    image[top:bottom] = np.clip(base + 18.0 * ripple[..., None], 0, 255).astype(np.uint8)


def _draw_car(image: np.ndarray, t: float, seconds: float) -> None:
    """A red car crossing the lower lane, left to right, once every `0.8 * seconds`."""
    h, w = image.shape[:2]
    car_w, car_h = 0.16 * w, 0.075 * h
    period = max(seconds * 0.8, 1e-6)
    left = ((t / period + 0.25) % 1.0) * (w + car_w) - car_w  # starts in view: frame 0 shows a car
    bottom = _ROAD[1] * h - 0.02 * h
    _fill_rect(image, bottom - car_h, left, bottom, left + car_w, (205, 28, 32))
    cabin_top = bottom - car_h - 0.045 * h
    _fill_rect(image, cabin_top, left + 0.22 * car_w, bottom - car_h, left + 0.78 * car_w, (185, 24, 28))
    _fill_rect(
        image,
        cabin_top + 0.008 * h,
        left + 0.27 * car_w,
        bottom - car_h,
        left + 0.48 * car_w,
        (170, 205, 230),
    )
    _fill_rect(
        image,
        cabin_top + 0.008 * h,
        left + 0.52 * car_w,
        bottom - car_h,
        left + 0.73 * car_w,
        (170, 205, 230),
    )
    for wheel in (0.2, 0.8):
        _fill_disc(image, bottom, left + wheel * car_w, 0.022 * h, (20, 20, 22))


def _draw_person(image: np.ndarray, t: float, seconds: float) -> None:
    """A small walking figure on the verge, right to left, legs alternating every few frames."""
    h, w = image.shape[:2]
    size = 0.1 * h
    cx = w * (1.05 - (1.1 * t / max(seconds, 1e-6) + 0.2) % 1.1)
    feet = (_VERGE[0] + 0.85 * (_VERGE[1] - _VERGE[0])) * h
    stride = 0.12 * size * np.sin(2 * np.pi * 1.5 * t)
    _fill_rect(
        image, feet - 0.45 * size, cx - 0.07 * size - stride, feet, cx + 0.01 * size - stride, (40, 40, 60)
    )
    _fill_rect(
        image, feet - 0.45 * size, cx - 0.01 * size + stride, feet, cx + 0.07 * size + stride, (40, 40, 60)
    )
    _fill_rect(image, feet - 0.85 * size, cx - 0.1 * size, feet - 0.42 * size, cx + 0.1 * size, (30, 80, 200))
    _fill_disc(image, feet - 0.93 * size, cx, 0.09 * size, (232, 190, 150))


def sample_frame(
    index: int, fps: float, seconds: float, size: tuple[int, int], background: np.ndarray | None = None
) -> np.ndarray:
    """Frame `index` of the clip as H x W x 3 uint8 RGB; pass `background` to skip redrawing the static part."""
    height, width = size
    image = (background if background is not None else _background(height, width)).copy()
    t = index / fps
    _draw_clouds(image, t)
    _draw_river(image, t)
    _draw_car(image, t, seconds)
    _draw_person(image, t, seconds)
    return image


def write_sample_video(
    path: str | Path, seconds: float = 10, fps: float = 10, size: tuple[int, int] = (360, 640)
) -> Path:
    """Encode the synthetic scene as H.264 (libx264, yuv420p) and return the path.

    `size` is (height, width), both even because yuv420p halves the chroma planes. The container follows
    the file suffix (`.mp4`, `.mkv`, ...). Encoding uses x264's `veryfast` preset: a 10 s 640x360 clip
    takes well under two seconds, and the demo spends its time on segmentation, not on making its input.
    """
    height, width = size
    if height < 32 or width < 32 or height % 2 or width % 2:
        raise ValueError(f"size must be (height, width), both even and >= 32, got {size}")
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds and fps must be > 0, got seconds={seconds}, fps={fps}")
    rate = Fraction(fps).limit_denominator(1001)
    n_frames = max(round(seconds * fps), 1)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    background = _background(height, width)
    with av.open(str(target), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "20"}
        for index in range(n_frames):
            frame = av.VideoFrame.from_ndarray(
                sample_frame(index, fps, seconds, size, background), format="rgb24"
            )
            frame.pts = index
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return target
