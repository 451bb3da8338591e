"""Arrow schemas of every output table, defined once, and where each table's files live.

Layout: `OUT/<table>/<job_id>/<stream_id>/part-*.parquet`. Every job has its own directory under each
table, so jobs that share an output folder (and reuse stream ids, as every re-run of the same file does)
never touch each other's files, and a job's cleanup can only ever reach its own directory.

The directories are deliberately NOT hive `key=value` partitions. Readers disagree on the type of a
discovered key (pyarrow's `pq.read_table` infers a dictionary, `pyarrow.dataset(partitioning="hive")` a
string, and DuckDB, Polars and pyarrow all turn a stream called `007` into the integer 7), so no single
in-file type matches all of them. Plain directory names carry no columns: `job_id` and `stream_id` are
plain strings inside every file, and DuckDB, Polars, pandas, `pq.read_table` and `pyarrow.dataset` (with
or without `partitioning="hive"`) all read `OUT/<table>` as it is, with the documented types. Filtering
by job or stream prunes through the parts' row-group statistics (one stream per part), and
`pipeline.storage.query` globs only the job's directory when asked for one job.

Ids are `[A-Za-z0-9._-]` and never start with `.` or `_` (see `pipeline.jobs.ids`), so they are safe as
directory names and never match glob syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

#: A plain string: the directories carry no partition keys (see the module docstring).
STREAM_ID = pa.string()

CLASS_AREAS = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("pixels", pa.int64()),
        ("fraction", pa.float64()),
        # Which of the stream's vocabularies the frame was analysed with: 1 is the job spec's, each change
        # while the stream runs adds one (see the `vocabularies` table).
        ("vocabulary_version", pa.int32()),
    ]
)

FRAMES = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("wall_time", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("latency_seconds", pa.float64()),
    ]
)

VOCABULARIES = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("vocabulary_version", pa.int32()),
    ]
)

ERRORS = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("time", pa.float64()),
        ("kind", pa.string()),
        ("message", pa.string()),
    ]
)

GAPS = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("start_pts", pa.float64()),
        ("end_pts", pa.float64()),
        ("start_wall", pa.float64()),
        ("end_wall", pa.float64()),
        ("reason", pa.string()),
    ]
)


REGION_AREAS = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("region", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("pixels", pa.int64()),
        # Of the region's pixels (not the frame's): the classes of one region and frame sum to 1.
        ("fraction", pa.float64()),
        ("vocabulary_version", pa.int32()),
    ]
)

#: Alert events: one row when an event opens, one when it closes ("closed": the value cleared) or the
#: stream ends with it open ("ended"); the rows of one event share `event_id`.
EVENTS = pa.schema(
    [
        ("job_id", pa.string()),
        ("stream_id", STREAM_ID),
        # 0, 1, 2, ... per stream, in the order the records were made: what makes them exactly-once.
        ("sequence", pa.int64()),
        ("event_id", pa.string()),
        ("rule", pa.string()),
        ("region", pa.string()),  # null: the whole frame
        ("class_name", pa.string()),
        ("status", pa.string()),
        ("start_pts", pa.float64()),
        ("end_pts", pa.float64()),  # null while open
        ("start_wall", pa.float64()),
        ("end_wall", pa.float64()),
        ("peak", pa.float64()),
        # The frame this record was made at (the opening or closing frame, or the stream's last).
        ("frame_index", pa.int64()),
        ("pts_seconds", pa.float64()),
        ("wall_time", pa.float64()),
    ]
)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the writer needs to know about a table beyond its columns.

    Attributes:
        name: directory name under the output dir, and the DuckDB view name.
        schema: the exact Arrow schema every part of the table has.
        sort_by: row order inside a part, so a part reads in time order without an ORDER BY.
        frame_keyed: True when rows carry `frame_index`; part names and commit records then span
            frame indices, otherwise they span the writer's own row ordinals.
    """

    name: str
    schema: pa.Schema
    sort_by: tuple[str, ...]
    frame_keyed: bool


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("class_areas", CLASS_AREAS, ("frame_index", "class_id"), True),
        TableSpec("frames", FRAMES, ("frame_index",), True),
        TableSpec("vocabularies", VOCABULARIES, ("vocabulary_version", "class_id"), False),
        TableSpec("errors", ERRORS, ("time",), False),
        TableSpec("gaps", GAPS, ("start_pts",), False),
        TableSpec("region_areas", REGION_AREAS, ("frame_index", "region", "class_id"), True),
        TableSpec("events", EVENTS, ("sequence",), False),
    )
}

#: Written under the output dir but outside every table dir, so no glob or directory scan of a table
#: can ever pick up a file that is not committed (DuckDB and Polars globs do NOT skip `.`/`_` names):
#: `OUT/_staging/<job_id>/<table>/<stream_id>/<part name>`.
STAGING_DIR = "_staging"


def table_spec(table: str) -> TableSpec:
    """The spec of `table`, with an error listing the known tables for a typo."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known tables: {', '.join(TABLES)}") from None


def table_dir(out_dir: str | Path, table: str) -> Path:
    """Directory holding every job's parts of `table`."""
    return Path(out_dir) / table_spec(table).name


def job_dir(out_dir: str | Path, table: str, job_id: str) -> Path:
    """Directory holding one job's parts of `table`, one subdirectory per stream."""
    return table_dir(out_dir, table) / job_id


def stream_dir(out_dir: str | Path, table: str, job_id: str, stream_id: str) -> Path:
    """Directory holding one stream's parts of `table` in one job."""
    return job_dir(out_dir, table, job_id) / stream_id


def staging_dir(out_dir: str | Path, table: str, job_id: str, stream_id: str) -> Path:
    """Where a stream's parts are written before they are committed; outside every table directory."""
    return Path(out_dir) / STAGING_DIR / job_id / table_spec(table).name / stream_id


def parts_glob(out_dir: str | Path, table: str, job_id: str | None = None) -> str:
    """Glob matching every committed part of `table` (of one job when `job_id` is given)."""
    return str(table_dir(out_dir, table) / (job_id or "*") / "*" / "*.parquet")
