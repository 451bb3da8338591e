"""`sanstream demo`: the README's first command — make a short sample video, segment it, show the result."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from pipeline.cli.console import make_console
from pipeline.cli.run import add_run_arguments, execute
from pipeline.jobs.spec import parse_job_spec
from pipeline.sample_video import write_sample_video

DEMO_VOCABULARY = ["sky", "road", "grass", "water", "car", "person", "tree"]
DEFAULT_OUT = Path("sanstream-out/demo")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="segment a generated sample video end to end")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="length of the sample video (default: %(default)s)"
    )
    parser.add_argument(
        "--fps", type=float, default=1.0, help="frames analysed per second of video (default: %(default)s)"
    )
    add_run_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    args.out.mkdir(parents=True, exist_ok=True)
    video = write_sample_video(args.out / "sample.mp4", seconds=args.seconds)
    console.print(escape(f"wrote sample video {video} ({args.seconds:g} s)"), soft_wrap=True)
    console.print(f"vocabulary: {', '.join(DEMO_VOCABULARY)}")
    weights = args.weights or "san_vit_b_16"
    model = {"name": args.model or ("san_vit_b_16" if weights == "random" else weights), "weights": weights}
    for key in ("device", "dtype"):  # the run options that choose where and how precisely the model runs
        if getattr(args, key, None) is not None:
            model[key] = getattr(args, key)
    data = {
        "model": model,
        "output": str(args.out),
        "streams": [
            {
                "id": "sample",
                "source": str(video),
                "vocabulary": DEMO_VOCABULARY,
                "sampling": {"fps": args.fps},
            }
        ],
    }
    if args.job_id:
        data["job_id"] = args.job_id
    spec = parse_job_spec(data)
    return execute(spec, args, console)
