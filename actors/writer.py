"""A writer actor per node: a Ray home for the `StreamSink`s of every stream decoded there, of any job.

A job run by a driver starts its own writer per node; the service keeps one per node warm for every job,
so a job's first frame does not wait for a process to start. A sink is keyed by job and stream.

A sink is the only thing that commits its stream's parts, so fencing lives there (see
`pipeline.storage.stream_sink`): each stream keeps its own epoch, commit records and staging, and sharing
the process changes none of that. Calls for different streams run in parallel threads (a slow fsync of
one stream does not hold up the others' commits); calls for one stream are serialised by its own lock.

The actor restarts after a crash (`max_restarts=-1`) with no sinks: a caller's next call for its stream
raises `WriterRestarted`, and the caller starts a new attempt from `begin()`, which opens the sink again
with a newer epoch. Calls are never retried by Ray (`max_task_retries=0`): a part must be committed by the
attempt that staged it or not at all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import ray

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.stream_sink import (
    DEFAULT_COMMIT_INTERVAL_S,
    FRAME_TABLES,
    SinkOptions,
    StreamSink,
    WriterRestarted,
    WriterStart,
)

__all__ = ["DEFAULT_COMMIT_INTERVAL_S", "FRAME_TABLES", "WriterHost", "WriterRestarted", "WriterStart"]

T = TypeVar("T")
# Threads serving calls: streams commit in parallel up to this many at once.
WRITER_CONCURRENCY = 16
#: A sink's key: (job id, stream id).
SinkKey = tuple[str, str]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=WRITER_CONCURRENCY)
class WriterHost:
    """Writes `class_areas`, `frames`, `vocabularies` and `gaps` parts (and label PNGs on request) for every
    stream decoded on this writer's node, of one job or many; see `StreamSink`. Every call names the job
    and the stream; `begin` also says where the job writes.

    Args:
        redis_url: the job store of every job this writer serves (a driver's or the service's).
    """

    def __init__(self, redis_url: str, max_rows: int = 250_000) -> None:
        self.store = JobStore.from_url(redis_url)
        self.max_rows = max_rows
        self._sinks: dict[SinkKey, StreamSink] = {}
        self._locks: dict[SinkKey, threading.Lock] = {}
        self._registry = threading.Lock()

    def _lock(self, key: SinkKey) -> threading.Lock:
        with self._registry:
            return self._locks.setdefault(key, threading.Lock())

    def _with_sink(self, job_id: str, stream_id: str, action: Callable[[StreamSink], T]) -> T:
        """Run `action` on the stream's sink under its lock. A stream this process has no sink for began
        before a restart of this actor: its attempt is over."""
        with self._lock((job_id, stream_id)):
            sink = self._sinks.get((job_id, stream_id))
            if sink is None:
                raise WriterRestarted(
                    f"job {job_id} stream {stream_id}: the writer restarted since this attempt began"
                )
            return action(sink)

    def begin(
        self,
        job_id: str,
        stream_id: str,
        vocabulary: list[str],
        out_dir: str,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        options: SinkOptions | None = None,
    ) -> WriterStart:
        """Start a new attempt at the stream (opening its sink on first use): a newer epoch fences every
        earlier attempt off; the answer says where the attempt resumes. `options`: the stream's regions,
        alerts and webhook."""
        key = (job_id, stream_id)
        with self._lock(key):
            sink = self._sinks.get(key)
            if sink is None:
                sink = StreamSink(
                    out_dir,
                    job_id,
                    stream_id,
                    vocabulary,
                    self.store,
                    commit_interval_s,
                    self.max_rows,
                    options,
                )
                self._sinks[key] = sink
            return sink.begin()

    def append(
        self,
        job_id: str,
        stream_id: str,
        areas: list[FrameAreas],
        wall_times: list[float],
        epoch: int,
        commit: bool = False,
    ) -> int:
        return self._with_sink(job_id, stream_id, lambda sink: sink.append(areas, wall_times, epoch, commit))

    def add_vocabulary(
        self, job_id: str, stream_id: str, version: int, vocabulary: list[str], epoch: int
    ) -> None:
        """Commit a new vocabulary version's names before any frame analysed with it (see StreamSink)."""
        self._with_sink(job_id, stream_id, lambda sink: sink.add_vocabulary(version, vocabulary, epoch))

    def add_gaps(self, job_id: str, stream_id: str, rows: list[dict[str, object]], epoch: int) -> None:
        self._with_sink(job_id, stream_id, lambda sink: sink.add_gaps(rows, epoch))

    def flush(self, job_id: str, stream_id: str) -> int:
        return self._with_sink(job_id, stream_id, lambda sink: sink.flush())

    def close(self, job_id: str, stream_id: str, epoch: int, ended: bool = False) -> int:
        """Commit what the stream holds and forget its sink (a stream ends once; a retry begins again).
        `ended`: the stream is over for good, not interrupted (see `StreamSink.close`)."""

        def close_and_forget(sink: StreamSink) -> int:
            committed = sink.close(epoch, ended)
            self._forget((job_id, stream_id))
            return committed

        return self._with_sink(job_id, stream_id, close_and_forget)

    def _forget(self, key: SinkKey) -> None:
        with self._registry:
            sink = self._sinks.pop(key, None)
            self._locks.pop(key, None)
        if sink is not None:
            sink.stop_webhook()  # what it still held is committed and re-sent by the stream's next attempt

    def forget_job(self, job_id: str) -> list[str]:
        """Drop the sinks a job left open (streams that failed or were stopped without closing): a warm
        writer lives for the whole service, so it must not keep ended jobs. What they staged and did not
        commit is rolled back by the next attempt's `begin` (see `StreamSink`); returns the streams
        dropped."""
        with self._registry:
            keys = [key for key in self._sinks if key[0] == job_id]
        for key in keys:
            with self._lock(key):
                self._forget(key)
        return sorted(stream_id for _, stream_id in keys)

    def streams(self, job_id: str | None = None) -> list[str]:
        """Streams with an open sink here, as `job/stream` (diagnostics and tests); only `job_id`'s if
        given, as bare stream ids."""
        with self._registry:
            if job_id is not None:
                return sorted(stream for job, stream in self._sinks if job == job_id)
            return sorted(f"{job}/{stream}" for job, stream in self._sinks)

    def arm_failpoint(self, job_id: str, stream_id: str, point: str, action: str, skip: int = 0) -> None:
        """Fault injection for tests: see `StreamSink.arm_failpoint`. A restarted actor starts unarmed."""
        self._with_sink(job_id, stream_id, lambda sink: sink.arm_failpoint(point, action, skip))

    def armed_failpoints(self, job_id: str, stream_id: str) -> list[str]:
        """Failpoints armed and not yet hit (tests wait for a fault to have happened)."""
        with self._lock((job_id, stream_id)):
            sink = self._sinks.get((job_id, stream_id))
            return sorted(sink.armed) if sink is not None else []

    def pid(self) -> int:
        return os.getpid()
