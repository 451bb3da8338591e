"""A job's progress in Redis: status, per-stream counters, errors, heartbeats, cancel flag, committed parts.

Redis is the one place every worker (decoders, the sink, `sanstream status` in another shell) can see,
and with append-only persistence it survives the job's process. Every check-then-write (status
transitions, commit fencing, job creation) runs as one Lua script (`pipeline.jobs.state_scripts`), so two
workers can never interleave between the check and the write.

`JobStore` is the whole store. This module holds its job and stream lifecycle: the status state machine,
counters, stop requests, heartbeats, errors and the snapshot `sanstream status` shows. Commit records and
writer fencing are its `pipeline.jobs.state_commits.CommitLedger` base; the key layout is in
`pipeline.jobs.state_base`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from pipeline.jobs import state_scripts
from pipeline.jobs.state_base import decode_hash, reply_number, reply_text
from pipeline.jobs.state_commits import CommitLedger
from pipeline.jobs.state_errors import IllegalTransitionError, JobExistsError, UnknownJobError

JOB_STATUSES = ("queued", "running", "interrupted", "completed", "failed", "cancelled")
# `reconnecting`: a live source that cannot connect (or lost its connection) and is retrying;
# `interrupted`: the driver was stopped (Ctrl-C, SIGTERM) and the stream can be resumed.
STREAM_STATUSES = ("pending", "running", "reconnecting", "interrupted", "completed", "failed", "cancelled")
COUNTERS = ("decoded", "analysed", "written", "dropped")
MAX_ERRORS_KEPT = 1000
_TERMINAL = ("completed", "failed", "cancelled")

# A job may also fail before it ever runs (e.g. the model cannot load), hence queued -> failed.
# `interrupted` is not terminal: `resume` (or the same `run`) takes the job back to running.
_JOB_TRANSITIONS = {
    "queued": {"running", "cancelled", "failed", "interrupted"},
    "running": {"running", "interrupted", *_TERMINAL},
    "interrupted": {"running", "cancelled", "failed"},
}
_STREAM_TRANSITIONS = {
    "pending": {"running", "cancelled", "failed", "interrupted"},
    "running": {"running", "reconnecting", "interrupted", *_TERMINAL},
    "reconnecting": {"running", "reconnecting", "interrupted", *_TERMINAL},
    "interrupted": {"running", "cancelled", "failed", "interrupted"},
}


class JobStore(CommitLedger):
    """Reads and writes job state; every method is a single atomic Redis operation or script."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sanstream", clock: Callable[[], float] = time.time
    ):
        super().__init__(client, prefix, clock)
        self._set_status = client.register_script(state_scripts.SET_STATUS)
        self._create = client.register_script(state_scripts.CREATE_JOB)

    # jobs -----------------------------------------------------------------------------------------
    def create_job(self, job_id: str, spec: Mapping[str, Any], stream_ids: Sequence[str]) -> None:
        """Register a queued job with its spec (stored as JSON) and a pending entry per stream."""
        if len(set(stream_ids)) != len(stream_ids):
            raise ValueError(f"duplicate stream ids: {list(stream_ids)}")
        keys = [self._job(job_id), f"{self.prefix}:jobs", *(self._stream(job_id, s) for s in stream_ids)]
        args = [job_id, json.dumps(spec), json.dumps(list(stream_ids)), repr(self.clock())]
        if not self._create(keys=keys, args=args):
            raise JobExistsError(f"job {job_id!r} already exists")

    def _require_job(self, job_id: str) -> None:
        if not self.r.exists(self._job(job_id)):
            raise UnknownJobError(f"no job {job_id!r}")

    def _transition(
        self, key: str, what: str, status: str, statuses: Sequence[str], table: Mapping[str, set[str]]
    ) -> str:
        if status not in statuses:
            raise ValueError(f"unknown status {status!r} for {what}; statuses: {', '.join(statuses)}")
        allowed_from = [s for s, targets in table.items() if status in targets]
        stamp = "started" if status == "running" else "finished" if status in _TERMINAL else ""
        code, previous = self._set_status(keys=[key], args=[status, repr(self.clock()), stamp, *allowed_from])
        previous = reply_text(previous)
        if code == 0:
            raise UnknownJobError(f"no {what}")
        if code == 2:
            raise IllegalTransitionError(f"{what}: cannot go from {previous} to {status}")
        return previous

    def set_status(self, job_id: str, status: str) -> str:
        """Move the job to `status` if the state machine allows it; returns the previous status."""
        return self._transition(self._job(job_id), f"job {job_id!r}", status, JOB_STATUSES, _JOB_TRANSITIONS)

    def status(self, job_id: str) -> str:
        value = self.r.hget(self._job(job_id), "status")
        if value is None:
            raise UnknownJobError(f"no job {job_id!r}")
        return reply_text(value)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first, with status and times."""
        ids = [reply_text(j) for j in self.r.zrange(f"{self.prefix}:jobs", 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), ["status", "created", "updated"])
        jobs = []
        for job_id, (status, created, updated) in zip(ids, pipe.execute(), strict=True):
            if status is not None:
                jobs.append(
                    {
                        "job_id": job_id,
                        "status": reply_text(status),
                        "created": float(reply_text(created)),
                        "updated": float(reply_text(updated)),
                    }
                )
        return jobs

    def request_cancel(self, job_id: str) -> None:
        """Ask every worker of the job to stop; they poll `cancel_requested`."""
        self._require_job(job_id)
        self.r.hsetnx(self._job(job_id), "cancel_requested", repr(self.clock()))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.hexists(self._job(job_id), "cancel_requested"))

    def request_interrupt(self, job_id: str) -> None:
        """Ask every worker of the job to stop and commit what it has, leaving the job resumable
        (the driver got SIGINT/SIGTERM). Cleared by `clear_interrupt` when the job is resumed."""
        self._require_job(job_id)
        self.r.hsetnx(self._job(job_id), "interrupt_requested", repr(self.clock()))

    def clear_interrupt(self, job_id: str) -> None:
        self.r.hdel(self._job(job_id), "interrupt_requested")

    def stop_requested(self, job_id: str) -> str | None:
        """Why workers should stop now: "cancelled" (final), "interrupted" (resumable), or None."""
        cancel, interrupt = self.r.hmget(self._job(job_id), ["cancel_requested", "interrupt_requested"])
        if cancel is not None:
            return "cancelled"
        return "interrupted" if interrupt is not None else None

    def heartbeat(self, job_id: str, worker: str) -> None:
        self.r.hset(f"{self._job(job_id)}:heartbeats", worker, repr(self.clock()))

    def heartbeats(self, job_id: str) -> dict[str, float]:
        raw = decode_hash(self.r.hgetall(f"{self._job(job_id)}:heartbeats"))
        return {worker: float(t) for worker, t in raw.items()}

    # streams --------------------------------------------------------------------------------------
    def set_stream_status(self, job_id: str, stream_id: str, status: str) -> str:
        key = self._stream(job_id, stream_id)
        what = f"stream {stream_id!r} of job {job_id!r}"
        return self._transition(key, what, status, STREAM_STATUSES, _STREAM_TRANSITIONS)

    def set_stream_actors(self, job_id: str, stream_id: str, decoder: str, writer: str) -> None:
        """Name the decoder and writer actors that carry the stream (shown by `status`, used by operators
        and fault tests to find the process of a stream among shared ones)."""
        self.r.hset(self._stream(job_id, stream_id), mapping={"decoder": decoder, "writer": writer})

    def stream_actors(self, job_id: str, stream_id: str) -> tuple[str, str]:
        """(decoder actor name, writer actor name) of the stream, '' where not placed yet."""
        decoder, writer = self.r.hmget(self._stream(job_id, stream_id), ["decoder", "writer"])
        return (reply_text(decoder) if decoder else "", reply_text(writer) if writer else "")

    def stream_status(self, job_id: str, stream_id: str) -> str:
        value = self.r.hget(self._stream(job_id, stream_id), "status")
        if value is None:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        return reply_text(value)

    def incr(self, job_id: str, stream_id: str, counter: str, amount: int = 1) -> int:
        """Atomically add to a stream counter (`decoded`, `analysed` or `written`); returns the new value."""
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}; counters: {', '.join(COUNTERS)}")
        return int(self.r.hincrby(self._stream(job_id, stream_id), counter, amount))

    def stream_counter(self, job_id: str, stream_id: str, counter: str) -> int:
        """Current value of a stream counter (0 when never incremented)."""
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}; counters: {', '.join(COUNTERS)}")
        return int(self.r.hget(self._stream(job_id, stream_id), counter) or 0)

    # errors ---------------------------------------------------------------------------------------
    def record_error(self, job_id: str, stream_id: str | None, kind: str, message: str) -> None:
        """Append an error to the job's list and, for a stream's error, to the stream's list too.

        Lists keep the last 1000 records; `error_count` keeps the true total.
        """
        record = json.dumps({"time": self.clock(), "stream_id": stream_id, "kind": kind, "message": message})
        job_key = self._job(job_id)
        pipe = self.r.pipeline(transaction=True)
        targets = [job_key] + ([self._stream(job_id, stream_id)] if stream_id is not None else [])
        for key in targets:
            pipe.rpush(f"{key}:errors", record)
            pipe.ltrim(f"{key}:errors", -MAX_ERRORS_KEPT, -1)
            pipe.hincrby(key, "error_count", 1)
        pipe.execute()

    def errors(self, job_id: str, stream_id: str | None = None) -> list[dict[str, Any]]:
        key = self._job(job_id) if stream_id is None else self._stream(job_id, stream_id)
        return [json.loads(reply_text(item)) for item in self.r.lrange(f"{key}:errors", 0, -1)]

    # snapshot -------------------------------------------------------------------------------------
    def snapshot(self, job_id: str) -> dict[str, Any]:
        """Everything known about the job as plain JSON-serialisable data (`sanstream status --json`)."""
        job_key = self._job(job_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(job_key)
        pipe.hgetall(f"{job_key}:heartbeats")
        pipe.lrange(f"{job_key}:errors", 0, -1)
        job_raw, beats, errors = pipe.execute()
        job = decode_hash(job_raw)
        if not job:
            raise UnknownJobError(f"no job {job_id!r}")
        stream_ids: list[str] = json.loads(job["stream_ids"])
        pipe = self.r.pipeline(transaction=True)
        for stream_id in stream_ids:
            key = self._stream(job_id, stream_id)
            pipe.hgetall(key)
            pipe.lrange(f"{key}:errors", 0, -1)
        replies = pipe.execute()
        streams: dict[str, Any] = {}
        for i, stream_id in enumerate(stream_ids):
            fields, stream_errors = decode_hash(replies[2 * i]), replies[2 * i + 1]
            committed: dict[str, dict[str, int | float | None]] = {}
            info: dict[str, Any] = {"status": fields.pop("status", None)}
            for name, value in fields.items():
                if name.startswith("committed:"):
                    _, table, stat = name.split(":", 2)
                    committed.setdefault(table, {})[stat] = reply_number(value)
                elif name in ("decoder", "writer"):  # actor names
                    info[name] = value
                elif name == "alerts":  # the alert state committed with the stream's parts
                    info[name] = json.loads(value)
                else:
                    info[name] = reply_number(value)
            info["committed"] = committed
            info["errors"] = [json.loads(reply_text(e)) for e in stream_errors]
            streams[stream_id] = info
        return {
            "job_id": job_id,
            "status": job["status"],
            "spec": json.loads(job["spec"]),
            "created": float(job["created"]),
            "updated": float(job["updated"]),
            "started": reply_number(job.get("started")),
            "finished": reply_number(job.get("finished")),
            "cancel_requested": "cancel_requested" in job,
            "interrupt_requested": "interrupt_requested" in job,
            "error_count": int(job.get("error_count", 0)),
            "errors": [json.loads(reply_text(e)) for e in errors],
            "heartbeats": {reply_text(w): float(reply_text(t)) for w, t in beats.items()},
            "streams": streams,
        }
