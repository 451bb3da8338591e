"""One writer actor per stream: turns frame areas into committed Parquet parts and records each commit.

The writer is the only process that publishes a stream's parts, so fencing lives here. Every attempt at a
stream (first start, Ray restarting a crashed writer, a decoder starting over after a failure, a resumed
job) begins with `begin()`: it takes a new epoch from the job store, removes parts that an earlier writer
published but never recorded, drops whatever was buffered, and answers the first frame still needed. Redis
accepts later commits only under that epoch, so a stale writer can never add a duplicate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import ray
from PIL import Image

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.rows import class_area_table, frame_rows, records_table, vocabulary_rows
from pipeline.storage.writer import PartWriter, remove_unrecorded_parts

DEFAULT_COMMIT_INTERVAL_S = 10.0


class WriterRestarted(RuntimeError):
    """The writer began a new attempt (typically Ray restarted it after a crash) since the caller's
    `begin()`: rows the caller sent before may be lost, so the caller must start over from `begin()`."""


FRAME_TABLES = ("class_areas", "frames")


@dataclass(frozen=True)
class WriterStart:
    """Where a new attempt at a stream starts, as `StreamWriter.begin` answers it.

    Attributes:
        next_frame: first frame index not yet committed in every frame table.
        epoch: the attempt's writer epoch; pass it to every later call.
        last_pts: `pts_seconds` of the last committed frame (None before the first commit): a live
            stream continues its timeline after it and reports what was lost since as a gap.
    """

    next_frame: int
    epoch: int
    last_pts: float | None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamWriter:
    """Writes `class_areas`, `frames` and `vocabularies` parts (and label PNGs on request) for a stream.

    Args:
        out_dir: job output directory.
        job_id, stream_id: what the rows belong to.
        vocabulary: the stream's class names; `class_id` c is `vocabulary[c]`.
        redis_url: job store.
        commit_interval_s: longest time rows stay buffered; each commit is also a resume point.
    """

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
        self.out_dir = Path(out_dir)
        self.job_id = job_id
        self.stream_id = stream_id
        self.vocabulary = list(vocabulary)
        self.store = JobStore.from_url(redis_url)
        self.commit_interval_s = commit_interval_s
        self.max_rows = max_rows
        self.begin()

    def begin(self) -> WriterStart:
        """Start a fresh attempt (see the module docstring). Returns the first frame index still needed
        (every frame before it is committed in every frame table), the attempt's epoch, which the caller
        passes to `append` so a writer restarted in between is noticed, and the last committed pts."""
        job_id, stream_id = self.job_id, self.stream_id
        self.epoch = self.store.bump_writer_epoch(job_id, stream_id)
        record = partial(self.store.record_part, job_id, stream_id)
        self.writers: dict[str, PartWriter] = {}
        for table in (*FRAME_TABLES, "vocabularies"):
            recorded = {part["part"] for part in self.store.committed_parts(job_id, stream_id, table)}
            remove_unrecorded_parts(self.out_dir, table, stream_id, recorded)
            self.writers[table] = PartWriter(
                self.out_dir, table, stream_id, epoch=self.epoch, max_rows=self.max_rows, on_commit=record
            )
        if not self.store.committed_parts(job_id, stream_id, "vocabularies"):
            self.writers["vocabularies"].append(vocabulary_rows(job_id, stream_id, self.vocabulary))
            self.writers["vocabularies"].flush()
        # Per table, the last frame already committed: rows at or below it are dropped, so frames replayed
        # after a crash between the two tables' commits end up exactly once in each table.
        self.committed = {
            table: self.store.committed_frames(job_id, stream_id, table) for table in FRAME_TABLES
        }
        self.last_commit = time.monotonic()
        return WriterStart(
            min(self.committed.values()) + 1, self.epoch, self.store.committed_last_pts(job_id, stream_id)
        )

    def append(
        self, areas: list[FrameAreas], wall_times: list[float], epoch: int, commit: bool = False
    ) -> int:
        """Buffer analysed frames (in frame order); commits when `commit` is set (the caller's flush
        interval passed) or the writer's own interval has passed. Returns the number of frames committed
        by this call."""
        if epoch != self.epoch:
            raise WriterRestarted(f"writer of {self.stream_id} is at epoch {self.epoch}, caller at {epoch}")
        fresh = [a for a in areas if a.frame_index > self.committed["class_areas"]]
        if fresh:
            self.writers["class_areas"].append(class_area_table(fresh, self.vocabulary, self.job_id))
        timed = [
            (a, t) for a, t in zip(areas, wall_times, strict=True) if a.frame_index > self.committed["frames"]
        ]
        if timed:
            self.writers["frames"].append(
                frame_rows([a for a, _ in timed], [t for _, t in timed], self.job_id)
            )
        for item in fresh:
            if item.labels is not None:
                self._write_labels(item)
        if commit or time.monotonic() - self.last_commit >= self.commit_interval_s:
            return self.flush()
        return 0

    def add_gaps(self, rows: list[dict[str, object]], epoch: int) -> None:
        """Record outages of a live source; they are rare and small, so each batch is committed at once."""
        if epoch != self.epoch:
            raise WriterRestarted(f"writer of {self.stream_id} is at epoch {self.epoch}, caller at {epoch}")
        with PartWriter(self.out_dir, "gaps", self.stream_id, epoch=self.epoch) as writer:
            writer.append(records_table("gaps", rows))

    def _write_labels(self, item: FrameAreas) -> None:
        folder = self.out_dir / "labels" / f"stream_id={self.stream_id}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"frame-{item.frame_index:012d}.png"
        temp = folder / f".{final.name}.tmp"
        Image.fromarray(np.ascontiguousarray(item.labels)).save(temp, format="PNG")
        temp.replace(final)

    def flush(self) -> int:
        """Commit everything buffered; frames table first so a committed class-area frame always has
        its frame row. Returns frames committed to `class_areas`."""
        self.writers["frames"].flush()
        parts = self.writers["class_areas"].flush()
        self.last_commit = time.monotonic()
        return sum(part.frames for part in parts)

    def close(self, epoch: int) -> int:
        if epoch != self.epoch:
            raise WriterRestarted(f"writer of {self.stream_id} is at epoch {self.epoch}, caller at {epoch}")
        committed = self.flush()
        for writer in self.writers.values():
            writer.close()
        return committed

    def pid(self) -> int:
        return os.getpid()
