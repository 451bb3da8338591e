"""What `sanstream run` and `resume` check before Ray is even imported, so a typo costs a second, not a
minute of Ray and Serve starting up.

The command line itself (`--fps`, `--every`, `--vocab`, sources) is checked here, where its flags can be
named; the job it describes then goes through `pipeline.preflight.check_job` (model, device, files,
cluster address, weights, output folder). All of these are user errors: one message, exit code 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pipeline.cli.common import CommandError, check_job_id, known_jobs_error, open_job_store
from pipeline.jobs.spec import JobSpec

VOCAB_EXAMPLE = "--vocab water,road"


def check_shorthand(args: argparse.Namespace) -> None:
    """`run SOURCE... --vocab ...` or `run --config job.yaml`, with sampling that selects frames."""
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise CommandError(f"--fps must be > 0 (frames per second of source time), got {args.fps:g}")
    if args.every is not None and args.every < 1:
        raise CommandError(f"--every must be >= 1 (analyse every Nth frame), got {args.every}")
    if args.config is not None:
        if args.sources or args.vocab is not None:
            raise CommandError("give either --config job.yaml or SOURCE... --vocab, not both")
        if args.fps is not None or args.every is not None:
            raise CommandError(
                "--fps and --every apply to SOURCE... only; with --config, set each stream's `sampling` "
                "in the job spec"
            )
        return
    if not args.sources and args.vocab is None:
        raise CommandError(
            f"give SOURCE... and --vocab (e.g. sanstream run cam1.mp4 {VOCAB_EXAMPLE}), or --config job.yaml"
        )
    if args.vocab is not None and not args.vocab.replace(",", "").replace(";", "").strip():
        raise CommandError(f"--vocab is empty: give at least one class name, e.g. {VOCAB_EXAMPLE}")
    if not args.sources:
        raise CommandError(
            f"no SOURCE given: name the video files or URLs to analyse, e.g. sanstream run cam1.mp4 {VOCAB_EXAMPLE}"
        )
    if args.vocab is None:
        raise CommandError(f"--vocab is missing: give the class names to measure, e.g. {VOCAB_EXAMPLE}")


def check_before_start(
    spec: JobSpec,
    address: str | None,
    finished: set[str] | None = None,
    args: argparse.Namespace | None = None,
) -> None:
    """The job's validation pass (`pipeline.preflight.check_job`); `finished`: streams a resumed job has
    finished, whose files need not exist any more. Problems with a value the command line gave are named
    by its flag (`--model: unknown model ...`) rather than by the spec field it went into."""
    from pipeline.preflight import PreflightError, check_job  # the model stack: only for a job to run

    try:
        check_job(spec, address, frozenset(finished or ()))
    except PreflightError as error:
        flags = {
            field: flag
            for field, flag, name in (
                ("model.name", "--model", "model"),
                ("model.device", "--device", "device"),
            )
            if getattr(args, name, None) is not None
        }
        if not flags:
            raise
        raise PreflightError(
            [(flags.get(field, field), message) for field, message in error.problems]
        ) from None


def resumable_job(job_id: str, out: Path, address: str | None) -> JobSpec:
    """The spec `sanstream resume JOB --out OUT` runs, read from the job store and checked like a new
    job's, before Ray starts: an unknown or finished job, a missing file of an unfinished stream, no CUDA
    or no cluster are refused here. Leaves no Redis running (`open_job_store`)."""
    from pipeline.jobs.state_errors import UnknownJobError
    from pipeline.jobs.takeover import stored_job

    check_job_id(job_id)
    with open_job_store(out) as store:
        try:
            spec, finished = stored_job(store, job_id, out)
        except UnknownJobError:
            raise known_jobs_error(store, job_id, out) from None
    check_before_start(spec, address, finished)
    return spec
