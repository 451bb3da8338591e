"""Monitoring figures in a real Redis: bucket math, latency histograms, reconnects, replica batch
statistics and their expiry, read back as plain data."""

from __future__ import annotations

import math

import pytest
import redis

from pipeline.jobs import stream_metrics as sm
from pipeline.jobs.state import JobStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_value_falls_in_the_first_bucket_whose_bound_is_at_least_it() -> None:
    bounds = sm.LATENCY_BUCKETS
    assert sm.bucket_of(0.0, bounds) == 0.05
    assert sm.bucket_of(0.05, bounds) == 0.05  # `le` is inclusive
    assert sm.bucket_of(0.050001, bounds) == 0.1
    assert sm.bucket_of(60.0, bounds) == 60.0
    assert sm.bucket_of(61.0, bounds) == math.inf
    assert sm.bucket_of(3, sm.BATCH_SIZE_BUCKETS) == 4.0
    assert sm.bucket_of(129, sm.BATCH_SIZE_BUCKETS) == math.inf
    assert sm.bucket_field(1) == "le:1.0" and sm.bucket_field(math.inf) == "le:+Inf"


def test_cumulative_counts_add_up_bucket_by_bucket() -> None:
    counts = {"le:1.0": 2, "le:4.0": "3", "le:+Inf": 1}
    assert sm.cumulative(counts, (1.0, 2.0, 4.0)) == [(1.0, 2), (2.0, 2), (4.0, 5), (math.inf, 6)]
    assert sm.cumulative({}, (1.0,)) == [(1.0, 0), (math.inf, 0)]


def test_latency_histogram_and_counters_are_read_back_per_stream(store: JobStore) -> None:
    store.create_job("job", {}, ["cam", "door"])
    store.set_stream_status("job", "cam", "running")
    store.incr("job", "cam", "decoded", 40)
    store.incr("job", "cam", "analysed", 5)
    store.incr("job", "cam", "written", 3)
    store.incr("job", "cam", "dropped", 2)
    for seconds in (0.01, 0.05, 0.3, 0.3, 100.0, -0.2, float("nan"), float("inf")):
        sm.record_latency(store, "job", "cam", seconds)
    assert sm.record_reconnect(store, "job", "cam") == 1
    assert sm.record_reconnect(store, "job", "cam") == 2

    cam, door = sm.stream_figures(store, ["job", "no-such-job"])
    assert (cam["job_id"], cam["stream_id"], cam["status"]) == ("job", "cam", "running")
    assert (cam["decoded"], cam["analysed"], cam["written"], cam["dropped"]) == (40, 5, 3, 2)
    assert cam["reconnects"] == 2
    latency = cam["latency"]
    # 0.01, 0.05 and -0.2 (as 0) in le=0.05; two 0.3 in le=0.5; 100 in +Inf; NaN and inf ignored.
    assert dict(latency["buckets"]) == {
        0.05: 3,
        0.1: 3,
        0.25: 3,
        0.5: 5,
        1.0: 5,
        2.5: 5,
        5.0: 5,
        10.0: 5,
        30.0: 5,
        60.0: 5,
        math.inf: 6,
    }
    assert latency["count"] == 6
    assert latency["sum"] == pytest.approx(0.01 + 0.05 + 0.6 + 100.0)
    assert door["status"] == "pending"
    assert (door["decoded"], door["reconnects"], door["latency"]["count"]) == (0, 0, 0)
    assert [b for _, b in door["latency"]["buckets"]] == [0] * (len(sm.LATENCY_BUCKETS) + 1)


def test_replica_batches_are_counted_and_expire_with_the_replica(redis_client: redis.Redis) -> None:
    clock = Clock()
    store = JobStore(redis_client, clock=clock)
    sm.record_batch(store, "r1", 3, 5, 0.4)
    sm.record_batch(store, "r1", 8, 0, 0.1)
    sm.record_batch(store, "r1", 200, 2)
    sm.record_batch(store, "r2", 1, None)
    assert 0 < store.r.ttl(sm.replica_key(store, "r1")) <= sm.REPLICA_TTL_S

    r1, r2 = sm.replica_figures(store)
    assert (r1["replica"], r1["batches"], r1["frames"]) == ("r1", 3, 211)
    assert (r1["queue_depth"], r1["oldest_wait_seconds"], r1["seen"]) == (2, 0.1, 1000.0)
    sizes = dict(r1["batch_size"]["buckets"])
    assert (sizes[2.0], sizes[4.0], sizes[8.0], sizes[128.0], sizes[math.inf]) == (0, 1, 2, 2, 3)
    assert (r1["batch_size"]["count"], r1["batch_size"]["sum"]) == (3, 211.0)
    assert (r2["queue_depth"], r2["oldest_wait_seconds"]) == (None, None)

    clock.now += sm.REPLICA_TTL_S + 1  # r1 and r2 stop running batches; r3 is alive
    sm.record_batch(store, "r3", 2, 1)
    assert [r["replica"] for r in sm.replica_figures(store)] == ["r3"]
    assert store.r.zrange(f"{store.prefix}:replicas", 0, -1) == ["r3"]  # pruned on write


def test_several_batches_are_written_in_one_call(store: JobStore) -> None:
    sm.record_batches(store, "r", {1: 2, 3: 1, 500: 1}, None, None)
    sm.record_batches(store, "r", {}, 6, float("nan"))  # only the gauge: nothing counted
    (r,) = sm.replica_figures(store)
    assert (r["batches"], r["frames"], r["queue_depth"], r["oldest_wait_seconds"]) == (4, 505, 6, None)
    sizes = dict(r["batch_size"]["buckets"])
    assert (sizes[1.0], sizes[2.0], sizes[4.0], sizes[128.0], sizes[math.inf]) == (2, 2, 3, 3, 4)
