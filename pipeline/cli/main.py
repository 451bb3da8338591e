"""Entry point of the `sanstream` command: one sub-command per task, errors a user can act on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from pipeline.cli import cancel, demo, plot, query, run, segment, serve, status, weights
from pipeline.errors import user_errors

DISTRIBUTION = "sanstream"


def installed_version() -> str:
    """The installed distribution's version (what `pip install` recorded), not a number kept in code."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed; run deploy/install.sh)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanstream", description="Open-vocabulary semantic segmentation of video (SAN) at cluster scale."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {installed_version()}",
        help="print the installed version and exit",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(subparsers)
    run.add_parser(subparsers)
    run.add_resume_parser(subparsers)
    segment.add_parser(subparsers)
    weights.add_parser(subparsers)
    status.add_parser(subparsers)
    cancel.add_parser(subparsers)
    query.add_parser(subparsers)
    plot.add_parser(subparsers)
    serve.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        print(f"sanstream {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        # A driver stopped at once (second Ctrl-C) says which job it left interrupted and how to continue.
        print(f"sanstream {args.command}: {error}" if str(error) else "interrupted", file=sys.stderr)
        return int(getattr(error, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
