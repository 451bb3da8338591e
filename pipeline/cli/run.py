"""`sanstream run`: segment one or more videos (a job spec, or sources on the command line) on Ray.

Ray is imported only here, lazily, so the rest of the CLI works without starting it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.jobs.ids import unique_stream_ids
from pipeline.jobs.spec import JobSpec, load_job_spec, parse_job_spec
from pipeline.storage.query import summary

DEFAULT_OUT = Path("sanstream-out")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="released name, checkpoint file, or 'random'")
    parser.add_argument("--model", default=None, help="model preset (default san_vit_b_16)")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    parser.add_argument("--device", default=None, help="replica device: auto, cpu, cuda")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=None, help="frames per replica batch")
    parser.add_argument("--replicas", type=int, default=None, help="number of SAN replicas")
    parser.add_argument("--job-id", default=None, help="job id (default: generated)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_state_arguments(parser)


def add_state_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-volatile-state",
        action="store_true",
        help="run even if REDIS_URL's Redis does not persist (appendonly no); job state is then lost if "
        "that Redis restarts (env: SANSTREAM_ALLOW_VOLATILE_STATE=1)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="segment videos into per-class area time series (Parquet)",
        description="Run a job from --config job.yaml, or from SOURCE files/URLs with one --vocab.",
    )
    parser.add_argument("sources", nargs="*", help="video files or http(s)/rtsp(s) URLs (one stream each)")
    parser.add_argument("--config", type=Path, default=None, help="YAML job spec (see configs/jobs/)")
    parser.add_argument("--vocab", default=None, help='classes, e.g. "water,road,vegetation,person,car"')
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {DEFAULT_OUT})")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument(
        "--fps", type=float, default=None, help="frames per second of source time (default 1)"
    )
    sampling.add_argument("--every", type=int, default=None, help="analyse every Nth frame instead")
    add_run_arguments(parser)
    parser.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """Build and validate the job spec from --config or from the command-line shorthand, with the
    command-line options overriding the file."""
    if args.config is not None:
        if args.sources or args.vocab:
            raise SystemExit("give either --config or SOURCE... --vocab, not both")
        data: dict[str, Any] = load_job_spec(args.config).to_dict()
        base = args.config.parent
    else:
        if not args.sources or not args.vocab:
            raise SystemExit("give SOURCE... and --vocab (or --config job.yaml)")
        from pipeline.san.vocabulary import parse_vocabulary_text

        vocabulary = list(parse_vocabulary_text(args.vocab))
        ids = unique_stream_ids(args.sources)
        sampling = {"every": args.every} if args.every else {"fps": args.fps or 1.0}
        data = {
            "output": str(args.out or DEFAULT_OUT),
            "streams": [
                {"id": sid, "source": source, "vocabulary": vocabulary, "sampling": sampling}
                for sid, source in zip(ids, args.sources, strict=True)
            ],
        }
        base = Path.cwd()
    if args.out is not None:
        data["output"] = str(args.out)
    model = data.setdefault("model", {})
    for key, value in (
        ("name", args.model),
        ("weights", args.weights),
        ("device", args.device),
        ("dtype", args.dtype),
    ):
        if value is not None:
            model[key] = value
    if (
        args.weights is not None
        and args.model is None
        and args.weights in ("san_vit_b_16", "san_vit_large_14")
    ):
        model["name"] = args.weights
    serve = data.setdefault("serve", {})
    if args.batch_size is not None:
        serve["batch_size"] = args.batch_size
    if args.replicas is not None:
        serve["num_replicas"] = args.replicas
        serve.pop("autoscaling", None)
    if args.job_id is not None:
        data["job_id"] = args.job_id
    return parse_job_spec(_drop_empty(data), base_dir=base)


def _drop_empty(data: dict[str, Any]) -> dict[str, Any]:
    """`to_dict()` spells out every default; drop None/empty values so the parser applies its own."""
    cleaned: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _drop_empty(value)
        if value is None or value == "" or value == {}:
            continue
        cleaned[key] = value
    return cleaned


def summary_table(out: Path, job_id: str) -> Table:
    rows = summary(out, job_id=job_id).to_pylist()
    table = Table(title=escape(f"{job_id}: class fraction over time"))
    for column in ("stream", "class", "frames", "mean", "max"):
        table.add_column(column, justify="right" if column in ("frames", "mean", "max") else "left")
    for row in rows:
        table.add_row(  # cells are rich markup: a class named "car [vehicle]" must print as it is
            escape(row["stream_id"]),
            escape(row["class_name"]),
            str(row["frames"]),
            f"{row['mean_fraction']:.1%}",
            f"{row['max_fraction']:.1%}",
        )
    return table


def execute(spec: JobSpec, args: argparse.Namespace, console: Console) -> int:
    from actors.job import run_job  # Ray is imported only when a job actually runs

    if (spec.model.weights or spec.model.name) == "random":
        console.print(
            "[yellow]using random weights: the masks are meaningless (pipeline check only)[/yellow]"
        )
    outcome = run_job(
        spec,
        address=args.address,
        show_progress=not args.no_progress,
        console=console,
        allow_volatile_state=getattr(args, "allow_volatile_state", False),
    )
    return report(outcome, Path(spec.output), console)


def report(outcome: Any, out: Path, console: Console) -> int:
    """Print the job's summary and per-stream problems; exit code 0 only when every stream completed,
    128 + the signal number when a signal interrupted it (130 for SIGINT, 143 for SIGTERM)."""
    interrupted = outcome.status == "interrupted"
    if interrupted:
        with contextlib.suppress(Exception):  # an interrupt during start-up may leave no output at all
            console.print(summary_table(out, outcome.job_id))
    else:
        console.print(summary_table(out, outcome.job_id))
    for stream_id, stream in outcome.streams.items():
        if stream.status not in ("completed", "interrupted"):
            console.print(
                f"[red]stream {escape(stream_id)} {stream.status}[/red]: {escape(stream.error or '')}"
            )
    where = shlex.quote(str(out))
    if interrupted:
        by = signal.Signals(outcome.signal).name if getattr(outcome, "signal", None) else "an interrupt"
        console.print(
            f"[yellow]job {escape(outcome.job_id)} interrupted by {by}[/yellow] after {outcome.seconds:.1f} s; "
            f"committed output kept in {escape(str(out))}/\n"
            f"  continue with: {escape(f'sanstream resume {outcome.job_id} --out {where}')}",
            soft_wrap=True,  # the command must stay on one line to be copied
        )
        return 128 + int(getattr(outcome, "signal", None) or signal.SIGINT)
    console.print(
        escape(
            f"job {outcome.job_id} {outcome.status} in {outcome.seconds:.1f} s; output in {out}/\n"
            f"  sanstream status {outcome.job_id} --out {where}\n  sanstream query {where}"
        )
    )
    if outcome.status == "completed" and all(s.status == "completed" for s in outcome.streams.values()):
        return 0
    return 1


def run(args: argparse.Namespace) -> int:
    return execute(spec_from_args(args), args, Console())


def add_resume_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="continue an interrupted job (or one whose driver died) from its last committed frames",
    )
    parser.add_argument("job_id", help="the job to resume")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the job's output directory")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_state_arguments(parser)
    parser.set_defaults(handler=resume)


def resume(args: argparse.Namespace) -> int:
    from actors.job import resume_job

    console = Console()
    outcome = resume_job(
        args.job_id,
        args.out,
        address=args.address,
        show_progress=not args.no_progress,
        console=console,
        allow_volatile_state=args.allow_volatile_state,
    )
    return report(outcome, Path(args.out), console)
