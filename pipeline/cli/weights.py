"""`sanstream weights`: fetch and convert checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("weights", help="download or convert SAN checkpoints")
    commands = parser.add_subparsers(dest="weights_command", required=True)
    convert = commands.add_parser("convert", help="rewrite a checkpoint as .safetensors (fast, no pickle)")
    convert.add_argument("source", type=Path, help="a .pth checkpoint (official or state dict)")
    convert.add_argument("target", type=Path, help="output .safetensors path")
    convert.add_argument(
        "--trust", action="store_true", help="allow unpickling a file that is not a released checkpoint"
    )
    convert.set_defaults(handler=run_convert)
    download = commands.add_parser("download", help="download a released checkpoint into the HF cache")
    download.add_argument("name", help="san_vit_b_16 or san_vit_large_14")
    download.set_defaults(handler=run_download)


def run_convert(args: argparse.Namespace) -> int:
    if args.target.suffix != ".safetensors":
        raise SystemExit(f"{args.target}: the target must end in .safetensors")
    from pipeline.san.weights import convert_to_safetensors

    target = convert_to_safetensors(args.source, args.target, trust_pickle=args.trust)
    print(f"wrote {target}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from pipeline.san.weights import resolve_released

    print(resolve_released(args.name))
    return 0
