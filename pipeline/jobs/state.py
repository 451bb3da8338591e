"""A job's progress in Redis: status, per-stream counters, errors, heartbeats, cancel flag, committed parts.

Redis is the one place every worker (decoders, the sink, `sanstream status` in another shell) can see,
and with append-only persistence it survives the job's process. Every check-then-write (status
transitions, commit fencing, job creation) runs as one Lua script, so two workers can never
interleave between the check and the write.

Keys (all under `sanstream:`):
    jobs                                   sorted set of job ids by creation time
    job:<job>                              hash: status, spec (JSON), stream_ids (JSON), times, cancel flag
    job:<job>:errors                       list of JSON error records (last 1000)
    job:<job>:heartbeats                   hash: worker name -> time
    job:<job>:stream:<stream>              hash: status, counters, epoch, committed:<table>:* totals
    job:<job>:stream:<stream>:errors       list of JSON error records (last 1000)
    job:<job>:stream:<stream>:parts        hash: "<table>/<part name>" -> JSON commit record
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pipeline.jobs.ids import check_id

JOB_STATUSES = ("queued", "running", "interrupted", "completed", "failed", "cancelled")
# `reconnecting`: a live source that cannot connect (or lost its connection) and is retrying;
# `interrupted`: the driver was stopped (Ctrl-C, SIGTERM) and the stream can be resumed.
STREAM_STATUSES = ("pending", "running", "reconnecting", "interrupted", "completed", "failed", "cancelled")
COUNTERS = ("decoded", "analysed", "written", "dropped")
PRIMARY_TABLE = "class_areas"  # its commits advance the stream's `written` / `last_written_frame`
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

_SET_STATUS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
for i = 4, #ARGV do
  if ARGV[i] == cur then
    if cur ~= ARGV[1] then
      redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated', ARGV[2])
      if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[2]) end
    end
    return {1, cur}
  end
end
return {2, cur}
"""

_CREATE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'status', 'queued', 'spec', ARGV[2], 'stream_ids', ARGV[3],
           'created', ARGV[4], 'updated', ARGV[4], 'error_count', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'status', 'pending', 'decoded', 0, 'analysed', 0, 'written', 0,
             'last_written_frame', -1, 'epoch', 0, 'error_count', 0, 'updated', ARGV[4])
end
return 1
"""

_BUMP_EPOCH = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""

# ARGV: epoch, table, part name, first, last, rows, frames, record JSON, primary table, now, last pts ('' if none),
# the stream's alert state committed with the part ('' if none; see pipeline.storage.stream_alerts)
_RECORD_COMMIT = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {-1, 0} end
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if current < 1 or current ~= tonumber(ARGV[1]) then return {0, current} end
local field = ARGV[2] .. '/' .. ARGV[3]
if redis.call('HEXISTS', KEYS[2], field) == 1 then return {2, current} end
redis.call('HSET', KEYS[2], field, ARGV[8])
local prefix = 'committed:' .. ARGV[2] .. ':'
redis.call('HINCRBY', KEYS[1], prefix .. 'rows', ARGV[6])
redis.call('HINCRBY', KEYS[1], prefix .. 'parts', 1)
local last = tonumber(redis.call('HGET', KEYS[1], prefix .. 'last_frame') or '-1')
if tonumber(ARGV[5]) > last then
  redis.call('HSET', KEYS[1], prefix .. 'last_frame', ARGV[5])
  if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], prefix .. 'last_pts', ARGV[11]) end
end
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'alerts', ARGV[12]) end
if ARGV[2] == ARGV[9] then
  redis.call('HINCRBY', KEYS[1], 'written', ARGV[7])
  local written = tonumber(redis.call('HGET', KEYS[1], 'last_written_frame') or '-1')
  if tonumber(ARGV[5]) > written then redis.call('HSET', KEYS[1], 'last_written_frame', ARGV[5]) end
end
redis.call('HSET', KEYS[1], 'updated', ARGV[10])
return {1, current}
"""


# Export of rows kept in the store (the `errors` table) as parts: the part covers the stream's records
# after ordinal ARGV[3] through ARGV[4], accepted only if nothing after ARGV[3] was exported yet, so two
# exports of the same records (a resumed driver, a retried call) never both succeed.
# Exporters are fenced like writers, by an export epoch per table: an exporter whose epoch was superseded
# is rejected (code 3), so the newest exporter may remove older exporters' unrecorded staged parts.
# KEYS: stream key, parts key. ARGV: table, part name, after, through, record JSON, now, export epoch
_RECORD_EXPORT = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return {-1, 0} end
local field = ARGV[1] .. '/' .. ARGV[2]
if redis.call('HEXISTS', KEYS[2], field) == 1 then return {2, 0} end
local epoch = tonumber(redis.call('HGET', KEYS[1], 'export_epoch:' .. ARGV[1]) or '0')
if epoch ~= tonumber(ARGV[7]) then return {3, epoch} end
local current = tonumber(redis.call('HGET', KEYS[1], 'exported:' .. ARGV[1]) or '0')
if current ~= tonumber(ARGV[3]) then return {0, current} end
redis.call('HSET', KEYS[1], 'exported:' .. ARGV[1], ARGV[4], 'updated', ARGV[6])
redis.call('HSET', KEYS[2], field, ARGV[5])
return {1, current}
"""


_SET_DELIVERED = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], 'webhook_delivered') or '-1')
if tonumber(ARGV[1]) > current then redis.call('HSET', KEYS[1], 'webhook_delivered', ARGV[1]) end
return 1
"""


class JobStateError(RuntimeError):
    """Base of the job store's errors."""


class UnknownJobError(JobStateError):
    """No such job (or no such stream in the job)."""


class JobExistsError(JobStateError):
    """A job with this id was already created."""


class IllegalTransitionError(JobStateError):
    """A status change the state machine does not allow (e.g. completed -> running)."""


class StaleWriterError(JobStateError):
    """A writer whose epoch was superseded tried to commit; it must stop writing."""


class PartRecord(Protocol):
    """What `record_part` needs from a published part (`pipeline.storage.writer.CommittedPart` fits)."""

    @property
    def table(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def first_frame(self) -> int: ...
    @property
    def last_frame(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def frames(self) -> int: ...
    @property
    def epoch(self) -> int: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _number(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


class JobStore:
    """Reads and writes job state; every method is a single atomic Redis operation or script."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sanstream", clock: Callable[[], float] = time.time
    ):
        self.r = client
        self.prefix = prefix
        self.clock = clock
        self._set_status = client.register_script(_SET_STATUS)
        self._create = client.register_script(_CREATE_JOB)
        self._bump = client.register_script(_BUMP_EPOCH)
        self._commit = client.register_script(_RECORD_COMMIT)
        self._delivered = client.register_script(_SET_DELIVERED)
        self._export = client.register_script(_RECORD_EXPORT)

    @classmethod
    def from_url(cls, url: str, *, retry_for_s: float = 60.0, **kwargs: Any) -> JobStore:
        """A store whose commands ride out a Redis restart: connection errors and "loading" replies are
        retried with capped exponential back-off for about `retry_for_s` seconds before they surface.
        Commits stay exactly-once under retries because the commit script is idempotent."""
        retries = max(1, int(retry_for_s / 0.5))
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
        )
        return cls(client, **kwargs)

    # keys -----------------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        """The Redis key of the job's hash (for modules that extend the store, like `stream_changes`)."""
        return self._job(job_id)

    def stream_key(self, job_id: str, stream_id: str) -> str:
        return self._stream(job_id, stream_id)

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{check_id(job_id, 'job_id')}"

    def _stream(self, job_id: str, stream_id: str) -> str:
        return f"{self._job(job_id)}:stream:{check_id(stream_id, 'stream_id')}"

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
        previous = _text(previous)
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
        return _text(value)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first, with status and times."""
        ids = [_text(j) for j in self.r.zrange(f"{self.prefix}:jobs", 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), ["status", "created", "updated"])
        jobs = []
        for job_id, (status, created, updated) in zip(ids, pipe.execute(), strict=True):
            if status is not None:
                jobs.append(
                    {
                        "job_id": job_id,
                        "status": _text(status),
                        "created": float(_text(created)),
                        "updated": float(_text(updated)),
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
        raw = _decode_hash(self.r.hgetall(f"{self._job(job_id)}:heartbeats"))
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
        return (_text(decoder) if decoder else "", _text(writer) if writer else "")

    def stream_status(self, job_id: str, stream_id: str) -> str:
        value = self.r.hget(self._stream(job_id, stream_id), "status")
        if value is None:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        return _text(value)

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
        return [json.loads(_text(item)) for item in self.r.lrange(f"{key}:errors", 0, -1)]

    # writer fencing and commits -------------------------------------------------------------------
    def bump_writer_epoch(self, job_id: str, stream_id: str) -> int:
        """Start a new writer generation for the stream; commits from older epochs are rejected from now."""
        epoch = int(self._bump(keys=[self._stream(job_id, stream_id)]))
        if epoch < 0:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        return epoch

    def writer_epoch(self, job_id: str, stream_id: str) -> int:
        return int(_text(self.r.hget(self._stream(job_id, stream_id), "epoch") or 0))

    def record_commit(
        self,
        job_id: str,
        stream_id: str,
        table: str,
        part_name: str,
        first_frame: int,
        last_frame: int,
        rows: int,
        writer_epoch: int,
        frames: int | None = None,
        last_pts: float | None = None,
        alert_state: str | None = None,
    ) -> bool:
        """Record a published part if `writer_epoch` is the stream's current epoch.

        Returns True when recorded, False when this part was already recorded (a retried call).
        Raises StaleWriterError when another writer took over. `frames` (distinct frames in the part)
        feeds the `written` counter for the primary table; it defaults to the frame span. `alert_state`,
        when given, is stored in the same atomic step (`committed_alert_state` reads it back).
        """
        check_id(table, "table")
        n_frames = frames if frames is not None else last_frame - first_frame + 1
        record = {
            "table": table,
            "part": part_name,
            "first_frame": first_frame,
            "last_frame": last_frame,
            "rows": rows,
            "frames": n_frames,
            "epoch": writer_epoch,
            "time": self.clock(),
        }
        if last_pts is not None:
            record["last_pts"] = last_pts
        stream_key = self._stream(job_id, stream_id)
        args: list[str | int] = [writer_epoch, table, part_name, first_frame, last_frame, rows, n_frames]
        code, current = self._commit(
            keys=[stream_key, f"{stream_key}:parts"],
            args=[
                *args,
                json.dumps(record),
                PRIMARY_TABLE,
                repr(self.clock()),
                "" if last_pts is None else repr(float(last_pts)),
                alert_state or "",
            ],
        )
        if code == -1:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        if code == 0 and int(current) == 0:
            raise StaleWriterError(
                f"stream {stream_id!r} in job {job_id!r} has no writer epoch yet: call bump_writer_epoch "
                "when a writer starts and commit with the epoch it returns"
            )
        if code == 0:
            raise StaleWriterError(
                f"writer epoch {writer_epoch} of stream {stream_id!r} in job {job_id!r} is stale (current "
                f"epoch {current}); part {part_name} is rejected and this writer must stop"
            )
        return bool(code == 1)

    def record_part(
        self, job_id: str, stream_id: str, part: PartRecord, alert_state: str | None = None
    ) -> bool:
        """`record_commit` for a writer's part record (with the stream's alert state, if it has alerts)."""
        return self.record_commit(
            job_id,
            stream_id,
            part.table,
            part.name,
            part.first_frame,
            part.last_frame,
            part.rows,
            part.epoch,
            frames=part.frames,
            last_pts=getattr(part, "last_pts", None),
            alert_state=alert_state,
        )

    def committed_alert_state(self, job_id: str, stream_id: str) -> str | None:
        """The alert state stored with the stream's last `events` or `frames` commit (None before any)."""
        value = self.r.hget(self._stream(job_id, stream_id), "alerts")
        return None if value is None else _text(value)

    def webhook_delivered(self, job_id: str, stream_id: str) -> int:
        """Sequence of the last alert record the stream's webhook settled (delivered or given up), or -1."""
        value = self.r.hget(self._stream(job_id, stream_id), "webhook_delivered")
        return int(_text(value)) if value is not None else -1

    def set_webhook_delivered(self, job_id: str, stream_id: str, sequence: int) -> None:
        """Note that alert records through `sequence` are settled; never moves backwards."""
        self._delivered(keys=[self._stream(job_id, stream_id)], args=[sequence])

    def errors_to_export(self, job_id: str, stream_id: str) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """The stream's error records not yet in the `errors` table, with their ordinals (1-based, over
        every error the stream ever had), and the last ordinal already exported. Records trimmed from the
        store's list (over MAX_ERRORS_KEPT since the last export) are gone and not exported."""
        key = self._stream(job_id, stream_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(f"{key}:errors", 0, -1)
        pipe.hmget(key, ["error_count", "exported:errors"])
        raw, (total, exported) = pipe.execute()
        done = int(exported or 0)
        first = int(total or 0) - len(raw) + 1
        records = [(first + i, json.loads(_text(item))) for i, item in enumerate(raw)]
        return done, [(ordinal, record) for ordinal, record in records if ordinal > done]

    def bump_export_epoch(self, job_id: str, stream_id: str, table: str) -> int:
        """Start a new exporter generation of the stream's `table`; older exporters are rejected from now."""
        key = self._stream(job_id, stream_id)
        if not self.r.hexists(key, "status"):
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        return int(self.r.hincrby(key, f"export_epoch:{check_id(table, 'table')}", 1))

    def record_export(
        self,
        job_id: str,
        stream_id: str,
        table: str,
        part_name: str,
        after: int,
        through: int,
        epoch: int,
    ) -> bool:
        """Record a part that exports the stream's records `after`+1 .. `through` of `table`.

        Returns True when recorded, False when this part was already recorded (a retried call); raises
        StaleWriterError when a newer exporter took over (`epoch` superseded) or another export already
        covered records after `after`."""
        key = self._stream(job_id, stream_id)
        record = {
            "table": table,
            "part": part_name,
            "first": after + 1,
            "last": through,
            "time": self.clock(),
        }
        code, current = self._export(
            keys=[key, f"{key}:parts"],
            args=[
                check_id(table, "table"),
                part_name,
                after,
                through,
                json.dumps(record),
                repr(self.clock()),
                epoch,
            ],
        )
        if code == -1:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        if code == 3:
            raise StaleWriterError(
                f"{table} exporter epoch {epoch} of stream {stream_id!r} in job {job_id!r} is stale (current "
                f"{current}); part {part_name} is rejected"
            )
        if code == 0:
            raise StaleWriterError(
                f"{table} of stream {stream_id!r} in job {job_id!r} were exported through {current} "
                f"meanwhile; part {part_name} (after {after}) is rejected"
            )
        return bool(code == 1)

    def committed_frames(self, job_id: str, stream_id: str, table: str = PRIMARY_TABLE) -> int:
        """Highest frame index committed for the stream's `table`, or -1: a restarted job resumes after it."""
        value = self.r.hget(self._stream(job_id, stream_id), f"committed:{table}:last_frame")
        return int(_text(value)) if value is not None else -1

    def committed_last_pts(self, job_id: str, stream_id: str, table: str = PRIMARY_TABLE) -> float | None:
        """`pts_seconds` of the highest committed frame of `table`, or None: a restarted live stream
        continues its timeline after it, and reports the frames lost in between as a gap."""
        value = self.r.hget(self._stream(job_id, stream_id), f"committed:{table}:last_pts")
        return float(_text(value)) if value is not None else None

    def part_recorded(self, job_id: str, stream_id: str, table: str, part_name: str) -> bool:
        """Whether the store holds the commit record of this part (read back after a lost reply)."""
        return bool(self.r.hexists(f"{self._stream(job_id, stream_id)}:parts", f"{table}/{part_name}"))

    def committed_parts(self, job_id: str, stream_id: str, table: str | None = None) -> list[dict[str, Any]]:
        """Recorded parts of the stream (optionally of one table), in name order."""
        raw = _decode_hash(self.r.hgetall(f"{self._stream(job_id, stream_id)}:parts"))
        records = [
            json.loads(v) for k, v in sorted(raw.items()) if table is None or k.startswith(f"{table}/")
        ]
        return records

    # snapshot -------------------------------------------------------------------------------------
    def snapshot(self, job_id: str) -> dict[str, Any]:
        """Everything known about the job as plain JSON-serialisable data (`sanstream status --json`)."""
        job_key = self._job(job_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(job_key)
        pipe.hgetall(f"{job_key}:heartbeats")
        pipe.lrange(f"{job_key}:errors", 0, -1)
        job_raw, beats, errors = pipe.execute()
        job = _decode_hash(job_raw)
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
            fields, stream_errors = _decode_hash(replies[2 * i]), replies[2 * i + 1]
            committed: dict[str, dict[str, int | float | None]] = {}
            info: dict[str, Any] = {"status": fields.pop("status", None)}
            for name, value in fields.items():
                if name.startswith("committed:"):
                    _, table, stat = name.split(":", 2)
                    committed.setdefault(table, {})[stat] = _number(value)
                elif name in ("decoder", "writer"):  # actor names
                    info[name] = value
                elif name == "alerts":  # the alert state committed with the stream's parts
                    info[name] = json.loads(value)
                else:
                    info[name] = _number(value)
            info["committed"] = committed
            info["errors"] = [json.loads(_text(e)) for e in stream_errors]
            streams[stream_id] = info
        return {
            "job_id": job_id,
            "status": job["status"],
            "spec": json.loads(job["spec"]),
            "created": float(job["created"]),
            "updated": float(job["updated"]),
            "started": _number(job.get("started")),
            "finished": _number(job.get("finished")),
            "cancel_requested": "cancel_requested" in job,
            "interrupt_requested": "interrupt_requested" in job,
            "error_count": int(job.get("error_count", 0)),
            "errors": [json.loads(_text(e)) for e in errors],
            "heartbeats": {_text(w): float(_text(t)) for w, t in beats.items()},
            "streams": streams,
        }
