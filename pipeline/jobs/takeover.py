"""Taking a job on: create it, or continue one whose driver is gone, and refuse what would mix outputs.

No Ray here. The caller holds the job's lease (`pipeline.jobs.lease`), so no other driver runs the job
while these rules decide whether this one may.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

from pipeline.jobs.spec import JobSpec, JobSpecError, parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import UnknownJobError

FINISHED_STREAM = ("completed", "failed", "cancelled")


class JobNotResumableError(RuntimeError):
    """A job id that exists but cannot be (re)started now; the message says why and what to do."""


class DriverReplacedError(JobNotResumableError):
    """This driver lost the job's lease (another driver took the job over); it stopped without touching
    the job's state, which belongs to the new holder now."""


def register_job(store: JobStore, spec: JobSpec, job_id: str) -> tuple[bool, set[str]]:
    """Create the job, or take it over to continue it. Returns (resumed, streams already finished).

    The caller holds the job's lease, so no other driver runs it: a job left `running` (its driver died)
    or `interrupted` continues, each unfinished stream (interrupted ones included) from its last committed
    frame. A finished job is refused, and so is a spec that differs from the stored one: one job's output
    would mix two configurations."""
    try:
        status = store.status(job_id)
    except UnknownJobError:
        found = existing_output(Path(spec.output), job_id)
        if found:
            raise JobNotResumableError(lost_state_message(job_id, Path(spec.output), found)) from None
        store.create_job(job_id, spec.to_dict(), [s.id for s in spec.streams])
        return False, set()
    refuse_finished(job_id, status)
    snapshot = store.snapshot(job_id)
    changes = spec_changes(snapshot["spec"], spec.to_dict())
    if changes:
        resume = f"sanstream resume {job_id} --out {shlex.quote(str(spec.output))}"
        raise JobNotResumableError(
            f"job {job_id} exists ({status}) with another spec; changed: {'; '.join(changes)}. "
            f"Continue it as it was ({resume}), or run the new spec under another job id"
        )
    store.clear_interrupt(job_id)
    done = {sid for sid, info in snapshot["streams"].items() if info.get("status") in FINISHED_STREAM}
    return True, done


def refuse_finished(job_id: str, status: str) -> None:
    """A job that ended is never run again: its output is complete, or was ended on purpose."""
    if status == "completed":
        raise JobNotResumableError(f"job {job_id} already completed; choose another job id to run it again")
    if status in ("failed", "cancelled"):
        raise JobNotResumableError(
            f"job {job_id} ended as {status}; its output stays as is. Start a new job id"
        )


def stored_job(store: JobStore, job_id: str, out_dir: Path) -> tuple[JobSpec, set[str]]:
    """What resuming `job_id` runs: the spec stored with it, and its streams that already finished.

    Read without Ray, so `sanstream resume` can check the job (a finished one is refused, the files of
    its unfinished streams must still be there) before anything starts. Raises `UnknownJobError`, or
    `JobNotResumableError` when `out_dir` holds output of a job the store does not know (lost state)."""
    try:
        snapshot = store.snapshot(job_id)
    except UnknownJobError:
        found = existing_output(out_dir, job_id)
        if found:
            raise JobNotResumableError(lost_state_message(job_id, out_dir, found)) from None
        raise
    refuse_finished(job_id, snapshot["status"])
    data = {key: value for key, value in snapshot["spec"].items() if value is not None}
    data["job_id"] = job_id
    done = {sid for sid, info in snapshot["streams"].items() if info.get("status") in FINISHED_STREAM}
    return parse_job_spec(data), done


def existing_output(out_dir: Path, job_id: str) -> list[Path]:
    """Directories of `out_dir` that hold output of `job_id`: `OUT/<table>/<job_id>/` for any table, and
    the staging area `OUT/_staging/<job_id>/`.

    When the job store has no such job, that output means the job's state was lost (a Redis without
    persistence restarted, or another REDIS_URL): creating the job afresh would write its output a second
    time beside the first, so that is refused."""
    try:
        tables = [entry for entry in out_dir.iterdir() if entry.is_dir() and entry.name != "redis"]
    except OSError:
        return []
    return sorted(table / job_id for table in tables if (table / job_id).is_dir())


def lost_state_message(job_id: str, out_dir: Path, found: list[Path]) -> str:
    where = "REDIS_URL" if os.environ.get("REDIS_URL") else f"{out_dir / 'redis'}"
    shown = ", ".join(str(path.relative_to(out_dir)) for path in found[:3]) + (
        ", ..." if len(found) > 3 else ""
    )
    return (
        f"job {job_id} is not in the job store ({where}), but {out_dir} already holds its output ({shown}): "
        "its state was lost (a Redis restarted without persistence, or a different REDIS_URL), and running "
        "it afresh would write that output a second time. Point REDIS_URL at the Redis that ran it, or "
        "run under another job id or output directory"
    )


_UNSET = object()


def _normalized_spec(data: Any) -> Any:
    """A stored spec in today's form (defaults filled in by the parser), so a field added since the job
    was stored does not count as a change; as stored when it no longer parses."""
    if not isinstance(data, dict):
        return data
    try:
        fresh = parse_job_spec({key: value for key, value in data.items() if value is not None}).to_dict()
    except (JobSpecError, TypeError, ValueError):
        return data
    return json.loads(json.dumps(fresh))


def spec_changes(old: Any, new: Any) -> list[str]:
    """Each field where spec `new` differs from stored spec `old` (job ids aside), as
    `streams[0].vocabulary: was ['car'], now ['boat']`."""
    old = _normalized_spec(old)
    new = json.loads(json.dumps(new))  # the stored spec went through JSON: tuples are lists there
    if isinstance(old, dict) and isinstance(new, dict):
        old = {k: v for k, v in old.items() if k != "job_id"}
        new = {k: v for k, v in new.items() if k != "job_id"}
    return _differences(old, new, "")


def _differences(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(key for key in new if key not in old)]
        return [
            change
            for key in keys
            for change in _differences(
                old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else key
            )
        ]
    is_records = (
        isinstance(old, list) and isinstance(new, list) and any(isinstance(v, dict) for v in old + new)
    )
    if is_records:  # e.g. streams: compare entry by entry, so the message names the field
        return [
            change
            for i in range(max(len(old), len(new)))
            for change in _differences(
                old[i] if i < len(old) else _UNSET, new[i] if i < len(new) else _UNSET, f"{path}[{i}]"
            )
        ]
    if old == new:
        return []
    shown = ["unset" if value is _UNSET else repr(value) for value in (old, new)]
    return [f"{path or 'spec'}: was {shown[0]}, now {shown[1]}"]


def mark_interrupted(store: JobStore, spec: JobSpec, job_id: str, message: str) -> None:
    """Leave the job resumable after a signal that came before (or instead of) a clean stop: workers are
    asked to stop, every unfinished stream and the job become `interrupted` (never `failed`: nothing is
    wrong with the job), and the reason is recorded. Best effort: Redis may be what is failing."""
    with contextlib.suppress(Exception):
        store.request_interrupt(job_id)
    with contextlib.suppress(Exception):
        store.record_error(job_id, None, "interrupted", message)
    for stream in spec.streams:
        with contextlib.suppress(Exception):
            if store.set_stream_status(job_id, stream.id, "interrupted") != "interrupted":
                store.record_error(job_id, stream.id, "interrupted", message)
    with contextlib.suppress(Exception):
        store.set_status(job_id, "interrupted")
