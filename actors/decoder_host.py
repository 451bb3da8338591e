"""A decoder actor that carries many streams, of one job or of many: a `StreamRunner` per stream, each a
coroutine on the actor's event loop with its own decoding thread.

A job run by a driver starts its own decoders; the service keeps a few warm for every job (see
`actors.fleet`), so a job's first frame does not wait for a process to start, import PyAV and find the
pool. Nothing job-specific is fixed when the actor starts: each `run()` brings its job's `JobContext`.

One process per stream cost about 450 MB (a Python interpreter with Ray and PyAV, twice with the writer);
a stream's own share here is its decoding thread, FFmpeg's decoder state and a few frames of buffers. A
stream whose source hangs, fails or reconnects only occupies its own thread: the loop never waits on a
source (see `actors.decoder`), and its failure ends only its own `run()`.

If the actor dies, Ray restarts it (`max_restarts=-1`) and resubmits every stream's pending `run()`
(`max_task_retries=-1`); each starts a new attempt from its own committed frame.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from actors.decoder import StreamRunner
from actors.stream_config import JobContext, StreamOutcome
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_spec import StreamSpec

# Streams an actor can run at once: its event loop serves one `run()` call per stream.
MAX_STREAMS_PER_ACTOR = 1000


def decoder_actor_name(job_id: str, index: int) -> str:
    """Named actors let operators (and fault tests) find a job's decoders; `status` shows which carries
    which stream."""
    return f"{job_id}:decoder:{index}"


def writer_actor_name(job_id: str, node_id: str) -> str:
    return f"{job_id}:writer:{node_id[:12]}"


#: Names of the service's warm actors, shared by every job: `status` shows them like a job's own.
SERVICE_PREFIX = "sanstream-service"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=MAX_STREAMS_PER_ACTOR)
class DecoderHost:
    """Runs the streams it is given, each until its end, cancellation or failure.

    Args:
        redis_url: the job store of every job it serves (a driver's or the service's).
        pool: handle of the SAN replica pool.
    """

    def __init__(self, redis_url: str, pool: Any) -> None:
        self.store = JobStore.from_url(redis_url)
        self.pool = pool
        # Kept across a stream's attempts (the job retries a failed stream on the same actor): what the
        # runner remembers about its last committed frame makes a live stream's gap exact. Dropped when
        # the job ends (`forget_job`), so a warm decoder's memory does not grow with the jobs it served.
        self._runners: dict[tuple[str, str], StreamRunner] = {}
        self._running: set[tuple[str, str]] = set()

    async def run(self, job: JobContext, stream: StreamSpec, writer: Any) -> StreamOutcome:
        """Run `stream` of `job`, writing through `writer` (a writer on this node), to its end."""
        key = (job.job_id, stream.id)
        runner = self._runners.get(key)
        if runner is None or runner.stream != stream or runner.writer != writer or runner.job != job:
            runner = StreamRunner(job, stream, self.store, self.pool, writer)
            self._runners[key] = runner
        self._running.add(key)
        try:
            return await runner.run()
        finally:
            self._running.discard(key)

    def forget_job(self, job_id: str) -> int:
        """Drop what the decoder remembers of a job that ended; returns how many streams it forgot."""
        keys = [key for key in self._runners if key[0] == job_id]  # a run still ending keeps its own
        for key in keys:
            del self._runners[key]
        return len(keys)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def streams(self, job_id: str | None = None) -> list[str]:
        """Streams running here now, as `job/stream`; only `job_id`'s if given, as bare stream ids
        (diagnostics and tests)."""
        if job_id is not None:
            return sorted(stream for job, stream in self._running if job == job_id)
        return sorted(f"{job}/{stream}" for job, stream in self._running)

    def remembered(self) -> int:
        """Streams whose runner is kept (running or retryable): flat over a long-lived service."""
        return len(self._runners)

    def pid(self) -> int:
        return os.getpid()
