"""`sanstream query`: the per-class summary of an output directory, or any SQL over its tables.

DuckDB runs over the Parquet parts directly (`pipeline.storage.query`), so this works while a job is
still writing and needs neither the job store nor the model.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from rich.markup import escape
from rich.table import Table

from pipeline.cli.common import CommandError, require_out_dir
from pipeline.cli.console import make_console
from pipeline.cli.formats import percent
from pipeline.jobs.ids import id_problem
from pipeline.storage.query import run_sql, summary

DEFAULT_MAX_ROWS = 50
_CARET_RE = re.compile(r"\^+")
_LINE_RE = re.compile(r"LINE \d+:")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="summarise an output directory, or run SQL over it",
        description="Without SQL: frames, mean and max area fraction per job, stream and class. With SQL: "
        "any DuckDB query over the views class_areas, frames, vocabularies, errors and gaps.",
    )
    parser.add_argument("out", type=Path, help="output directory of a job")
    parser.add_argument("sql", nargs="?", help='a DuckDB query, e.g. "SELECT * FROM frames LIMIT 5"')
    parser.add_argument(
        "--job", default=None, help="only this job's rows (the summary, and every view the SQL reads)"
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print every row as CSV instead of a table")
    fmt.add_argument("--json", action="store_true", help="print every row as a JSON list instead of a table")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help="rows shown in the table; --csv/--json print all (default: %(default)s)",
    )
    parser.set_defaults(handler=run)


def sql_error_line(error: duckdb.Error) -> str:
    """DuckDB's message on one line: its caret and `LINE n:` echo lines only make sense in a terminal grid."""
    lines = [line.strip() for line in str(error).splitlines()]
    kept = [line for line in lines if line and not _CARET_RE.fullmatch(line) and not _LINE_RE.match(line)]
    return " ".join(kept) or type(error).__name__


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_value(value: Any) -> Any:
    """JSON has no NaN/Infinity; null is what pandas/JS readers expect in their place."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def result_table(result: pa.Table, title: str | None, max_rows: int) -> Table:
    """Any query's rows. A value too wide for its column is folded onto the next line, never cut short
    with an ellipsis: ids and paths in a result are there to be read whole. Cells are escaped: a value
    like `[red]` is data, not rich markup."""
    table = Table(title=title)
    for field in result.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        table.add_column(escape(field.name), justify="right" if numeric else "left", overflow="fold")
    for row in result.slice(0, max_rows).to_pylist():
        table.add_row(*(escape(_cell(v)) for v in row.values()))
    return table


def summary_table(result: pa.Table) -> Table:
    table = Table()
    several_jobs = len(set(result["job_id"].to_pylist())) > 1
    if several_jobs:  # job ids are copied into --job: never wrapped or shortened
        table.add_column("job", no_wrap=True, min_width=max(map(len, result["job_id"].to_pylist())))
    table.add_column("stream", overflow="fold")
    table.add_column("class", overflow="fold")
    table.add_column("frames", justify="right", no_wrap=True)
    table.add_column("mean", justify="right", no_wrap=True)
    table.add_column("max", justify="right", no_wrap=True)
    previous = None
    for row in result.to_pylist():
        key = (row["job_id"], row["stream_id"])
        if previous is not None and key != previous:
            table.add_section()  # a rule between streams keeps long vocabularies readable
        previous = key
        cells = [escape(row["stream_id"]), escape(row["class_name"]), f"{row['frames']:,}"]
        cells += [percent(row["mean_fraction"]), percent(row["max_fraction"])]
        table.add_row(*([escape(row["job_id"]), *cells] if several_jobs else cells))
    return table


def write_csv(result: pa.Table) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(result.schema.names)
    for row in result.to_pylist():
        writer.writerow(["" if v is None else v for v in row.values()])


def write_json(result: pa.Table) -> None:
    rows = [{k: _json_value(v) for k, v in row.items()} for row in result.to_pylist()]
    print(json.dumps(rows, indent=2, default=str))


def run(args: argparse.Namespace) -> int:
    out = require_out_dir(args.out)
    if args.max_rows < 1:
        raise CommandError(f"--max-rows must be at least 1, got {args.max_rows}")
    if args.job is not None and (problem := id_problem(args.job)) is not None:
        raise CommandError(f"--job {args.job!r}: {problem}")
    try:
        result = summary(out, args.job) if args.sql is None else run_sql(out, args.sql, job_id=args.job)
    except duckdb.Error as error:
        raise CommandError(f"query failed: {sql_error_line(error)}") from None
    if args.csv:
        write_csv(result)
        return 0
    if args.json:
        write_json(result)
        return 0
    console = make_console()
    if args.sql is None:
        if result.num_rows == 0:
            job = f" of job {args.job}" if args.job else ""
            console.print(escape(f"no class areas{job} in {out} yet"), soft_wrap=True)
        else:
            console.print(escape(f"share of the frame per class over time, {out}:"), soft_wrap=True)
            console.print(summary_table(result))
        return 0
    if result.num_columns == 0:
        console.print("done (the statement returned no result set)")
        return 0
    console.print(result_table(result, None, args.max_rows))
    if result.num_rows > args.max_rows:
        console.print(
            f"showing {args.max_rows:,} of {result.num_rows:,} rows; use --max-rows, --csv or --json for more"
        )
    else:
        console.print(f"{result.num_rows:,} row{'s' if result.num_rows != 1 else ''}")
    return 0
