"""DuckDB over a job's output directory: one view per table, a per-class summary, and ad-hoc SQL.

Views read the parts through a glob, so a connection kept open sees parts published after it was made,
with `hive_partitioning`, so a filter on `stream_id` only opens that stream's `stream_id=<id>` directory.
A table with no part yet gets an empty view with the table's columns, so the same SQL works before,
during and after a job.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.storage.schema import TABLES, parts_glob, table_dir

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.dictionary(pa.int32(), pa.string()): "VARCHAR",
}

_SUMMARY_SQL = """
SELECT job_id, stream_id, class_id, any_value(class_name) AS class_name,
       count(*) AS frames, avg(fraction) AS mean_fraction, max(fraction) AS max_fraction
FROM class_areas
{where}
GROUP BY job_id, stream_id, class_id
ORDER BY job_id, stream_id, class_id
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view_sql(table: str, out_dir: Path) -> str:
    schema = TABLES[table].schema
    files = sorted(
        glob.glob(os.path.join(glob.escape(str(table_dir(out_dir, table))), "stream_id=*", "*.parquet"))
    )
    if not files:
        columns = ", ".join(f"CAST(NULL AS {_SQL_TYPES[f.type]}) AS {f.name}" for f in schema)
        return f"SELECT {columns} LIMIT 0"
    # A glob keeps the view live; an output path that itself contains glob characters would be
    # misread as a pattern, so such paths get the (static) file list instead.
    if glob.escape(str(out_dir)) == str(out_dir):
        source = _literal(parts_glob(out_dir, table))
    else:
        source = f"[{', '.join(map(_literal, files))}]"
    # DuckDB takes hive keys from EVERY `key=value` directory of a file's path, not only below the table
    # dir, and a key overrides the column stored in the file: under `/data/job_id=x/` every row would read
    # job_id 'x' (and an outer `stream_id=y/` would merge all streams into 'y'). Every column, stream_id
    # included, is stored in the files, so such an output dir is read without hive keys: still correct,
    # only without pruning by stream.
    hive = "false" if any("=" in part for part in out_dir.parts) else "true"
    return f"SELECT {', '.join(schema.names)} FROM read_parquet({source}, hive_partitioning = {hive})"


def connect(
    out_dir: str | Path, connection: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (a new in-memory one unless given) with a view per output table.

    A table that has no part yet is an empty view with the right columns; it stays empty for the
    life of this connection, so reconnect to see a table that appeared later.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"output directory {root} does not exist or is not a directory")
    con = connection if connection is not None else duckdb.connect(":memory:")
    for table in TABLES:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {_view_sql(table, root)}")
    return con


def _arrow(relation: duckdb.DuckDBPyRelation | None) -> pa.Table:
    if relation is None:  # a statement without a result set (CREATE, SET, ...)
        return pa.table({})
    to_table = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return to_table()


def run_sql(out_dir: str | Path, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run `sql` against the output views (`class_areas`, `frames`, ...) and return an Arrow table."""
    con = connect(out_dir)
    try:
        return _arrow(con.sql(sql, params=params) if params is not None else con.sql(sql))
    finally:
        con.close()


def summary(out_dir: str | Path, job_id: str | None = None) -> pa.Table:
    """Per job, stream and class: frames seen, mean and max area fraction over time.

    Grouped by job too, because several jobs may share an output directory and reuse stream ids.
    """
    where, params = ("WHERE job_id = ?", [job_id]) if job_id is not None else ("", None)
    return run_sql(out_dir, _SUMMARY_SQL.format(where=where), params)
