"""Running a job: the driver that starts Ray (or joins a cluster), the SAN pool, and a decoder and a writer
per stream, shows progress, and records the outcome in the job store.

A stream that fails (bad file, dead camera, crashed actor) is recorded as failed with its error and the
other streams carry on; the job completes when at least one stream completed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.decoder import DecoderSettings, StreamDecoder, StreamOutcome
from actors.segmentation import deploy, undeploy
from actors.writer import StreamWriter
from pipeline.jobs.ids import new_job_id
from pipeline.jobs.redis_server import resolve_redis
from pipeline.jobs.spec import JobSpec
from pipeline.jobs.state import JobStore
from pipeline.preflight import check_output_dir, check_weights, expected_frames
from pipeline.storage.rows import records_table
from pipeline.storage.writer import PartWriter


@dataclass(frozen=True)
class Placement:
    """Custom Ray resources each kind of actor requires, to decide which nodes run what (e.g. decoders on
    CPU nodes near the cameras, replicas on GPU nodes). Empty means anywhere."""

    decoders: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, float] = field(default_factory=dict)


@dataclass
class JobOutcome:
    job_id: str
    status: str
    streams: dict[str, StreamOutcome] = field(default_factory=dict)
    seconds: float = 0.0


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join `address` (or $RAY_ADDRESS, as `ray job submit` sets), else start a local Ray; a session that
    was already initialised by the caller is reused and left running."""
    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=target,
        namespace="sanstream",
        include_dashboard=False,
        logging_level="WARNING",
        configure_logging=True,
        log_to_driver=True,
    )
    try:
        yield
    finally:
        if target is None:
            ray.shutdown()


def run_job(
    spec: JobSpec,
    *,
    address: str | None = None,
    settings: DecoderSettings | None = None,
    show_progress: bool = True,
    console: Console | None = None,
    on_started: Callable[[str, str], None] | None = None,
    commit_interval_s: float = 10.0,
    placement: Placement | None = None,
) -> JobOutcome:
    """Run `spec` to the end and return what happened to each stream.

    Args:
        address: Ray cluster address; None uses $RAY_ADDRESS or a local Ray.
        on_started: called with (job_id, redis_url) once the job is registered (tests use it to cancel).
    """
    console = console or Console(stderr=True)
    settings = settings or DecoderSettings()
    out_dir = Path(spec.output)
    check_output_dir(out_dir)
    check_weights(spec.model.weights or spec.model.name, spec.model.name)
    job_id = spec.job_id or new_job_id()
    redis_url, embedded = resolve_redis(out_dir)
    started = time.monotonic()
    try:
        store = JobStore.from_url(redis_url)
        store.create_job(job_id, spec.to_dict(), [s.id for s in spec.streams])
        if on_started:
            on_started(job_id, redis_url)
        with ray_session(address):
            outcome = _run(
                spec,
                job_id,
                store,
                redis_url,
                settings,
                show_progress,
                console,
                commit_interval_s,
                placement or Placement(),
            )
        outcome.seconds = time.monotonic() - started
        return outcome
    except BaseException as error:
        with contextlib.suppress(Exception):
            store.record_error(job_id, None, type(error).__name__, str(error))
            store.set_status(job_id, "failed")
        raise
    finally:
        if embedded is not None:
            embedded.stop()


def _run(
    spec: JobSpec,
    job_id: str,
    store: JobStore,
    redis_url: str,
    settings: DecoderSettings,
    show_progress: bool,
    console: Console,
    commit_interval_s: float,
    placement: Placement,
) -> JobOutcome:
    store.set_status(job_id, "running")
    errors_before = len(store.errors(job_id))
    outcome = JobOutcome(job_id, "running")
    pool = deploy(spec, job_id, placement.replicas)
    actors: list[object] = []
    try:
        pending: dict[object, str] = {}
        for stream in spec.streams:
            writer = StreamWriter.options(resources=placement.decoders).remote(
                str(spec.output), job_id, stream.id, list(stream.vocabulary), redis_url, commit_interval_s
            )
            decoder = StreamDecoder.options(resources=placement.decoders).remote(
                job_id, stream, redis_url, pool, writer, settings, spec.store_labels
            )
            actors += [writer, decoder]
            pending[decoder.run.remote()] = stream.id
        totals = {stream.id: expected_frames(stream) for stream in spec.streams}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show_progress,
            transient=False,
        ) as progress:
            tasks = {sid: progress.add_task(sid, total=total) for sid, total in totals.items()}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    stream_id = pending.pop(ref)
                    outcome.streams[stream_id] = _collect(ref, job_id, stream_id, store)
                _update_progress(progress, tasks, store, job_id)
            _update_progress(progress, tasks, store, job_id)
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        undeploy(job_id)
    _write_error_tables(spec, job_id, store, errors_before)
    statuses = {s.status for s in outcome.streams.values()}
    if "cancelled" in statuses or store.cancel_requested(job_id):
        outcome.status = "cancelled"
    elif "completed" in statuses:
        outcome.status = "completed"
    else:
        outcome.status = "failed"
    store.set_status(job_id, outcome.status)
    return outcome


def _collect(ref: object, job_id: str, stream_id: str, store: JobStore) -> StreamOutcome:
    """A stream's outcome; a crashed actor becomes a failed stream with the error recorded."""
    try:
        return ray.get(ref)
    except RayError as error:
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        store.record_error(job_id, stream_id, type(error).__name__, message)
        with contextlib.suppress(Exception):
            store.set_stream_status(job_id, stream_id, "failed")
        return StreamOutcome(stream_id, "failed", error_kind=type(error).__name__, error=message)


def _write_error_tables(spec: JobSpec, job_id: str, store: JobStore, skip: int) -> None:
    """Copy this run's stream errors from the job store into the `errors` Parquet table, so they can be
    queried beside the areas (the store keeps them too, for `sanstream status`)."""
    by_stream: dict[str, list[dict[str, object]]] = {}
    for error in store.errors(job_id)[skip:]:
        if error.get("stream_id"):
            by_stream.setdefault(str(error["stream_id"]), []).append(
                {
                    "job_id": job_id,
                    "stream_id": error["stream_id"],
                    "time": float(error["time"]),
                    "kind": str(error["kind"]),
                    "message": str(error["message"]),
                }
            )
    for stream_id, records in by_stream.items():
        with contextlib.suppress(OSError), PartWriter(spec.output, "errors", stream_id) as writer:
            writer.append(records_table("errors", records))


def _update_progress(progress: Progress, tasks: dict[str, int], store: JobStore, job_id: str) -> None:
    with contextlib.suppress(Exception):
        snapshot = store.snapshot(job_id)
        for stream_id, task in tasks.items():
            info = snapshot["streams"].get(stream_id, {})
            status = info.get("status") or "pending"
            progress.update(
                task, completed=int(info.get("analysed", 0) or 0), description=f"{stream_id} [{status}]"
            )
