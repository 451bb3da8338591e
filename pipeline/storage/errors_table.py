"""The `errors` table: stream errors copied from the job store into Parquet, each record exactly once.

The store keeps every stream error (for `sanstream status`); the table makes them queryable beside the
areas. Exports are committed like every other part (stage, record, publish; see `pipeline.storage.writer`)
and fenced like writers: each export takes a new export epoch, settles what earlier exports left in
staging by the record, and names its part by the ordinals of the records it holds; the record is accepted
only under the newest epoch and only if no other export covered those records. So a driver that dies
mid-export, a resumed job exporting again, or two exports at once never write a record twice or lose one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jobs.state import JobStore
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import records_table
from pipeline.storage.writer import CommitRejected, CommittedPart, PartWriter, recover_staged_parts


class _ExportRecorder(StreamRecorder):
    """Records an export part under the export epoch, covering the records after `after`."""

    def __init__(self, store: JobStore, job_id: str, stream_id: str, after: int, epoch: int) -> None:
        super().__init__(store, job_id, stream_id)
        self.after, self.epoch = after, epoch

    def _record(self, part: CommittedPart) -> None:
        self.store.record_export(
            self.job_id, self.stream_id, part.table, part.name, self.after, part.last_frame, self.epoch
        )


def export_errors(store: JobStore, out_dir: str | Path, job_id: str, stream_ids: list[str]) -> int:
    """Write the streams' not yet exported error records as `errors` parts; returns rows written."""
    written = 0
    for stream_id in stream_ids:
        try:
            written += _export_stream(store, Path(out_dir), job_id, stream_id)
        except CommitRejected:
            continue  # a newer export of this stream took over; it covers these records
    return written


def _export_stream(store: JobStore, out_dir: Path, job_id: str, stream_id: str) -> int:
    epoch = store.bump_export_epoch(job_id, stream_id, "errors")
    recorded = {part["part"] for part in store.committed_parts(job_id, stream_id, "errors")}
    recover_staged_parts(out_dir, "errors", job_id, stream_id, recorded, epoch=epoch)
    exported, pending = store.errors_to_export(job_id, stream_id)
    if not pending:
        return 0
    rows = [
        {
            "job_id": job_id,
            "stream_id": stream_id,
            "time": float(record["time"]),
            "kind": str(record["kind"]),
            "message": str(record["message"]),
        }
        for _, record in pending
    ]
    recorder = _ExportRecorder(store, job_id, stream_id, exported, epoch)
    # One part per export, whatever its size, so the record covers exactly these ordinals.
    with PartWriter(
        out_dir,
        "errors",
        job_id,
        stream_id,
        epoch=epoch,
        recorder=recorder,
        first_ordinal=pending[0][0],
        max_rows=max(len(rows), 1),
    ) as writer:
        writer.append(records_table("errors", rows))
    return len(rows)
