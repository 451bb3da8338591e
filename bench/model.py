"""Benchmark `Segmenter.segment`: frames/s and peak memory by model, batch size, device and dtype.

Every image in a batch gets one of several vocabularies (mixed, as video streams would send them), and the
same frames also go through a one-image-at-a-time float32 loop, the way the official demo runs, so the
speed-up of batching is printed as a ratio measured in the same run. Prints one JSON document.

    python bench/model.py                                   # CPU-sized defaults
    python bench/model.py --device cuda --dtypes fp32,bf16 --batch-sizes 1,8,32,64 --iters 20
    python bench/model.py --device cuda --size 1080x1920 --dtypes bf16 --batch-sizes 8,16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from pipeline.san import Segmenter, load_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]


def frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx ^ yy) & 255], -1).astype(np.int16)
    return [(base + rng.integers(-30, 30, base.shape)).clip(0, 255).astype(np.uint8) for _ in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_batches(
    segmenter: Segmenter, images: list[np.ndarray], batch: int, iters: int, warmup: int
) -> dict[str, float]:
    vocabularies = [VOCABULARIES[i % len(VOCABULARIES)] for i in range(batch)]
    chunk = images[:batch]
    for _ in range(warmup):
        segmenter.segment(chunk, vocabularies, return_labels=False)
    synchronize(segmenter.device)
    reset_peak(segmenter.device)
    start = time.perf_counter()
    for _ in range(iters):
        segmenter.segment(chunk, vocabularies, return_labels=False)
    synchronize(segmenter.device)
    seconds = time.perf_counter() - start
    return {
        "frames_per_s": batch * iters / seconds,
        "seconds": seconds,
        "peak_memory_mb": peak_memory_mb(segmenter.device),
    }


def official_style_loop(
    segmenter: Segmenter, images: list[np.ndarray], iters: int, warmup: int
) -> dict[str, float]:
    """One image per call, float32, full label map back on the host: how the official demo processes video."""
    for image in images[:warmup]:
        segmenter.segment([image], [VOCABULARIES[0]])
    synchronize(segmenter.device)
    start = time.perf_counter()
    count = 0
    for index in range(iters):
        segmenter.segment([images[index % len(images)]], [VOCABULARIES[index % len(VOCABULARIES)]])
        count += 1
    synchronize(segmenter.device)
    seconds = time.perf_counter() - start
    return {"frames_per_s": count / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="san_vit_b_16")
    parser.add_argument(
        "--weights", default="random", help="'random' (speed does not depend on values) or a file"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="fp32")
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument("--size", default="640x640", help="frame HxW")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--baseline-iters", type=int, default=None, help="frames for the batch-1 fp32 loop")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = frames(max(batch_sizes), height, width)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    report: dict[str, object] = {
        "benchmark": "model",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "frame_size": [height, width],
        "vocabularies_per_batch": "mixed: image i uses vocabulary i mod 4 (5-8 classes)",
        "results": [],
    }
    for model_name in args.models.split(","):
        model = load_checkpoint(args.weights, model=model_name)
        for dtype_name in args.dtypes.split(","):
            segmenter = Segmenter(model, device=device, dtype=DTYPES[dtype_name])
            for batch in batch_sizes:
                row = {"model": model_name, "dtype": dtype_name, "batch": batch}
                row.update(time_batches(segmenter, images, batch, args.iters, args.warmup))
                report["results"].append(row)
                print(json.dumps(row), file=sys.stderr)
        baseline_segmenter = Segmenter(model, device=device, dtype=torch.float32)
        baseline = official_style_loop(
            baseline_segmenter, images, args.baseline_iters or args.iters, args.warmup
        )
        baseline.update(
            {"model": model_name, "dtype": "fp32", "batch": 1, "mode": "one image per call, labels to host"}
        )
        report.setdefault("baseline", []).append(baseline)
        for row in report["results"]:
            if row["model"] == model_name:
                row["speedup_vs_official_style_loop"] = row["frames_per_s"] / baseline["frames_per_s"]
        del model, segmenter, baseline_segmenter
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
