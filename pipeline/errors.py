"""The exception types a user can fix, gathered so the CLI reports them as one clear line, not a traceback."""

from __future__ import annotations

from pipeline.san.config import UnknownModelError
from pipeline.san.preprocess import ImageError
from pipeline.san.vocabulary import VocabularyError
from pipeline.san.weights import WeightsError

USER_ERRORS: tuple[type[Exception], ...] = (UnknownModelError, ImageError, VocabularyError, WeightsError)
