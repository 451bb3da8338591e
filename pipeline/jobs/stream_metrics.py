"""Monitoring figures kept in Redis next to the job state: per-stream frame latency and reconnects, per-replica
batch statistics. `actors.service.metrics` renders them as Prometheus text for the service's `/metrics`.

Why Redis and not only Ray's metrics: the figures must be readable by whoever serves `/metrics` (the service's
ingress, possibly in another process or after a decoder actor restarted), and the per-stream counters they
sit beside already live here. Recording is one pipelined, non-transactional round trip per observation:
every command is an increment, so nothing needs to be read first and concurrent writers cannot lose counts.

Histograms keep one count per bucket (the observations that fell in it, not cumulative), plus `sum` and
`count`; cumulative counts, as Prometheus wants them, are computed when read.

Keys (under the store's prefix, `sanstream:`):
    job:<job>:stream:<stream>              hash field `reconnects` (beside the stream's other counters)
    job:<job>:stream:<stream>:latency      hash: le:<bound> -> observations in that bucket, sum, count
    replica:<replica>                      hash: batches, frames, le:<bound>, queue_depth,
                                           oldest_wait_seconds, seen (expires REPLICA_TTL_S after its
                                           last batch, so a replica that died vanishes)
    replicas                               sorted set: replica id -> time of its last batch
"""

from __future__ import annotations

import bisect
import collections
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from pipeline.jobs.state import COUNTERS, JobStore

# Seconds from a frame's arrival at its decoder to its answer: sub-second on a healthy pool, up to a
# minute when the pool is saturated and live frames queue.
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Frames per replica batch: powers of two up to any batch size a spec allows in practice.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
INF = math.inf
REPLICA_TTL_S = 3600
STREAM_COUNTERS: tuple[str, ...] = (*COUNTERS, "reconnects")


class Histogram(TypedDict):
    """A histogram as Prometheus reads it: (upper bound, cumulative count) pairs ending with +Inf."""

    buckets: list[tuple[float, int]]
    sum: float
    count: int


class StreamFigures(TypedDict):
    job_id: str
    stream_id: str
    status: str
    decoded: int
    analysed: int
    written: int  # frames committed to the primary table (the stream's `written` counter)
    dropped: int
    reconnects: int
    latency: Histogram


class ReplicaFigures(TypedDict):
    replica: str
    batches: int
    frames: int
    batch_size: Histogram
    queue_depth: int | None  # None when the replica could not measure it
    oldest_wait_seconds: float | None
    seen: float


def bucket_field(bound: float) -> str:
    """The hash field of the bucket with upper bound `bound` ("le:0.05", "le:1.0", "le:+Inf")."""
    return "le:+Inf" if bound == INF else f"le:{float(bound)!r}"


def bucket_of(value: float, bounds: Sequence[float]) -> float:
    """Upper bound of the bucket `value` falls in: the first bound >= value, else +Inf (Prometheus's
    `le` is inclusive)."""
    index = bisect.bisect_left(bounds, value)
    return bounds[index] if index < len(bounds) else INF


def cumulative(counts: dict[str, Any], bounds: Sequence[float]) -> list[tuple[float, int]]:
    """(bound, observations <= bound) for every bound and +Inf, from per-bucket counts keyed by
    `bucket_field`; missing buckets count 0."""
    total = 0
    out = []
    for bound in (*bounds, INF):
        total += int(counts.get(bucket_field(bound)) or 0)
        out.append((bound, total))
    return out


def _histogram(raw: dict[str, Any], bounds: Sequence[float]) -> Histogram:
    buckets = cumulative(raw, bounds)
    return {"buckets": buckets, "sum": float(raw.get("sum") or 0.0), "count": buckets[-1][1]}


def latency_key(store: JobStore, job_id: str, stream_id: str) -> str:
    return f"{store.stream_key(job_id, stream_id)}:latency"


def replica_key(store: JobStore, replica_id: str) -> str:
    return f"{store.prefix}:replica:{replica_id}"


def _replicas_key(store: JobStore) -> str:
    return f"{store.prefix}:replicas"


# recording ----------------------------------------------------------------------------------------
def record_latency(store: JobStore, job_id: str, stream_id: str, seconds: float) -> None:
    """Add one frame's latency to the stream's histogram. A value that is not finite is ignored; a negative
    latency (the clocks of the decoder's and the replica's nodes disagree) counts as 0."""
    if not math.isfinite(seconds):
        return
    seconds = max(0.0, float(seconds))
    key = latency_key(store, job_id, stream_id)
    pipe = store.r.pipeline(transaction=False)
    pipe.hincrby(key, bucket_field(bucket_of(seconds, LATENCY_BUCKETS)), 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.hincrby(key, "count", 1)
    pipe.execute()


def record_reconnect(store: JobStore, job_id: str, stream_id: str) -> int:
    """Count one reconnection of a live stream (running -> reconnecting); returns the new total."""
    return int(store.r.hincrby(store.stream_key(job_id, stream_id), "reconnects", 1))


def record_batch(
    store: JobStore,
    replica_id: str,
    size: int,
    queue_depth: int | None,
    oldest_wait_seconds: float | None = None,
) -> None:
    """Count one batch of `size` frames run by `replica_id`; see `record_batches`."""
    record_batches(store, replica_id, {size: 1}, queue_depth, oldest_wait_seconds)


def record_batches(
    store: JobStore,
    replica_id: str,
    sizes: Mapping[int, int],
    queue_depth: int | None,
    oldest_wait_seconds: float | None = None,
) -> None:
    """Count batches run by `replica_id` (`sizes`: batch size -> number of batches, so a replica can
    write several batches in one round trip), with its queue depth and the wait of the oldest frame of
    its last batch (gauges; None leaves them as they were). The replica's hash expires REPLICA_TTL_S
    after its last write."""
    key = replica_key(store, replica_id)
    now = store.clock()
    buckets: collections.Counter[str] = collections.Counter()
    for size, count in sizes.items():
        buckets[bucket_field(bucket_of(size, BATCH_SIZE_BUCKETS))] += count
    pipe = store.r.pipeline(transaction=False)
    pipe.hincrby(key, "batches", sum(sizes.values()))
    pipe.hincrby(key, "frames", sum(size * count for size, count in sizes.items()))
    for field, count in buckets.items():
        pipe.hincrby(key, field, count)
    gauges: dict[str, str] = {"seen": repr(now)}
    if queue_depth is not None:
        gauges["queue_depth"] = str(int(queue_depth))
    if oldest_wait_seconds is not None and math.isfinite(oldest_wait_seconds):
        gauges["oldest_wait_seconds"] = repr(float(oldest_wait_seconds))
    pipe.hset(key, mapping=gauges)
    pipe.expire(key, REPLICA_TTL_S)
    pipe.zadd(_replicas_key(store), {replica_id: now})
    pipe.zremrangebyscore(_replicas_key(store), "-inf", now - REPLICA_TTL_S)
    pipe.execute()


# reading ------------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def stream_figures(store: JobStore, job_ids: Iterable[str]) -> list[StreamFigures]:
    """Counters, status and latency histogram of every stream of `job_ids`, in job then stream order.
    Jobs that do not exist are skipped. Two round trips, whatever the number of streams."""
    job_ids = list(job_ids)
    pipe = store.r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(store.job_key(job_id), "stream_ids")
    streams: list[tuple[str, str]] = []
    for job_id, ids in zip(job_ids, pipe.execute(), strict=True):
        if ids is not None:
            streams.extend((job_id, stream_id) for stream_id in json.loads(_text(ids)))
    fields = ["status", *STREAM_COUNTERS]
    pipe = store.r.pipeline(transaction=False)
    for job_id, stream_id in streams:
        pipe.hmget(store.stream_key(job_id, stream_id), fields)
        pipe.hgetall(latency_key(store, job_id, stream_id))
    replies = pipe.execute()
    figures: list[StreamFigures] = []
    for i, (job_id, stream_id) in enumerate(streams):
        values, latency = replies[2 * i], _texts(replies[2 * i + 1])
        if values[0] is None:  # the stream's hash is gone
            continue
        counts = {
            name: int(_text(v)) if v is not None else 0
            for name, v in zip(fields[1:], values[1:], strict=True)
        }
        figures.append(
            {
                "job_id": job_id,
                "stream_id": stream_id,
                "status": _text(values[0]),
                "decoded": counts["decoded"],
                "analysed": counts["analysed"],
                "written": counts["written"],
                "dropped": counts["dropped"],
                "reconnects": counts["reconnects"],
                "latency": _histogram(latency, LATENCY_BUCKETS),
            }
        )
    return figures


def replica_figures(store: JobStore) -> list[ReplicaFigures]:
    """Batch statistics of every replica that ran a batch in the last REPLICA_TTL_S, by replica id."""
    since = store.clock() - REPLICA_TTL_S
    ids = sorted(_text(r) for r in store.r.zrangebyscore(_replicas_key(store), since, "+inf"))
    pipe = store.r.pipeline(transaction=False)
    for replica_id in ids:
        pipe.hgetall(replica_key(store, replica_id))
    figures: list[ReplicaFigures] = []
    for replica_id, raw in zip(ids, pipe.execute(), strict=True):
        fields = _texts(raw)
        if not fields:  # expired
            continue
        depth, wait = fields.get("queue_depth"), fields.get("oldest_wait_seconds")
        figures.append(
            {
                "replica": replica_id,
                "batches": int(fields.get("batches", 0)),
                "frames": int(fields.get("frames", 0)),
                "batch_size": _histogram({**fields, "sum": fields.get("frames", 0)}, BATCH_SIZE_BUCKETS),
                "queue_depth": int(depth) if depth is not None else None,
                "oldest_wait_seconds": float(wait) if wait is not None else None,
                "seen": float(fields.get("seen", 0.0)),
            }
        )
    return figures
