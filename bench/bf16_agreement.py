"""Reduced precision against float32 on the parity images, on any device: prints one JSON document.

The check of tests/pipeline/san/test_bf16_agreement.py (issue "Frames/s close to the hardware", item 5) for a
device the tests do not run on: the `sanref-v2` parity model (tests/data/parity/) segments each parity image
in float32 with scores and in each reduced precision, and at least `--min-agreement` of the pixels whose
float32 top-2 margin exceeds `--margin` must keep their label (`pipeline.san.numerics.label_agreement`).
A case with no such pixel (the 720x1280 image: its largest margin is about 0.019) is reported, not judged.
Also reports the agreement of each run with the official float32 scores stored for the 512x512 image.
Exit status 1 when a judged case falls below the bar.

    python bench/bf16_agreement.py --device cuda --out gpu-out/bf16_agreement.json
    python bench/bf16_agreement.py --device cpu --cases open_512x512_upscale --dtypes bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/ first on sys.path would let bench/pipeline.py shadow the `pipeline` package (see bench/model.py);
# the repository root also holds the parity fixtures under tests/.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _ROOT / "bench"]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from pipeline.san import SAN, Segmenter, get_config  # noqa: E402
from pipeline.san.numerics import label_agreement  # noqa: E402
from tests.pipeline.san.parity_fixtures import CASES, case_arrays, case_meta, sanref_v2_state  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parity_model() -> SAN:
    """The released B/16 architecture with the parity fixtures' deterministic `sanref-v2` weights."""
    model = SAN(get_config("san_vit_b_16"))
    model.load_state_dict(sanref_v2_state(), strict=True)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated: bf16, fp16 (CUDA only)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--resizer", default="auto", help="auto (PIL on CPU, torch on CUDA), pil or torch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = parity_model()
    reference = Segmenter(model, device=device, dtype=torch.float32, resizer=args.resizer)
    rows: list[dict[str, Any]] = []
    for name in args.cases.split(","):
        arrays = case_arrays(name)
        image, vocabulary = arrays["image_uint8"], case_meta(name)["vocabulary"]
        start = time.perf_counter()
        fp32 = reference.segment([image], [vocabulary], return_scores=True)[0]
        fp32_seconds = time.perf_counter() - start
        assert fp32.scores is not None and fp32.labels is not None
        official = arrays.get("sem_seg")
        for dtype_name in args.dtypes.split(","):
            low = Segmenter(model, device=device, dtype=DTYPES[dtype_name], resizer=args.resizer)
            start = time.perf_counter()
            result = low.segment([image], [vocabulary])[0]
            seconds = time.perf_counter() - start
            assert result.labels is not None
            fraction, count = label_agreement(fp32.scores, result.labels, margin=args.margin)
            row: dict[str, Any] = {
                "case": name,
                "image_size": f"{image.shape[0]}x{image.shape[1]}",
                "dtype": dtype_name,
                "margin": args.margin,
                "agreement": fraction,
                "confident_pixels": count,
                "pixels": int(result.labels.size),
                "judged": count > 0,
                "passed": count == 0 or fraction >= args.min_agreement,
                "all_pixels_agreement": float((result.labels == fp32.labels).mean()),
                "fp32_seconds": round(fp32_seconds, 3),
                "seconds": round(seconds, 3),
            }
            if official is not None:
                row["fp32_vs_official"] = label_agreement(official, fp32.labels, margin=args.margin)[0]
                row["vs_official"] = label_agreement(official, result.labels, margin=args.margin)[0]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "benchmark": "bf16_agreement",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "resizer": reference.resizer,
        "min_agreement": args.min_agreement,
        "passed": all(row["passed"] for row in rows) and any(row["judged"] for row in rows),
        "rows": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
