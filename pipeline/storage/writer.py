"""Crash-safe Parquet parts: record first, then publish, so every visible part is a committed part.

Readers (DuckDB, Polars, pandas, a plain glob) may scan the output at any moment, also right after a
crash, and they know nothing of the job store. So the only files in a table directory are parts the job
store has recorded. Each part goes through three steps:

1. **stage**: the bytes go to `OUT/_staging/<job>/<table>/<stream>/<part name>` (outside every table
   directory, same file system), the file and its directory are fsync'd;
2. **record**: the job store records the part under the writer's epoch (one atomic, fenced script): from
   this moment the part is committed, whatever happens next;
3. **publish**: `os.replace` moves it to `OUT/<table>/<job>/<stream>/<part name>`; the directory is fsync'd.

Crash points: before (2) the part is an uncommitted staged file, invisible, removed by the next attempt
(`recover_staged_parts`); between (2) and (3) it is committed but unpublished: the next attempt publishes
it (the staged file was made durable before the record). A writer whose epoch was superseded is rejected
at (2) and deletes its own staged file, so it can never publish. A record whose reply was lost is resolved
by reading the record back before anything is deleted; when even that fails, the staged file stays for
the next attempt to decide by the record.

Part names are zero-padded so a listing sorts by frame; `<epoch>` (the fencing epoch from the job store)
and `<seq>` make names unique per writer generation, so a restarted writer never overwrites a part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage.schema import TableSpec, staging_dir, stream_dir, table_spec

DEFAULT_MAX_ROWS = 250_000
_WRITE_CHUNK = 8 << 20
PART_NAME_RE = re.compile(r"part-(?P<first>\d+)-(?P<last>\d+)-(?P<epoch>\d+)-(?P<seq>\d+)\.parquet")


class OutputDirError(OSError):
    """The output directory is missing, not a directory, or not writable; raised before any row is taken."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class PartWriteError(OSError):
    """Writing a part failed (disk full, I/O error): nothing was committed and the rows stay buffered."""

    def __init__(self, errno_: int | None, message: str, path: Path) -> None:
        if errno_ is None:
            super().__init__(message)
        else:
            super().__init__(errno_, message)
        self.path = path


class CommitRejected(RuntimeError):
    """The job store refused to record a part (a newer writer epoch took over): this writer must stop."""


class CommitUncertain(RuntimeError):
    """Recording a part failed and reading the record back failed too: whether the part is committed is
    unknown, so its staged file is kept and the writer stops; the next attempt decides by the record."""


class Recorder(Protocol):
    """The job store as a part writer sees it."""

    def record(self, part: CommittedPart) -> None:
        """Record `part` as committed (idempotent); raise `CommitRejected` when fenced off."""

    def is_recorded(self, part: CommittedPart) -> bool:
        """Whether `part` is recorded; used after `record` failed without an answer."""


@dataclass(frozen=True, slots=True)
class CommittedPart:
    """A committed part, as the job store records it.

    Attributes:
        path: where the part is published.
        first_frame, last_frame: frame-index span for frame-keyed tables (`class_areas`, `frames`);
            for the others, the span of row ordinals this writer generation has written.
        frames: distinct frame indices in the part (0 for tables without frames).
        epoch: the writer epoch the part was written under, for fencing.
        last_pts: `pts_seconds` of the part's last frame (None for tables without frames).
    """

    path: Path
    table: str
    job_id: str
    stream_id: str
    first_frame: int
    last_frame: int
    rows: int
    frames: int
    epoch: int
    last_pts: float | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Recovery:
    """What `recover_staged_parts` did: committed parts it published, uncommitted staged files it removed."""

    published: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


def part_name(first: int, last: int, epoch: int, seq: int) -> str:
    """File name of a part; fixed-width numbers make lexical order frame order."""
    return f"part-{first:012d}-{last:012d}-{epoch:06d}-{seq:06d}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.exists():
        raise OutputDirError(
            out_dir,
            f"output directory {out_dir} does not exist: create it (mkdir -p {out_dir}) or point "
            "`output:` in the job spec at an existing directory",
        )
    if not out_dir.is_dir():
        raise OutputDirError(
            out_dir, f"output path {out_dir} is not a directory: point `output:` at a directory"
        )
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputDirError(
            out_dir,
            f"output directory {out_dir} is not writable by this user: fix its permissions or choose "
            "another `output:` directory",
        )


def _make_dir(out_dir: Path, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(
            out_dir,
            f"cannot create {path} under output directory {out_dir}: {exc.strerror or exc}; "
            "fix the directory's permissions or choose another `output:` directory",
        ) from exc


def publish_staged(staged: Path, final: Path) -> None:
    """Move a committed staged part into its table directory, durably."""
    os.replace(staged, final)
    _fsync_dir(final.parent)


class PartWriter:
    """Buffers one stream's rows of one table and commits them as sorted parts of at most `max_rows`.

    A frame's rows are kept in one part whenever the frame fits, so a part never holds half a frame
    unless a single frame is larger than `max_rows`.

    With a `recorder`, a part is published only after the recorder accepted it (see the module
    docstring); without one (tools and tests that have no job store) a staged part is published at once.
    After a failure past the record (the part may be committed) the writer refuses further rows: its
    buffer can no longer be trusted, and the caller starts a new attempt from the committed position.

    `failpoint`, when given, is called with "staged", "recorded" and "published" at those steps, so fault
    tests can crash a real writer exactly there. `first_ordinal` numbers the rows of a table without
    frames (part names span row ordinals), e.g. to name an export by the records it holds.
    """

    def __init__(
        self,
        out_dir: str | Path,
        table: str,
        job_id: str,
        stream_id: str,
        *,
        epoch: int = 0,
        max_rows: int = DEFAULT_MAX_ROWS,
        recorder: Recorder | None = None,
        compression: str = "zstd",
        failpoint: Callable[[str], None] | None = None,
        first_ordinal: int = 0,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.out_dir = Path(out_dir)
        self.spec: TableSpec = table_spec(table)
        self.job_id = job_id
        self.stream_id = stream_id
        self.epoch = epoch
        self.max_rows = max_rows
        self.recorder = recorder
        self.compression = compression
        self.failpoint = failpoint
        _check_out_dir(self.out_dir)
        self.dir = stream_dir(self.out_dir, table, job_id, stream_id)
        self.staging = staging_dir(self.out_dir, table, job_id, stream_id)
        _make_dir(self.out_dir, self.dir)
        _make_dir(self.out_dir, self.staging)
        self._seq = self._next_free_seq()
        self._ordinal = first_ordinal
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._closed = False
        self._broken: str | None = None

    def _next_free_seq(self) -> int:
        """First sequence number unused by this epoch, so reopening a writer never reuses a name."""
        seqs = [
            int(m["seq"])
            for folder in (self.dir, self.staging)
            for entry in os.scandir(folder)
            if (m := PART_NAME_RE.fullmatch(entry.name)) and int(m["epoch"]) == self.epoch
        ]
        return max(seqs, default=-1) + 1

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    def append(self, rows: pa.Table) -> list[CommittedPart]:
        """Buffer `rows`; commit full parts once `max_rows` are buffered. Returns what was committed."""
        self._check_usable()
        rows = self._conform(rows)
        if rows.num_rows:
            self._buffer.append(rows)
            self._buffered += rows.num_rows
        committed: list[CommittedPart] = []
        if self._buffered >= self.max_rows:
            committed = self._write(full_parts_only=True)
        return committed

    def flush(self) -> list[CommittedPart]:
        """Commit everything buffered (e.g. on a timer for live streams), in parts of at most `max_rows`.

        If a part fails, the parts before it in the same call stay committed and were already recorded;
        that is why recording belongs in the recorder rather than in the returned list.
        """
        if self._closed:
            return []
        self._check_usable()
        return self._write(full_parts_only=False)

    def close(self) -> list[CommittedPart]:
        """Flush and refuse further rows. Safe to call twice."""
        if self._closed:
            return []
        committed = self.flush()
        self._closed = True
        return committed

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On an error the buffer is left unwritten: the job will replay from the last committed frame.
        if exc_type is None:
            self.close()
        else:
            self._closed = True

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.spec.name} writer of stream {self.stream_id!r} is closed")
        if self._broken is not None:
            raise RuntimeError(
                f"{self.spec.name} writer of stream {self.stream_id!r} stopped after {self._broken}; "
                "start a new attempt from the committed position"
            )

    def _conform(self, rows: pa.Table) -> pa.Table:
        schema = self.spec.schema
        if not rows.schema.equals(schema, check_metadata=False):
            if sorted(rows.schema.names) != sorted(schema.names):
                raise ValueError(
                    f"{self.spec.name} rows have columns {rows.schema.names}, expected {schema.names}"
                )
            rows = rows.select(schema.names).cast(schema)
        if rows.num_rows:
            for column, expected in (("stream_id", self.stream_id), ("job_id", self.job_id)):
                ids = rows[column]
                if ids.null_count or not pc.all(pc.equal(ids, expected)).as_py():
                    raise ValueError(
                        f"rows of another {column.split('_')[0]} given to the {self.spec.name} writer of "
                        f"job {self.job_id!r} stream {self.stream_id!r}"
                    )
        return rows

    def _cut(self, table: pa.Table) -> int:
        """Rows to put in the next part of sorted `table`: at most `max_rows`, ending on a frame boundary."""
        if table.num_rows <= self.max_rows:
            return int(table.num_rows)
        cut = self.max_rows
        if self.spec.frame_keyed:
            frames = table["frame_index"].to_numpy()
            boundary = int(np.searchsorted(frames, frames[cut], side="left"))
            if boundary > 0:
                cut = boundary
        return cut

    def _write(self, *, full_parts_only: bool) -> list[CommittedPart]:
        if not self._buffered:
            return []
        pending = pa.concat_tables(self._buffer).sort_by([(c, "ascending") for c in self.spec.sort_by])
        self._buffer, self._buffered = [pending], pending.num_rows
        committed: list[CommittedPart] = []
        while pending.num_rows and (not full_parts_only or pending.num_rows >= self.max_rows):
            cut = self._cut(pending)
            part = pending.slice(0, cut)
            committed.append(self._commit(part))  # on failure before the record the buffer holds `pending`
            pending = pending.slice(cut)
            self._buffer, self._buffered = ([pending] if pending.num_rows else []), pending.num_rows
        return committed

    def _describe(self, part: pa.Table) -> CommittedPart:
        last_pts: float | None = None
        if self.spec.frame_keyed:
            frames = part["frame_index"].to_numpy()
            first, last = int(frames[0]), int(frames[-1])
            n_frames = int(np.count_nonzero(np.diff(frames)) + 1)
            last_pts = float(part["pts_seconds"][part.num_rows - 1].as_py())
        else:
            first, last, n_frames = self._ordinal, self._ordinal + part.num_rows - 1, 0
        final = self.dir / part_name(first, last, self.epoch, self._seq)
        return CommittedPart(
            final,
            self.spec.name,
            self.job_id,
            self.stream_id,
            first,
            last,
            part.num_rows,
            n_frames,
            self.epoch,
            last_pts,
        )

    def _commit(self, part: pa.Table) -> CommittedPart:
        record = self._describe(part)
        staged = self.staging / record.name
        if record.path.exists() or staged.exists():
            raise PartWriteError(
                None,
                f"{record.path} already exists: another writer of stream {self.stream_id!r} uses epoch "
                f"{self.epoch}; bump the writer epoch in the job store before restarting a writer",
                record.path,
            )
        self._stage(part, staged, record.path)
        self._hit("staged")
        if self.recorder is not None:
            self._record(record, staged)
            self._hit("recorded")
        try:
            publish_staged(staged, record.path)
        except FileNotFoundError:
            # A new attempt's recovery saw the record and published the part first: it is in place.
            if not record.path.exists():
                self._broken = f"committed part {record.name} vanished from staging"
                raise
        except OSError as exc:
            # Committed but not visible yet: the next attempt publishes it from staging.
            self._broken = f"publishing committed part {record.name} failed ({exc.strerror or exc})"
            raise
        self._hit("published")
        self._seq += 1
        if not self.spec.frame_keyed:
            self._ordinal += part.num_rows
        return record

    def _record(self, record: CommittedPart, staged: Path) -> None:
        assert self.recorder is not None
        try:
            self.recorder.record(record)
            return
        except CommitRejected:
            staged.unlink(missing_ok=True)  # provably never committed: the store refused this epoch
            self._broken = f"the job store rejected part {record.name}"
            raise
        except Exception as error:
            failure = error
        # The record's reply was lost or the store was unreachable: read the record back before
        # deciding anything; a part is never deleted on a guess.
        try:
            recorded = self.recorder.is_recorded(record)
        except Exception as error:
            self._broken = f"the commit of part {record.name} could not be confirmed"
            raise CommitUncertain(
                f"could not record part {record.name} of stream {self.stream_id!r} ({failure}) nor read "
                f"the record back ({error}); its staged file stays for the next attempt to resolve"
            ) from failure
        if not recorded:
            self._broken = f"recording part {record.name} failed"
            raise CommitUncertain(
                f"recording part {record.name} of stream {self.stream_id!r} failed ({failure}); its staged "
                "file stays for the next attempt to resolve by the record"
            ) from failure

    def _hit(self, point: str) -> None:
        if self.failpoint is not None:
            self.failpoint(point)

    def _stage(self, part: pa.Table, staged: Path, final: Path) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, compression=self.compression, row_group_size=max(part.num_rows, 1))
        data = memoryview(sink.getvalue())
        created = False
        try:
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            created = True
            try:
                offset = 0
                while offset < len(data):
                    offset += os.write(fd, data[offset : offset + _WRITE_CHUNK])
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.staging)  # the staged file must outlive a crash once the part is recorded
        except OSError as exc:
            if created:  # never remove a file another writer staged under the same name
                staged.unlink(missing_ok=True)
            hint = "the disk is full; free space and flush again" if exc.errno == 28 else "flush again"
            raise PartWriteError(
                exc.errno,
                f"could not write {final} ({part.num_rows} rows of stream {self.stream_id!r}): "
                f"{exc.strerror or exc}; nothing was committed and the rows stay buffered: {hint}",
                final,
            ) from exc


def recover_staged_parts(
    out_dir: str | Path,
    table: str,
    job_id: str,
    stream_id: str,
    recorded: Collection[str],
    *,
    epoch: int,
) -> Recovery:
    """Finish or roll back what earlier writers of this job's stream left in staging.

    Call right after taking the new writer epoch `epoch`, with the records read after taking it. A staged
    part of an OLDER epoch that is not recorded can never be recorded (the store rejects its epoch), so it
    is removed; a recorded one is committed and is published. A part of this or a NEWER epoch is left
    alone: a writer that took an epoch after this one may be between staging and recording it, and by then
    this caller is the stale one. Only this job's own staging directory is touched; a published part is
    never removed.
    """
    recovery = Recovery()
    staging = staging_dir(out_dir, table, job_id, stream_id)
    if not staging.is_dir():
        return recovery
    final_dir = stream_dir(out_dir, table, job_id, stream_id)
    for entry in os.scandir(staging):
        match = PART_NAME_RE.fullmatch(entry.name)
        if match is None:
            continue
        staged = Path(entry.path)
        if entry.name not in recorded:
            if int(match["epoch"]) >= epoch:
                continue  # a newer writer's part in flight (see the docstring)
            staged.unlink(missing_ok=True)
            recovery.removed.append(staged)
            continue
        final = final_dir / entry.name
        if final.exists():  # published by a writer that died before it noticed; same bytes
            staged.unlink(missing_ok=True)
            continue
        final_dir.mkdir(parents=True, exist_ok=True)
        try:
            publish_staged(staged, final)
        except FileNotFoundError:  # a slower writer of the old epoch just published it itself
            continue
        recovery.published.append(final)
    if recovery.removed:
        _fsync_dir(staging)
    return recovery
