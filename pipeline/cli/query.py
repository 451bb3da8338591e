"""`sanstream query`: the per-class (and per-region) summary of an output directory, or any SQL over its
tables.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from pipeline.cli.common import CommandError, require_out_dir
from pipeline.cli.console import make_console
from pipeline.cli.formats import percent
from pipeline.jobs.ids import id_problem
from pipeline.storage.query import region_summary, run_sql, summary
from pipeline.storage.schema import TABLES

DEFAULT_MAX_ROWS = 50
_CARET_RE = re.compile(r"\^+")
_LINE_RE = re.compile(r"LINE \d+:")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="summarise an output directory, or run SQL over it",
        description="Without SQL: frames, mean and max area fraction per job, stream and class, and per "
        "region when the streams have regions. With SQL: any DuckDB query over the views "
        f"{', '.join(TABLES)}.",
    )
    parser.add_argument("out", type=Path, help="output directory of a job")
    parser.add_argument("sql", nargs="?", help='a DuckDB query, e.g. "SELECT * FROM frames LIMIT 5"')
    parser.add_argument(
        "--job", default=None, help="only this job's rows (the summary, and every view the SQL reads)"
    )
    parser.add_argument(
        "--regions",
        action="store_true",
        help="print only the per-region summary (each class's share of each region), also with --csv/--json",
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
    """The per-class summary (`pipeline.storage.query.summary`): one row per job, stream and class."""
    return _summary_table(result, by_region=False, job_column=len(set(result["job_id"].to_pylist())) > 1)


def region_summary_table(result: pa.Table) -> RenderableType:
    """The per-region summary (`pipeline.storage.query.region_summary`): one row per stream, region and
    class, the percentages being shares of the region rather than of the frame.

    Over several jobs, one table per job titled with its id: a job column beside the region column would
    leave an 80-column terminal too little room, and folding the names there would make them unreadable.
    """
    jobs = list(dict.fromkeys(result["job_id"].to_pylist()))
    if len(jobs) <= 1:
        return _summary_table(result, by_region=True, job_column=False)
    tables = []
    for job in jobs:
        table = _summary_table(
            result.filter(pc.equal(result["job_id"], job)), by_region=True, job_column=False
        )
        table.title = escape(f"job {job}")
        table.min_width = len(f"job {job}")  # job ids are copied into --job: never wrapped or shortened
        tables.append(table)
    return Group(*tables)


def _summary_table(result: pa.Table, by_region: bool, job_column: bool) -> Table:
    table = Table()
    if job_column:  # job ids are copied into --job: never wrapped or shortened
        table.add_column("job", no_wrap=True, min_width=max(map(len, result["job_id"].to_pylist())))
    table.add_column("stream", overflow="fold")
    if by_region:
        table.add_column("region", overflow="fold")
    table.add_column("class", overflow="fold")
    table.add_column("frames", justify="right", no_wrap=True)
    table.add_column("mean", justify="right", no_wrap=True)
    table.add_column("max", justify="right", no_wrap=True)
    previous = None
    for row in result.to_pylist():
        key = (row["job_id"], row["stream_id"], row["region"] if by_region else None)
        if previous is not None and key != previous:
            table.add_section()  # a rule between streams (and regions) keeps long vocabularies readable
        previous = key
        cells = [escape(row["stream_id"]), *([escape(row["region"])] if by_region else [])]
        cells += [escape(row["class_name"]), f"{row['frames']:,}"]
        cells += [percent(row["mean_fraction"]), percent(row["max_fraction"])]
        table.add_row(*([escape(row["job_id"]), *cells] if job_column else cells))
    return table


def _query(function: Callable[..., pa.Table], *args: Any, **kwargs: Any) -> pa.Table:
    """`function(*args, **kwargs)` with DuckDB's error as a one-line `CommandError`."""
    try:
        return function(*args, **kwargs)
    except duckdb.Error as error:
        raise CommandError(f"query failed: {sql_error_line(error)}") from None


def _print_regions(console: Console, result: pa.Table, out: Path) -> None:
    console.print(escape(f"per region: share of the region per class over time, {out}:"), soft_wrap=True)
    console.print(region_summary_table(result))


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
    if args.regions and args.sql is not None:
        raise CommandError(
            "--regions prints the per-region summary and takes no SQL; query region_areas instead"
        )
    if args.sql is not None:
        result = _query(run_sql, out, args.sql, job_id=args.job)
    else:
        result = _query(region_summary if args.regions else summary, out, job_id=args.job)
    if args.csv:
        write_csv(result)
        return 0
    if args.json:
        write_json(result)
        return 0
    console = make_console()
    if args.sql is None:
        job = f" of job {args.job}" if args.job else ""
        if not args.regions:
            if result.num_rows == 0:
                console.print(escape(f"no class areas{job} in {out} yet"), soft_wrap=True)
            else:
                console.print(escape(f"share of the frame per class over time, {out}:"), soft_wrap=True)
                console.print(summary_table(result))
            regions = _query(region_summary, out, job_id=args.job)
            if regions.num_rows:  # only streams with regions have a second table; others look as before
                console.print()
                _print_regions(console, regions, out)
        elif result.num_rows == 0:
            console.print(escape(f"no region areas{job} in {out} yet"), soft_wrap=True)
        else:
            _print_regions(console, result, out)
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
