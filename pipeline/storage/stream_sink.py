"""A stream's output in one place: frame areas in, committed `class_areas`, `frames`, `vocabularies` and
`gaps` parts out, each part recorded in the job store before it is published.

Every attempt at a stream (first start, a restarted writer, a decoder starting over after a failure, a
resumed job) begins with `begin()`: it takes a new writer epoch from the job store, finishes or rolls back
what earlier attempts left in staging (`recover_staged_parts`), drops whatever was buffered and answers the
first frame still needed. The store accepts commits only under the newest epoch, so a writer of an older
attempt can never commit, and therefore never publish, anything.

No Ray here: `actors.writer.WriterHost` runs one of these per stream, for many streams, in a Ray actor.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import class_area_table, frame_rows, records_table, vocabulary_rows
from pipeline.storage.schema import STAGING_DIR, stream_dir
from pipeline.storage.writer import (
    CommitRejected,
    CommittedPart,
    CommitUncertain,
    PartWriter,
    recover_staged_parts,
)

DEFAULT_COMMIT_INTERVAL_S = 10.0
FRAME_TABLES = ("class_areas", "frames")
SINK_TABLES = (*FRAME_TABLES, "vocabularies", "gaps")
#: Where fault tests may crash or disturb a writer: the part writer's steps and the record's reply.
FAILPOINTS = ("staged", "recorded", "published", "record_reply")
FAILPOINT_ACTIONS = ("crash", "lose_reply")
LABEL_NAME_RE = re.compile(r"frame-(?P<frame>\d{12})\.png")
T = TypeVar("T")


class WriterRestarted(RuntimeError):
    """The caller's attempt is over: the writer began a new attempt since the caller's `begin()` (Ray
    restarted it after a crash), another writer took the stream over, or a commit could not be confirmed.
    Rows the caller sent may not be committed, so the caller must start over from `begin()`."""


@dataclass(frozen=True)
class WriterStart:
    """Where a new attempt at a stream starts, as `StreamSink.begin` answers it.

    Attributes:
        next_frame: first frame index not yet committed in every frame table.
        epoch: the attempt's writer epoch; pass it to every later call.
        last_pts: `pts_seconds` of the last committed frame (None before the first commit): a live
            stream continues its timeline after it and reports what was lost since as a gap.
    """

    next_frame: int
    epoch: int
    last_pts: float | None


class _FaultyRecorder(StreamRecorder):
    """A recorder that can lose the reply of a successful record, for fault tests."""

    def __init__(self, sink: StreamSink) -> None:
        super().__init__(sink.store, sink.job_id, sink.stream_id)
        self.sink = sink

    def record(self, part: CommittedPart) -> None:
        super().record(part)
        self.sink.failpoint("record_reply")


class StreamSink:
    """Writes one stream's tables (and label PNGs on request) and records each commit.

    Args:
        out_dir: job output directory.
        job_id, stream_id: what the rows belong to.
        vocabulary: the stream's class names; `class_id` c is `vocabulary[c]`.
        store: the job store (commit records, epochs).
        commit_interval_s: longest time rows stay buffered between the caller's calls.
        max_rows: rows per part at most.
    """

    def __init__(
        self,
        out_dir: str | Path,
        job_id: str,
        stream_id: str,
        vocabulary: Sequence[str],
        store: JobStore,
        commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
        max_rows: int = 250_000,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.job_id = job_id
        self.stream_id = stream_id
        self.vocabulary = list(vocabulary)
        #: the stream's vocabularies by version (1: the job spec's); a frame's version picks its names
        self.vocabularies: dict[int, list[str]] = {1: list(vocabulary)}
        self.store = store
        self.commit_interval_s = commit_interval_s
        self.max_rows = max_rows
        self.armed: dict[str, tuple[str, int]] = {}
        self.epoch = 0
        self.writers: dict[str, PartWriter] = {}
        self.areas_through = -1

    # fault injection ------------------------------------------------------------------------------
    def arm_failpoint(self, point: str, action: str, skip: int = 0) -> None:
        """Make the (`skip`+1)-th pass through `point` do `action`: "crash" ends the process at once (as
        a power cut would), "lose_reply" (at "record_reply") raises as if the record's reply was lost."""
        if point not in FAILPOINTS or action not in FAILPOINT_ACTIONS:
            raise ValueError(
                f"failpoint {point!r}/{action!r}; points {FAILPOINTS}, actions {FAILPOINT_ACTIONS}"
            )
        self.armed[point] = (action, skip)

    def failpoint(self, point: str) -> None:
        if point not in self.armed:
            return
        action, skip = self.armed[point]
        if skip > 0:
            self.armed[point] = (action, skip - 1)
            return
        del self.armed[point]
        if action == "crash":
            os._exit(137)
        raise ConnectionError(f"reply lost at {point} (fault injection)")

    # attempts -------------------------------------------------------------------------------------
    def begin(self) -> WriterStart:
        """Start a fresh attempt (see the module docstring)."""
        job_id, stream_id = self.job_id, self.stream_id
        self.epoch = self.store.bump_writer_epoch(job_id, stream_id)
        recorder = _FaultyRecorder(self)
        self.writers = {}
        # One read of the stream's commit records (the hash grows with every part), split by table.
        recorded: dict[str, set[str]] = {table: set() for table in SINK_TABLES}
        for part in self.store.committed_parts(job_id, stream_id):
            recorded.setdefault(part["table"], set()).add(part["part"])
        for table in SINK_TABLES:
            recover_staged_parts(self.out_dir, table, job_id, stream_id, recorded[table], epoch=self.epoch)
            self.writers[table] = PartWriter(
                self.out_dir,
                table,
                job_id,
                stream_id,
                epoch=self.epoch,
                max_rows=self.max_rows,
                recorder=recorder,
                failpoint=self.failpoint,
            )
        self.written_versions = self._committed_versions(recorded["vocabularies"])
        if 1 not in self.written_versions:
            self._write_vocabulary(1, self.vocabulary)
        # Per table, the last frame already committed: rows at or below it are dropped, so frames replayed
        # after a crash between the two tables' commits end up exactly once in each table.
        self.committed = {
            table: self.store.committed_frames(job_id, stream_id, table) for table in FRAME_TABLES
        }
        self.areas_through = self.committed["class_areas"]
        self._settle_labels(self.areas_through, drop_rest=True)
        self.last_commit = time.monotonic()
        return WriterStart(
            min(self.committed.values()) + 1, self.epoch, self.store.committed_last_pts(job_id, stream_id)
        )

    def _committed_versions(self, parts: set[str]) -> set[int]:
        """Vocabulary versions whose rows are committed: read from the stream's committed `vocabularies`
        parts themselves (small files), since only what a reader can see counts as written."""
        folder = stream_dir(self.out_dir, "vocabularies", self.job_id, self.stream_id)
        versions: set[int] = set()
        for name in parts:
            table = pq.read_table(folder / name)
            if "vocabulary_version" not in table.column_names:  # written before versions existed
                versions.add(1)
            else:
                versions.update(table.column("vocabulary_version").to_pylist())
        return versions

    def _write_vocabulary(self, version: int, vocabulary: Sequence[str]) -> None:
        rows = vocabulary_rows(self.job_id, self.stream_id, vocabulary, version)
        self.writers["vocabularies"].append(rows)
        self._guarded(self.writers["vocabularies"].flush)
        self.written_versions.add(version)

    def add_vocabulary(self, version: int, vocabulary: Sequence[str], epoch: int) -> None:
        """Make `version` of the stream's vocabulary known, committing its `vocabularies` rows unless an
        earlier attempt did. The caller sends no frame with that version before this returns, so every
        committed `class_areas` row's version has committed names."""
        self._check_epoch(epoch)
        if self.vocabularies.get(version, list(vocabulary)) != list(vocabulary):
            raise ValueError(
                f"stream {self.stream_id}: vocabulary version {version} is {self.vocabularies[version]}, "
                f"not {list(vocabulary)}"
            )
        self.vocabularies[version] = list(vocabulary)
        if version not in self.written_versions:
            self._write_vocabulary(version, vocabulary)

    def _check_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            raise WriterRestarted(f"writer of {self.stream_id} is at epoch {self.epoch}, caller at {epoch}")

    def _guarded(self, commit: Callable[[], T]) -> T:
        """Run a commit; a rejected or unconfirmed commit ends the caller's attempt (see WriterRestarted)."""
        if self.epoch < 0:
            raise WriterRestarted(f"writer of {self.stream_id} lost its attempt; call begin() again")
        try:
            return commit()
        except (CommitRejected, CommitUncertain) as error:
            self.epoch = -1  # every later call of this attempt fails until the next begin()
            raise WriterRestarted(str(error)) from error

    def append(
        self, areas: list[FrameAreas], wall_times: list[float], epoch: int, commit: bool = False
    ) -> int:
        """Buffer analysed frames (in frame order); commits when `commit` is set (the caller's flush
        interval passed) or the sink's own interval has passed. Returns frames committed by this call."""
        self._check_epoch(epoch)
        fresh = [a for a in areas if a.frame_index > self.committed["class_areas"]]
        if fresh:
            rows = class_area_table(fresh, self.vocabularies, self.job_id)
            self._note_committed(self._guarded(lambda: self.writers["class_areas"].append(rows)))
        timed = [
            (a, t) for a, t in zip(areas, wall_times, strict=True) if a.frame_index > self.committed["frames"]
        ]
        if timed:
            timed_rows = frame_rows([a for a, _ in timed], [t for _, t in timed], self.job_id)
            self._guarded(lambda: self.writers["frames"].append(timed_rows))
        labelled = [item for item in fresh if item.labels is not None]
        for item in labelled:
            self._write_labels(item)
        if labelled:
            self._settle_labels(self.areas_through, drop_rest=False)
        if commit or time.monotonic() - self.last_commit >= self.commit_interval_s:
            return self.flush()
        return 0

    def add_gaps(self, rows: list[dict[str, object]], epoch: int) -> None:
        """Record outages of a live source; they are rare and small, so each batch is committed at once."""
        self._check_epoch(epoch)
        gaps = self.writers["gaps"]
        self._guarded(lambda: gaps.append(records_table("gaps", rows)))
        self._guarded(gaps.flush)

    def _labels_dirs(self) -> tuple[Path, Path]:
        """(staging, published) folders of the stream's label maps."""
        staged = self.out_dir / STAGING_DIR / self.job_id / "labels" / self.stream_id
        return staged, self.out_dir / "labels" / self.job_id / self.stream_id

    def _write_labels(self, item: FrameAreas) -> None:
        """Stage a frame's label map; it is published once the frame's areas are committed, so a label
        PNG in `OUT/labels` always belongs to a committed frame (see `_settle_labels`)."""
        staged_dir, _ = self._labels_dirs()
        staged_dir.mkdir(parents=True, exist_ok=True)
        final = staged_dir / f"frame-{item.frame_index:012d}.png"
        temp = staged_dir / f".{final.name}.tmp"
        Image.fromarray(np.ascontiguousarray(item.labels)).save(temp, format="PNG")
        temp.replace(final)

    def _settle_labels(self, committed_through: int, *, drop_rest: bool) -> None:
        """Publish staged label maps of frames committed through `committed_through`; with `drop_rest`
        (a new attempt: nothing later can still be committed) remove the others."""
        staged_dir, final_dir = self._labels_dirs()
        if not staged_dir.is_dir():
            return
        for entry in os.scandir(staged_dir):
            match = LABEL_NAME_RE.fullmatch(entry.name)
            if match is None:
                if drop_rest and entry.name.endswith(".png.tmp"):
                    Path(entry.path).unlink(missing_ok=True)
                continue
            if int(match["frame"]) <= committed_through:
                final_dir.mkdir(parents=True, exist_ok=True)
                os.replace(entry.path, final_dir / entry.name)
            elif drop_rest:
                Path(entry.path).unlink(missing_ok=True)

    def flush(self) -> int:
        """Commit everything buffered; frames table first so a committed class-area frame always has
        its frame row. Returns frames committed to `class_areas`."""
        self._guarded(self.writers["frames"].flush)
        parts = self._guarded(self.writers["class_areas"].flush)
        self.last_commit = time.monotonic()
        self._note_committed(parts)
        self._settle_labels(self.areas_through, drop_rest=False)
        return sum(part.frames for part in parts)

    def _note_committed(self, parts: list[CommittedPart]) -> None:
        """Follow the last committed `class_areas` frame of this attempt (label maps up to it are public)."""
        if parts:
            self.areas_through = max(self.areas_through, parts[-1].last_frame)

    def close(self, epoch: int) -> int:
        self._check_epoch(epoch)
        committed = self.flush()
        for writer in self.writers.values():
            self._guarded(writer.close)
        return committed
