"""What the read-side commands (`status`, `cancel`, `query`, `plot`) share: their error type, output-dir
checks, and a job store that cleans up the Redis server it had to start.

Kept free of torch and the model so these commands stay usable (and fast) on a machine that only holds
the output of a job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from pipeline.jobs.ids import id_problem
from pipeline.jobs.redis_server import resolve_redis
from pipeline.jobs.state import JobStore

DEFAULT_OUT = Path("sanstream-out")
#: Job statuses after which nothing more happens (mirrors the job store's state machine).
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


class CommandError(ValueError):
    """A problem with what the user asked for (a missing directory, an unknown stream, bad SQL).

    Listed in `pipeline.errors.user_errors()`, so the CLI prints its message as one line, no traceback.
    """


def require_out_dir(out: Path) -> Path:
    """`out` if it is an existing directory, else a `CommandError` that names it."""
    if not out.exists():
        raise CommandError(f"output directory {out} does not exist; pass the --out a job wrote to")
    if not out.is_dir():
        raise CommandError(f"output path {out} is not a directory")
    return out


def check_job_id(job_id: str) -> str:
    """Reject an id that cannot name a job before it reaches the store (which would raise ValueError)."""
    problem = id_problem(job_id)
    if problem is not None:
        raise CommandError(f"job id {job_id!r}: {problem}")
    return job_id


def redacted(url: str) -> str:
    """`url` without its password, so an error message never prints a secret."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def open_job_store(out: Path) -> Iterator[JobStore]:
    """The job store for jobs that wrote to `out`: `REDIS_URL` if set, else the output dir's own server.

    Without `REDIS_URL`, state lives in `out/redis/`; when no such directory exists no job ever wrote
    there, and starting a fresh, empty server (leaving a new `redis/` behind) would only hide the typo,
    so that is an error. On exit the server is shut down (with a save) unless another user still holds it
    (a running job, a service, another command; `EmbeddedRedis.stop`): a command never leaves a server
    running, also not one a killed driver left behind, and never stops one a live job uses.
    """
    env_url = os.environ.get("REDIS_URL")
    if not env_url:
        require_out_dir(out)
        if not (out / "redis").is_dir():
            raise CommandError(
                f"no job state under {out}: {out / 'redis'} does not exist (no job wrote to this output "
                "directory; pass its --out, or set REDIS_URL to the Redis the job used)"
            )
    try:
        url, handle = resolve_redis(out)
    except OSError as error:  # e.g. OUT/redis belongs to another user
        raise CommandError(
            f"cannot use the job state in {out / 'redis'}: {error.strerror or error}"
        ) from None
    where = f"REDIS_URL={redacted(url)}" if env_url else f"the job state server of {out}"
    try:
        try:
            client = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30
            )
        except ValueError as error:  # a malformed REDIS_URL, e.g. without `redis://`
            raise CommandError(f"cannot use {where}: {error}") from None
        try:
            try:
                client.ping()
            except redis.RedisError as error:
                raise CommandError(f"cannot reach {where}: {error}") from error
            yield JobStore(client)
        finally:
            client.close()
    finally:
        if handle is not None:
            handle.stop()


def known_jobs_error(store: JobStore, job_id: str, out: Path) -> CommandError:
    """The error for an unknown job id, listing the ids that do exist so a typo is easy to spot."""
    where = "in REDIS_URL" if os.environ.get("REDIS_URL") else f"in {out}"
    ids = [job["job_id"] for job in store.list_jobs()]
    listing = f"; jobs there: {', '.join(ids[-10:])}" if ids else "; it holds no jobs"
    return CommandError(f"no job {job_id!r} {where}{listing}")
