"""`sanstream segment`: segment still images and see the result — the quickest check that the model works."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.cli.console import make_console
from pipeline.cli.formats import percent
from pipeline.dtypes import HELP as DTYPE_HELP
from pipeline.dtypes import METAVAR as DTYPE_METAVAR
from pipeline.dtypes import dtype_argument

DEFAULT_OUT = Path("sanstream-out")


class InputImageError(ValueError):
    """An image path that cannot be read as an image."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default="san_vit_b_16",
        help="released name (san_vit_b_16, san_vit_large_14), a checkpoint file, or 'random' (default: %(default)s)",
    )
    parser.add_argument("--model", default=None, help="model preset; inferred from --weights when omitted")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        type=dtype_argument,
        default="float32",
        metavar=DTYPE_METAVAR,
        help=f"{DTYPE_HELP} (default: %(default)s)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment images and write overlays with a legend")
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--vocab",
        required=True,
        help='class names separated by commas ("person,car,tree"), or by semicolons when a class has synonyms '
        '("car, automobile; person")',
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for the overlay PNGs (default: %(default)s)"
    )
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def read_image(path: Path) -> np.ndarray:
    """RGB pixels with EXIF orientation applied, as the official evaluation reads images."""
    if not path.is_file():
        raise InputImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise InputImageError(f"{path}: not a readable image ({error}); give a PNG or JPEG file") from error


def area_table(vocabulary: tuple[str, ...], areas: np.ndarray) -> Table:
    """Pixels and share of the image per class, largest first. No title: the image and overlay paths
    are printed above it on a line of their own, where a narrow table cannot break them."""
    table = Table()
    table.add_column("class", overflow="fold")  # class names are markup-escaped text, folded if long
    table.add_column("pixels", justify="right", no_wrap=True)
    table.add_column("fraction", justify="right", no_wrap=True)
    total = max(int(areas.sum()), 1)
    for index in np.argsort(-areas, kind="stable"):
        table.add_row(escape(vocabulary[index]), f"{int(areas[index]):,}", percent(areas[index] / total))
    return table


def print_result(
    console: Console, image: Path, overlay: Path, vocabulary: tuple[str, ...], areas: np.ndarray
) -> None:
    """`image -> overlay` on a line of its own (never wrapped: both paths are there to be copied), then
    the classes' areas."""
    console.print(escape(f"{image} -> {overlay}"), soft_wrap=True)
    console.print(area_table(vocabulary, areas))


def run(args: argparse.Namespace) -> int:
    from pipeline.dtypes import torch_dtype  # the model stack loads only for commands that run the model
    from pipeline.overlay import render_overlay
    from pipeline.san import Segmenter, load_checkpoint, parse_vocabulary_text
    from pipeline.san.segmenter import resolve_device

    console = make_console()
    vocabulary = parse_vocabulary_text(args.vocab)
    model = load_checkpoint(args.weights, model=args.model)
    if args.weights == "random":
        console.print(
            "[yellow]using random weights: the masks are meaningless (pipeline check only)[/yellow]"
        )
    device = resolve_device(args.device)
    segmenter = Segmenter(model, device=device, dtype=torch_dtype(args.dtype, device.type))
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            image = read_image(path)
        except InputImageError as error:
            console.print(f"[red]skipped[/red] {escape(str(error))}", soft_wrap=True)
            failures += 1
            continue
        result = segmenter.segment([image], [vocabulary])[0]
        target = args.out / f"{path.stem}_san.png"
        render_overlay(image, result.labels, vocabulary, result.areas).save(target)
        print_result(console, path, target, vocabulary, result.areas)
    if failures:
        print(f"{failures} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0
