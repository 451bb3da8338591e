"""The job store as a part writer's `Recorder`: commit records of one stream, fenced by its writer epoch."""

from __future__ import annotations

from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import StaleWriterError, UnknownJobError
from pipeline.storage.writer import CommitRejected, CommittedPart


class StreamRecorder:
    """Records a stream's parts in the job store; a superseded epoch or a vanished job is a rejection,
    which tells the writer its staged part can never become committed."""

    def __init__(self, store: JobStore, job_id: str, stream_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.stream_id = stream_id

    def record(self, part: CommittedPart) -> None:
        try:
            self._record(part)
        except (StaleWriterError, UnknownJobError) as error:
            raise CommitRejected(str(error)) from error

    def _record(self, part: CommittedPart) -> None:
        """The store's own record call; a recorder with other fencing (an export) overrides it."""
        self.store.record_part(self.job_id, self.stream_id, part)

    def is_recorded(self, part: CommittedPart) -> bool:
        return self.store.part_recorded(self.job_id, self.stream_id, part.table, part.name)
