"""The exception types a user can fix, gathered so the CLI reports them as one clear line, not a traceback."""

from __future__ import annotations

from pipeline.cli.common import CommandError
from pipeline.decode.errors import DecodeError
from pipeline.jobs.redis_server import EmbeddedRedisError
from pipeline.jobs.spec import JobSpecError
from pipeline.jobs.state import JobExistsError, UnknownJobError
from pipeline.san.config import UnknownModelError
from pipeline.san.preprocess import ImageError
from pipeline.san.vocabulary import VocabularyError
from pipeline.san.weights import WeightsError
from pipeline.storage.writer import OutputDirError

USER_ERRORS: tuple[type[Exception], ...] = (
    UnknownModelError,
    ImageError,
    VocabularyError,
    WeightsError,
    CommandError,
    UnknownJobError,
    EmbeddedRedisError,
    JobSpecError,
    JobExistsError,
    OutputDirError,
    DecodeError,
)
