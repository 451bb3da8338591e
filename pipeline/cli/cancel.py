"""`sanstream cancel`: ask a job to stop, from any shell that can reach its job state.

Cancelling only sets a flag in the job store; the job's workers poll it and wind down themselves, so
what is already written stays consistent and the job ends as `cancelled` rather than dying mid-part.
An interrupted job that no driver is resuming has no workers to see the flag, so it is moved to
`cancelled` here. (A job left `running` by a dead driver keeps the flag: its resume ends it as cancelled.)
With `--service URL` the service's HTTP API sets the flag instead.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from pipeline.cli import client as service_client
from pipeline.cli.common import DEFAULT_OUT, TERMINAL_STATUSES, check_job_id, known_jobs_error, open_job_store
from pipeline.jobs.lease import lease_info
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import IllegalTransitionError, UnknownJobError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cancel", help="ask a running job to stop")
    parser.add_argument("job", help="job id (see `sanstream status --out DIR`)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory the job wrote to (default: %(default)s)",
    )
    service_client.add_service_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    job_id = check_job_id(args.job)
    url = service_client.service_url(args)
    if url is not None:
        return _cancel_on_service(service_client.client_for(url), job_id)
    with open_job_store(args.out) as store:
        try:
            status = store.status(job_id)
        except UnknownJobError:
            raise known_jobs_error(store, job_id, args.out) from None
        if status in TERMINAL_STATUSES:
            print(f"job {job_id} already finished ({status}); nothing to cancel")
            return 0
        if status == "interrupted" and lease_info(store.r, job_id, store.prefix) is None:
            store.request_cancel(job_id)  # first, so a driver resuming it right now stops as cancelled
            if _cancel_idle(store, job_id):
                print(f"job {job_id} cancelled (it was interrupted); its output stays as is")
                return 0
        if store.cancel_requested(job_id):
            print(f"cancel of job {job_id} was already requested; it is still {status}")
            return 0
        store.request_cancel(job_id)
    print(f"cancel requested for job {job_id} (was {status}); its workers stop at their next check")
    return 0


def _cancel_on_service(client: service_client.ServiceClient, job_id: str) -> int:
    try:
        status = client.job(job_id)["status"]
    except service_client.ServiceError as error:
        raise service_client.known_jobs_error(client, job_id, error) from None
    if status in TERMINAL_STATUSES:
        print(f"job {job_id} already finished ({status}); nothing to cancel")
        return 0
    status = client.cancel(job_id).get("status", status)
    if status == "interrupted":
        print(f"cancel requested for job {job_id} (interrupted); it ends as cancelled when it is resumed")
        return 0
    print(f"cancel requested for job {job_id} (was {status}); its workers stop at their next check")
    return 0


def _cancel_idle(store: JobStore, job_id: str) -> bool:
    """Move a job no driver holds, and its unfinished streams, to `cancelled`. False when the job changed
    meanwhile (a driver took it: that driver sees the cancel flag instead)."""
    try:
        store.set_status(job_id, "cancelled")
    except IllegalTransitionError:
        return False
    for stream_id in store.snapshot(job_id)["streams"]:
        with contextlib.suppress(IllegalTransitionError):  # a finished stream stays as it ended
            store.set_stream_status(job_id, stream_id, "cancelled")
    return True
