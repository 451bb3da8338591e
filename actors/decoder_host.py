"""A decoder actor that carries many streams of one job: a `StreamRunner` per stream, each a coroutine on
the actor's event loop with its own decoding thread.

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
from actors.stream_config import DecoderSettings, StreamOutcome
from pipeline.jobs.spec import StreamSpec
from pipeline.jobs.state import JobStore

# Streams an actor can run at once: its event loop serves one `run()` call per stream.
MAX_STREAMS_PER_ACTOR = 1000


def decoder_actor_name(job_id: str, index: int) -> str:
    """Named actors let operators (and fault tests) find a job's decoders; `status` shows which carries
    which stream."""
    return f"{job_id}:decoder:{index}"


def writer_actor_name(job_id: str, node_id: str) -> str:
    return f"{job_id}:writer:{node_id[:12]}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=MAX_STREAMS_PER_ACTOR)
class DecoderHost:
    """Runs the streams it is given, each until its end, cancellation or failure.

    Args:
        pool: handle of the SAN replica pool.
        settings: the per-stream loop's knobs (the same for every stream of the job).
    """

    def __init__(
        self, job_id: str, redis_url: str, pool: Any, settings: DecoderSettings, return_labels: bool = False
    ) -> None:
        self.job_id = job_id
        self.store = JobStore.from_url(redis_url)
        self.pool = pool
        self.settings = settings
        self.return_labels = return_labels
        # Kept across a stream's attempts (the job retries a failed stream on the same actor): what the
        # runner remembers about its last committed frame makes a live stream's gap exact.
        self._runners: dict[str, StreamRunner] = {}
        self._running: set[str] = set()

    async def run(self, stream: StreamSpec, writer: Any) -> StreamOutcome:
        """Run `stream`, writing through `writer` (the job's writer on this node), to its end."""
        runner = self._runners.get(stream.id)
        if runner is None or runner.stream != stream or runner.writer != writer:
            runner = StreamRunner(
                self.job_id, stream, self.store, self.pool, writer, self.settings, self.return_labels
            )
            self._runners[stream.id] = runner
        self._running.add(stream.id)
        try:
            return await runner.run()
        finally:
            self._running.discard(stream.id)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def streams(self) -> list[str]:
        """Streams running here now (diagnostics and tests)."""
        return sorted(self._running)

    def pid(self) -> int:
        return os.getpid()
