"""Benchmark `Segmenter.segment` against a bare per-image float32 loop: frames/s and peak memory.

Each row is one measurement:

    {path, device, gpu_name, model, dtype, batch, input_size, output_size, vocab_mode, sizes, frames_per_s,
     peak_mem_mb, ...}

`path: "segmenter"` rows time `Segmenter.segment` on batches (class areas at each frame's full resolution,
no label maps back). The `path: "bare_fp32_loop"` row, measured in the same run on the same frames, is the
official code's way: one image per call in float32, PIL resize on the host, the whole [Q, H, W] mask stack
upsampled, `einsum` into [C, H, W] scores and the label map copied back (detectron2's `sem_seg_postprocess` +
SAN's `semantic_inference`). Every segmenter row carries `speedup_vs_bare_fp32_loop`.

`vocab_mode`: `same` (one vocabulary for every frame) or `mixed` (frame i uses vocabulary i mod 4, as
concurrent streams send them). `sizes`: `uniform` (every frame `--size`) or `mixed` (frame i has size
`--mixed-sizes[i mod n]`, so one batch needs several forward passes). `input_size` is the padded tensor the
network sees ("640x640"), `output_size` the resolution areas are counted at (the frame's own). Text
classifiers are built before timing (a stream pays for its vocabulary once). On CPU `peak_mem_mb` is the
process's peak RSS so far, so it includes earlier rows. Prints one JSON document on stdout (rows also go to
stderr as they finish) and writes it to `--out` when given.

    python bench/model.py --tiny                            # seconds on CPU: san_tiny_test, small frames
    python bench/model.py                                   # CPU-sized defaults (B/16, 640x640)
    python bench/model.py --device cuda --dtypes bf16 --batch-sizes 1,32,64,128 --iters 20
    python bench/model.py --device cuda --size 1080x1920 --dtypes bf16 --batch-sizes 32 --vocab-mode mixed
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# `python bench/model.py` puts bench/ first on sys.path, where bench/pipeline.py would shadow the `pipeline`
# package (and pull in the video stack); the repository root is what this script needs instead, also when the
# package is not installed (the GPU machine).
# SANSTREAM_CODE names another tree's root (a checkout of the code before a change, say) whose `pipeline`
# is measured instead, so a before/after ratio comes from one script on one machine.
_ROOT = Path(__file__).resolve().parents[1]
CODE_ROOT = Path(os.environ.get("SANSTREAM_CODE") or _ROOT).resolve()
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _ROOT / "bench"]
sys.path.insert(0, str(CODE_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.san import Segmenter, load_checkpoint  # noqa: E402
from pipeline.san.postprocess import class_probabilities  # noqa: E402
from pipeline.san.preprocess import geometry, normalize_and_pad, resize_pil  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]
# Distinct frame contents generated per size; batches cycle through them (speed does not depend on pixels).
DISTINCT_FRAMES = 4
TINY_DEFAULTS: dict[str, Any] = {
    "models": "san_tiny_test",
    "device": "cpu",
    "dtypes": "fp32",
    "batch_sizes": "1,4",
    "size": "96x128",
    "mixed_sizes": "96x128,64x64,72x160",
    "iters": 1,
    "warmup": 1,
    "bare_frames": 2,
}


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def frame(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx ^ yy) & 255], -1).astype(np.int16)
    return (base + rng.integers(-30, 30, base.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)


def compacted(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The image as a decoder sends it (`pipeline.decode.compact`): resized to the model's input size when
    larger, with its original size; None when it is sent as it is."""
    from pipeline.decode.compact import compact_image  # not in the code before compact frames

    small = compact_image(image)
    return (image, None) if small.size >= image.size else (small, (image.shape[0], image.shape[1]))


class Frames:
    """Frame i of the run: its size from the size plan, its content one of a few per size. With `compact`,
    frames are compacted up front as decoders do before sending (that resize runs in the decoders' processes,
    not on the replica being measured)."""

    def __init__(self, sizes: Sequence[tuple[int, int]], compact: bool = False) -> None:
        self.sizes = list(sizes)
        self.compact = compact
        self.pool = {size: [frame(*size, seed) for seed in range(DISTINCT_FRAMES)] for size in set(sizes)}
        self.sent = {
            size: [compacted(image) if compact else (image, None) for image in images]
            for size, images in self.pool.items()
        }

    def _slot(self, index: int) -> tuple[tuple[int, int], int]:
        return self.sizes[index % len(self.sizes)], (index // len(self.sizes)) % DISTINCT_FRAMES

    def get(self, index: int) -> np.ndarray:
        """Frame `index` at its full size."""
        size, slot = self._slot(index)
        return self.pool[size][slot]

    def batch(self, start: int, count: int) -> tuple[list[np.ndarray], list[tuple[int, int] | None]]:
        """Frames start .. start + count - 1 as sent to the replica, and their original sizes."""
        sent = [self.sent[size][slot] for size, slot in map(self._slot, range(start, start + count))]
        return [image for image, _ in sent], [original for _, original in sent]


def vocabulary(index: int, mode: str) -> list[str]:
    return VOCABULARIES[0] if mode == "same" else VOCABULARIES[index % len(VOCABULARIES)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def timed(device: torch.device, step: Callable[[int], int], iters: int, warmup: int) -> dict[str, float]:
    """Run `step(i)` (returns frames done) `warmup` times untimed, then `iters` times timed."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    count = 0
    for i in range(iters):
        count += step(warmup + i)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "frames_per_s": count / seconds,
        "seconds": seconds,
        "frames": count,
        "peak_mem_mb": round(peak_mem_mb(device), 1),
    }


def segmenter_step(segmenter: Segmenter, frames: Frames, batch: int, vocab_mode: str) -> Callable[[int], int]:
    def step(i: int) -> int:
        start = i * batch
        vocabularies = [vocabulary(start + j, vocab_mode) for j in range(batch)]
        images, originals = frames.batch(start, batch)
        if frames.compact:
            segmenter.segment(images, vocabularies, return_labels=False, original_sizes=originals)
        else:
            segmenter.segment(images, vocabularies, return_labels=False)
        return batch

    return step


def bare_fp32_step(segmenter: Segmenter, frames: Frames, vocab_mode: str) -> Callable[[int], int]:
    """The official per-image path: PIL resize, one forward, full-resolution scores, labels to the host."""
    model, device = segmenter.model, segmenter.device

    @torch.inference_mode()
    def step(i: int) -> int:
        image = frames.get(i)
        geom = geometry(*image.shape[:2])
        batch = normalize_and_pad([resize_pil(image, geom.resized).to(device)], geom.padded)
        output = model(batch)
        logits = output.mask_embeddings[0] @ segmenter.classifier(vocabulary(i, vocab_mode)).T
        probabilities = class_probabilities(logits)  # [Q, C]
        masks = F.interpolate(output.mask_logits, size=geom.padded, mode="bilinear", align_corners=False)
        masks = masks[:, :, : geom.resized[0], : geom.resized[1]]
        masks = F.interpolate(masks, size=geom.original, mode="bilinear", align_corners=False)[0].sigmoid()
        scores = torch.einsum("qc,qhw->chw", probabilities, masks)
        scores.argmax(dim=0).cpu().numpy()
        return 1

    return step


def code_version() -> str:
    """Which code is measured: "current", or the SANSTREAM_CODE tree's name (see the top of this file)."""
    return "current" if CODE_ROOT == _ROOT else CODE_ROOT.name


def describe_sizes(frames: Frames) -> tuple[str, str]:
    """(input_size, output_size): distinct padded model inputs and frame sizes, in plan order."""
    inputs = dict.fromkeys(size_text(geometry(*size).padded) for size in frames.sizes)
    outputs = dict.fromkeys(size_text(size) for size in frames.sizes)
    return ",".join(inputs), ",".join(outputs)


def measure(base: dict[str, Any], run: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """One row: `base` plus the measurement, or plus an `error` (an out-of-memory batch, say) so the other
    rows of the run still come back."""
    row = dict(base)
    try:
        row.update(run())
    except Exception as error:  # reported in the row; the run goes on
        traceback.print_exc(file=sys.stderr)
        row.update({"frames_per_s": None, "peak_mem_mb": None, "error": f"{type(error).__name__}: {error}"})
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help=f"smoke run on CPU: {TINY_DEFAULTS}")
    parser.add_argument("--models", default="san_vit_b_16")
    parser.add_argument(
        "--weights", default="random", help="'random' (speed does not depend on values) or a file"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument(
        "--size", default="640x640", help="frame HxW for --sizes uniform; comma-separated for several groups"
    )
    parser.add_argument("--sizes", choices=("uniform", "mixed"), default="uniform")
    parser.add_argument(
        "--mixed-sizes", default="1080x1920,720x1280,480x640,640x640", help="frame sizes for --sizes mixed"
    )
    parser.add_argument("--vocab-mode", default="mixed", help="comma-separated: same, mixed")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="frames arrive compacted to the model's input size, as decoders send them",
    )
    parser.add_argument(
        "--max-padding",
        default=None,
        help="comma-separated Segmenter max_padding values (sizes sharing a forward, pipeline/san/buckets.py); "
        "default: the device's",
    )
    parser.add_argument(
        "--compile",
        default=None,
        help="comma-separated Segmenter compile modes (pipeline/san/compiled.py; 'none' for eager); the "
        "warm-up batches pay the compilation",
    )
    parser.add_argument("--iters", type=int, default=2, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before each row")
    parser.add_argument(
        "--bare-frames", type=int, default=None, help="frames timed in the bare fp32 loop (0: skip it)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    if parser.parse_known_args(argv)[0].tiny:
        parser.set_defaults(**TINY_DEFAULTS)
    return parser.parse_args(argv)


def options_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Segmenter keyword arguments per row group: every --max-padding x --compile combination given."""
    paddings: list[dict[str, Any]] = (
        [{}] if args.max_padding is None else [{"max_padding": float(v)} for v in args.max_padding.split(",")]
    )
    compiles: list[dict[str, Any]] = (
        [{}]
        if args.compile is None
        else [{"compile_mode": None if mode == "none" else mode} for mode in args.compile.split(",")]
    )
    return [{**padding, **compiling} for padding, compiling in itertools.product(paddings, compiles)]


def segmenter_rows(
    model: torch.nn.Module,
    base: dict[str, Any],
    frames: Frames,
    device: torch.device,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Rows of `Segmenter.segment` for every dtype, option set, vocabulary mode and batch size."""
    rows = []
    for dtype_name, options in itertools.product(args.dtypes.split(","), options_grid(args)):
        segmenter = Segmenter(model, device=device, dtype=DTYPES[dtype_name], **options)
        for vocab in VOCABULARIES:  # a stream's classifier is built once, before its frames
            segmenter.classifier(vocab)
        for vocab_mode, batch in itertools.product(args.vocab_mode.split(","), batch_sizes(args)):
            row = {
                "path": "segmenter",
                **base,
                "dtype": dtype_name,
                "batch": batch,
                "vocab_mode": vocab_mode,
                "max_padding": getattr(segmenter, "max_padding", None),
                "compile": getattr(segmenter, "compile_mode", None),
            }
            step = segmenter_step(segmenter, frames, batch, vocab_mode)
            rows.append(measure(row, lambda step=step: timed(device, step, args.iters, args.warmup)))
        del segmenter
    return rows


def bare_row(
    model: torch.nn.Module,
    base: dict[str, Any],
    frames: Frames,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    bare = Segmenter(model, device=device, dtype=torch.float32)
    for vocab in VOCABULARIES:
        bare.classifier(vocab)
    vocab_mode = args.vocab_mode.split(",")[-1]
    row = {"path": "bare_fp32_loop", **base, "dtype": "fp32", "batch": 1, "vocab_mode": vocab_mode}
    step = bare_fp32_step(bare, frames, vocab_mode)
    frames_timed = args.bare_frames if args.bare_frames is not None else max(2, args.iters)
    return measure(row, lambda: timed(device, step, frames_timed, args.warmup))


def batch_sizes(args: argparse.Namespace) -> list[int]:
    return [int(b) for b in args.batch_sizes.split(",")]


def frame_plans(args: argparse.Namespace) -> list[list[tuple[int, int]]]:
    """One size plan per row group: each --size alone (uniform), or the --mixed-sizes cycle (mixed)."""
    if args.sizes == "mixed":
        return [[parse_size(s) for s in args.mixed_sizes.split(",")]]
    return [[parse_size(s)] for s in args.size.split(",")]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    report: dict[str, Any] = {
        "benchmark": "model",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device.type,
        "gpu_name": gpu_name,
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "weights": args.weights,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": [],
    }
    rows: list[dict[str, Any]] = report["rows"]
    for model_name in args.models.split(","):
        model = load_checkpoint(args.weights, model=model_name)
        for plan in frame_plans(args):
            frames = Frames(plan, compact=args.compact)
            input_size, output_size = describe_sizes(frames)
            base = {
                "device": device.type,
                "gpu_name": gpu_name,
                "model": model_name,
                "input_size": input_size,
                "output_size": output_size,
                "sizes": args.sizes,
                "compact": args.compact,
                "code": code_version(),
            }
            group = segmenter_rows(model, base, frames, device, args)
            if args.bare_frames != 0:
                bare = bare_row(model, base, frames, device, args)
                for row in group:
                    if bare.get("frames_per_s") and row.get("frames_per_s"):
                        row["speedup_vs_bare_fp32_loop"] = round(
                            row["frames_per_s"] / bare["frames_per_s"], 3
                        )
                group.append(bare)
            rows.extend(group)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["bare_fp32_loop"] = (
        "one image per call, float32, PIL resize on the host, full [Q,H,W] upsample + einsum scores, "
        "label map to host (the official semantic_inference path)"
    )
    report["segmenter"] = (
        "Segmenter.segment on the batch, return_labels=False (class areas at full resolution)"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if any("error" in row for row in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
