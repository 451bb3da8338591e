"""`StreamSink` (the writer actor's logic, without Ray) with the real job store and real Parquet.

Every attempt starts with `begin()`: a new epoch, recovery of staging, the first frame still needed. A
writer of an older attempt (a zombie) can never make anything visible; a crash between the two frame
tables' commits, a lost reply or a restart leaves each frame exactly once in each table; and a job never
touches another job's files, even when both use the same stream ids in one output directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.schema import STAGING_DIR, staging_dir, stream_dir
from pipeline.storage.stream_sink import SINK_TABLES, StreamSink, WriterRestarted, WriterStart
from pipeline.storage.writer import PART_NAME_RE

JOB, STREAM = "job-1", "cam"
VOCAB = ["road", "car", "tree"]
FPS = 2.0


class Crash(Exception):
    """Stands for the writer's process dying at a failpoint (the real "crash" action is `os._exit`)."""


class CrashingSink(StreamSink):
    """A sink whose failpoints raise `Crash` instead of ending the test process; after a crash the test
    abandons it, as Ray abandons a dead actor."""

    def __init__(self, *args, crash_at: tuple[str, int] | None = None, hook=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crash_at = crash_at
        self.hook = hook  # called at a failpoint instead of crashing: another attempt runs "meanwhile"

    def failpoint(self, point: str) -> None:
        if self.crash_at is not None and self.crash_at[0] == point:
            if self.crash_at[1] > 0:
                self.crash_at = (point, self.crash_at[1] - 1)
                return
            self.crash_at = None
            if self.hook is not None:
                self.hook()
                return
            raise Crash(point)
        super().failpoint(point)


def areas(frames: range, stream_id: str = STREAM) -> list[FrameAreas]:
    return [
        FrameAreas(stream_id, i, i / FPS, 10, 10, np.array([i % 50, 20, 80 - i % 50]), 0.01) for i in frames
    ]


def walls(frames: range) -> list[float]:
    return [1_000.0 + i / FPS for i in frames]


def make_sink(out: Path, store: JobStore, job_id: str = JOB, stream_id: str = STREAM, cls=StreamSink, **kw):
    return cls(out, job_id, stream_id, VOCAB, store, commit_interval_s=3600.0, max_rows=9, **kw)


def feed(
    sink: StreamSink, start: WriterStart, frames: range, batch: int = 4, stream_id: str = STREAM
) -> None:
    """Send frames in batches, committing each batch, as the decoder does on its flush interval."""
    for first in range(frames.start, frames.stop, batch):
        chunk = range(first, min(first + batch, frames.stop))
        sink.append(areas(chunk, stream_id), walls(chunk), start.epoch, commit=True)


def recorded(store: JobStore, table: str, job_id: str = JOB, stream_id: str = STREAM) -> set[str]:
    return {p["part"] for p in store.committed_parts(job_id, stream_id, table)}


def visible(out: Path, table: str, job_id: str = JOB, stream_id: str = STREAM) -> set[str]:
    folder = stream_dir(out, table, job_id, stream_id)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def staged(out: Path, job_id: str = JOB) -> list[Path]:
    return sorted(p for p in (out / STAGING_DIR / job_id).rglob("*") if p.is_file())


def read(out: Path, sql: str) -> list[tuple]:
    """`sql` with `{t}` replaced by a DuckDB glob over a whole table of the output (every job)."""
    tables = {t: f"read_parquet('{out}/{t}/**/*.parquet')" for t in ("class_areas", "frames", "vocabularies")}
    return duckdb.sql(sql.format(**tables)).fetchall()


def frame_counts(out: Path, job_id: str = JOB) -> dict[str, list[tuple[int, int]]]:
    """Per frame table: (frame_index, rows) of the job, so "each frame exactly once" is one comparison."""
    return {
        "class_areas": read(
            out,
            f"SELECT frame_index, count(*) FROM {{class_areas}} WHERE job_id = '{job_id}' GROUP BY 1 ORDER BY 1",
        ),
        "frames": read(
            out,
            f"SELECT frame_index, count(*) FROM {{frames}} WHERE job_id = '{job_id}' GROUP BY 1 ORDER BY 1",
        ),
    }


def once(frames: range) -> dict[str, list[tuple[int, int]]]:
    return {"class_areas": [(i, len(VOCAB)) for i in frames], "frames": [(i, 1) for i in frames]}


def check_visible_is_recorded(out: Path, store: JobStore, job_id: str = JOB, stream_id: str = STREAM) -> None:
    for table in SINK_TABLES:
        assert visible(out, table, job_id, stream_id) == recorded(store, table, job_id, stream_id), table


@pytest.fixture
def job(store: JobStore) -> JobStore:
    store.create_job(JOB, {}, [STREAM])
    return store


def test_an_attempt_commits_every_table_and_the_next_resumes_after_it(tmp_path, job):
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    assert start == WriterStart(next_frame=0, epoch=1, last_pts=None)
    assert len(recorded(job, "vocabularies")) == 1  # written once, at the first begin
    feed(sink, start, range(10))
    assert sink.close(start.epoch) == 0  # everything was committed already
    check_visible_is_recorded(tmp_path, job)
    assert staged(tmp_path) == []
    assert frame_counts(tmp_path) == once(range(10))
    assert read(tmp_path, "SELECT class_id, class_name FROM {vocabularies} ORDER BY 1") == list(
        enumerate(VOCAB)
    )

    again = make_sink(tmp_path, job)
    start = again.begin()
    assert start == WriterStart(next_frame=10, epoch=2, last_pts=4.5)
    assert len(recorded(job, "vocabularies")) == 1  # not again
    # A decoder that replays frames already committed (it restarted from an earlier keyframe): dropped.
    again.append(areas(range(6, 14)), walls(range(6, 14)), start.epoch, commit=True)
    again.close(start.epoch)
    assert frame_counts(tmp_path) == once(range(14))
    check_visible_is_recorded(tmp_path, job)
    snap = job.snapshot(JOB)["streams"][STREAM]
    assert (snap["written"], snap["last_written_frame"]) == (14, 13)


def test_rows_stay_buffered_until_a_commit(tmp_path, job):
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    assert sink.append(areas(range(2)), walls(range(2)), start.epoch) == 0  # under max_rows, no interval
    assert visible(tmp_path, "class_areas") == set()
    assert sink.flush() == 2
    assert frame_counts(tmp_path) == once(range(2))


@pytest.mark.parametrize("point", ["staged", "recorded", "published"])
@pytest.mark.parametrize("skip", [0, 1, 2, 3])
def test_a_crash_anywhere_leaves_each_frame_once_after_the_next_attempt(tmp_path, job, point, skip):
    """`skip` moves the crash through the commits: frames' part, class_areas' part, and so on, so a crash
    also lands between the two frame tables' commits (frames committed, class_areas not)."""
    crashing = make_sink(tmp_path, job, cls=CrashingSink)
    start = crashing.begin()
    crashing.crash_at = (point, skip)
    with pytest.raises(Crash):
        feed(crashing, start, range(20))
    for table in SINK_TABLES:  # readers never see an unrecorded part, whatever step the crash hit
        assert visible(tmp_path, table) <= recorded(job, table), table

    sink = make_sink(tmp_path, job)
    start = sink.begin()
    check_visible_is_recorded(tmp_path, job)
    assert staged(tmp_path) == []
    feed(sink, start, range(start.next_frame, 20))
    sink.close(start.epoch)
    assert frame_counts(tmp_path) == once(range(20))
    check_visible_is_recorded(tmp_path, job)


def test_a_lost_reply_is_resolved_by_the_record_and_the_attempt_goes_on(tmp_path, job):
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    sink.arm_failpoint("record_reply", "lose_reply", skip=1)  # the second record of the attempt
    feed(sink, start, range(8))
    assert "record_reply" not in sink.armed  # it fired
    sink.close(start.epoch)
    assert frame_counts(tmp_path) == once(range(8))
    check_visible_is_recorded(tmp_path, job)
    snap = job.snapshot(JOB)["streams"][STREAM]
    assert snap["written"] == 8  # recorded once, although the writer did not hear back
    assert snap["committed"]["frames"]["rows"] == 8


def run_without_zombie(out: Path, store: JobStore) -> list[tuple]:
    """The same stream written by one attempt only, under another job id, in its own output dir."""
    out.mkdir()
    store.create_job("job-ref", {}, [STREAM])
    sink = make_sink(out, store, job_id="job-ref")
    start = sink.begin()
    feed(sink, start, range(20))
    sink.close(start.epoch)
    return read(out, "SELECT * EXCLUDE (job_id) FROM {class_areas} ORDER BY ALL") + read(
        out, "SELECT * EXCLUDE (job_id) FROM {frames} ORDER BY ALL"
    )


def test_a_zombie_writer_can_never_make_anything_visible(tmp_path, job):
    reference = run_without_zombie(tmp_path / "ref", job)

    out = tmp_path / "out"
    out.mkdir()
    old = make_sink(out, job)
    old_start = old.begin()
    feed(old, old_start, range(6))
    old.append(areas(range(6, 8)), walls(range(6, 8)), old_start.epoch)  # buffered, not committed

    new = make_sink(out, job)  # the stream is taken over (e.g. the actor was restarted elsewhere)
    start = new.begin()
    assert start == WriterStart(next_frame=6, epoch=2, last_pts=2.5)
    feed(new, start, range(6, 10))

    # The old writer does not know yet: it keeps appending and flushing, with frames the new one also writes.
    with pytest.raises(WriterRestarted):
        old.append(areas(range(8, 12)), walls(range(8, 12)), old_start.epoch, commit=True)
    for attempt in (
        lambda: old.append(areas(range(12, 14)), walls(range(12, 14)), old_start.epoch, commit=True),
        lambda: old.add_gaps([], old_start.epoch),
        lambda: old.close(old_start.epoch),
    ):
        with pytest.raises(WriterRestarted):
            attempt()
    assert frame_counts(out) == once(range(10))  # nothing of the zombie after the take-over
    assert staged(out) == []  # its rejected staged parts are gone, too
    check_visible_is_recorded(out, job)

    feed(new, start, range(10, 20))
    new.close(start.epoch)
    check_visible_is_recorded(out, job)
    assert frame_counts(out) == once(range(20))
    zombie_run = read(out, "SELECT * EXCLUDE (job_id) FROM {class_areas} ORDER BY ALL") + read(
        out, "SELECT * EXCLUDE (job_id) FROM {frames} ORDER BY ALL"
    )
    assert zombie_run == reference
    assert {p.name.split("-")[3] for p in (out / "class_areas" / JOB / STREAM).iterdir()} == {
        "000001",
        "000002",
    }  # epochs: the old attempt's parts before the take-over, the new one's after


def test_a_zombie_flush_after_its_rejection_still_says_writer_restarted(tmp_path, job):
    old = make_sink(tmp_path, job)
    old_start = old.begin()
    old.append(areas(range(2)), walls(range(2)), old_start.epoch)
    make_sink(tmp_path, job).begin()
    with pytest.raises(WriterRestarted):
        old.flush()
    # The attempt is over; every later call must say so (WriterRestarted is what the decoder retries on).
    with pytest.raises(WriterRestarted):
        old.flush()


def test_a_zombie_whose_record_landed_before_the_take_over_publishes_nothing_twice(tmp_path, job):
    """The old writer's record reaches the store just before the new attempt begins; the new attempt's
    recovery publishes that committed part, then the old writer tries to publish it too."""
    holder: dict[str, StreamSink] = {}

    def take_over() -> None:
        holder["new"] = make_sink(tmp_path, job)
        holder["start"] = holder["new"].begin()

    old = make_sink(tmp_path, job, cls=CrashingSink, hook=take_over)
    old_start = old.begin()
    old.crash_at = ("recorded", 0)  # the first record of the append: class_areas' full part, frames 0-2
    with pytest.raises(WriterRestarted, match="stale"):
        # class_areas' part is recorded, the take-over publishes it, the old writer finds it in place
        # (no error for that), then its frames part is rejected: the attempt is over
        old.append(areas(range(4)), walls(range(4)), old_start.epoch, commit=True)
    new, start = holder["new"], holder["start"]
    assert recorded(job, "class_areas") == visible(tmp_path, "class_areas") and recorded(job, "class_areas")
    assert start.next_frame == 0  # class_areas has frames 0-2 but frames has none: replay from 0
    feed(new, start, range(start.next_frame, 8))
    new.close(start.epoch)
    assert frame_counts(tmp_path) == once(range(8))
    check_visible_is_recorded(tmp_path, job)


def test_gaps_are_committed_at_once_and_the_timeline_resumes_after_the_last_pts(tmp_path, job):
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    feed(sink, start, range(4))
    gap = {
        "job_id": JOB,
        "stream_id": STREAM,
        "start_pts": 1.5,
        "end_pts": 9.0,
        "start_wall": 1_001.5,
        "end_wall": 1_009.0,
        "reason": "reconnect",
    }
    sink.add_gaps([gap], start.epoch)
    assert len(recorded(job, "gaps")) == 1 and visible(tmp_path, "gaps") == recorded(job, "gaps")
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path}/gaps/*/*/*.parquet')").fetchall()
    assert rows == [tuple(gap.values())]
    assert make_sink(tmp_path, job).begin().last_pts == 1.5


def test_another_job_with_the_same_stream_id_is_never_touched(tmp_path, store):
    store.create_job("job-a", {}, [STREAM])
    store.create_job("job-b", {}, [STREAM])
    # Job A: committed parts, and a crashed attempt that left a staged part behind (A's to resolve).
    a = make_sink(tmp_path, store, job_id="job-a")
    a_start = a.begin()
    feed(a, a_start, range(6))
    crashing = make_sink(tmp_path, store, job_id="job-a", cls=CrashingSink)
    crashing_start = crashing.begin()
    crashing.crash_at = ("staged", 0)
    with pytest.raises(Crash):
        feed(crashing, crashing_start, range(6, 8))
    assert staged(tmp_path, "job-a")
    # Foreign files in job B's own directories: the user's, not the writer's.
    foreign = [
        tmp_path / "class_areas" / "job-b" / "README.txt",
        tmp_path / "class_areas" / "job-b" / STREAM / "notes.md",
        # named like a part (of an epoch no writer here reaches), but not recorded: still not B's to delete
        tmp_path / "frames" / "job-b" / STREAM / "part-000000000000-000000000099-999999-000000.parquet",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{path.name} belongs to the user")
    job_a_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "job-a" in p.parts}

    # Job B: several attempts (each begin() recovers B's staging), one of them crashing mid-commit.
    for crash_at in (("recorded", 1), None, ("staged", 2), None):
        b = make_sink(tmp_path, store, job_id="job-b", cls=CrashingSink)
        start = b.begin()
        b.crash_at = crash_at
        try:
            feed(b, start, range(start.next_frame, 12))
            b.close(start.epoch)
        except Crash:
            pass

    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "job-a" in p.parts}
    assert after == job_a_files  # not one of job A's parts or staged files removed or altered
    for path in foreign:
        assert path.read_text() == f"{path.name} belongs to the user"
    foreign[-1].unlink()  # not Parquet: readers of the whole table would fail on it
    assert frame_counts(tmp_path, "job-b") == once(range(12))
    assert frame_counts(tmp_path, "job-a") == once(range(6))
    assert staged(tmp_path, "job-b") == []
    for table in SINK_TABLES:
        parts = {name for name in visible(tmp_path, table, "job-b") if PART_NAME_RE.fullmatch(name)}
        assert parts == recorded(store, table, "job-b"), table
    assert staging_dir(tmp_path, "class_areas", "job-a", STREAM).is_dir()
    # Job A's next attempt resolves its own leftovers, still without touching B.
    b_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "job-b" in p.parts}
    a = make_sink(tmp_path, store, job_id="job-a")
    a_start = a.begin()
    assert staged(tmp_path, "job-a") == [] and a_start.next_frame == 6
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "job-b" in p.parts} == b_files


def labelled(frames: range) -> list[FrameAreas]:
    return [
        dataclasses.replace(item, labels=np.full((10, 10), item.frame_index % 3, dtype=np.uint8))
        for item in areas(frames)
    ]


def test_label_maps_become_visible_only_with_their_committed_frames(tmp_path, job):
    published = tmp_path / "labels" / JOB / STREAM
    names = [f"frame-{i:012d}.png" for i in range(6)]
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    sink.append(labelled(range(0, 2)), walls(range(0, 2)), start.epoch)  # 6 rows: buffered, not committed
    assert not published.exists()
    assert len(staged(tmp_path)) == 2  # staged under _staging/<job>/labels/<stream>/
    assert sink.flush() == 2
    assert sorted(p.name for p in published.iterdir()) == names[:2]
    sink.append(labelled(range(2, 5)), walls(range(2, 5)), start.epoch)  # a full part (9 rows) commits
    assert sorted(p.name for p in published.iterdir()) == names[:5]
    sink.append(labelled(range(5, 6)), walls(range(5, 6)), start.epoch)  # then the writer dies

    again = make_sink(tmp_path, job)
    start = again.begin()  # frame 5 was never committed: its label map goes, unseen
    # class_areas holds frames 0..4, `frames` only 0..1 (its part was not full): replay from 2
    assert start.next_frame == 2
    assert sorted(p.name for p in published.iterdir()) == names[:5]
    assert not [p for p in staged(tmp_path) if "labels" in p.parts]
    again.append(labelled(range(2, 6)), walls(range(2, 6)), start.epoch, commit=True)
    assert sorted(p.name for p in published.iterdir()) == names
    assert frame_counts(tmp_path) == once(range(6))


def test_a_vocabulary_change_mid_stream_gives_each_row_its_own_version_once(tmp_path, job):
    """Frames analysed before and after a vocabulary change (in flight across it, too) keep their own
    names and version; a version's names are committed before its frames and never twice, also when a
    restarted writer is told again."""
    new_vocab = ["water", "boat"]
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    feed(sink, start, range(4))
    sink.add_vocabulary(2, new_vocab, start.epoch)
    assert read(
        tmp_path, "SELECT vocabulary_version, class_id, class_name FROM {vocabularies} ORDER BY 1, 2"
    ) == [
        *((1, i, name) for i, name in enumerate(VOCAB)),
        *((2, i, name) for i, name in enumerate(new_vocab)),
    ]
    mixed = areas(range(4, 6)) + [
        FrameAreas(STREAM, i, i / FPS, 10, 10, np.array([30, 70]), 0.01, vocabulary_version=2)
        for i in range(6, 9)
    ]
    sink.append(mixed, walls(range(4, 9)), start.epoch, commit=True)
    with pytest.raises(ValueError, match="version 2"):
        sink.add_vocabulary(2, ["not", "the", "same"], start.epoch)

    again = make_sink(tmp_path, job)  # a restarted writer: it knows version 1 from the spec only
    start = again.begin()
    again.add_vocabulary(2, new_vocab, start.epoch)  # the stream tells it the version in use
    later = [
        FrameAreas(STREAM, i, i / FPS, 10, 10, np.array([50, 50]), 0.01, vocabulary_version=2)
        for i in (9, 10)
    ]
    again.append(later, walls(range(9, 11)), start.epoch, commit=True)
    again.close(start.epoch)

    rows = read(
        tmp_path,
        "SELECT frame_index, vocabulary_version, list(class_name ORDER BY class_id) FROM {class_areas} "
        "GROUP BY 1, 2 ORDER BY 1",
    )
    assert rows == [(i, 1, VOCAB) for i in range(6)] + [(i, 2, new_vocab) for i in range(6, 11)]
    assert read(
        tmp_path, "SELECT vocabulary_version, count(*) FROM {vocabularies} GROUP BY 1 ORDER BY 1"
    ) == [
        (1, len(VOCAB)),
        (2, len(new_vocab)),
    ]
    check_visible_is_recorded(tmp_path, job)
