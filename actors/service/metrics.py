"""The service's monitoring: `/metrics` in Prometheus text, and the same figures as Ray metrics.

Two paths, on purpose. `render_metrics` reads the figures every worker records in Redis
(`pipeline.jobs.stream_metrics`) and renders them at scrape time, so the ingress can answer for every
stream and replica of the cluster from one place, with counters that survive actor restarts. `RayMetrics`
records the same observations through `ray.util.metrics`, for a Prometheus that scrapes Ray's own
endpoints (Ray prefixes their names with `ray_`).

Recording must never break or slow a stream or a batch: every recording call swallows its errors, the Ray
metrics are made lazily (only in a process where Ray runs), and a replica leaves its queue-depth question
and its Redis write to a background task, accumulating batches while one is under way.

Queue depth (`sanstream_replica_queue_depth`): Serve offers a user's replica no public figure, and the
length of the `@serve.batch` queue says little (Serve 2.60 forms batches eagerly; they wait behind the
running one, not in the queue). So at each batch the replica asks its own actor for
`get_num_ongoing_requests`, the count Serve's router balances on (requests received and not yet answered)
and reports it less the batch just started: the requests waiting inside the replica. Requests the router
holds back because the replica is at `max_ongoing_requests` are not in it. The figure is sampled at
batch start (a few milliseconds late, off the critical path) and is absent where Serve cannot answer.
`sanstream_replica_oldest_wait_seconds` complements it: how long before the batch started its oldest
frame reached its decoder (decoder queue, transport and replica queue together).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pipeline.jobs import stream_metrics
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS,
    Histogram,
    ReplicaFigures,
    StreamFigures,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the `Content-Type` of `render_metrics`' reply
UP_STATUSES = ("running", "reconnecting")
STREAM_LABELS = ["job_id", "stream_id"]
REPLICA_LABELS = ["replica"]
_STREAM_COUNTERS = (
    ("decoded", "sanstream_stream_frames_decoded", "Source frames decoded (sampled or not)."),
    ("analysed", "sanstream_stream_frames_analysed", "Frames segmented by the SAN pool."),
    ("written", "sanstream_stream_frames_written", "Frames committed to Parquet (class_areas)."),
    ("dropped", "sanstream_stream_frames_dropped", "Live frames dropped because the pool fell behind."),
    ("reconnects", "sanstream_stream_reconnects", "Times a live stream lost its source and reconnected."),
)


# /metrics -----------------------------------------------------------------------------------------
def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), float(count)) for bound, count in histogram["buckets"]]


class _FiguresCollector(Collector):
    """Turns figures read from Redis into metric families (read once, before rendering)."""

    def __init__(self, streams: Sequence[StreamFigures], replicas: Sequence[ReplicaFigures]) -> None:
        self.streams = streams
        self.replicas = replicas

    def collect(self) -> Iterable[Metric]:
        yield from self._stream_families()
        yield from self._replica_families()

    def _stream_families(self) -> Iterable[Metric]:
        for field, name, doc in _STREAM_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=STREAM_LABELS)
            for s in self.streams:
                counter.add_metric([s["job_id"], s["stream_id"]], s[field])  # type: ignore[literal-required]
            yield counter
        latency = HistogramMetricFamily(
            "sanstream_stream_latency_seconds",
            "Seconds from a frame's arrival at its decoder to its segmentation answer.",
            labels=STREAM_LABELS,
        )
        up = GaugeMetricFamily(
            "sanstream_stream_up",
            "1 while the stream runs (or reconnects to its source), else 0.",
            labels=STREAM_LABELS,
        )
        for s in self.streams:
            labels = [s["job_id"], s["stream_id"]]
            latency.add_metric(labels, _buckets(s["latency"]), s["latency"]["sum"])
            up.add_metric(labels, 1.0 if s["status"] in UP_STATUSES else 0.0)
        yield latency
        yield up

    def _replica_families(self) -> Iterable[Metric]:
        sizes = HistogramMetricFamily(
            "sanstream_replica_batch_size", "Frames per batch run by the replica.", labels=REPLICA_LABELS
        )
        batches = CounterMetricFamily(
            "sanstream_replica_batches", "Batches run by the replica.", labels=REPLICA_LABELS
        )
        depth = GaugeMetricFamily(
            "sanstream_replica_queue_depth",
            "Requests received by the replica and not in its running batch, when its last batch started.",
            labels=REPLICA_LABELS,
        )
        wait = GaugeMetricFamily(
            "sanstream_replica_oldest_wait_seconds",
            "Age of the oldest frame of the replica's last batch (since it reached its decoder) at batch start.",
            labels=REPLICA_LABELS,
        )
        seen = GaugeMetricFamily(
            "sanstream_replica_last_batch_timestamp_seconds",
            "Unix time of the replica's last batch: its gauges are that old.",
            labels=REPLICA_LABELS,
        )
        for r in self.replicas:
            labels = [r["replica"]]
            sizes.add_metric(labels, _buckets(r["batch_size"]), r["batch_size"]["sum"])
            batches.add_metric(labels, r["batches"])
            if r["queue_depth"] is not None:
                depth.add_metric(labels, r["queue_depth"])
            if r["oldest_wait_seconds"] is not None:
                wait.add_metric(labels, r["oldest_wait_seconds"])
            seen.add_metric(labels, r["seen"])
        yield from (sizes, batches, depth, wait, seen)


def render_metrics(store: JobStore, job_ids: list[str] | None = None) -> bytes:
    """Prometheus text of the streams of `job_ids` (None: every job in the store) and of every replica
    that ran a batch in the last hour. Serve it with `Content-Type: CONTENT_TYPE`."""
    if job_ids is None:
        job_ids = [job["job_id"] for job in store.list_jobs()]
    collector = _FiguresCollector(
        stream_metrics.stream_figures(store, job_ids), stream_metrics.replica_figures(store)
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


# Ray metrics --------------------------------------------------------------------------------------
def _make_ray_metrics() -> dict[str, Any]:
    from ray.util.metrics import Counter, Gauge
    from ray.util.metrics import Histogram as RayHistogram

    stream, replica = ("job_id", "stream_id"), ("replica",)
    return {
        "latency": RayHistogram(
            "sanstream_stream_latency_seconds",
            description="Seconds from a frame's arrival at its decoder to its segmentation answer.",
            boundaries=list(LATENCY_BUCKETS),
            tag_keys=stream,
        ),
        "analysed": Counter(
            "sanstream_stream_frames_analysed",
            description="Frames segmented by the SAN pool.",
            tag_keys=stream,
        ),
        "reconnects": Counter(
            "sanstream_stream_reconnects",
            description="Times a live stream lost its source and reconnected.",
            tag_keys=stream,
        ),
        "batch_size": RayHistogram(
            "sanstream_replica_batch_size",
            description="Frames per batch run by the replica.",
            boundaries=list(BATCH_SIZE_BUCKETS),
            tag_keys=replica,
        ),
        "batches": Counter(
            "sanstream_replica_batches", description="Batches run by the replica.", tag_keys=replica
        ),
        "queue_depth": Gauge(
            "sanstream_replica_queue_depth",
            description="Requests received by the replica and not in its running batch, at batch start.",
            tag_keys=replica,
        ),
        "oldest_wait": Gauge(
            "sanstream_replica_oldest_wait_seconds",
            description="Age of the oldest frame of the replica's last batch at batch start.",
            tag_keys=replica,
        ),
    }


class RayMetrics:
    """The figures of `render_metrics`, recorded through `ray.util.metrics`.

    The metrics are made on first use in a process where Ray is initialised (elsewhere every call does
    nothing, so tests and the CLI need no Ray), once per process: share `ray_metrics()`. No method raises.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def metrics(self) -> dict[str, Any] | None:
        """The Ray metric objects by role, or None where Ray is not initialised."""
        if self._metrics is None:
            import ray

            if not ray.is_initialized():
                return None
            with self._lock:
                if self._metrics is None:
                    self._metrics = _make_ray_metrics()
        return self._metrics

    def frame_analysed(self, job_id: str, stream_id: str, latency_seconds: float) -> None:
        with contextlib.suppress(Exception):
            if (made := self.metrics()) is not None:
                tags = {"job_id": job_id, "stream_id": stream_id}
                made["analysed"].inc(1.0, tags=tags)
                made["latency"].observe(max(0.0, float(latency_seconds)), tags=tags)

    def reconnected(self, job_id: str, stream_id: str) -> None:
        with contextlib.suppress(Exception):
            if (made := self.metrics()) is not None:
                made["reconnects"].inc(1.0, tags={"job_id": job_id, "stream_id": stream_id})

    def batch(self, replica: str, size: int, oldest_wait_seconds: float | None) -> None:
        with contextlib.suppress(Exception):
            if (made := self.metrics()) is not None:
                tags = {"replica": replica}
                made["batches"].inc(1.0, tags=tags)
                made["batch_size"].observe(float(size), tags=tags)
                if oldest_wait_seconds is not None:
                    made["oldest_wait"].set(float(oldest_wait_seconds), tags=tags)

    def queue_depth(self, replica: str, depth: int) -> None:
        with contextlib.suppress(Exception):
            if (made := self.metrics()) is not None:
                made["queue_depth"].set(float(depth), tags={"replica": replica})


_RAY_METRICS = RayMetrics()


def ray_metrics() -> RayMetrics:
    """This process's `RayMetrics` (Ray metrics are registered by name; one set per process)."""
    return _RAY_METRICS


# a replica's recording ----------------------------------------------------------------------------
class ReplicaRecorder:
    """Records a replica's batches without ever making a batch wait: `batch` counts the batch in Ray's
    metrics at once and leaves the rest to one background task at a time, which asks Serve for the
    queue depth and writes to Redis (when `redis_url` is given) from a thread. Batches that start while
    that task runs are accumulated and written by it next (or, after a failed write, by the next
    batch's task), so Redis counts no batch twice and, unless the store stays unreachable, loses none.

    Queue depth: the requests Serve counts as ongoing at this replica (the figure its router balances
    on, asked from the replica's own actor), less the batch that just started: the requests received
    and waiting (in the batch queue or in batches formed behind the running one). None outside a Serve
    replica or when Serve cannot answer.

    Args:
        replica_id: the replica's id (Serve's unique id), the `replica` label.
        redis_url: the job store; None records Ray metrics only.
        socket_timeout_s: longest a Redis command may hang.
    """

    def __init__(self, replica_id: str, redis_url: str | None, socket_timeout_s: float = 2.0) -> None:
        self.replica_id = replica_id
        self.redis_url = redis_url
        self.socket_timeout_s = socket_timeout_s
        self._store: JobStore | None = None
        self._unsent: collections.Counter[int] = collections.Counter()  # batch size -> batches
        self._oldest_wait: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._actor: Any = None
        self._no_actor = False

    def batch(self, size: int, oldest_wait_seconds: float | None) -> None:
        """A batch of `size` requests starts, its oldest frame `oldest_wait_seconds` old. Call from the
        replica's event loop; returns at once and never raises."""
        ray_metrics().batch(self.replica_id, size, oldest_wait_seconds)
        with contextlib.suppress(Exception):
            self._unsent[size] += 1
            self._oldest_wait = oldest_wait_seconds
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._record(size))

    async def drain(self) -> None:
        """Wait until what was recorded so far is written (or failed); tests and shutdown."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        if self._unsent and self.redis_url is not None:
            self._task = asyncio.get_running_loop().create_task(self._record(0))
            await asyncio.wait([self._task])

    async def _record(self, size: int) -> None:
        """Ask the queue depth at the start of batch `size` and write what accumulated, again while
        batches came in meanwhile (an idle replica's last batches are not left unwritten); after a failed
        write the figures wait for the next batch."""
        try:
            depth = await self._queue_depth(size)
            if depth is not None:
                ray_metrics().queue_depth(self.replica_id, depth)
            while True:
                if self.redis_url is None:
                    self._unsent.clear()
                    return
                sizes, self._unsent = self._unsent, collections.Counter()
                try:
                    await asyncio.to_thread(self._write, sizes, depth, self._oldest_wait)
                except Exception as error:
                    self._unsent.update(sizes)
                    log.debug("replica %s: batch figures not recorded yet: %s", self.replica_id, error)
                    return
                if not self._unsent:
                    return
                depth = None  # sampled at the start of the batch that began this task only
        except Exception:
            log.debug("replica %s: batch figures not recorded", self.replica_id, exc_info=True)

    async def _queue_depth(self, size: int) -> int | None:
        if self._no_actor:
            return None
        try:
            if self._actor is None:
                import ray

                if not ray.is_initialized():  # asking for the runtime context would start Ray here
                    self._no_actor = True
                    return None
                self._actor = ray.get_runtime_context().current_actor
            ongoing = await self._actor.get_num_ongoing_requests.remote()
        except Exception:
            self._no_actor = self._actor is None  # not an actor: never ask again
            return None
        return max(0, int(ongoing) - size)

    def _write(self, sizes: collections.Counter[int], depth: int | None, oldest_wait: float | None) -> None:
        if self._store is None:
            assert self.redis_url is not None
            client = redis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                socket_connect_timeout=self.socket_timeout_s,
                socket_timeout=self.socket_timeout_s,
            )
            self._store = JobStore(client)
        stream_metrics.record_batches(self._store, self.replica_id, sizes, depth, oldest_wait)


def oldest_wait_seconds(wall_times: Iterable[float], now: float | None = None) -> float | None:
    """Seconds since the earliest of `wall_times` (frames' arrival at their decoders), or None if none."""
    earliest = min(wall_times, default=None)
    if earliest is None:
        return None
    return max(0.0, (time.time() if now is None else now) - earliest)
