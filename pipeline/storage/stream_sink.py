"""A stream's output in one place: frame areas in, committed `class_areas`, `frames`, `vocabularies` and
`gaps` parts out (and `region_areas` and `events` when the stream has regions and alerts), each part
recorded in the job store before it is published.

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

from pipeline.alerts import AlertRule
from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import (
    class_area_table,
    frame_rows,
    records_table,
    region_area_table,
    vocabulary_rows,
)
from pipeline.storage.schema import STAGING_DIR, stream_dir
from pipeline.storage.stream_alerts import EventRecord, StreamAlerts
from pipeline.storage.writer import (
    CommitRejected,
    CommittedPart,
    CommitUncertain,
    PartWriter,
    recover_staged_parts,
)
from pipeline.webhook import WebhookSender, WebhookSpec

DEFAULT_COMMIT_INTERVAL_S = 10.0
FRAME_TABLES = ("class_areas", "frames")
SINK_TABLES = (*FRAME_TABLES, "vocabularies", "gaps")
#: How long a stream's end waits for its webhook to take the last records (a dead receiver must not hold
#: the job up; what it did not take is in the `events` table and reported in `errors`).
WEBHOOK_DRAIN_S = 5.0
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


@dataclass(frozen=True)
class SinkOptions:
    """What a stream's writer makes beyond class areas and frames.

    Attributes:
        region_names: the stream's regions, in the spec's order: a `region_areas` table.
        alerts: the stream's alert rules: an `events` table (see `pipeline.storage.stream_alerts`).
        webhook: where alert records are also POSTed (the job spec's `webhook`).
    """

    region_names: tuple[str, ...] = ()
    alerts: tuple[AlertRule, ...] = ()
    webhook: WebhookSpec | None = None


class _FaultyRecorder(StreamRecorder):
    """The sink's recorder: stores the stream's alert state with its `events` and `frames` parts, and can
    lose the reply of a successful record, for fault tests."""

    def __init__(self, sink: StreamSink) -> None:
        super().__init__(sink.store, sink.job_id, sink.stream_id)
        self.sink = sink

    def _record(self, part: CommittedPart) -> None:
        state = (
            self.sink.alerts.to_json() if self.sink.alerts and part.table in ("events", "frames") else None
        )
        self.store.record_part(self.job_id, self.stream_id, part, alert_state=state)

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
        options: regions, alerts and webhook of the stream.
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
        options: SinkOptions | None = None,
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
        self.options = options = options or SinkOptions()
        self.frame_tables = FRAME_TABLES + (("region_areas",) if options.region_names else ())
        self.tables = (*self.frame_tables, "vocabularies", "gaps") + (("events",) if options.alerts else ())
        self.alerts = StreamAlerts(options.alerts)
        self.webhook: WebhookSender | None = None
        self._submitted_through = -1  # the last alert record handed to the webhook

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
        recorded: dict[str, set[str]] = {table: set() for table in self.tables}
        for part in self.store.committed_parts(job_id, stream_id):
            recorded.setdefault(part["table"], set()).add(part["part"])
        events_through = self.store.committed_frames(job_id, stream_id, "events")  # a sequence number
        for table in self.tables:
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
                first_ordinal=events_through + 1 if table == "events" else 0,
            )
        if self.alerts:
            self.alerts.restore(self.store.committed_alert_state(job_id, stream_id), events_through)
            self._resend_undelivered()
        self.written_versions = self._committed_versions(recorded["vocabularies"])
        if 1 not in self.written_versions:
            self._write_vocabulary(1, self.vocabulary)
        # Per table, the last frame already committed: rows at or below it are dropped, so frames replayed
        # after a crash between the two tables' commits end up exactly once in each table.
        self.committed = {
            table: self.store.committed_frames(job_id, stream_id, table) for table in self.frame_tables
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
        if self.alerts:
            # Before any other table takes these frames' rows: see pipeline.storage.stream_alerts.
            self._commit_events(self.alerts.observe(areas, wall_times, self.vocabularies))
        fresh = [a for a in areas if a.frame_index > self.committed["class_areas"]]
        if fresh:
            rows = class_area_table(fresh, self.vocabularies, self.job_id)
            self._note_committed(self._guarded(lambda: self.writers["class_areas"].append(rows)))
        if "region_areas" in self.writers:
            mapped = [a for a in areas if a.frame_index > self.committed["region_areas"]]
            region_rows = region_area_table(mapped, self.vocabularies, self.job_id)
            if region_rows.num_rows:
                self._guarded(lambda: self.writers["region_areas"].append(region_rows))
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

    def _commit_events(self, records: list[EventRecord]) -> None:
        """Commit alert records at once (with the alert state, by the recorder), then hand them to the
        webhook: a receiver only ever hears of committed records."""
        if not records:
            return
        rows = [record.row(self.job_id, self.stream_id) for record in records]
        events = self.writers["events"]
        self._guarded(lambda: events.append(records_table("events", rows)))
        self._guarded(events.flush)
        self._submit(rows)

    def _submit(self, rows: list[dict[str, object]]) -> None:
        webhook = self.options.webhook
        if webhook is None:
            return
        if self.webhook is None:
            job_id, stream_id, store = self.job_id, self.stream_id, self.store
            self.webhook = WebhookSender(
                webhook,
                on_failure=lambda message: store.record_error(job_id, stream_id, "webhook", message),
                on_delivered=lambda sequence: store.set_webhook_delivered(job_id, stream_id, sequence),
            )
        for row in rows:
            sequence = int(row["sequence"])  # type: ignore[call-overload]
            if sequence > self._submitted_through:
                key = f"{self.job_id}/{self.stream_id}/{sequence}"
                self.webhook.submit(sequence, row, key)
                self._submitted_through = sequence

    def _resend_undelivered(self) -> None:
        """Hand the webhook the committed records it has not settled: an earlier attempt (or process)
        may have committed them and stopped before delivering (receivers dedupe by Idempotency-Key)."""
        if self.options.webhook is None:
            return
        after = max(self.store.webhook_delivered(self.job_id, self.stream_id), self._submitted_through)
        folder = stream_dir(self.out_dir, "events", self.job_id, self.stream_id)
        if not folder.is_dir():
            return
        rows = [
            row
            for entry in sorted(os.scandir(folder), key=lambda e: e.name)
            if entry.name.endswith(".parquet")
            for row in pq.read_table(entry.path).to_pylist()
            if row["sequence"] > after
        ]
        self._submit(sorted(rows, key=lambda row: row["sequence"]))

    def flush(self) -> int:
        """Commit everything buffered; frames table first so a committed class-area frame always has
        its frame row. Returns frames committed to `class_areas`."""
        self._guarded(self.writers["frames"].flush)
        if "region_areas" in self.writers:
            self._guarded(self.writers["region_areas"].flush)
        parts = self._guarded(self.writers["class_areas"].flush)
        self.last_commit = time.monotonic()
        self._note_committed(parts)
        self._settle_labels(self.areas_through, drop_rest=False)
        return sum(part.frames for part in parts)

    def _note_committed(self, parts: list[CommittedPart]) -> None:
        """Follow the last committed `class_areas` frame of this attempt (label maps up to it are public)."""
        if parts:
            self.areas_through = max(self.areas_through, parts[-1].last_frame)

    def close(self, epoch: int, ended: bool = False) -> int:
        """Commit what is buffered and close the tables. `ended`: the stream is over for good (its source
        ended, or it was removed or cancelled), so events still open are recorded as "ended"; an
        interrupted stream, which a resume continues, leaves them open."""
        self._check_epoch(epoch)
        if ended and self.alerts:
            self._commit_events(self.alerts.finish())
        committed = self.flush()
        for writer in self.writers.values():
            self._guarded(writer.close)
        self.stop_webhook(WEBHOOK_DRAIN_S)
        return committed

    def stop_webhook(self, drain_s: float = 0.0) -> None:
        """Give the webhook up to `drain_s` to deliver what it holds, then stop it (it reports the rest)."""
        if self.webhook is not None:
            self.webhook.close(drain_s)
            self.webhook = None
