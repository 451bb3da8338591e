"""The job store's errors, in a module of their own so callers can name them without the store.

Workers, the CLI and the service catch these to tell a missing job, a refused status change and a fenced-off
writer apart; `pipeline.errors` reports `UnknownJobError` and `JobExistsError` to the user as one line.
"""

from __future__ import annotations


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
