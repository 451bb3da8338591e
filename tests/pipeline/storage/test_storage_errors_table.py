"""`export_errors`: stream errors copied from the real job store into the `errors` table, each record once,
however often (and however concurrently) the export runs."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import redis

from pipeline.jobs.state import JobStore
from pipeline.storage import writer as writer_module
from pipeline.storage.errors_table import export_errors
from pipeline.storage.schema import ERRORS, staging_dir, stream_dir
from pipeline.storage.writer import CommitRejected, PartWriteError, part_name

JOB = "job-1"
STREAMS = ["cam-a", "007"]


@pytest.fixture
def job(store: JobStore) -> JobStore:
    store.create_job(JOB, {}, STREAMS)
    return store


def add_errors(store: JobStore, stream_id: str, first: int, count: int, job_id: str = JOB) -> None:
    for i in range(first, first + count):
        store.record_error(job_id, stream_id, "decode", f"error {i} of {stream_id}")


def exported(out: Path, job_id: str | None = None) -> list[tuple[str, str, str, str]]:
    """(job, stream, kind, message) of every row of the errors table, as DuckDB reads the whole table."""
    files = list((out / "errors").rglob("*.parquet")) if (out / "errors").is_dir() else []
    if not files:
        return []
    where = f"WHERE job_id = '{job_id}'" if job_id else ""
    sql = f"SELECT job_id, stream_id, kind, message FROM read_parquet('{out}/errors/*/*/*.parquet') {where}"
    return sorted(duckdb.sql(sql).fetchall())


def expected(stream_id: str, numbers: range, job_id: str = JOB) -> list[tuple[str, str, str, str]]:
    return sorted((job_id, stream_id, "decode", f"error {i} of {stream_id}") for i in numbers)


def parts(out: Path, stream_id: str, job_id: str = JOB) -> list[str]:
    folder = stream_dir(out, "errors", job_id, stream_id)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def recorded(store: JobStore, stream_id: str, job_id: str = JOB) -> list[str]:
    return sorted(p["part"] for p in store.committed_parts(job_id, stream_id, "errors"))


def test_export_writes_each_record_once_and_later_records_with_the_next_export(tmp_path, job):
    add_errors(job, "cam-a", 0, 3)
    add_errors(job, "007", 0, 1)
    job.record_error(JOB, None, "driver", "a job-level error has no stream: not in the table")
    assert export_errors(job, tmp_path, JOB, STREAMS) == 4
    assert exported(tmp_path) == sorted(expected("cam-a", range(3)) + expected("007", range(1)))
    assert export_errors(job, tmp_path, JOB, STREAMS) == 0  # again: nothing new, nothing written
    # named by the record ordinals it holds and the export epoch (each export takes a new one)
    assert parts(tmp_path, "cam-a") == [part_name(1, 3, 1, 0)]

    add_errors(job, "cam-a", 3, 2)
    assert export_errors(job, tmp_path, JOB, STREAMS) == 2
    assert export_errors(job, tmp_path, JOB, STREAMS) == 0
    assert exported(tmp_path) == sorted(expected("cam-a", range(5)) + expected("007", range(1)))
    assert parts(tmp_path, "cam-a") == [part_name(1, 3, 1, 0), part_name(4, 5, 3, 0)]
    for stream_id in STREAMS:
        assert parts(tmp_path, stream_id) == recorded(job, stream_id)
        assert not list(staging_dir(tmp_path, "errors", JOB, stream_id).iterdir())
    table = pq.read_table(stream_dir(tmp_path, "errors", JOB, "cam-a") / part_name(4, 5, 3, 0))
    assert table.schema.remove_metadata().equals(ERRORS)
    assert table["time"].to_pylist() == sorted(table["time"].to_pylist())
    stored = [e for e in job.errors(JOB, "cam-a")][3:]
    assert table["time"].to_pylist() == [e["time"] for e in stored]


def test_an_export_of_nothing_writes_nothing(tmp_path, job):
    assert export_errors(job, tmp_path, JOB, STREAMS) == 0
    assert not (tmp_path / "errors").exists() or not list((tmp_path / "errors").rglob("*.parquet"))


def export_racing(store: JobStore, out: Path, barrier: threading.Barrier, outcomes: list[object]) -> None:
    """One of two exports started together; its outcome (rows written, or the error) goes to `outcomes`,
    judged by the test after it has checked the table."""
    barrier.wait()
    try:
        outcomes.append(export_errors(store, out, JOB, ["cam-a"]))
    except Exception as error:
        outcomes.append(error)


def test_concurrent_exports_write_each_record_once(tmp_path, job):
    total = 0
    for round_ in range(12):
        add_errors(job, "cam-a", total, 3)
        total += 3
        barrier = threading.Barrier(2)
        outcomes: list[object] = []
        threads = [
            threading.Thread(target=export_racing, args=(job, tmp_path, barrier, outcomes)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # First what matters: every record in the table exactly once, and only recorded parts visible.
        assert exported(tmp_path) == expected("cam-a", range(total)), f"round {round_}: {outcomes!r}"
        assert parts(tmp_path, "cam-a") == recorded(job, "cam-a")
        # Then the callers: one export wrote the records; the loser of the race may be told so, or (when
        # both named the same part and the record answered "already recorded") may replace it with the
        # same rows, atomically.
        assert sorted(o for o in outcomes if isinstance(o, int)) in ([0, 3], [3], [3, 3]), outcomes
        losers = [o for o in outcomes if not isinstance(o, int)]
        assert all(isinstance(o, CommitRejected | PartWriteError) for o in losers), outcomes
    assert export_errors(job, tmp_path, JOB, ["cam-a"]) == 0


def test_two_jobs_with_the_same_stream_ids_export_into_their_own_directories(tmp_path, job):
    job.create_job("job-2", {}, STREAMS)
    add_errors(job, "cam-a", 0, 2)
    add_errors(job, "cam-a", 10, 1, job_id="job-2")
    export_errors(job, tmp_path, JOB, STREAMS)
    before = {p: p.read_bytes() for p in (tmp_path / "errors" / JOB).rglob("*") if p.is_file()}
    export_errors(job, tmp_path, "job-2", STREAMS)
    assert {p: p.read_bytes() for p in (tmp_path / "errors" / JOB).rglob("*") if p.is_file()} == before
    assert exported(tmp_path, JOB) == expected("cam-a", range(2))
    assert exported(tmp_path, "job-2") == expected("cam-a", range(10, 11), job_id="job-2")
    # the same part name in both jobs (same ordinals), in separate directories
    assert parts(tmp_path, "cam-a") == [part_name(1, 2, 1, 0)]  # epoch 1: each job's first export
    assert parts(tmp_path, "cam-a", "job-2") == [part_name(1, 1, 1, 0)]


class LosesExportReplies(JobStore):
    """The real store, except that the reply of the next successful `record_export` is lost."""

    lose = 1

    def record_export(self, *args, **kwargs) -> bool:
        result = super().record_export(*args, **kwargs)
        if self.lose:
            self.lose -= 1
            raise redis.ConnectionError("Connection reset by peer (reply lost)")
        return result


def test_a_lost_export_reply_is_resolved_by_the_record(tmp_path, job):
    flaky = LosesExportReplies(job.r)
    add_errors(job, "cam-a", 0, 3)
    assert export_errors(flaky, tmp_path, JOB, ["cam-a"]) == 3
    assert flaky.lose == 0  # the reply was lost, and the part published anyway
    assert export_errors(flaky, tmp_path, JOB, ["cam-a"]) == 0
    assert exported(tmp_path) == expected("cam-a", range(3))
    assert parts(tmp_path, "cam-a") == recorded(job, "cam-a")


def test_an_export_recorded_but_not_published_is_published_by_the_next_export(tmp_path, job, monkeypatch):
    add_errors(job, "cam-a", 0, 3)
    real_replace = os.replace

    def rename_fails(src, dst, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writer_module.os, "replace", rename_fails)
    with pytest.raises(OSError):
        export_errors(job, tmp_path, JOB, ["cam-a"])
    monkeypatch.setattr(writer_module.os, "replace", real_replace)
    assert recorded(job, "cam-a") == [part_name(1, 3, 1, 0)]  # committed ...
    assert parts(tmp_path, "cam-a") == []  # ... but not visible yet
    export_errors(job, tmp_path, JOB, ["cam-a"])  # e.g. the resumed job's export
    assert exported(tmp_path) == expected("cam-a", range(3))
    assert parts(tmp_path, "cam-a") == recorded(job, "cam-a")
