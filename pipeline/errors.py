"""The exception types a user can fix, gathered so the CLI reports them as one clear line, not a traceback.

Looked up lazily, and only in modules already imported: the modules that define them pull in torch, Ray or
DuckDB, and an error can only come from a module that was loaded, so `sanstream status` never pays for the
model stack just to name its errors.
"""

from __future__ import annotations

import sys

USER_ERROR_NAMES: dict[str, tuple[str, ...]] = {
    "pipeline.cli.common": ("CommandError",),
    "pipeline.cli.serve": ("ServeError",),
    "pipeline.cli.client": ("ServiceError",),
    "pipeline.decode.errors": ("DecodeError",),
    "pipeline.jobs.redis_server": ("EmbeddedRedisError",),
    "pipeline.jobs.spec": ("JobSpecError",),
    "pipeline.jobs.takeover": ("JobNotResumableError",),
    "pipeline.jobs.state_errors": ("JobExistsError", "UnknownJobError"),
    "pipeline.san.config": ("UnknownModelError",),
    "pipeline.san.preprocess": ("ImageError",),
    "pipeline.san.vocabulary": ("VocabularyError",),
    "pipeline.san.weights": ("WeightsError",),
    "pipeline.storage.writer": ("OutputDirError",),
}


def user_errors() -> tuple[type[Exception], ...]:
    """Exception classes whose message is the whole story for the user (from the loaded modules)."""
    found: list[type[Exception]] = []
    for module_name, names in USER_ERROR_NAMES.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found.extend(getattr(module, name) for name in names)
    return tuple(found)
