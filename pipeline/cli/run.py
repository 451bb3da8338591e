"""`sanstream run`: segment one or more videos (a job spec, or sources on the command line) on Ray.

Ray is imported only here, lazily, so the rest of the CLI works without starting it. With `--service URL`
(or $SANSTREAM_SERVICE) `run` and `resume` are clients of `sanstream serve`: they send the job over HTTP and
follow it there, and touch neither Ray nor Redis nor the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.cli import client as service_client
from pipeline.cli.checks import check_before_start, check_shorthand, resumable_job
from pipeline.cli.common import CommandError, check_job_id
from pipeline.cli.console import make_console
from pipeline.dtypes import HELP as DTYPE_HELP
from pipeline.dtypes import METAVAR as DTYPE_METAVAR
from pipeline.dtypes import dtype_argument
from pipeline.jobs.ids import unique_stream_ids
from pipeline.jobs.spec import JobSpec, load_job_spec, parse_job_spec
from pipeline.storage.query import summary

DEFAULT_OUT = Path("sanstream-out")
#: Job statuses after which following a job on the service stops (`interrupted`: the service stopped).
FOLLOW_END = ("completed", "failed", "cancelled", "interrupted")
POLL_S = 0.5
#: A stream's progress line is printed when its status changes, else at most this often.
PROGRESS_EVERY_S = 2.0
#: How long following rides out a service that does not answer (restarting) before giving up.
UNREACHABLE_GRACE_S = 15.0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None, help="released name, checkpoint file, or 'random'")
    parser.add_argument("--model", default=None, help="model preset (default san_vit_b_16)")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    parser.add_argument("--device", default=None, help="replica device: auto, cpu, cuda")
    parser.add_argument(
        "--dtype",
        default=None,
        type=dtype_argument,
        metavar=DTYPE_METAVAR,
        help=f"{DTYPE_HELP} (default auto)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="frames per replica batch")
    parser.add_argument("--replicas", type=int, default=None, help="number of SAN replicas")
    parser.add_argument("--job-id", default=None, help="job id (default: generated)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_argument(parser)
    add_state_arguments(parser)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's and Serve's own logs (by default they stay in Ray's log folder)",
    )


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
    add_client_arguments(parser)
    parser.set_defaults(handler=run)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    service_client.add_service_argument(parser)
    parser.add_argument(
        "--detach",
        action="store_true",
        help="with --service: print the job id and return at once, without following the job",
    )


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """Build and validate the job spec from --config or from the command-line shorthand, with the
    command-line options overriding the file."""
    check_shorthand(args)
    if args.config is not None:
        data: dict[str, Any] = load_job_spec(args.config).to_dict()
        base = args.config.parent
    else:
        from pipeline.san.vocabulary import parse_vocabulary_text

        vocabulary = list(parse_vocabulary_text(args.vocab))
        ids = unique_stream_ids(args.sources)
        sampling = {"every": args.every} if args.every is not None else {"fps": args.fps or 1.0}
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


def execute(spec: JobSpec, args: argparse.Namespace, console: Console, out: Path | None = None) -> int:
    """Run the job here and report it; `out`: the output folder to name (default the spec's)."""
    from actors.job import run_job  # Ray is imported only when a job actually runs
    from actors.pool_errors import PoolStartError

    if (spec.model.weights or spec.model.name) == "random":
        console.print(
            "[yellow]using random weights: the masks are meaningless (pipeline check only)[/yellow]"
        )
    out = out or Path(spec.output)
    try:
        outcome = run_job(
            spec,
            address=args.address,
            show_progress=not args.no_progress,
            console=console,
            allow_volatile_state=getattr(args, "allow_volatile_state", False),
            verbose=getattr(args, "verbose", False),
        )
    except PoolStartError as error:  # recorded as the job's and its streams' error: one line here
        status = f"sanstream status {error.job_id} --out {shlex.quote(str(out))}"
        console.print(
            f"[red]job {escape(error.job_id)} failed[/red]: {escape(str(error))}\n  {escape(status)}"
        )
        return 1
    return report(outcome, out, console)


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
            f"committed output kept in {escape(str(out))}/"
        )
        console.print(
            f"  continue with: {escape(f'sanstream resume {outcome.job_id} --out {where}')}",
            soft_wrap=True,  # the command must stay on one line to be copied
        )
        return 128 + int(getattr(outcome, "signal", None) or signal.SIGINT)
    console.print(
        escape(f"job {outcome.job_id} {outcome.status} in {outcome.seconds:.1f} s; output in {out}/")
    )
    console.print(
        escape(f"  sanstream status {outcome.job_id} --out {where}\n  sanstream query {where}"),
        soft_wrap=True,  # the commands must stay on one line to be copied
    )
    if outcome.status == "completed" and all(s.status == "completed" for s in outcome.streams.values()):
        return 0
    return 1


def run(args: argparse.Namespace) -> int:
    url = service_client.service_url(args)
    if url is None:
        _local_only(args)
        spec = spec_from_args(args)
        check_before_start(spec, args.address, args=args)  # before Ray is imported: a typo costs a second
        return execute(spec, args, make_console())
    _check_client_args(args, ("address", "allow_volatile_state", "replicas", "batch_size"))
    client = service_client.client_for(url)
    job_id = client.submit(service_spec(args))
    return _detached(job_id, client) if args.detach else follow(client, job_id, make_console(), args)


def _local_only(args: argparse.Namespace) -> None:
    if getattr(args, "detach", False):
        raise CommandError(
            "--detach needs --service URL (a job run here lives as long as this command; use "
            "`sanstream serve` and --service to leave one running)"
        )


_NOT_WITH_SERVICE = {
    "address": "--address (the service runs on its own Ray cluster)",
    "allow_volatile_state": "--allow-volatile-state (the service owns its job store)",
    "replicas": "--replicas (the service's pool is sized by `sanstream serve --replicas`)",
    "batch_size": "--batch-size (set by `sanstream serve --batch-size`)",
}


def _check_client_args(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    given = [
        _NOT_WITH_SERVICE[name]
        for name in names
        if getattr(args, name, None) is not None and getattr(args, name) is not False
    ]
    if given:
        raise CommandError(f"not with --service: {'; '.join(given)}")


def service_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec to send to the service: built and checked as for a local run, without `output` and
    `model` unless the user named them (the service fills in its own folder and the model it serves)."""
    data = spec_from_args(args).to_dict()
    if args.config is None and args.out is None:
        data.pop("output", None)
    if not _model_given(args):
        data.pop("model", None)
    return data


def _model_given(args: argparse.Namespace) -> bool:
    if any(getattr(args, name) is not None for name in ("model", "weights", "device", "dtype")):
        return True
    if args.config is None:
        return False
    import yaml  # the file was read and validated already; only whether it names `model` is asked here

    raw = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    return isinstance(raw, dict) and raw.get("model") is not None


def _detached(job_id: str, client: service_client.ServiceClient) -> int:
    print(job_id)  # alone on stdout: JOB=$(sanstream run --detach ...)
    print(
        f"follow it with: sanstream status {job_id} --service {shlex.quote(client.url)}",
        file=sys.stderr,
    )
    return 0


def follow(
    client: service_client.ServiceClient, job_id: str, console: Console, args: argparse.Namespace
) -> int:
    """Poll the job on the service until it ends, with a progress line per stream on stderr; then the
    end summary and the exit code of a local run. Ctrl-C stops following only: the job keeps running."""
    progress = not getattr(args, "no_progress", False)
    shown: dict[str, tuple[tuple[Any, ...], float]] = {}
    failing_since: float | None = None
    try:
        while True:
            try:
                snapshot = client.job(job_id)
                failing_since = None
            except service_client.ServiceError as error:
                if error.status is not None and error.status < 500:
                    raise
                failing_since = failing_since or time.monotonic()  # the service may be restarting
                if time.monotonic() - failing_since > UNREACHABLE_GRACE_S:
                    raise
                time.sleep(POLL_S)
                continue
            if progress:
                print_progress(snapshot, shown)
            if snapshot["status"] in FOLLOW_END:
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print(
            f"\njob {job_id} keeps running on the service; follow it with "
            f"sanstream status {job_id} --service {shlex.quote(client.url)}",
            file=sys.stderr,
        )
        return 130
    return report_service(snapshot, client.url, console)


def print_progress(snapshot: dict[str, Any], shown: dict[str, tuple[tuple[Any, ...], float]]) -> None:
    """One line per stream on stderr when its status changed, or its counters did and the last line is
    PROGRESS_EVERY_S old; `shown` remembers what was printed (the job's own status under "")."""
    now = time.monotonic()
    job_state = (snapshot["status"],)
    if shown.get("", ((None,), 0.0))[0] != job_state:
        print(f"job {snapshot['job_id']}: {snapshot['status']}", file=sys.stderr, flush=True)
        shown[""] = (job_state, now)
    final = snapshot["status"] in FOLLOW_END
    for stream_id, info in snapshot["streams"].items():
        counts = tuple(int(info.get(name) or 0) for name in ("analysed", "written", "dropped"))
        state = (info.get("status"), *counts)
        last = shown.get(stream_id)
        if last is not None and last[0] == state:
            continue
        if last is not None and last[0][0] == state[0] and not final and now - last[1] < PROGRESS_EVERY_S:
            continue
        analysed, written, dropped = counts
        line = f"  {stream_id}: {info.get('status') or '?'}, analysed {analysed}, written {written}"
        print(line + (f", dropped {dropped}" if dropped else ""), file=sys.stderr, flush=True)
        shown[stream_id] = (state, now)


def report_service(snapshot: dict[str, Any], url: str, console: Console) -> int:
    """The end of a followed job: per-stream table and problems, where the output is, and the exit code
    of a local run (0 only when the job and every stream completed)."""
    from pipeline.cli.status import stream_table

    job_id, status = snapshot["job_id"], snapshot["status"]
    console.print(stream_table(snapshot))
    for stream_id, info in snapshot["streams"].items():
        if info.get("status") not in ("completed", "interrupted"):
            errors = info.get("errors") or []
            message = str(errors[-1].get("message", "")) if errors else ""
            console.print(
                f"[red]stream {escape(stream_id)} {escape(str(info.get('status')))}[/red]: {escape(message)}"
            )
    started, finished = snapshot.get("started"), snapshot.get("finished")
    took = f" after {finished - started:.1f} s" if started is not None and finished is not None else ""
    where = shlex.quote(url)
    if status == "interrupted":
        console.print(
            f"[yellow]job {escape(job_id)} interrupted on the service[/yellow]{took} (the service stopped); "
            "it continues when the service starts again\n"
            f"  or: {escape(f'sanstream resume {job_id} --service {where}')}",
            soft_wrap=True,
        )
        return 1
    out = snapshot.get("spec", {}).get("output")
    output = f"; output in {out}/ on the service's machine" if out else ""
    console.print(
        escape(f"job {job_id} {status}{took}{output}\n  sanstream status {job_id} --service {where}"),
        soft_wrap=True,
    )
    streams = snapshot["streams"].values()
    return 0 if status == "completed" and all(s.get("status") == "completed" for s in streams) else 1


def add_resume_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="continue an interrupted job (or one whose driver died) from its last committed frames",
    )
    parser.add_argument("job_id", help="the job to resume")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the job's output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_argument(parser)
    add_state_arguments(parser)
    add_client_arguments(parser)
    parser.set_defaults(handler=resume)


def resume(args: argparse.Namespace) -> int:
    url = service_client.service_url(args)
    if url is not None:
        _check_client_args(args, ("address", "allow_volatile_state"))
        job_id = check_job_id(args.job_id)
        client = service_client.client_for(url)
        try:
            client.resume(job_id)
        except service_client.ServiceError as error:
            raise service_client.known_jobs_error(client, job_id, error) from None
        return _detached(job_id, client) if args.detach else follow(client, job_id, make_console(), args)
    _local_only(args)
    spec = resumable_job(args.job_id, args.out, args.address)  # checked before Ray is imported
    return execute(spec, args, make_console(), out=Path(args.out))
