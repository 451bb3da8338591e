"""`/metrics` over a real Redis: what the stream loop, the connection mirror and the replicas record comes
out as Prometheus families with the right values; recording never raises, with or without Ray."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from actors.decoder import StreamRunner
from actors.flow import ConnectionStatus
from actors.messages import SegmentReply
from actors.service import metrics
from actors.stream_config import JobContext, StreamOutcome
from pipeline.frames import FrameAreas
from pipeline.jobs import stream_metrics
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_spec import StreamSpec


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis-metrics")) as server:
        yield server


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[JobStore]:
    client = redis_server.client(decode_responses=True)
    client.flushdb()
    yield JobStore(client)
    client.close()


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample(family: Any, suffix: str = "", **labels: str) -> float:
    """The value of the family's sample named `<family><suffix>` with exactly these labels."""
    found = [s.value for s in family.samples if s.name == family.name + suffix and s.labels == labels]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    return float(found[0])


def reply(latency: float) -> SegmentReply:
    areas = FrameAreas("cam", 0, 0.0, 2, 2, np.array([4]), latency_seconds=latency)
    return SegmentReply(areas, "replica-a", "node", 0, 1, ("cam",))


def test_render_metrics_shows_what_the_workers_recorded(store: JobStore) -> None:
    store.create_job("job", {}, ["cam", "door"])
    store.create_job("old", {}, ["x"])
    store.set_stream_status("job", "cam", "running")
    store.incr("job", "cam", "decoded", 40)
    store.incr("job", "cam", "written", 3)
    store.incr("job", "door", "dropped", 7)
    # The stream loop's answers: the analysed counter and the latency histogram.
    runner = StreamRunner(JobContext("job", "/out"), StreamSpec("cam", "/v.mp4", ["a"]), store, None, None)
    outcome = StreamOutcome("cam", "completed")
    for latency in (0.02, 0.3, 0.3, 7.0, 120.0):
        runner._answered(outcome, reply(latency))
    # The live source drops twice; retries while already reconnecting are not new reconnections.
    connection = ConnectionStatus(store, "job", "cam", error_interval_s=30.0)
    for status in ("reconnecting", "reconnecting", "running", "reconnecting", "running"):
        connection(status, "connection lost" if status == "reconnecting" else None)
    stream_metrics.record_batch(store, "replica-a", 3, 4, 0.25)
    stream_metrics.record_batch(store, "replica-a", 8, 1, 0.5)

    got = families(metrics.render_metrics(store))
    cam, door = {"job_id": "job", "stream_id": "cam"}, {"job_id": "job", "stream_id": "door"}
    assert sample(got["sanstream_stream_frames_decoded"], "_total", **cam) == 40
    assert sample(got["sanstream_stream_frames_analysed"], "_total", **cam) == 5
    assert sample(got["sanstream_stream_frames_written"], "_total", **cam) == 3
    assert sample(got["sanstream_stream_frames_dropped"], "_total", **door) == 7
    assert sample(got["sanstream_stream_reconnects"], "_total", **cam) == 2
    assert sample(got["sanstream_stream_reconnects"], "_total", **door) == 0
    assert got["sanstream_stream_frames_decoded"].type == "counter"
    assert sample(got["sanstream_stream_up"], **cam) == 1
    assert sample(got["sanstream_stream_up"], **door) == 0  # pending
    latency = got["sanstream_stream_latency_seconds"]
    assert latency.type == "histogram"
    cumulative = {
        "0.05": 1,
        "0.1": 1,
        "0.25": 1,
        "0.5": 3,
        "1.0": 3,
        "2.5": 3,
        "5.0": 3,
        "10.0": 4,
        "30.0": 4,
        "60.0": 4,
        "+Inf": 5,
    }
    for le, count in cumulative.items():
        assert sample(latency, "_bucket", **cam, le=le) == count, le
    assert sample(latency, "_count", **cam) == 5
    assert sample(latency, "_sum", **cam) == pytest.approx(127.62)
    assert sample(got["sanstream_stream_frames_decoded"], "_total", job_id="old", stream_id="x") == 0

    replica = {"replica": "replica-a"}
    sizes = got["sanstream_replica_batch_size"]
    assert sizes.type == "histogram"
    buckets = [sample(sizes, "_bucket", **replica, le=le) for le in ("2.0", "4.0", "8.0", "+Inf")]
    assert buckets == [0, 1, 2, 2]
    assert (sample(sizes, "_count", **replica), sample(sizes, "_sum", **replica)) == (2, 11)
    assert sample(got["sanstream_replica_batches"], "_total", **replica) == 2
    assert sample(got["sanstream_replica_queue_depth"], **replica) == 1
    assert sample(got["sanstream_replica_oldest_wait_seconds"], **replica) == 0.5
    assert sample(got["sanstream_replica_last_batch_timestamp_seconds"], **replica) > 0

    only = families(metrics.render_metrics(store, ["old"]))
    assert {s.labels["job_id"] for s in only["sanstream_stream_up"].samples} == {"old"}
    assert metrics.CONTENT_TYPE.startswith("text/plain")


def test_render_metrics_of_an_empty_store_has_the_families_without_samples(store: JobStore) -> None:
    got = families(metrics.render_metrics(store))
    assert "sanstream_stream_latency_seconds" in got and "sanstream_replica_batch_size" in got
    assert all(not family.samples for family in got.values())


def test_a_stream_that_never_ran_is_not_counted_as_reconnecting(store: JobStore) -> None:
    store.create_job("job", {}, ["cam"])
    ConnectionStatus(store, "job", "cam", error_interval_s=30.0)("reconnecting", "refused")  # pending
    assert stream_metrics.stream_figures(store, ["job"])[0]["reconnects"] == 0


def test_replica_recorder_writes_in_the_background_and_never_raises(
    store: JobStore, redis_server: EmbeddedRedis
) -> None:
    async def scenario() -> None:
        recorder = metrics.ReplicaRecorder("r1", redis_server.url)
        for size in (4, 2, 4):  # the 2nd and 3rd start while the 1st is written: accumulated
            recorder.batch(size, 0.3)
        await recorder.drain()
        dead = metrics.ReplicaRecorder("r2", "redis://127.0.0.1:9/0", socket_timeout_s=0.2)  # no server
        for _ in range(3):
            dead.batch(1, None)
        await dead.drain()
        metrics.ReplicaRecorder("r3", None).batch(1, 0.0)  # Ray metrics only

    asyncio.run(scenario())
    (figures,) = stream_metrics.replica_figures(store)
    assert (figures["replica"], figures["batches"], figures["frames"]) == ("r1", 3, 10)
    assert figures["queue_depth"] is None  # not a Serve replica: no depth to report
    assert figures["oldest_wait_seconds"] == 0.3
    metrics.ReplicaRecorder("r4", redis_server.url).batch(1, None)  # no event loop: dropped, no error


def test_oldest_wait_is_the_age_of_the_earliest_frame() -> None:
    assert metrics.oldest_wait_seconds([105.0, 103.0], now=110.0) == 7.0
    assert metrics.oldest_wait_seconds([111.0], now=110.0) == 0.0  # clock skew
    assert metrics.oldest_wait_seconds([]) is None


def test_ray_metrics_do_nothing_and_never_raise_without_ray() -> None:
    if ray.is_initialized():
        pytest.skip("Ray is running in this test process")
    recorder = metrics.RayMetrics()
    recorder.frame_analysed("job", "cam", 0.5)
    recorder.frame_analysed("job", "cam", math.nan)
    recorder.reconnected("job", "cam")
    recorder.batch("r", 3, None)
    recorder.queue_depth("r", 2)
    assert recorder.metrics() is None


@serve.deployment(max_ongoing_requests=32)
class Batcher:
    """A replica that records its batches as `SegmentationReplica` does, slowly enough for a queue."""

    def __init__(self, redis_url: str) -> None:
        self.recorder = metrics.ReplicaRecorder(serve.get_replica_context().replica_id.unique_id, redis_url)

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.01)
    async def run(self, items: list[float]) -> list[float]:
        self.recorder.batch(len(items), metrics.oldest_wait_seconds(items))
        await asyncio.sleep(0.2)
        return items

    async def drain(self) -> None:
        await self.recorder.drain()


def test_ray_metrics_and_queue_depth_where_ray_and_serve_run(
    store: JobStore, redis_server: EmbeddedRedis
) -> None:
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        recorder = metrics.RayMetrics()
        made = recorder.metrics()
        assert made is not None and set(made) >= {"latency", "reconnects", "batch_size", "queue_depth"}
        recorder.frame_analysed("job", "cam", 0.5)
        recorder.reconnected("job", "cam")
        recorder.batch("r", 3, 0.1)
        recorder.queue_depth("r", 2)
        assert metrics.ray_metrics() is metrics.ray_metrics()

        serve.start(proxy_location="Disabled")
        handle = serve.run(Batcher.bind(redis_server.url), name="metrics-test", route_prefix=None)
        now = time.time()
        responses = [handle.run.remote(now) for _ in range(10)]
        assert [r.result(timeout_s=60) for r in responses] == [now] * 10
        handle.drain.remote().result(timeout_s=60)
        (figures,) = stream_metrics.replica_figures(store)
        assert figures["frames"] == 10 and 5 <= figures["batches"] <= 10  # batches of 1 or 2
        # Serve's count of ongoing requests, less the running batch: some waited behind the first ones.
        assert figures["queue_depth"] is not None and 0 <= figures["queue_depth"] <= 8
        assert figures["oldest_wait_seconds"] is not None and figures["oldest_wait_seconds"] >= 0
    finally:
        with contextlib.suppress(Exception):
            serve.delete("metrics-test")
        if started:
            serve.shutdown()
            ray.shutdown()
