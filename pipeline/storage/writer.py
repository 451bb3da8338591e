"""Crash-safe Parquet parts, one writer per (table, stream).

Readers (DuckDB, Polars, pandas) may scan the output while a job runs and after it crashed, so a part
is published only when complete: bytes go to a staging file OUTSIDE the table directory
(`OUT/_staging/<table>/<stream_id>/`, same file system), are fsync'd, then `os.replace`d to
`OUT/<table>/stream_id=<id>/part-<first>-<last>-<epoch>-<seq>.parquet` and the directory is fsync'd.
Staging lives outside the table because DuckDB and Polars globs do not skip `.`/`_`-prefixed names and
a Polars directory read refuses mixed extensions: a temp file next to the parts would break them.

Part names are zero-padded so a listing sorts by frame; `<epoch>` (the fencing epoch from the job store)
and `<seq>` make names unique per writer generation, so a restarted writer never overwrites a part.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage.schema import STAGING_DIR, TableSpec, stream_dir, table_spec

DEFAULT_MAX_ROWS = 250_000
_WRITE_CHUNK = 8 << 20
PART_NAME_RE = re.compile(r"part-(?P<first>\d+)-(?P<last>\d+)-(?P<epoch>\d+)-(?P<seq>\d+)\.parquet")


class OutputDirError(OSError):
    """The output directory is missing, not a directory, or not writable; raised before any row is taken."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class PartWriteError(OSError):
    """Writing a part failed (disk full, I/O error): nothing was published and the rows stay buffered."""

    def __init__(self, errno_: int | None, message: str, path: Path) -> None:
        if errno_ is None:
            super().__init__(message)
        else:
            super().__init__(errno_, message)
        self.path = path


@dataclass(frozen=True, slots=True)
class CommittedPart:
    """A published part, as the job store records it.

    Attributes:
        first_frame, last_frame: frame-index span for frame-keyed tables (`class_areas`, `frames`);
            for the others, the span of row ordinals this writer generation has written.
        frames: distinct frame indices in the part (0 for tables without frames).
        epoch: the writer epoch the part was written under, for fencing.
    """

    path: Path
    table: str
    stream_id: str
    first_frame: int
    last_frame: int
    rows: int
    frames: int
    epoch: int

    @property
    def name(self) -> str:
        return self.path.name


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


class PartWriter:
    """Buffers one stream's rows of one table and publishes them as sorted parts of at most `max_rows`.

    A frame's rows are kept in one part whenever the frame fits, so a part never holds half a frame
    unless a single frame is larger than `max_rows`.

    `on_commit`, when given, is called with each published part (typically `JobStore.record_commit`).
    If it raises (a fenced-off writer, an unreachable store), the part is removed again and its rows
    go back into the buffer, so a part that the store does not know about does not stay visible.
    """

    def __init__(
        self,
        out_dir: str | Path,
        table: str,
        stream_id: str,
        *,
        epoch: int = 0,
        max_rows: int = DEFAULT_MAX_ROWS,
        on_commit: Callable[[CommittedPart], None] | None = None,
        compression: str = "zstd",
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.out_dir = Path(out_dir)
        self.spec: TableSpec = table_spec(table)
        self.stream_id = stream_id
        self.epoch = epoch
        self.max_rows = max_rows
        self.on_commit = on_commit
        self.compression = compression
        _check_out_dir(self.out_dir)
        self.dir = stream_dir(self.out_dir, table, stream_id)
        self.staging = self.out_dir / STAGING_DIR / self.spec.name / stream_id
        _make_dir(self.out_dir, self.dir)
        _make_dir(self.out_dir, self.staging)
        self._seq = self._next_free_seq()
        self._ordinal = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._closed = False

    def _next_free_seq(self) -> int:
        """First sequence number unused by this epoch, so reopening a writer never reuses a name."""
        seqs = [
            int(m["seq"])
            for entry in os.scandir(self.dir)
            if (m := PART_NAME_RE.fullmatch(entry.name)) and int(m["epoch"]) == self.epoch
        ]
        return max(seqs, default=-1) + 1

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    def append(self, rows: pa.Table) -> list[CommittedPart]:
        """Buffer `rows`; publish full parts once `max_rows` are buffered. Returns what was published."""
        if self._closed:
            raise RuntimeError(f"{self.spec.name} writer of stream {self.stream_id!r} is closed")
        rows = self._conform(rows)
        if rows.num_rows:
            self._buffer.append(rows)
            self._buffered += rows.num_rows
        committed: list[CommittedPart] = []
        if self._buffered >= self.max_rows:
            committed = self._write(full_parts_only=True)
        return committed

    def flush(self) -> list[CommittedPart]:
        """Publish everything buffered (e.g. on a timer for live streams), in parts of at most `max_rows`.

        If a part fails, the parts before it in the same call stay published and were already passed to
        `on_commit`; that is why recording belongs in `on_commit` rather than in the returned list.
        """
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

    def _conform(self, rows: pa.Table) -> pa.Table:
        schema = self.spec.schema
        if not rows.schema.equals(schema, check_metadata=False):
            if sorted(rows.schema.names) != sorted(schema.names):
                raise ValueError(
                    f"{self.spec.name} rows have columns {rows.schema.names}, expected {schema.names}"
                )
            rows = rows.select(schema.names).cast(schema)
        if rows.num_rows:
            ids = rows["stream_id"].cast(pa.string())
            if ids.null_count or not pc.all(pc.equal(ids, self.stream_id)).as_py():
                raise ValueError(f"rows for another stream given to the writer of stream {self.stream_id!r}")
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
            committed.append(self._publish(part))  # on failure the buffer still holds `pending`
            pending = pending.slice(cut)
            self._buffer, self._buffered = ([pending] if pending.num_rows else []), pending.num_rows
        return committed

    def _publish(self, part: pa.Table) -> CommittedPart:
        if self.spec.frame_keyed:
            frames = part["frame_index"].to_numpy()
            first, last = int(frames[0]), int(frames[-1])
            n_frames = int(np.count_nonzero(np.diff(frames)) + 1)
        else:
            first, last, n_frames = self._ordinal, self._ordinal + part.num_rows - 1, 0
        final = self.dir / part_name(first, last, self.epoch, self._seq)
        if final.exists():
            raise PartWriteError(
                None,
                f"{final} already exists: another writer of stream {self.stream_id!r} uses epoch "
                f"{self.epoch}; bump the writer epoch in the job store before restarting a writer",
                final,
            )
        self._write_file(part, final)
        record = CommittedPart(
            final, self.spec.name, self.stream_id, first, last, part.num_rows, n_frames, self.epoch
        )
        if self.on_commit is not None:
            try:
                self.on_commit(record)
            except BaseException:
                final.unlink(missing_ok=True)
                _fsync_dir(self.dir)
                raise
        self._seq += 1
        if not self.spec.frame_keyed:
            self._ordinal += part.num_rows
        return record

    def _write_file(self, part: pa.Table, final: Path) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, compression=self.compression, row_group_size=max(part.num_rows, 1))
        data = memoryview(sink.getvalue())
        tmp = self.staging / f".{final.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                offset = 0
                while offset < len(data):
                    offset += os.write(fd, data[offset : offset + _WRITE_CHUNK])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            hint = "the disk is full; free space and flush again" if exc.errno == 28 else "flush again"
            raise PartWriteError(
                exc.errno,
                f"could not write {final} ({part.num_rows} rows of stream {self.stream_id!r}): "
                f"{exc.strerror or exc}; nothing was published and the rows stay buffered: {hint}",
                final,
            ) from exc
        _fsync_dir(self.dir)


def remove_unrecorded_parts(
    out_dir: str | Path, table: str, stream_id: str, recorded: Collection[str]
) -> list[Path]:
    """Delete one stream's parts whose names the job store never recorded, and its stale staging files.

    Call after bumping the writer epoch and before the new writer starts: a crash between publishing a
    part and recording it leaves a visible part the job will write again, which readers would count twice.
    """
    removed: list[Path] = []
    directory = stream_dir(out_dir, table, stream_id)
    if directory.is_dir():
        for entry in os.scandir(directory):
            if PART_NAME_RE.fullmatch(entry.name) and entry.name not in recorded:
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
        if removed:
            _fsync_dir(directory)
    staging = Path(out_dir) / STAGING_DIR / table_spec(table).name / stream_id
    if staging.is_dir():
        for entry in os.scandir(staging):
            Path(entry.path).unlink(missing_ok=True)
    return removed
