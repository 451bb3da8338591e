"""Changes to a running job: a stream added or removed, a stream's vocabulary replaced.

The job store is the one place these are made, whoever asks (the service's HTTP API, a test, an
operator's script), and the job's runner and each stream's loop poll it: a change survives a restart of
any process and is applied exactly once. The stored job spec follows every change to its streams, so a
job continued after a crash runs the streams it had, not the ones it started with.

Vocabulary versions: 1 is the job spec's; each change adds one. A stream switches at its next poll, after
its writer committed the new names, so every `class_areas` row's `vocabulary_version` has its names in
`vocabularies`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import UnknownJobError

# A stream's next vocabulary: the version and its classes in one atomic step (a reader never sees a
# version without its classes). ARGV: vocabulary JSON.
_SET_VOCABULARY = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return -1 end
local version = redis.call('HINCRBY', KEYS[1], 'vocabulary_version', 1)
if version == 1 then version = redis.call('HINCRBY', KEYS[1], 'vocabulary_version', 1) end
redis.call('HSET', KEYS[1] .. ':vocabularies', tostring(version), ARGV[1])
return version
"""
FINISHED_JOB = ("completed", "failed", "cancelled")
FINISHED_STREAM = ("completed", "failed", "cancelled")


class StreamChangeError(ValueError):
    """A change the job cannot take; `field` names what is wrong (`stream.id`, `vocabulary`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def set_vocabulary(store: JobStore, job_id: str, stream_id: str, vocabulary: Sequence[str]) -> int:
    """Give a running stream a new vocabulary; returns its version. Frames analysed from the stream's next
    poll on use it."""
    if not vocabulary:
        raise StreamChangeError("vocabulary", "must list at least one class")
    key = store.stream_key(job_id, stream_id)
    version = int(store.r.eval(_SET_VOCABULARY, 1, key, json.dumps(list(vocabulary))))
    if version < 0:
        raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
    return version


def vocabulary_version(store: JobStore, job_id: str, stream_id: str) -> int:
    """The stream's newest vocabulary version (1 while it has the job spec's)."""
    return int(store.r.hget(store.stream_key(job_id, stream_id), "vocabulary_version") or 1)


def vocabulary(store: JobStore, job_id: str, stream_id: str, version: int) -> list[str] | None:
    """Vocabulary `version` of the stream as set through `set_vocabulary`; None for version 1 (the job
    spec's) or a version never set."""
    raw = store.r.hget(f"{store.stream_key(job_id, stream_id)}:vocabularies", str(version))
    return None if raw is None else list(json.loads(raw))


def add_stream(store: JobStore, job_id: str, stream: dict[str, Any]) -> None:
    """Add `stream` (a validated stream spec as plain data, with its `id`) to a job that has not finished:
    it joins the stored spec and the job's streams as `pending`, and the job's runner starts it.

    Raises:
        UnknownJobError: no such job.
        StreamChangeError: the job has finished, or the id is taken (ids are case-insensitive, being
            directory names).
    """
    job_key = store.job_key(job_id)
    stream_id = str(stream["id"])
    stream_key = store.stream_key(job_id, stream_id)

    def change(pipe: redis.client.Pipeline) -> None:
        status, spec_json, ids_json = pipe.hmget(job_key, ["status", "spec", "stream_ids"])
        if status is None:
            raise UnknownJobError(f"no job {job_id!r}")
        status = status.decode() if isinstance(status, bytes) else status
        if status in FINISHED_JOB:
            raise StreamChangeError("job", f"job {job_id} has ended ({status}); start a new job")
        ids: list[str] = json.loads(ids_json)
        if stream_id.lower() in {i.lower() for i in ids}:
            raise StreamChangeError("id", f"job {job_id} already has a stream {stream_id!r}")
        spec = json.loads(spec_json)
        spec["streams"] = [*spec.get("streams", []), stream]
        now = repr(store.clock())
        pipe.multi()
        pipe.hset(job_key, mapping={"spec": json.dumps(spec), "stream_ids": json.dumps([*ids, stream_id])})
        pipe.delete(stream_key)
        pipe.hset(
            stream_key,
            mapping={
                "status": "pending",
                "decoded": 0,
                "analysed": 0,
                "written": 0,
                "last_written_frame": -1,
                "epoch": 0,
                "error_count": 0,
                "updated": now,
            },
        )

    store.r.transaction(change, job_key)


def remove_stream(store: JobStore, job_id: str, stream_id: str) -> None:
    """Stop a stream of a running job: it commits what it analysed and ends `cancelled`; its output stays.
    The job goes on with its other streams."""
    key = store.stream_key(job_id, stream_id)
    if not store.r.hexists(key, "status"):
        raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
    store.r.hsetnx(key, "stop_requested", repr(store.clock()))


def stream_stop_requested(store: JobStore, job_id: str, stream_id: str) -> bool:
    return bool(store.r.hexists(store.stream_key(job_id, stream_id), "stop_requested"))


def stream_ids(store: JobStore, job_id: str) -> list[str]:
    """The job's streams now, in the order they were added."""
    raw = store.r.hget(store.job_key(job_id), "stream_ids")
    if raw is None:
        raise UnknownJobError(f"no job {job_id!r}")
    return list(json.loads(raw))


def stored_stream(store: JobStore, job_id: str, stream_id: str) -> dict[str, Any]:
    """A stream's spec as stored with the job (plain data, as `parse_job_spec` takes it)."""
    raw = store.r.hget(store.job_key(job_id), "spec")
    if raw is None:
        raise UnknownJobError(f"no job {job_id!r}")
    for stream in json.loads(raw).get("streams", []):
        if stream.get("id") == stream_id:
            return dict(stream)
    raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
