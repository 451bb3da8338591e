"""Running a job: the driver that starts Ray (or joins a cluster), the SAN pool, decoder actors that carry
many streams each and a writer per node (`actors.placement`), shows progress, applies each stream's failure policy and records the outcome.

A stream that fails (bad file, dead camera) is retried as its failure policy says, then recorded as failed
with its error while the other streams carry on; the job completes when at least one stream completed.
A job whose driver died is resumed by running it again with the same job id (`sanstream resume JOB`):
each stream restarts from its last committed frame.

One driver per job: the driver holds the job's lease in Redis (`pipeline.jobs.lease`) from before it
creates or takes over the job until it exits, so a second driver is refused with the holder's name.
SIGINT/SIGTERM stop the job cleanly (streams commit what they analysed and the job ends `interrupted`,
resumable); a second signal stops the driver at once, still leaving the job `interrupted`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from rich.console import Console
from rich.markup import escape

from actors.placement import Placement, StreamCarriers, place_streams
from actors.pool_errors import pool_start_error, record_pool_failure
from actors.progress import progress_bars, update_progress
from actors.ray_logging import init_ray
from actors.reaper import Reaper
from actors.segmentation import app_name, deploy, undeploy
from actors.signals import DriverSignals, JobInterrupted
from actors.stream_config import DecoderSettings, JobContext, StreamOutcome
from pipeline.cluster_address import cluster_target
from pipeline.jobs.ids import new_job_id
from pipeline.jobs.lease import JobLease, LeaseHeldError, lease_info
from pipeline.jobs.redis_server import check_persistence, resolve_redis, volatile_state_allowed
from pipeline.jobs.spec import JobSpec, parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_changes import stream_ids
from pipeline.jobs.stream_spec import StreamSpec
from pipeline.jobs.takeover import (
    DriverReplacedError,
    JobNotResumableError,
    mark_interrupted,
    register_job,
    stored_job,
)
from pipeline.preflight import check_output_dir, check_weights, expected_frames
from pipeline.storage.errors_table import export_errors
from pipeline.storage.writer import CommitUncertain

# Errors that retrying cannot fix: the job spec itself is wrong for this stream.
PERMANENT_ERRORS = {"ProtocolNotAllowed"}
# After the first SIGINT/SIGTERM, how long decoders get to commit and return before they are killed
# (what they committed is safe either way; waiting only saves re-analysing the frames in flight).
INTERRUPT_GRACE_S = 20.0


@dataclass
class JobOutcome:
    job_id: str
    status: str
    streams: dict[str, StreamOutcome] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False
    #: the signal that interrupted the job (status `interrupted`), if one did
    signal: int | None = None
    #: the fencing token of this driver's lease on the job
    lease_token: int | None = None


@contextlib.contextmanager
def ray_session(
    address: str | None, on_init: Callable[[], None] | None = None, verbose: bool = False
) -> Iterator[None]:
    """Join `address` (or $RAY_ADDRESS, as `ray job submit` sets), else start a local Ray; a session that
    was already initialised by the caller is reused and left running. `on_init` runs right after
    `ray.init` (which replaces the SIGTERM handler: the driver puts its own back). Ray's and Serve's own
    logs stay in Ray's log folder unless `verbose` (`actors.ray_logging`)."""
    if ray.is_initialized():
        yield
        return
    target = cluster_target(address)
    # "local" starts a private Ray even when `ray start` left a cluster on this machine: without an address
    # a job runs on its own Ray, as documented, and only --address/RAY_ADDRESS join a cluster.
    try:
        init_ray(verbose=verbose, address=target or "local", namespace="sanstream", include_dashboard=False)
    except BaseException:  # a signal during start-up: do not leave a half-started local Ray behind
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    try:
        if on_init is not None:
            on_init()
        yield
    finally:
        if target is None:
            ray.shutdown()


def driver_name() -> str:
    return f"driver:{socket.gethostname()}:{os.getpid()}"


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
    allow_volatile_state: bool = False,
    pool: Any = None,
    redis_url: str | None = None,
    fleet: Any = None,
    verbose: bool = False,
) -> JobOutcome:
    """Run `spec` to the end, or continue it when its job id exists (interrupted, or its driver died).

    Args:
        address: Ray cluster address; None uses $RAY_ADDRESS or a local Ray.
        on_started: called with (job_id, redis_url) once the job is registered (tests use it to cancel).
        allow_volatile_state: run even if REDIS_URL's server does not persist (also
            SANSTREAM_ALLOW_VOLATILE_STATE=1); a warning is printed instead of refusing.
        pool: a SAN replica pool to use (the service's, shared by every job) instead of deploying one
            for this job alone.
        redis_url: the job store to use (the service's), instead of REDIS_URL or the output folder's
            embedded server; its persistence was checked by whoever chose it.
        fleet: warm decoders and writers (the service's `actors.fleet.WarmFleet`) to carry the streams,
            instead of starting actors for this job alone.
        verbose: show Ray's and Serve's own logs on the terminal (else they stay in Ray's log folder).

    From the main thread, SIGINT/SIGTERM stop the job cleanly: the outcome's status is `interrupted` and
    its `signal` says which. A second signal raises `JobInterrupted` (a KeyboardInterrupt) at once.
    """
    console = console or Console(stderr=True)
    out_dir = Path(spec.output)
    check_output_dir(out_dir)
    check_weights(spec.model.weights or spec.model.name, spec.model.name)
    job_id = spec.job_id or new_job_id()
    given_redis = redis_url
    signals = DriverSignals(f"sanstream resume {job_id} --out {shlex.quote(str(out_dir))}")
    started = time.monotonic()
    store: JobStore | None = None
    lease: JobLease | None = None
    embedded = None
    registered = resumed = False
    reaper = Reaper()  # cleans up what this driver starts, even if it is killed
    signals.install()
    try:
        if redis_url is None:
            redis_url, embedded = resolve_redis(out_dir)
            if embedded is not None:
                reaper.watch_redis(out_dir)
        if embedded is None and given_redis is None:  # embedded servers always persist
            warning = check_persistence(
                redis_url, allow_volatile=volatile_state_allowed(allow_volatile_state)
            )
            if warning:
                console.print(f"[yellow]{escape(warning)}[/yellow]")
        store = JobStore.from_url(redis_url)
        lease = JobLease.from_url(redis_url, job_id, prefix=store.prefix)
        try:
            lease.acquire()
        except LeaseHeldError as error:
            raise JobNotResumableError(str(error)) from None
        lease.start_renewing()
        resumed, finished = register_job(store, spec, job_id)
        registered = True
        lease.publish()
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
            lease,
            signals,
            pool,
            fleet,
        )
        local_ray = cluster_target(address) is None

        def ray_started() -> None:
            signals.install()
            if local_ray:  # a Ray this driver started: its processes must not outlive the driver
                reaper.watch_ray_session()

        with ray_session(address, on_init=ray_started, verbose=verbose):
            outcome = run.execute(finished, show_progress, console)
        outcome.resumed = resumed
        outcome.seconds = time.monotonic() - started
        return outcome
    except JobNotResumableError:
        raise
    except KeyboardInterrupt:
        # From our handlers (Ray may have turned ours into a plain KeyboardInterrupt): a signal during
        # start-up, or a second one. Either way the job, if registered, is left interrupted, not failed.
        ours = registered and store is not None and lease is not None and not lease.lost.is_set()
        if signals.signum is None or signals.forced:
            if ours and store is not None:
                mark_interrupted(store, spec, job_id, f"interrupted by {signals.name}; stopped at once")
            if signals.forced:
                raise signals.forced_exit() from None
            raise
        if not registered:
            raise JobInterrupted(
                f"interrupted by {signals.name} before job {job_id} started", signals.signum
            ) from None
        if ours and store is not None:
            mark_interrupted(store, spec, job_id, f"interrupted by {signals.name} while the job was starting")
        return JobOutcome(
            job_id,
            "interrupted",
            seconds=time.monotonic() - started,
            resumed=resumed,
            signal=signals.signum,
            lease_token=lease.token if lease else None,
        )
    except BaseException as error:
        if registered and store is not None and lease is not None and not lease.lost.is_set():
            with contextlib.suppress(Exception):
                store.record_error(job_id, None, type(error).__name__, str(error) or repr(error))
                store.set_status(job_id, "failed")
        raise
    finally:
        signals.restore()
        if lease is not None:
            lease.close()
        reaper.finish()
        if embedded is not None:
            embedded.stop()


def resume_job(job_id: str, out_dir: str | Path, **kwargs: Any) -> JobOutcome:
    """Continue a job whose driver died or was interrupted, from the spec stored with it."""
    redis_url, embedded = resolve_redis(out_dir)
    try:
        store = JobStore.from_url(redis_url)
        try:
            spec, _ = stored_job(store, job_id, Path(out_dir))
        finally:
            store.r.close()
    finally:
        if embedded is not None:
            embedded.stop()
    return run_job(spec, **kwargs)


@dataclass
class _Run:
    spec: JobSpec
    job_id: str
    store: JobStore
    redis_url: str
    settings: DecoderSettings
    commit_interval_s: float
    placement: Placement
    lease: JobLease
    signals: DriverSignals
    #: a shared pool (the service's); None deploys one for this job
    shared_pool: Any = None
    #: the service's warm decoders and writers; None starts actors for this job
    fleet: Any = None

    @property
    def fencing_token(self) -> int | None:
        """This driver's lease token, also stored on the job hash (`lease_token`): larger than any
        earlier driver's, so writes can be fenced on it."""
        return self.lease.token

    def _check_lease(self) -> None:
        """Stop at once when another driver took the job over (this driver's renewals failed)."""
        if self.lease.lost.is_set():
            info = lease_info(self.store.r, self.job_id, self.store.prefix)
            now = f"; it is now held by {info.holder.describe()} (token {info.token})" if info else ""
            raise DriverReplacedError(
                f"job {self.job_id}: this driver lost its lease (token {self.lease.token}){now}. It stopped "
                "its actors and left the job's state to the current holder"
            )

    def execute(self, finished: set[str], show_progress: bool, console: Console) -> JobOutcome:
        store, job_id = self.store, self.job_id
        store.set_status(job_id, "running")
        outcome = JobOutcome(job_id, "running", lease_token=self.lease.token)
        carriers: StreamCarriers | None = None
        try:
            pool = self.shared_pool or self._deploy(finished)
            self._check_lease()
            pending: dict[Any, str] = {}
            attempts: dict[str, int] = {}
            # The spec's flush interval bounds how long an analysed frame waits to be committed.
            settings = dataclasses.replace(self.settings, flush_interval_s=self.spec.flush_interval_s)
            to_run = [stream for stream in self.spec.streams if stream.id not in finished]
            job = JobContext(
                job_id,
                str(self.spec.output),
                settings,
                self.commit_interval_s,
                self.spec.store_labels,
                self.spec.webhook,
            )
            carriers = place_streams(self.spec, job, to_run, self.redis_url, pool, self.placement, self.fleet)
            known = [s.id for s in self.spec.streams]

            def start(stream: StreamSpec) -> None:
                names = carriers.assign(stream)
                with contextlib.suppress(Exception):
                    store.set_stream_status(job_id, stream.id, "running")
                    store.set_stream_actors(job_id, stream.id, *names)
                attempts[stream.id] = 1
                pending[carriers.start(stream)] = stream.id

            for stream in to_run:
                start(stream)
            totals = {s.id: expected_frames(s) for s in to_run}
            with progress_bars(console, show_progress) as progress:
                tasks = {
                    sid: progress.add_task(escape(sid), total=total, written=0)
                    for sid, total in totals.items()
                }
                retry_at: dict[str, float] = {}
                stopping_since: float | None = None
                self.signals.graceful = True  # from here a signal is handled by this loop
                while True:
                    if stopping_since is None:
                        for stream in self._added_streams(known):  # through the service, while running
                            start(stream)
                            tasks[stream.id] = progress.add_task(escape(stream.id), total=None, written=0)
                    if not pending and not retry_at:
                        break
                    self._check_lease()
                    if self.signals.forced:  # its exception was swallowed somewhere: act on it here
                        raise self.signals.forced_exit()
                    if self.signals.signum is not None and stopping_since is None:
                        stopping_since = time.monotonic()
                        self._begin_interrupt(console, retry_at, outcome)
                    if stopping_since is not None and time.monotonic() - stopping_since > INTERRUPT_GRACE_S:
                        for ref in pending:  # actors shared with other jobs are not killed: cancel
                            with contextlib.suppress(Exception):
                                ray.cancel(ref)
                        self._abandon(pending, outcome)
                        break
                    store.heartbeat(job_id, driver_name())
                    for stream_id, due in list(retry_at.items()):
                        if time.monotonic() >= due:
                            del retry_at[stream_id]
                            pending[carriers.start(self.spec.stream(stream_id))] = stream_id
                    if not pending:
                        time.sleep(0.2)
                        continue
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    for ref in ready:
                        stream_id = pending.pop(ref)
                        result = self._collect(ref, stream_id)
                        policy = self.spec.stream(stream_id).failure_policy
                        stop = store.stop_requested(job_id)
                        retry = (
                            result.status == "failed"
                            and result.error_kind not in PERMANENT_ERRORS
                            and attempts[stream_id] <= policy.retries
                        )
                        if retry and stop == "interrupted":
                            result.status = "interrupted"  # its retries are still due: resuming runs them
                        elif retry and stop is None:
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
                        if result.status == "interrupted":
                            self._record_interrupted(stream_id, f"stopped by {self.signals.name}")
                        with contextlib.suppress(Exception):
                            store.set_stream_status(job_id, stream_id, result.status)
                    update_progress(progress, tasks, store, job_id)
                update_progress(progress, tasks, store, job_id)
        finally:
            if carriers is not None:
                carriers.release()
            if self.shared_pool is None and not self.lease.lost.is_set():
                undeploy(job_id)  # (a lost lease: the pool may serve the driver that took over)
        self._check_lease()
        # A failed export loses nothing: the records stay in the store and the next run exports them.
        with contextlib.suppress(OSError, CommitUncertain):
            export_errors(store, self.spec.output, job_id, [s.id for s in self.spec.streams])
        statuses = {s.status for s in outcome.streams.values()} | {
            store.stream_status(job_id, sid) for sid in finished
        }
        # A stream removed from the running job ends `cancelled` on its own; the job is cancelled only
        # when asked to be, or when every stream was removed.
        if store.cancel_requested(job_id) or statuses == {"cancelled"}:
            outcome.status = "cancelled"
        elif "interrupted" in statuses:
            outcome.status = "interrupted"
            outcome.signal = self.signals.signum
        elif "completed" in statuses:
            outcome.status = "completed"
        else:
            outcome.status = "failed"
        store.set_status(job_id, outcome.status)
        return outcome

    def _deploy(self, finished: set[str]) -> Any:
        """This job's replica pool. One that does not start fails the job's unfinished streams with the
        replicas' own error (`actors.pool_errors`), not Serve's "Deploying application ... failed"."""
        try:
            return deploy(self.spec, self.job_id, self.placement.replicas)
        except Exception as error:
            failure = pool_start_error(error, app_name(self.job_id), self.job_id)
            if not self.lease.lost.is_set():
                streams = [s.id for s in self.spec.streams if s.id not in finished]
                record_pool_failure(self.store, self.spec, self.job_id, streams, failure)
            raise failure from error

    def _added_streams(self, known: list[str]) -> list[StreamSpec]:
        """Streams added to the job since `known` (which is updated): the stored spec has them."""
        ids = stream_ids(self.store, self.job_id)
        if ids == known:
            return []
        self.spec = parse_job_spec(self.store.snapshot(self.job_id)["spec"])
        added = [self.spec.stream(sid) for sid in ids if sid not in known]
        known[:] = ids
        return added

    def _begin_interrupt(self, console: Console, retry_at: dict[str, float], outcome: JobOutcome) -> None:
        """First SIGINT/SIGTERM: ask every stream to stop; decoders commit what they analysed and return
        `interrupted`. Streams waiting for a retry stop here."""
        name = self.signals.name
        console.print(
            f"[yellow]{name}: stopping job {escape(self.job_id)}; each stream commits what it analysed "
            f"(up to {INTERRUPT_GRACE_S:.0f} s). Send it again (Ctrl-C) to stop at once.[/yellow]"
        )
        with contextlib.suppress(Exception):
            self.store.record_error(
                self.job_id,
                None,
                "interrupted",
                f"interrupted by {name}; continue with: {self.signals.resume_hint}",
            )
        self.store.request_interrupt(self.job_id)
        for stream_id in list(retry_at):
            del retry_at[stream_id]
            outcome.streams[stream_id] = StreamOutcome(stream_id, "interrupted")
            self._record_interrupted(stream_id, f"stopped by {name} while waiting to retry")
            with contextlib.suppress(Exception):
                self.store.set_stream_status(self.job_id, stream_id, "interrupted")

    def _abandon(self, pending: dict[Any, str], outcome: JobOutcome) -> None:
        """Decoders that did not return within the grace period are killed by the caller: their committed
        output is safe, and the frames they held are analysed again on resume."""
        for stream_id in pending.values():
            outcome.streams[stream_id] = StreamOutcome(stream_id, "interrupted")
            self._record_interrupted(
                stream_id, f"did not stop within {INTERRUPT_GRACE_S:.0f} s of {self.signals.name}; killed"
            )
            with contextlib.suppress(Exception):
                self.store.set_stream_status(self.job_id, stream_id, "interrupted")
        pending.clear()

    def _record_interrupted(self, stream_id: str, why: str) -> None:
        with contextlib.suppress(Exception):
            last = self.store.committed_frames(self.job_id, stream_id)
            self.store.record_error(
                self.job_id,
                stream_id,
                "interrupted",
                f"{why}; committed through frame {last}. Continue with: {self.signals.resume_hint}",
            )

    def _collect(self, ref: Any, stream_id: str) -> StreamOutcome:
        """A stream's outcome; an actor that could not be kept alive becomes a failed stream."""
        try:
            return ray.get(ref)
        except RayError as error:
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.store.record_error(self.job_id, stream_id, type(error).__name__, message)
            return StreamOutcome(stream_id, "failed", error_kind=type(error).__name__, error=message)
