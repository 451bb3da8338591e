"""Running a job: the driver that starts Ray (or joins a cluster), the SAN pool, and a decoder and a writer
per stream, shows progress, applies each stream's failure policy and records the outcome.

A stream that fails (bad file, dead camera) is retried as its failure policy says, then recorded as failed
with its error while the other streams carry on; the job completes when at least one stream completed.
A job whose driver died is resumed by running it again with the same job id (`sanstream resume JOB`):
each stream restarts from its last committed frame.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.decoder import DecoderSettings, StreamDecoder, StreamOutcome, actor_name
from actors.segmentation import deploy, undeploy
from actors.writer import StreamWriter
from pipeline.jobs.ids import new_job_id
from pipeline.jobs.redis_server import resolve_redis
from pipeline.jobs.spec import JobSpec, parse_job_spec
from pipeline.jobs.state import JobStore, UnknownJobError
from pipeline.preflight import check_output_dir, check_weights, expected_frames
from pipeline.storage.rows import records_table
from pipeline.storage.writer import PartWriter

# Drivers heartbeat as "driver:<host>:<pid>". A driver on this host whose process is gone, or whose
# heartbeat is older than DRIVER_STALE_S, no longer runs the job, which may then be resumed.
DRIVER_STALE_S = 15.0
# Errors that retrying cannot fix: the job spec itself is wrong for this stream.
PERMANENT_ERRORS = {"ProtocolNotAllowed"}


class JobNotResumableError(RuntimeError):
    """A job id that exists but cannot be (re)started now; the message says why and what to do."""


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
    resumed: bool = False


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join `address` (or $RAY_ADDRESS, as `ray job submit` sets), else start a local Ray; a session that
    was already initialised by the caller is reused and left running."""
    if ray.is_initialized():
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS") or None
    # "local" starts a private Ray even when `ray start` left a cluster on this machine: without an address
    # a job runs on its own Ray, as documented, and only --address/RAY_ADDRESS join a cluster.
    ray.init(
        address=target or "local", namespace="sanstream", include_dashboard=False, logging_level="WARNING"
    )
    try:
        yield
    finally:
        if target is None:
            ray.shutdown()


def _register(store: JobStore, spec: JobSpec, job_id: str) -> tuple[bool, set[str]]:
    """Create the job, or take over an existing one whose driver is gone. Returns (resumed, streams
    already finished)."""
    try:
        status = store.status(job_id)
    except UnknownJobError:
        store.create_job(job_id, spec.to_dict(), [s.id for s in spec.streams])
        return False, set()
    if status == "completed":
        raise JobNotResumableError(f"job {job_id} already completed; choose another job id to run it again")
    if status in ("failed", "cancelled"):
        raise JobNotResumableError(
            f"job {job_id} ended as {status}; its output stays as is. Start a new job id"
        )
    for worker, beat in store.heartbeats(job_id).items():
        if worker.startswith("driver:") and _driver_alive(worker, beat):
            raise JobNotResumableError(
                f"job {job_id} is still running ({worker}, heartbeat {time.time() - beat:.0f} s ago); "
                f"cancel it, or wait until its driver has been gone for {DRIVER_STALE_S:.0f} s"
            )
    snapshot = store.snapshot(job_id)
    done = {
        sid
        for sid, info in snapshot["streams"].items()
        if info.get("status") in ("completed", "failed", "cancelled")
    }
    return True, done


def driver_name() -> str:
    return f"driver:{socket.gethostname()}:{os.getpid()}"


def _driver_alive(worker: str, beat: float) -> bool:
    _, host, pid = worker.split(":", 2)
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return time.time() - beat < DRIVER_STALE_S


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
    """Run `spec` to the end (or resume it, when its job id exists and its driver is gone).

    Args:
        address: Ray cluster address; None uses $RAY_ADDRESS or a local Ray.
        on_started: called with (job_id, redis_url) once the job is registered (tests use it to cancel).
    """
    console = console or Console(stderr=True)
    out_dir = Path(spec.output)
    check_output_dir(out_dir)
    check_weights(spec.model.weights or spec.model.name, spec.model.name)
    job_id = spec.job_id or new_job_id()
    redis_url, embedded = resolve_redis(out_dir)
    started = time.monotonic()
    store: JobStore | None = None
    try:
        store = JobStore.from_url(redis_url)
        resumed, finished = _register(store, spec, job_id)
        store.heartbeat(job_id, driver_name())
        if on_started:
            on_started(job_id, redis_url)
        run = _Run(
            spec,
            job_id,
            store,
            redis_url,
            settings or DecoderSettings(),
            commit_interval_s,
            placement or Placement(),
        )
        with ray_session(address):
            outcome = run.execute(finished, show_progress, console)
        outcome.resumed = resumed
        outcome.seconds = time.monotonic() - started
        return outcome
    except BaseException as error:
        if store is not None and not isinstance(error, JobNotResumableError):
            with contextlib.suppress(Exception):
                store.record_error(job_id, None, type(error).__name__, str(error))
                store.set_status(job_id, "failed")
        raise
    finally:
        if embedded is not None:
            embedded.stop()


def resume_job(job_id: str, out_dir: str | Path, **kwargs: Any) -> JobOutcome:
    """Resume a job whose driver died, from the spec stored with it."""
    redis_url, embedded = resolve_redis(out_dir)
    try:
        snapshot = JobStore.from_url(redis_url).snapshot(job_id)
    finally:
        if embedded is not None:
            embedded.stop()
    data = {key: value for key, value in snapshot["spec"].items() if value is not None}
    data["job_id"] = job_id
    return run_job(parse_job_spec(data), **kwargs)


@dataclass
class _Run:
    spec: JobSpec
    job_id: str
    store: JobStore
    redis_url: str
    settings: DecoderSettings
    commit_interval_s: float
    placement: Placement

    def execute(self, finished: set[str], show_progress: bool, console: Console) -> JobOutcome:
        store, job_id = self.store, self.job_id
        store.set_status(job_id, "running")
        errors_before = len(store.errors(job_id))
        outcome = JobOutcome(job_id, "running")
        pool = deploy(self.spec, job_id, self.placement.replicas)
        actors: list[Any] = []
        try:
            decoders: dict[str, Any] = {}
            pending: dict[Any, str] = {}
            attempts: dict[str, int] = {}
            for stream in self.spec.streams:
                if stream.id in finished:
                    continue
                with contextlib.suppress(Exception):
                    store.set_stream_status(job_id, stream.id, "running")
                writer = StreamWriter.options(
                    name=actor_name(job_id, stream.id, "writer"), resources=self.placement.decoders
                ).remote(
                    str(self.spec.output),
                    job_id,
                    stream.id,
                    list(stream.vocabulary),
                    self.redis_url,
                    self.commit_interval_s,
                )
                decoder = StreamDecoder.options(
                    name=actor_name(job_id, stream.id, "decoder"), resources=self.placement.decoders
                ).remote(job_id, stream, self.redis_url, pool, writer, self.settings, self.spec.store_labels)
                actors += [writer, decoder]
                decoders[stream.id] = decoder
                attempts[stream.id] = 1
                pending[decoder.run.remote()] = stream.id
            totals = {s.id: expected_frames(s) for s in self.spec.streams if s.id in decoders}
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                disable=not show_progress,
            ) as progress:
                tasks = {sid: progress.add_task(sid, total=total) for sid, total in totals.items()}
                retry_at: dict[str, float] = {}
                while pending or retry_at:
                    store.heartbeat(job_id, driver_name())
                    for stream_id, due in list(retry_at.items()):
                        if time.monotonic() >= due:
                            del retry_at[stream_id]
                            pending[decoders[stream_id].run.remote()] = stream_id
                    if not pending:
                        time.sleep(0.2)
                        continue
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    for ref in ready:
                        stream_id = pending.pop(ref)
                        result = self._collect(ref, stream_id)
                        policy = self.spec.stream(stream_id).failure_policy
                        if (
                            result.status == "failed"
                            and result.error_kind not in PERMANENT_ERRORS
                            and attempts[stream_id] <= policy.retries
                            and not store.cancel_requested(job_id)
                        ):
                            attempts[stream_id] += 1
                            store.record_error(
                                job_id,
                                stream_id,
                                "retry",
                                f"attempt {attempts[stream_id]} of {policy.retries + 1} after: {result.error}",
                            )
                            # Capped exponential back-off, without holding up the other streams.
                            retry_at[stream_id] = time.monotonic() + min(
                                2.0 ** (attempts[stream_id] - 2), 30.0
                            )
                            continue
                        outcome.streams[stream_id] = result
                        with contextlib.suppress(Exception):
                            store.set_stream_status(job_id, stream_id, result.status)
                    _update_progress(progress, tasks, store, job_id)
                _update_progress(progress, tasks, store, job_id)
        finally:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            undeploy(job_id)
        _write_error_tables(self.spec, job_id, store, errors_before)
        statuses = {s.status for s in outcome.streams.values()} | {
            store.stream_status(job_id, sid) for sid in finished
        }
        if "cancelled" in statuses or store.cancel_requested(job_id):
            outcome.status = "cancelled"
        elif "completed" in statuses:
            outcome.status = "completed"
        else:
            outcome.status = "failed"
        store.set_status(job_id, outcome.status)
        return outcome

    def _collect(self, ref: Any, stream_id: str) -> StreamOutcome:
        """A stream's outcome; an actor that could not be kept alive becomes a failed stream."""
        try:
            return ray.get(ref)
        except RayError as error:
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.store.record_error(self.job_id, stream_id, type(error).__name__, message)
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
                task, completed=int(info.get("written", 0) or 0), description=f"{stream_id} [{status}]"
            )
