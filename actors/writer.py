"""One writer actor per stream: a Ray home for `pipeline.storage.stream_sink.StreamSink`.

The sink is the only thing that commits a stream's parts, so fencing lives there (see its module
docstring). The actor restarts after a crash (`max_restarts=-1`); its callers notice through the epoch
they pass and start a new attempt from `begin()`.
"""

from __future__ import annotations

import os

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

__all__ = ["DEFAULT_COMMIT_INTERVAL_S", "FRAME_TABLES", "StreamWriter", "WriterRestarted", "WriterStart"]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamWriter:
    """Writes `class_areas`, `frames`, `vocabularies` and `gaps` parts (and label PNGs on request) for a
    stream; see `StreamSink` for the arguments."""

    def __init__(
        self,
        out_dir: str,
        job_id: str,
        stream_id: str,
        vocabulary: list[str],
        redis_url: str,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        max_rows: int = 250_000,
    ) -> None:
        store = JobStore.from_url(redis_url)
        self.sink = StreamSink(out_dir, job_id, stream_id, vocabulary, store, commit_interval_s, max_rows)
        self.sink.begin()

    def begin(self) -> WriterStart:
        return self.sink.begin()

    def append(
        self, areas: list[FrameAreas], wall_times: list[float], epoch: int, commit: bool = False
    ) -> int:
        return self.sink.append(areas, wall_times, epoch, commit)

    def add_gaps(self, rows: list[dict[str, object]], epoch: int) -> None:
        self.sink.add_gaps(rows, epoch)

    def flush(self) -> int:
        return self.sink.flush()

    def close(self, epoch: int) -> int:
        return self.sink.close(epoch)

    def arm_failpoint(self, point: str, action: str, skip: int = 0) -> None:
        """Fault injection for tests: see `StreamSink.arm_failpoint`. A restarted actor starts unarmed."""
        self.sink.arm_failpoint(point, action, skip)

    def armed_failpoints(self) -> list[str]:
        """Failpoints armed and not yet hit (tests wait for a fault to have happened)."""
        return sorted(self.sink.armed)

    def pid(self) -> int:
        return os.getpid()
