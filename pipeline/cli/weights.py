"""`sanstream weights`: fetch and convert checkpoints.

Bad input (a missing or unreadable source, a target that is not .safetensors, an unknown name) ends with a
message naming the file and what to do, exit code 2, no traceback: the weights errors are user errors
(`pipeline.errors`), and the target's suffix is checked by argparse before anything loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def safetensors_path(text: str) -> Path:
    """The convert target: refused at parse time unless it ends in .safetensors (argparse exits 2)."""
    path = Path(text)
    if path.suffix != ".safetensors":
        raise argparse.ArgumentTypeError(
            f"{text}: the target must end in .safetensors (e.g. {path.stem}.safetensors)"
        )
    return path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="download or convert SAN checkpoints")
    commands = parser.add_subparsers(dest="weights_command", required=True)
    convert = commands.add_parser("convert", help="rewrite a checkpoint as .safetensors (fast, no pickle)")
    convert.add_argument("source", type=Path, help="a .pth checkpoint (official or state dict)")
    convert.add_argument("target", type=safetensors_path, help="output .safetensors path")
    convert.add_argument(
        "--trust", action="store_true", help="allow unpickling a file that is not a released checkpoint"
    )
    convert.set_defaults(handler=run_convert)
    download = commands.add_parser("download", help="download a released checkpoint into the HF cache")
    download.add_argument("name", help="san_vit_b_16 or san_vit_large_14")
    download.set_defaults(handler=run_download)


def run_convert(args: argparse.Namespace) -> int:
    from pipeline.san.weights import convert_to_safetensors

    target = convert_to_safetensors(args.source, args.target, trust_pickle=args.trust)
    print(f"wrote {target}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from pipeline.san.weights import resolve_released

    print(resolve_released(args.name))
    return 0
