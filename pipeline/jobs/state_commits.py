"""The commit ledger of a job's streams: which writer may commit, and which parts are committed.

A Parquet part counts once its record is here (`pipeline.storage.writer` records a staged part, then
publishes it). Writers are fenced by an epoch per stream, so a superseded writer's commits are refused and
two writers never both append; exporters of stored records are fenced by an epoch per table. A retried
commit of a recorded part is a no-op, which keeps commits exactly-once. The stream's alert state is
committed in the same step as its parts, and the webhook's progress is kept beside them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

from pipeline.jobs import state_scripts
from pipeline.jobs.ids import check_id
from pipeline.jobs.state_base import StoreBase, decode_hash, reply_text
from pipeline.jobs.state_errors import StaleWriterError, UnknownJobError

PRIMARY_TABLE = "class_areas"  # its commits advance the stream's `written` / `last_written_frame`


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


class CommitLedger(StoreBase):
    """Writer fencing, part commits, exports of stored records, and what is settled with them."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sanstream", clock: Callable[[], float] = time.time
    ):
        super().__init__(client, prefix, clock)
        self._bump = client.register_script(state_scripts.BUMP_EPOCH)
        self._commit = client.register_script(state_scripts.RECORD_COMMIT)
        self._delivered = client.register_script(state_scripts.SET_DELIVERED)
        self._export = client.register_script(state_scripts.RECORD_EXPORT)

    def bump_writer_epoch(self, job_id: str, stream_id: str) -> int:
        """Start a new writer generation for the stream; commits from older epochs are rejected from now."""
        epoch = int(self._bump(keys=[self._stream(job_id, stream_id)]))
        if epoch < 0:
            raise UnknownJobError(f"no stream {stream_id!r} in job {job_id!r}")
        return epoch

    def writer_epoch(self, job_id: str, stream_id: str) -> int:
        return int(reply_text(self.r.hget(self._stream(job_id, stream_id), "epoch") or 0))

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
        return None if value is None else reply_text(value)

    def webhook_delivered(self, job_id: str, stream_id: str) -> int:
        """Sequence of the last alert record the stream's webhook settled (delivered or given up), or -1."""
        value = self.r.hget(self._stream(job_id, stream_id), "webhook_delivered")
        return int(reply_text(value)) if value is not None else -1

    def set_webhook_delivered(self, job_id: str, stream_id: str, sequence: int) -> None:
        """Note that alert records through `sequence` are settled; never moves backwards."""
        self._delivered(keys=[self._stream(job_id, stream_id)], args=[sequence])

    def errors_to_export(self, job_id: str, stream_id: str) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """The stream's error records not yet in the `errors` table, with their ordinals (1-based, over
        every error the stream ever had), and the last ordinal already exported. Records trimmed from the
        store's list (over `state.MAX_ERRORS_KEPT` since the last export) are gone and not exported."""
        key = self._stream(job_id, stream_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(f"{key}:errors", 0, -1)
        pipe.hmget(key, ["error_count", "exported:errors"])
        raw, (total, exported) = pipe.execute()
        done = int(exported or 0)
        first = int(total or 0) - len(raw) + 1
        records = [(first + i, json.loads(reply_text(item))) for i, item in enumerate(raw)]
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
        return int(reply_text(value)) if value is not None else -1

    def committed_last_pts(self, job_id: str, stream_id: str, table: str = PRIMARY_TABLE) -> float | None:
        """`pts_seconds` of the highest committed frame of `table`, or None: a restarted live stream
        continues its timeline after it, and reports the frames lost in between as a gap."""
        value = self.r.hget(self._stream(job_id, stream_id), f"committed:{table}:last_pts")
        return float(reply_text(value)) if value is not None else None

    def part_recorded(self, job_id: str, stream_id: str, table: str, part_name: str) -> bool:
        """Whether the store holds the commit record of this part (read back after a lost reply)."""
        return bool(self.r.hexists(f"{self._stream(job_id, stream_id)}:parts", f"{table}/{part_name}"))

    def committed_parts(self, job_id: str, stream_id: str, table: str | None = None) -> list[dict[str, Any]]:
        """Recorded parts of the stream (optionally of one table), in name order."""
        raw = decode_hash(self.r.hgetall(f"{self._stream(job_id, stream_id)}:parts"))
        records = [
            json.loads(v) for k, v in sorted(raw.items()) if table is None or k.startswith(f"{table}/")
        ]
        return records
