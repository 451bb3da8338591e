"""`sanstream status`: a job's progress, or the jobs of an output directory, from another shell.

It reads the job store only (Redis), never the Parquet output or the model, so it answers quickly and
works while the job runs, after it ended, and after the machine restarted (the embedded server's data
persists under the output directory). With `--service URL` it asks that service's HTTP API instead, which
answers with the same documents.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.cli import client as service_client
from pipeline.cli.common import DEFAULT_OUT, TERMINAL_STATUSES, check_job_id, known_jobs_error, open_job_store
from pipeline.cli.console import make_console
from pipeline.jobs.lease import driver_gone, lease_info
from pipeline.jobs.state_errors import UnknownJobError

RECENT_ERRORS = 10
_STATUS_STYLE = {
    "queued": "yellow",
    "pending": "yellow",
    "running": "cyan",
    "reconnecting": "blue",
    "interrupted": "bold yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show a job's progress, or list the jobs of an output dir")
    parser.add_argument("job", nargs="?", help="job id; omit to list every job")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory the job wrote to (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the full job state as JSON")
    service_client.add_service_argument(parser)
    parser.set_defaults(handler=run_status)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _styled(status: str | None) -> str:
    text = status or "?"
    style = _STATUS_STYLE.get(text)
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def _count(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) else "-"


def job_table(jobs: list[dict[str, Any]]) -> Table:
    """One row per job. Job ids are what one copies, so their column never wraps or shortens them (the
    times wrap at their space instead); the folder they are in is printed above, outside the table."""
    table = Table()
    ids = [job["job_id"] for job in jobs]
    table.add_column("job", no_wrap=True, min_width=max(map(len, ids), default=3))
    table.add_column("status", no_wrap=True)
    table.add_column("created")
    table.add_column("updated")
    for job in jobs:
        table.add_row(
            escape(job["job_id"]), _styled(job["status"]), _when(job["created"]), _when(job["updated"])
        )
    return table


def stream_table(snapshot: dict[str, Any]) -> Table:
    table = Table(title="streams")
    # A stream id that does not fit is folded, never shortened; the counts keep their width.
    table.add_column("stream", overflow="fold")
    table.add_column("status", no_wrap=True)
    for name in ("decoded", "analysed", "written", "last frame", "errors"):
        table.add_column(name, justify="right", no_wrap=True)
    for stream_id, info in snapshot["streams"].items():
        last = info.get("last_written_frame")
        table.add_row(
            escape(stream_id),
            _styled(info.get("status")),
            _count(info.get("decoded")),
            _count(info.get("analysed")),
            _count(info.get("written")),
            "-" if last is None or last < 0 else str(last),
            _count(info.get("error_count")),
        )
    return table


def error_table(errors: list[dict[str, Any]], total: int) -> Table:
    shown = errors[-RECENT_ERRORS:]
    title = f"recent errors ({len(shown)} of {total})" if total > len(shown) else "errors"
    table = Table(title=title)
    table.add_column("time")
    table.add_column("stream")
    table.add_column("kind")
    table.add_column("message", overflow="fold")
    for error in shown:
        table.add_row(  # messages quote sources and exceptions: "[Errno 2]" is text, not markup
            _when(error.get("time")),
            escape(error.get("stream_id") or "-"),
            escape(str(error.get("kind", ""))),
            escape(str(error["message"])),
        )
    return table


def resume_hint(snapshot: dict[str, Any], out: Path, service: str | None = None) -> str | None:
    """`sanstream resume ...` when the job needs it: it was interrupted, or it says running (or queued)
    while no driver holds its lease (the driver died; the lease expired). `service`: the snapshot came from
    that service (whose snapshot may not say who holds the lease: then only `interrupted` counts)."""
    status = snapshot["status"]
    known_lease = service is None or "lease" in snapshot
    lease = snapshot.get("lease")
    driverless = lease is None or (service is None and driver_gone(lease))
    stale = status in ("running", "queued") and known_lease and driverless
    if status != "interrupted" and not stale:
        return None
    if service is not None:
        return f"sanstream resume {snapshot['job_id']} --service {shlex.quote(service)}"
    # With REDIS_URL the output directory is the spec's; without, the one this command found the state in.
    target = (snapshot["spec"].get("output") or str(out)) if os.environ.get("REDIS_URL") else str(out)
    return f"sanstream resume {snapshot['job_id']} --out {shlex.quote(str(target))}"


def print_snapshot(
    console: Console, snapshot: dict[str, Any], out: Path | None = None, service: str | None = None
) -> None:
    """The job as `sanstream status JOB` shows it; `service`: the URL of the service the snapshot came from."""
    status = snapshot["status"]
    console.print(f"job [bold]{escape(snapshot['job_id'])}[/bold]: {_styled(status)}")
    times = [f"created {_when(snapshot['created'])}"]
    if snapshot.get("started") is not None:
        times.append(f"started {_when(snapshot['started'])}")
    if snapshot.get("finished") is not None:
        times.append(f"finished {_when(snapshot['finished'])}")
    elif snapshot.get("started") is not None:
        times.append(f"running for {time.time() - snapshot['started']:.0f}s")
    console.print(", ".join(times))
    if snapshot["cancel_requested"] and status not in TERMINAL_STATUSES:
        console.print("[magenta]cancel requested[/magenta]: workers stop at their next check")
    if snapshot["heartbeats"]:
        latest = max(snapshot["heartbeats"].values())
        workers = len(snapshot["heartbeats"])
        plural = "s" if workers != 1 else ""
        console.print(f"{workers} worker{plural}, last heartbeat {time.time() - latest:.0f}s ago")
    lease = snapshot.get("lease")
    if lease is not None and service is None and driver_gone(lease):  # killed: its lease outlives it
        who = escape(f"pid {lease['pid']} on {lease['host']}")
        console.print(
            f"[yellow]driver gone[/yellow]: {who} no longer runs (killed or crashed); the job goes on only "
            "when resumed"
        )
    elif lease is not None:
        expires = (
            f", expires in {lease['ttl_s']:.0f}s unless renewed" if lease.get("ttl_s") is not None else ""
        )
        console.print(
            escape(f"driver: pid {lease['pid']} on {lease['host']} (lease token {lease['token']}{expires})")
        )
    elif status in ("running", "queued") and (service is None or "lease" in snapshot):
        console.print("[yellow]no driver holds this job[/yellow] (its lease expired: the driver is gone)")
    hint = resume_hint(snapshot, out or DEFAULT_OUT, service)
    if hint is not None:
        console.print(f"resume with: {escape(hint)}", soft_wrap=True)  # one line, to be copied
    console.print(stream_table(snapshot))
    if snapshot["errors"]:
        console.print(error_table(snapshot["errors"], snapshot["error_count"]))
    else:
        console.print("no errors")


def run_status(args: argparse.Namespace) -> int:
    console = make_console()
    job_id = check_job_id(args.job) if args.job is not None else None
    url = service_client.service_url(args)
    if url is not None:
        return _service_status(service_client.client_for(url), job_id, args.json, console)
    with open_job_store(args.out) as store:
        if job_id is None:
            jobs = store.list_jobs()
            if args.json:
                print(json.dumps(jobs, indent=2))
            elif not jobs:
                console.print(escape(f"no jobs in {args.out}"), soft_wrap=True)
            else:
                console.print(escape(f"jobs in {args.out}:"), soft_wrap=True)
                console.print(job_table(jobs))
            return 0
        try:
            snapshot = store.snapshot(job_id)
        except UnknownJobError:
            raise known_jobs_error(store, job_id, args.out) from None
        snapshot["lease"] = _lease(store, job_id)
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print_snapshot(console, snapshot, args.out)
    return 0


def _service_status(
    client: service_client.ServiceClient, job_id: str | None, as_json: bool, console: Console
) -> int:
    """`status --service URL`: the same output, from the service's API (the same documents)."""
    if job_id is None:
        jobs = client.jobs()
        if as_json:
            print(json.dumps(jobs, indent=2))
        elif not jobs:
            console.print(escape(f"no jobs on the service at {client.url}"))
        else:
            console.print(escape(f"jobs in {client.url}:"), soft_wrap=True)
            console.print(job_table(jobs))
        return 0
    try:
        snapshot = client.job(job_id)
    except service_client.ServiceError as error:
        raise service_client.known_jobs_error(client, job_id, error) from None
    if as_json:
        print(json.dumps(snapshot, indent=2))
    else:
        print_snapshot(console, snapshot, service=client.url)
    return 0


def _lease(store: Any, job_id: str) -> dict[str, Any] | None:
    """The job's lease as plain data (None: no driver holds it)."""
    info = lease_info(store.r, job_id, store.prefix)
    if info is None:
        return None
    return {**dataclasses.asdict(info.holder), "token": info.token, "ttl_s": info.ttl_s}
