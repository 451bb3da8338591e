"""DuckDB over an output directory: one view per table, per-class and per-region summaries, ad-hoc SQL.

Views read the parts through a glob (`OUT/<table>/<job>/<stream>/*.parquet`), so a connection kept open
sees parts published after it was made. Only committed parts are ever in a table directory (see
`pipeline.storage.writer`), so the views never show an uncommitted or duplicated row. Asked for one job,
the glob names that job's directory and no other job's file is opened. A table with no part yet gets an
empty view with the table's columns, so the same SQL works before, during and after a job.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.jobs.ids import check_id
from pipeline.storage.schema import TABLES, parts_glob

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
}

_SUMMARY_SQL = """
SELECT job_id, stream_id, class_id, any_value(class_name) AS class_name,
       count(*) AS frames, avg(fraction) AS mean_fraction, max(fraction) AS max_fraction
FROM class_areas
GROUP BY job_id, stream_id, class_id
ORDER BY job_id, stream_id, class_id
"""

_REGION_SUMMARY_SQL = """
SELECT job_id, stream_id, region, class_id, any_value(class_name) AS class_name,
       count(*) AS frames, avg(fraction) AS mean_fraction, max(fraction) AS max_fraction
FROM region_areas
GROUP BY job_id, stream_id, region, class_id
ORDER BY job_id, stream_id, region, class_id
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_type(table: str, field: pa.Field) -> str:
    try:
        return _SQL_TYPES[field.type]
    except KeyError:  # a new column type in schema.py: name it rather than fail with a bare KeyError
        raise TypeError(f"{table}.{field.name}: no DuckDB type for Arrow type {field.type}") from None


def _view_sql(table: str, out_dir: Path, job_id: str | None) -> str:
    schema = TABLES[table].schema
    pattern = parts_glob(out_dir, table, job_id)
    files = sorted(glob.glob(os.path.join(glob.escape(str(out_dir)), os.path.relpath(pattern, out_dir))))
    if not files:
        columns = ", ".join(f"CAST(NULL AS {_sql_type(table, f)}) AS {f.name}" for f in schema)
        return f"SELECT {columns} LIMIT 0"
    # A glob keeps the view live; an output path that itself contains glob characters would be
    # misread as a pattern, so such paths get the (static) file list instead.
    if glob.escape(str(out_dir)) == str(out_dir):
        source = _literal(pattern)
    else:
        source = f"[{', '.join(map(_literal, files))}]"
    # The layout has no `key=value` directories, but DuckDB would take hive keys from any such directory
    # ABOVE the output (`/data/job_id=x/out`) and let them override the stored columns: turn it off.
    return f"SELECT {', '.join(schema.names)} FROM read_parquet({source}, hive_partitioning = false)"


def connect(
    out_dir: str | Path, connection: duckdb.DuckDBPyConnection | None = None, job_id: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (a new in-memory one unless given) with a view per output table, over every
    job in `out_dir` or only `job_id`.

    A table that has no part yet is an empty view with the right columns; it stays empty for the
    life of this connection, so reconnect to see a table that appeared later.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"output directory {root} does not exist or is not a directory")
    if job_id is not None:
        check_id(job_id, "job id")
    con = connection if connection is not None else duckdb.connect(":memory:")
    for table in TABLES:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {_view_sql(table, root, job_id)}")
    return con


def _arrow(relation: duckdb.DuckDBPyRelation | None) -> pa.Table:
    if relation is None:  # a statement without a result set (CREATE, SET, ...)
        return pa.table({})
    to_table = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return to_table()


def run_sql(
    out_dir: str | Path, sql: str, params: Sequence[Any] | None = None, job_id: str | None = None
) -> pa.Table:
    """Run `sql` against the output views (`class_areas`, `frames`, ...; only `job_id`'s rows when given)
    and return an Arrow table."""
    con = connect(out_dir, job_id=job_id)
    try:
        return _arrow(con.sql(sql, params=params) if params is not None else con.sql(sql))
    finally:
        con.close()


def summary(out_dir: str | Path, job_id: str | None = None) -> pa.Table:
    """Per job, stream and class: frames seen, mean and max area fraction over time.

    Grouped by job too, because several jobs may share an output directory and reuse stream ids.
    """
    return run_sql(out_dir, _SUMMARY_SQL, job_id=job_id)


def region_summary(out_dir: str | Path, job_id: str | None = None) -> pa.Table:
    """Per job, stream, region and class: frames seen, mean and max fraction of the region over time.

    Columns: job_id, stream_id, region, class_id, class_name, frames, mean_fraction, max_fraction; ordered
    by job, stream, region name and class id. Empty when no job (or not `job_id`) wrote region areas.
    """
    return run_sql(out_dir, _REGION_SUMMARY_SQL, job_id=job_id)
