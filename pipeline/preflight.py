"""Checks a job passes before anything starts, so a wrong output path or missing weights fails in a second
with a clear message instead of after Ray and the model pool came up."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from pipeline.decode import probe
from pipeline.decode.errors import DecodeError
from pipeline.jobs.spec import StreamSpec
from pipeline.san.config import available_models
from pipeline.san.weights import RANDOM, WeightsNotAvailableError, resolve_released
from pipeline.storage.writer import OutputDirError


def check_output_dir(out_dir: Path, min_free_bytes: int | None = None) -> None:
    """Create the output directory if needed and make sure we can write in it, with room to spare: a job
    that would fill the disk is refused up front rather than failing half-way."""
    if min_free_bytes is None:
        min_free_bytes = int(float(os.environ.get("SANSTREAM_MIN_FREE_MB", "64")) * 2**20)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(
            out_dir, f"cannot create output directory {out_dir}: {error.strerror}; choose another --out"
        ) from error
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputDirError(
            out_dir,
            f"output directory {out_dir} is not writable; fix its permissions or choose another --out",
        )
    free = shutil.disk_usage(out_dir).free
    if free < min_free_bytes:
        raise OutputDirError(
            out_dir,
            f"output directory {out_dir} has only {free / 2**20:.1f} MiB free (at least "
            f"{min_free_bytes / 2**20:.0f} MiB needed for job state and Parquet parts); free some space or "
            "choose another --out (SANSTREAM_MIN_FREE_MB sets the threshold)",
        )


def check_weights(weights: str, model: str) -> None:
    """Released weights are fetched (or found) now; a file must exist. Random weights need nothing."""
    if weights == RANDOM:
        return
    if weights in available_models():
        resolve_released(weights)
        return
    if not Path(weights).expanduser().is_file():
        raise WeightsNotAvailableError(
            f"weights file {weights} does not exist; check the weights setting of model {model}"
        )


def expected_frames(stream: StreamSpec) -> int | None:
    """How many frames sampling will pick from a file (for progress bars); None for live or unknown."""
    if stream.live or not stream.is_file:
        return None
    try:
        info = probe(stream.source)
    except (DecodeError, OSError):
        return None
    if stream.sampling.every is not None:
        return -(-info.frame_count // stream.sampling.every) if info.frame_count else None
    if info.duration_seconds:
        return max(1, math.ceil(info.duration_seconds * (stream.sampling.fps or 1.0) - 1e-9))
    return None
