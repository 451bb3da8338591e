from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import (
    IllegalTransitionError,
    JobExistsError,
    StaleWriterError,
    UnknownJobError,
)

SPEC = {"output": "/out", "streams": [{"id": "cam-a"}, {"id": "cam-b"}]}


@pytest.fixture
def job(store: JobStore) -> str:
    store.create_job("job-1", SPEC, ["cam-a", "cam-b"])
    return "job-1"


def test_create_job(store, job):
    assert store.status(job) == "queued"
    assert store.stream_status(job, "cam-a") == "pending"
    with pytest.raises(JobExistsError):
        store.create_job(job, SPEC, ["cam-a"])
    with pytest.raises(UnknownJobError):
        store.status("job-2")
    with pytest.raises(ValueError, match="stream_id"):
        store.create_job("job-3", SPEC, ["a:b"])


def test_job_transitions(store, job):
    assert store.set_status(job, "running") == "queued"
    assert store.set_status(job, "running") == "running"  # no-op
    started = store.snapshot(job)["started"]
    assert store.set_status(job, "completed") == "running"
    snap = store.snapshot(job)
    assert snap["started"] == started and snap["finished"] >= started
    for illegal in ("running", "failed", "queued", "completed"):
        with pytest.raises(IllegalTransitionError, match=f"from completed to {illegal}"):
            store.set_status(job, illegal)
    with pytest.raises(ValueError, match="unknown status"):
        store.set_status(job, "paused")
    with pytest.raises(UnknownJobError):
        store.set_status("job-9", "running")


def test_queued_can_be_cancelled_but_not_completed(store, job):
    with pytest.raises(IllegalTransitionError):
        store.set_status(job, "completed")
    store.set_status(job, "cancelled")
    assert store.status(job) == "cancelled"


def test_stream_transitions(store, job):
    store.set_stream_status(job, "cam-a", "running")
    store.set_stream_status(job, "cam-a", "failed")
    with pytest.raises(IllegalTransitionError):
        store.set_stream_status(job, "cam-a", "running")
    store.set_stream_status(job, "cam-b", "cancelled")
    with pytest.raises(UnknownJobError):
        store.set_stream_status(job, "cam-z", "running")


def test_counters_are_atomic(store, job):
    def work():
        for _ in range(200):
            store.incr(job, "cam-a", "decoded")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.incr(job, "cam-a", "analysed", 5) == 5
    streams = store.snapshot(job)["streams"]
    assert (streams["cam-a"]["decoded"], streams["cam-a"]["analysed"], streams["cam-b"]["decoded"]) == (
        800,
        5,
        0,
    )
    with pytest.raises(ValueError, match="unknown counter"):
        store.incr(job, "cam-a", "bogus")


def test_errors_heartbeats_and_cancel(store, job, monkeypatch):
    clock = iter(range(100, 200))
    monkeypatch.setattr(store, "clock", lambda: float(next(clock)))
    store.record_error(job, "cam-a", "decode", "corrupt packet")
    store.record_error(job, None, "serve", "replica died")
    assert [e["message"] for e in store.errors(job)] == ["corrupt packet", "replica died"]
    assert store.errors(job, "cam-a") == [
        {"time": 100.0, "stream_id": "cam-a", "kind": "decode", "message": "corrupt packet"}
    ]
    assert store.errors(job, "cam-b") == []
    store.heartbeat(job, "decoder-cam-a")
    store.heartbeat(job, "sink")
    assert store.heartbeats(job) == {"decoder-cam-a": 102.0, "sink": 103.0}
    assert not store.cancel_requested(job)
    store.request_cancel(job)
    assert store.cancel_requested(job)
    with pytest.raises(UnknownJobError):
        store.request_cancel("job-9")


def test_error_lists_are_capped_but_counted(store, job, monkeypatch):
    monkeypatch.setattr("pipeline.jobs.state.MAX_ERRORS_KEPT", 3)
    for i in range(5):
        store.record_error(job, "cam-a", "decode", f"e{i}")
    assert [e["message"] for e in store.errors(job, "cam-a")] == ["e2", "e3", "e4"]
    snap = store.snapshot(job)
    assert snap["error_count"] == 5 and snap["streams"]["cam-a"]["error_count"] == 5


def test_list_jobs_oldest_first(store, monkeypatch):
    clock = iter([5.0, 1.0, 3.0])
    monkeypatch.setattr(store, "clock", lambda: next(clock))
    for job_id in ("job-c", "job-a", "job-b"):
        store.create_job(job_id, {}, ["s"])
    assert [(j["job_id"], j["status"], j["created"]) for j in store.list_jobs()] == [
        ("job-a", "queued", 1.0),
        ("job-b", "queued", 3.0),
        ("job-c", "queued", 5.0),
    ]


def test_snapshot_is_complete_and_json(store, job):
    store.set_status(job, "running")
    store.set_stream_status(job, "cam-a", "running")
    store.incr(job, "cam-a", "decoded", 3)
    store.record_error(job, "cam-b", "open", "404")
    epoch = store.bump_writer_epoch(job, "cam-a")
    store.record_commit(job, "cam-a", "class_areas", "part-0.parquet", 0, 9, 30, epoch, frames=10)
    store.heartbeat(job, "sink")
    snap = json.loads(json.dumps(store.snapshot(job)))
    assert snap["job_id"] == job and snap["status"] == "running" and snap["spec"] == SPEC
    assert snap["cancel_requested"] is False and snap["heartbeats"].keys() == {"sink"}
    a, b = snap["streams"]["cam-a"], snap["streams"]["cam-b"]
    assert (a["status"], a["decoded"], a["written"], a["last_written_frame"], a["epoch"]) == (
        "running",
        3,
        10,
        9,
        1,
    )
    assert a["committed"] == {"class_areas": {"rows": 30, "parts": 1, "last_frame": 9}}
    assert b["status"] == "pending" and b["errors"][0]["message"] == "404"
    assert snap["errors"][0]["stream_id"] == "cam-b"


def test_commit_fencing(store, job):
    with pytest.raises(StaleWriterError, match="no writer epoch"):
        store.record_commit(job, "cam-a", "class_areas", "p0", 0, 4, 15, 0)
    first = store.bump_writer_epoch(job, "cam-a")
    assert first == 1 and store.committed_frames(job, "cam-a") == -1
    assert store.record_commit(job, "cam-a", "class_areas", "p1", 0, 4, 15, first)
    assert not store.record_commit(job, "cam-a", "class_areas", "p1", 0, 4, 15, first)  # retried: not counted
    second = store.bump_writer_epoch(job, "cam-a")
    assert second == 2 and store.writer_epoch(job, "cam-a") == 2
    with pytest.raises(StaleWriterError, match="stale"):
        store.record_commit(job, "cam-a", "class_areas", "p2", 5, 9, 15, first)
    assert store.committed_frames(job, "cam-a") == 4
    assert store.record_commit(job, "cam-a", "class_areas", "p3", 5, 7, 9, second)
    assert store.record_commit(job, "cam-a", "frames", "f3", 5, 12, 8, second)
    assert store.committed_frames(job, "cam-a") == 7
    assert store.committed_frames(job, "cam-a", table="frames") == 12
    assert [p["part"] for p in store.committed_parts(job, "cam-a", "class_areas")] == ["p1", "p3"]
    assert store.snapshot(job)["streams"]["cam-a"]["written"] == 5 + 3
    assert store.committed_frames(job, "cam-b") == -1
    with pytest.raises(UnknownJobError):
        store.bump_writer_epoch(job, "cam-z")


def test_state_survives_a_killed_server(tmp_path):
    """SIGKILL gives no chance to save an RDB, so only the append-only file can bring the state back."""
    server = EmbeddedRedis(tmp_path).start()
    store = JobStore.from_url(server.url)
    store.create_job("job-1", SPEC, ["cam-a", "cam-b"])
    store.set_status("job-1", "running")
    store.incr("job-1", "cam-a", "analysed", 7)
    epoch = store.bump_writer_epoch("job-1", "cam-a")
    store.record_commit("job-1", "cam-a", "class_areas", "p1", 0, 6, 21, epoch)
    store.request_cancel("job-1")
    before = store.snapshot("job-1")
    store.r.close()
    os.kill(server.pid, signal.SIGKILL)
    server.stop()
    assert not (tmp_path / "redis" / "dump.rdb").exists()
    with EmbeddedRedis(tmp_path) as again:
        restored = JobStore.from_url(again.url)
        assert restored.snapshot("job-1") == before
        assert restored.committed_frames("job-1", "cam-a") == 6
        assert restored.bump_writer_epoch("job-1", "cam-a") == epoch + 1
        with pytest.raises(StaleWriterError):
            restored.record_commit("job-1", "cam-a", "class_areas", "p2", 7, 8, 6, epoch)
        restored.r.close()
