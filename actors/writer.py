"""One writer actor per job per node: a Ray home for the `StreamSink`s of every stream decoded there.

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
    StreamSink,
    WriterRestarted,
    WriterStart,
)

__all__ = ["DEFAULT_COMMIT_INTERVAL_S", "FRAME_TABLES", "JobWriter", "WriterRestarted", "WriterStart"]

T = TypeVar("T")
# Threads serving calls: streams commit in parallel up to this many at once.
WRITER_CONCURRENCY = 16


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=WRITER_CONCURRENCY)
class JobWriter:
    """Writes `class_areas`, `frames`, `vocabularies` and `gaps` parts (and label PNGs on request) for every
    stream of one job that is decoded on this writer's node; see `StreamSink` for the arguments."""

    def __init__(
        self,
        out_dir: str,
        job_id: str,
        redis_url: str,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        max_rows: int = 250_000,
    ) -> None:
        self.out_dir = out_dir
        self.job_id = job_id
        self.store = JobStore.from_url(redis_url)
        self.commit_interval_s = commit_interval_s
        self.max_rows = max_rows
        self._sinks: dict[str, StreamSink] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._registry = threading.Lock()

    def _lock(self, stream_id: str) -> threading.Lock:
        with self._registry:
            return self._locks.setdefault(stream_id, threading.Lock())

    def _with_sink(self, stream_id: str, action: Callable[[StreamSink], T]) -> T:
        """Run `action` on the stream's sink under its lock. A stream this process has no sink for began
        before a restart of this actor: its attempt is over."""
        with self._lock(stream_id):
            sink = self._sinks.get(stream_id)
            if sink is None:
                raise WriterRestarted(
                    f"job {self.job_id} stream {stream_id}: the writer restarted since this attempt began"
                )
            return action(sink)

    def begin(self, stream_id: str, vocabulary: list[str]) -> WriterStart:
        """Start a new attempt at `stream_id` (opening its sink on first use): a newer epoch fences every
        earlier attempt off; the answer says where the attempt resumes."""
        with self._lock(stream_id):
            sink = self._sinks.get(stream_id)
            if sink is None:
                sink = StreamSink(
                    self.out_dir,
                    self.job_id,
                    stream_id,
                    vocabulary,
                    self.store,
                    self.commit_interval_s,
                    self.max_rows,
                )
                self._sinks[stream_id] = sink
            return sink.begin()

    def append(
        self,
        stream_id: str,
        areas: list[FrameAreas],
        wall_times: list[float],
        epoch: int,
        commit: bool = False,
    ) -> int:
        return self._with_sink(stream_id, lambda sink: sink.append(areas, wall_times, epoch, commit))

    def add_vocabulary(self, stream_id: str, version: int, vocabulary: list[str], epoch: int) -> None:
        """Commit a new vocabulary version's names before any frame analysed with it (see StreamSink)."""
        self._with_sink(stream_id, lambda sink: sink.add_vocabulary(version, vocabulary, epoch))

    def add_gaps(self, stream_id: str, rows: list[dict[str, object]], epoch: int) -> None:
        self._with_sink(stream_id, lambda sink: sink.add_gaps(rows, epoch))

    def flush(self, stream_id: str) -> int:
        return self._with_sink(stream_id, lambda sink: sink.flush())

    def close(self, stream_id: str, epoch: int) -> int:
        """Commit what the stream holds and forget its sink (a stream ends once; a retry begins again)."""

        def close_and_forget(sink: StreamSink) -> int:
            committed = sink.close(epoch)
            self._sinks.pop(stream_id, None)
            return committed

        return self._with_sink(stream_id, close_and_forget)

    def streams(self) -> list[str]:
        """Streams with an open sink here (diagnostics and tests)."""
        with self._registry:
            return sorted(self._sinks)

    def arm_failpoint(self, stream_id: str, point: str, action: str, skip: int = 0) -> None:
        """Fault injection for tests: see `StreamSink.arm_failpoint`. A restarted actor starts unarmed."""
        self._with_sink(stream_id, lambda sink: sink.arm_failpoint(point, action, skip))

    def armed_failpoints(self, stream_id: str) -> list[str]:
        """Failpoints armed and not yet hit (tests wait for a fault to have happened)."""
        with self._lock(stream_id):
            sink = self._sinks.get(stream_id)
            return sorted(sink.armed) if sink is not None else []

    def pid(self) -> int:
        return os.getpid()
