"""Why the model pool did not start, in the replicas' own words.

When a SAN replica's constructor fails (weights that do not load, a device it cannot use, out of memory),
Ray Serve retries it, gives up, and `serve.run` raises `RuntimeError: Deploying application ... failed`
with the deployment's state as its text: which deployment failed, how often, and somewhere inside, the
replica's traceback. What a user needs is the last line of that traceback
(`CheckpointMismatchError: ...`), so that is what the job records, for each stream that could not run
(`sanstream status` and the `errors` table) and for the job itself.

Ray is never imported here: Serve is asked for the deployment's state only where Ray already runs.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable
from typing import Any

#: A traceback's last line: `module.ErrorName: message` (Ray wraps as `RayTaskError(ErrorName): ...`).
_ERROR_LINE = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*\.)?(?P<name>[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))"
    r"(?:\(\w+\))?: (?P<message>.+)$"
)
#: Ray's wrappers: the error they wrap, named on their own line further down, is the cause.
_WRAPPERS = {"RayTaskError", "RayActorError", "ActorDiedError", "RuntimeError", "DeploymentUnavailableError"}
KIND = "PoolStartError"


class PoolStartError(RuntimeError):
    """The job's SAN replica pool did not start; the message is the replicas' own error."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def root_cause(texts: Iterable[str]) -> str | None:
    """`ErrorName: message` of the innermost error named in `texts` (tracebacks, Serve's status
    messages), preferring errors that are not Ray's wrappers; None when none is named."""
    found: list[tuple[str, str]] = []
    for text in texts:
        for line in text.splitlines():
            match = _ERROR_LINE.match(line)
            if match is not None and not match["message"].startswith("ray::"):
                found.append((match["name"], match["message"].strip()))
    for name, message in reversed(found):
        if name not in _WRAPPERS:
            return f"{name}: {message}"
    return f"{found[-1][0]}: {found[-1][1]}" if found else None


def _serve_messages(app: str) -> list[str]:
    """Serve's own account of application `app` and its deployments (empty when Serve cannot say)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():  # serve.status() would start a Ray just to answer
        return []
    with contextlib.suppress(Exception):
        from ray import serve

        status: Any = serve.status().applications.get(app)
        if status is not None:
            return [status.message, *(d.message for d in status.deployments.values())]
    return []


def pool_start_error(error: BaseException, app: str, job_id: str) -> PoolStartError:
    """A `PoolStartError` saying why `serve.run` of job `job_id`'s application `app` failed with `error`."""
    text = str(error) or type(error).__name__
    cause = root_cause([text, *_serve_messages(app)])
    if cause is None or cause == f"RuntimeError: {text.splitlines()[0]}":
        cause = text.splitlines()[0]
    # A whole traceback does not belong in a table cell: the cause is its last line.
    return PoolStartError(f"the model pool did not start: {cause}"[:2000], job_id)


def record_pool_failure(store: Any, spec: Any, job_id: str, streams: list[str], failure: Exception) -> None:
    """Fail each of `streams` with the pool's error, in the job store and the `errors` table (best effort:
    the job's own failure is recorded by the driver either way)."""
    from pipeline.storage.errors_table import export_errors

    for stream_id in streams:
        with contextlib.suppress(Exception):
            store.record_error(job_id, stream_id, KIND, str(failure))
            store.set_stream_status(job_id, stream_id, "failed")
    with contextlib.suppress(Exception):
        export_errors(store, spec.output, job_id, streams)
