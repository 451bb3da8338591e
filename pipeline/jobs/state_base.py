"""What every part of the job store shares: the Redis connection, the key layout and reply decoding.

The store is split by concept (job and stream lifecycle in `pipeline.jobs.state`, the commit ledger in
`pipeline.jobs.state_commits`), and both address the same keys, so the layout is named once, here.

Keys (all under `sanstream:`):
    jobs                                   sorted set of job ids by creation time
    job:<job>                              hash: status, spec (JSON), stream_ids (JSON), times, cancel flag
    job:<job>:errors                       list of JSON error records (last 1000)
    job:<job>:heartbeats                   hash: worker name -> time
    job:<job>:stream:<stream>              hash: status, counters, epoch, committed:<table>:* totals
    job:<job>:stream:<stream>:errors       list of JSON error records (last 1000)
    job:<job>:stream:<stream>:parts        hash: "<table>/<part name>" -> JSON commit record
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Self

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pipeline.jobs.ids import check_id


def reply_text(value: Any) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {reply_text(k): reply_text(v) for k, v in raw.items()}


def reply_number(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


class StoreBase:
    """The client, key prefix and clock of a job store, and the names of its keys."""

    def __init__(
        self, client: redis.Redis, prefix: str = "sanstream", clock: Callable[[], float] = time.time
    ):
        self.r = client
        self.prefix = prefix
        self.clock = clock

    @classmethod
    def from_url(cls, url: str, *, retry_for_s: float = 60.0, **kwargs: Any) -> Self:
        """A store whose commands ride out a Redis restart: connection errors and "loading" replies are
        retried with capped exponential back-off for about `retry_for_s` seconds before they surface.
        Commits stay exactly-once under retries because the commit script is idempotent."""
        retries = max(1, int(retry_for_s / 0.5))
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
        )
        return cls(client, **kwargs)

    def job_key(self, job_id: str) -> str:
        """The Redis key of the job's hash (for modules that extend the store, like `stream_changes`)."""
        return self._job(job_id)

    def stream_key(self, job_id: str, stream_id: str) -> str:
        return self._stream(job_id, stream_id)

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{check_id(job_id, 'job_id')}"

    def _stream(self, job_id: str, stream_id: str) -> str:
        return f"{self._job(job_id)}:stream:{check_id(stream_id, 'stream_id')}"
