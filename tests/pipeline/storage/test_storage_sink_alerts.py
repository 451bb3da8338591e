"""Region areas and alert events through `StreamSink`, with the real job store and real Parquet: each
frame's region rows exactly once, and the `events` rows of a run crashed anywhere and resumed equal to
those of an undisturbed run, an event open across the crash included."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline.alerts import AlertRule
from pipeline.frames import FrameAreas
from pipeline.jobs.state import JobStore
from pipeline.storage.stream_sink import SinkOptions, StreamSink
from tests.pipeline.storage.test_storage_stream_sink import (
    Crash,
    CrashingSink,
    check_visible_is_recorded,
    recorded,
    visible,
)

JOB, STREAM = "job-1", "cam"
VOCAB = ["water", "road", "car"]
FPS = 2.0
FRAMES = 40
REGIONS = ("left", "right")
RULES = (
    AlertRule("flooded", "water", above=0.5, region="left", for_s=1.0, clear=0.3),
    AlertRule("dry_road", "road", below=0.2),
)
OPTIONS = SinkOptions(region_names=REGIONS, alerts=RULES)
EVENT_COLUMNS = "sequence, event_id, rule, region, class_name, status, start_pts, end_pts, peak, frame_index"


def water_share(i: int) -> float:
    """Left-half water share over the frames: two floods (the second still open at the end) and noise."""
    if 6 <= i < 15 or i >= 30:
        return 0.4 if i in (11, 35) else 0.8  # the dips to 0.4 stay above `clear` (hysteresis)
    return 0.1 + 0.05 * (i % 3)


def frame(i: int) -> FrameAreas:
    """A 10 x 10 frame: left and right halves of 50 pixels each."""
    water = round(50 * water_share(i))
    left = np.array([water, 50 - water - 5, 5])
    right = np.array([0, 5 + i % 30, 45 - i % 30])  # road share of the frame dips below 0.2 at times
    regions = np.stack([left, right]).astype(np.int64)
    return FrameAreas(STREAM, i, i / FPS, 10, 10, regions.sum(axis=0), 0.01, None, 1, REGIONS, regions)


def walls(frames: range) -> list[float]:
    return [5_000.0 + i / FPS for i in frames]


def make_sink(
    out: Path, store: JobStore, cls: type[StreamSink] = StreamSink, job_id: str = JOB
) -> StreamSink:
    return cls(out, job_id, STREAM, VOCAB, store, commit_interval_s=3600.0, max_rows=16, options=OPTIONS)


def run(sink: StreamSink, frames: range, epoch: int, batch: int = 3) -> None:
    for first in range(frames.start, frames.stop, batch):
        chunk = range(first, min(first + batch, frames.stop))
        sink.append([frame(i) for i in chunk], walls(chunk), epoch, commit=True)


def read(out: Path, sql: str) -> list[tuple]:
    return duckdb.sql(
        sql.replace("{events}", f"read_parquet('{out}/events/**/*.parquet')").replace(
            "{regions}", f"read_parquet('{out}/region_areas/**/*.parquet')"
        )
    ).fetchall()


def events(out: Path) -> list[tuple]:
    return read(out, f"SELECT {EVENT_COLUMNS} FROM {{events}} ORDER BY sequence")


def undisturbed(out: Path, store: JobStore) -> list[tuple]:
    """The events of the whole stream run once, as job "calm" in its own output folder."""
    out.mkdir()
    store.create_job("calm", {}, [STREAM])
    sink = make_sink(out, store, job_id="calm")
    start = sink.begin()
    run(sink, range(FRAMES), start.epoch)
    sink.close(start.epoch, ended=True)
    return events(out)


@pytest.fixture
def job(store: JobStore) -> JobStore:
    store.create_job(JOB, {}, [STREAM])
    return store


def test_region_rows_add_up_and_events_follow_the_rules(tmp_path, job):
    rows = undisturbed(tmp_path / "calm", job)
    tmp_path = tmp_path / "calm"
    per_frame = read(
        tmp_path,
        "SELECT frame_index, region, sum(pixels), sum(fraction), count(*) FROM {regions} GROUP BY ALL ORDER BY 1, 2",
    )
    assert per_frame == [(i, r, 50, pytest.approx(1.0), 3) for i in range(FRAMES) for r in REGIONS]
    water_left = read(
        tmp_path, "SELECT frame_index, fraction FROM {regions} WHERE region = 'left' AND class_id = 0"
    )
    assert sorted(water_left) == [(i, round(50 * water_share(i)) / 50) for i in range(FRAMES)]
    flooded = [row for row in rows if row[2] == "flooded"]
    # Opens 1 s (2 frames) after the share first exceeds 0.5 (frame 6); the dips to 0.4 keep it open.
    assert [(r[5], r[6], r[7], r[9]) for r in flooded] == [
        ("open", 3.0, None, 8),
        ("closed", 3.0, 7.5, 15),
        ("open", 15.0, None, 32),
        ("ended", 15.0, 19.5, 39),  # still open when the stream ended
    ]
    assert {r[8] for r in flooded} == {0.8}  # the peak
    assert [r[0] for r in rows] == list(range(len(rows)))  # numbered 0, 1, 2, ... without a gap
    assert {r[2] for r in rows} == {"flooded", "dry_road"}


@pytest.mark.parametrize("point", ["staged", "recorded", "published"])
@pytest.mark.parametrize("skip", [1, 9, 30, 52])  # 52: while the second flood is open
def test_a_crash_anywhere_gives_the_events_of_an_undisturbed_run(tmp_path, job, point, skip):
    expected = undisturbed(tmp_path / "calm", job)
    out = tmp_path
    crashing = make_sink(out, job, CrashingSink)
    start = crashing.begin()
    crashing.crash_at = (point, skip)
    with pytest.raises(Crash):
        run(crashing, range(FRAMES), start.epoch)
        crashing.close(start.epoch, ended=True)
    sink = make_sink(out, job)
    start = sink.begin()
    run(sink, range(start.next_frame, FRAMES), start.epoch)
    sink.close(start.epoch, ended=True)
    assert events(out) == expected
    check_visible_is_recorded(out, job)
    for table in ("events", "region_areas"):
        assert visible(out, table) == recorded(job, table), table
    counts = read(out, "SELECT frame_index, count(*) FROM {regions} GROUP BY 1 ORDER BY 1")
    assert counts == [(i, len(REGIONS) * len(VOCAB)) for i in range(FRAMES)]


def test_an_interrupted_stream_leaves_its_event_open_for_the_resume(tmp_path, job):
    sink = make_sink(tmp_path, job)
    start = sink.begin()
    run(sink, range(34), start.epoch)  # the second flood opened at frame 32
    sink.close(start.epoch)  # interrupted, not ended: no "ended" record
    assert [r[5] for r in events(tmp_path)][-1] == "open"
    resumed = make_sink(tmp_path, job)
    start = resumed.begin()
    assert start.next_frame == 34 and "open" in [r[5] for r in events(tmp_path) if r[2] == "flooded"]
    run(resumed, range(34, FRAMES), start.epoch)
    resumed.close(start.epoch, ended=True)
    assert events(tmp_path) == undisturbed(tmp_path / "calm", job)
