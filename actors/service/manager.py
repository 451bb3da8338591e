"""The service's job manager: runs every submitted job inside the cluster, on the service's shared SAN pool,
with no driver process per job.

Each job runs `actors.job.run_job` in a thread of this actor, with the same rules as a driver: it holds
the job's lease in Redis (one runner per job, fenced), each stream restarts from its committed frame, and
the job's outcome is recorded in the job store. Jobs submitted here are marked as the service's (`service`
on the job's hash), so a restarted manager (Ray restarts the actor; a restarted `sanstream serve` creates
it again) continues every job of the service that had not ended, exactly once, from its stored spec.

The manager keeps decoders and writers warm for every job (`actors.fleet.WarmFleet`): a job's streams
start on processes that already run, so its first frame is analysed within about a second of the submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any

import ray

from actors.fleet import WarmFleet
from actors.job import run_job
from actors.stream_config import DecoderSettings
from pipeline.jobs.ids import new_job_id
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore

log = logging.getLogger(__name__)
MANAGER_NAME = "sanstream-job-manager"
SERVICE_MARK = "service"
# Jobs of the service a restarted manager continues.
UNFINISHED = ("queued", "running", "interrupted")
# How long `submit` waits for the job to be registered (lease, take-over rules) before answering.
REGISTER_TIMEOUT_S = 60.0


class JobRejected(RuntimeError):
    """The job cannot start (an id taken by another spec, a finished job, another runner holding it)."""


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=256)
class JobManager:
    """Runs the service's jobs, each in a thread; see the module docstring.

    Args:
        redis_url: the service's job store.
        pool: handle of the service's SAN pool, shared by every job.
        settings: the stream loop's knobs for every job.
        fleet: `WarmFleet` arguments (`decoders`, `streams_per_decoder`), from the service's config.
    """

    def __init__(
        self,
        redis_url: str,
        pool: Any,
        settings: DecoderSettings | None = None,
        fleet: dict[str, int] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.store = JobStore.from_url(redis_url)
        self.pool = pool
        self.settings = settings or DecoderSettings()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.fleet = WarmFleet(redis_url, pool, **(fleet or {}))
        self.recovered = self._recover()

    def submit(self, spec_data: dict[str, Any]) -> str:
        """Start a job from its spec (validated by the API, as plain data); returns its id once the job is
        registered, or raises `JobRejected` saying why it cannot run."""
        spec = parse_job_spec(spec_data)
        job_id = spec.job_id or new_job_id()
        return self._start(dataclasses.replace(spec, job_id=job_id))

    def resume(self, job_id: str) -> str:
        """Continue an interrupted job (or one whose runner died) from its stored spec."""
        data = {k: v for k, v in self.store.snapshot(job_id)["spec"].items() if v is not None}
        data["job_id"] = job_id
        return self._start(parse_job_spec(data))

    def _start(self, spec: Any) -> str:
        job_id = str(spec.job_id)
        with self._lock:
            running = self._threads.get(job_id)
            if running is not None and running.is_alive():
                raise JobRejected(f"job {job_id} is running already")
            registered = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._drive, args=(spec, registered, failure), name=f"job-{job_id}", daemon=True
            )
            self._threads[job_id] = thread
            thread.start()
        if not registered.wait(REGISTER_TIMEOUT_S) and not failure:
            raise JobRejected(f"job {job_id} did not start within {REGISTER_TIMEOUT_S:.0f} s")
        if failure:
            raise JobRejected(str(failure[0]) or type(failure[0]).__name__)
        return job_id

    def _drive(self, spec: Any, registered: threading.Event, failure: list[BaseException]) -> None:
        def on_started(job_id: str, _url: str) -> None:
            self.store.r.hset(self.store.job_key(job_id), SERVICE_MARK, "1")
            registered.set()

        try:
            outcome = run_job(
                spec,
                settings=self.settings,
                show_progress=False,
                on_started=on_started,
                pool=self.pool,
                redis_url=self.redis_url,
                fleet=self.fleet,
            )
            log.info("job %s ended %s", outcome.job_id, outcome.status)
        except BaseException as error:  # recorded in the store by run_job once registered
            if not registered.is_set():
                failure.append(error)
            log.warning("job %s stopped: %s: %s", spec.job_id, type(error).__name__, error)
        finally:
            registered.set()

    def _recover(self) -> list[str]:
        """Continue the service's jobs that had not ended (the previous manager died or was stopped)."""
        resumed = []
        for job in self.store.list_jobs():
            if job["status"] not in UNFINISHED:
                continue
            if not self.store.r.hexists(self.store.job_key(job["job_id"]), SERVICE_MARK):
                continue  # a CLI driver's job: its own driver (or `sanstream resume`) continues it
            thread = threading.Thread(target=self._resume_quietly, args=(job["job_id"],), daemon=True)
            thread.start()
            resumed.append(job["job_id"])
        return resumed

    def _resume_quietly(self, job_id: str) -> None:
        try:
            self.resume(job_id)
        except Exception as error:  # e.g. another runner still holds it; its lease decides
            log.warning("could not continue job %s: %s", job_id, error)

    def running(self) -> list[str]:
        """Jobs running in this manager now."""
        with self._lock:
            return sorted(job for job, thread in self._threads.items() if thread.is_alive())

    def recovered_jobs(self) -> list[str]:
        return list(self.recovered)

    def fleet_actors(self) -> dict[str, list[Any]]:
        """The warm decoders and writers (handles), for diagnostics and tests."""
        return {
            "decoders": [host for host, _, _ in self.fleet.decoders],
            "writers": list(self.fleet.writers.values()),
        }

    def interrupt_all(self, timeout_s: float = 20.0) -> list[str]:
        """Stop every running job resumably (the service is shutting down): each stream commits what it
        analysed, and the next manager continues them. Returns the jobs that did not stop in time."""
        jobs = self.running()
        for job_id in jobs:
            with contextlib.suppress(Exception):
                self.store.request_interrupt(job_id)
        deadline = time.monotonic() + timeout_s
        for job_id in jobs:
            thread = self._threads.get(job_id)
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        return self.running()


def get_or_create_manager(
    redis_url: str, pool: Any, settings: DecoderSettings | None = None, fleet: dict[str, int] | None = None
) -> Any:
    """The service's manager, created on first use; detached so it outlives the API replica that made it
    (it goes when the cluster or `sanstream serve`'s local Ray goes)."""
    return JobManager.options(name=MANAGER_NAME, get_if_exists=True, lifetime="detached").remote(
        redis_url, pool, settings, fleet
    )
