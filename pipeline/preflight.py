"""Checks a job passes before anything starts, so a wrong output path or missing weights fails in a second
with a clear message instead of after Ray and the model pool came up.

`check_job` is the one validation pass `sanstream run` and `resume` make before Ray is even imported: the
model exists, the device asked for is there (when the pool runs on this machine), every local file exists
and holds a video stream, and a cluster answers at `--address`. Every problem is reported at once, each
under the field it is about, like the spec's own validation; a valid spec then costs well under a second
here (a probe reads a file's headers and first frame). Then the weights are resolved (which may download
them) and the output folder is checked. Problems that only show while the job runs (a damaged file, an
unreachable camera) still fail only their stream.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from pipeline.cluster_address import RAY_ADDRESS_ENV, ClusterAddressError, check_cluster_address
from pipeline.decode import probe
from pipeline.decode.errors import DecodeError
from pipeline.jobs.spec import JobSpec, JobSpecError, ModelSpec
from pipeline.jobs.stream_spec import StreamSpec
from pipeline.san.config import available_models
from pipeline.san.weights import RANDOM, WeightsNotAvailableError, resolve_released
from pipeline.storage.writer import OutputDirError

Problem = tuple[str, str]


class PreflightError(JobSpecError):
    """A valid spec that cannot run here: an unknown model, no CUDA, a missing or non-video file, no
    cluster at the address. A `JobSpecError` (field, message pairs), so it is reported the same way."""

    heading = "cannot start the job"


def runs_locally(address: str | None) -> bool:
    """Whether the model pool runs on this machine: no `--address`, no $RAY_ADDRESS (or `local`)."""
    return (address or os.environ.get(RAY_ADDRESS_ENV) or "local") == "local"


def model_problems(model: ModelSpec, local: bool, field: str = "model") -> list[Problem]:
    """The model preset exists, and CUDA is there when asked for and the pool runs here (on a cluster the
    replicas run on its GPU nodes, which this machine cannot see). Weights: `check_weights`."""
    problems = []
    known = available_models()
    if model.name not in known:
        problems.append((f"{field}.name", f"unknown model {model.name!r}; known models: {', '.join(known)}"))
    if local and (problem := device_problem(model.device)) is not None:
        problems.append((f"{field}.device", problem))
    return problems


def device_problem(device: str) -> str | None:
    """Why `device` (auto, cpu, cuda, cuda:N) cannot be used on this machine, or None."""
    if not device.startswith("cuda"):
        return None
    import torch  # only when CUDA is asked for

    if not torch.cuda.is_available():
        return (
            f"{device!r} asked for, but this machine has no usable CUDA device (torch.cuda.is_available() "
            "is False); use --device cpu, or auto to take a GPU when there is one"
        )
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        return (
            f"{device!r} asked for, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        )
    return None


def source_problems(
    streams: list[StreamSpec], skip: set[str] | frozenset[str] = frozenset()
) -> list[Problem]:
    """Every local file source (except streams in `skip`) exists and holds a decodable video stream.
    Network sources are left to the decoders: connecting can take as long as their timeouts."""
    problems = []
    for index, stream in enumerate(streams):
        if not stream.is_file or stream.id in skip:
            continue
        path = Path(stream.source)
        if path.exists() and not path.is_file() and not path.is_dir():
            continue  # a FIFO or a device: probing would consume what the decoder must read
        try:
            probe(stream.source)
        except DecodeError as error:
            problems.append((f"streams[{index}].source", str(error)))
        except OSError as error:
            problems.append((f"streams[{index}].source", f"{stream.source}: {error.strerror or error}"))
    return problems


def address_problems(address: str | None) -> list[Problem]:
    try:
        check_cluster_address(address)
    except ClusterAddressError as error:
        return [("", str(error))]
    return []


def check_job(
    spec: JobSpec, address: str | None, skip_streams: set[str] | frozenset[str] = frozenset()
) -> None:
    """The validation pass before anything starts (see the module docstring); raises `PreflightError`
    listing every problem, or the weights' or output folder's own error. `skip_streams`: streams a
    resumed job has finished (their files may be gone)."""
    problems = [
        *model_problems(spec.model, runs_locally(address)),
        *source_problems(spec.streams, skip_streams),
        *address_problems(address),
    ]
    if problems:
        raise PreflightError(problems)
    # Only now what may take long (a download) or leave something behind (the output folder).
    check_weights(spec.model.weights or spec.model.name, spec.model.name)
    check_output_dir(Path(spec.output))


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
