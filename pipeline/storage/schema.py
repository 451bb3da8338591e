"""Arrow schemas of every output table, defined once, and where each table's files live.

Layout: hive partitions, `OUT/<table>/stream_id=<id>/part-*.parquet`, so DuckDB (`hive_partitioning`),
Polars and pandas/pyarrow all prune by stream from the path. `stream_id` is ALSO stored inside every file
(a part read on its own still says which stream it is, and columns keep their documented order), with the
Arrow type `dictionary<int32, string>`: that is the type pyarrow infers for a hive key, so
`pd.read_parquet(OUT/"class_areas")` merges the two instead of failing on "string vs dictionary". In the
Parquet file it is an ordinary dictionary-encoded UTF-8 column: DuckDB reads VARCHAR, Polars Categorical,
pandas category. Stream ids never contain `=` or `/` (see `pipeline.jobs.ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

#: Stored dictionary-encoded so it unifies with the hive partition key (see the module docstring).
STREAM_ID = pa.dictionary(pa.int32(), pa.string())

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
        TableSpec("vocabularies", VOCABULARIES, ("class_id",), False),
        TableSpec("errors", ERRORS, ("time",), False),
        TableSpec("gaps", GAPS, ("start_pts",), False),
    )
}

#: Written under the output dir but outside every table dir, so no glob or directory scan of a table
#: can ever pick up a file that is still being written (DuckDB and Polars globs do NOT skip `.`/`_` names).
STAGING_DIR = "_staging"


def table_spec(table: str) -> TableSpec:
    """The spec of `table`, with an error listing the known tables for a typo."""
    try:
        return TABLES[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known tables: {', '.join(TABLES)}") from None


def table_dir(out_dir: str | Path, table: str) -> Path:
    """Directory holding every stream's parts of `table`."""
    return Path(out_dir) / table_spec(table).name


def stream_dir(out_dir: str | Path, table: str, stream_id: str) -> Path:
    """Directory holding one stream's parts of `table`: the hive partition `stream_id=<id>`."""
    return table_dir(out_dir, table) / f"stream_id={stream_id}"


def parts_glob(out_dir: str | Path, table: str) -> str:
    """Glob matching every committed part of `table`; staging files never match it."""
    return str(table_dir(out_dir, table) / "stream_id=*" / "*.parquet")
