"""The `errors` table: stream errors copied from the job store into Parquet, each record exactly once.

The store keeps every stream error (for `sanstream status`); the table makes them queryable beside the
areas. An export part is named by the ordinals of the records it holds and recorded with a check that no
other export covered them, so a driver that dies mid-export, or a resumed job exporting again, never
writes a record twice.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.jobs.state import JobStore, StaleWriterError, UnknownJobError
from pipeline.storage.rows import records_table
from pipeline.storage.writer import CommitRejected, CommittedPart, PartWriter


class _ExportRecorder:
    def __init__(self, store: JobStore, job_id: str, stream_id: str, after: int) -> None:
        self.store, self.job_id, self.stream_id, self.after = store, job_id, stream_id, after

    def record(self, part: CommittedPart) -> None:
        try:
            self.store.record_export(
                self.job_id, self.stream_id, part.table, part.name, self.after, part.last_frame
            )
        except (StaleWriterError, UnknownJobError) as error:
            raise CommitRejected(str(error)) from error

    def is_recorded(self, part: CommittedPart) -> bool:
        return self.store.part_recorded(self.job_id, self.stream_id, part.table, part.name)


def export_errors(store: JobStore, out_dir: str | Path, job_id: str, stream_ids: list[str]) -> int:
    """Write the streams' not yet exported error records as `errors` parts; returns rows written."""
    written = 0
    for stream_id in stream_ids:
        exported, pending = store.errors_to_export(job_id, stream_id)
        if not pending:
            continue
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
        recorder = _ExportRecorder(store, job_id, stream_id, exported)
        # One part per export, whatever its size, so the record covers exactly these ordinals.
        with PartWriter(
            out_dir,
            "errors",
            job_id,
            stream_id,
            recorder=recorder,
            first_ordinal=pending[0][0],
            max_rows=max(len(rows), 1),
        ) as writer:
            writer.append(records_table("errors", rows))
        written += len(rows)
    return written
