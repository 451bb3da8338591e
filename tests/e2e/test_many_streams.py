"""Many streams per process (real Ray, Serve, Redis, PyAV and Parquet): a job's streams share a few
decoder actors and one writer per node, so 16 streams cost hardly more processes than one, and a source
that hangs or a file that is damaged stays confined to its own stream while the streams beside it, on the
same decoder actor, keep their output and their pace.

Actor processes are counted with psutil among this test process's descendants (the local Ray's raylet is
one of them, so its workers are too): every live process whose title (cmdline[0]) starts with `ray::`,
except idle workers (`ray::IDLE`). That takes in decoders, writers, Serve's controller and the replicas.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest
import redis

from actors.job import JobOutcome, run_job
from actors.stream_config import DecoderSettings
from pipeline.decode import Sampler, decode_frames
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.sample_video import write_sample_video
from tests.support.jobs import COMPARED
from tests.support.servers import SilentServer

VOCABULARY = ["sky", "road", "car"]
SMALL_EVERY = 5  # tests 1 and 3: a 1 s, 10 fps clip sampled every 5th frame -> frames 0 and 5
# Test 2's good streams read a 6 s, 10 fps, 64x64 clip at its own frame rate (`realtime: true`), sampled
# every 10th frame: 6 analysed frames, 1 per second. The hung camera stays silent for longer than that
# (HANG_S), so a hang that held up the shared decoder actor would hold up the good streams to their end.
PACED_SECONDS, PACED_FPS, PACED_EVERY = 6, 10, 10
HANG_S = 8.0
# A good stream's reader is held up only when its buffers are full: 3 decoded frames queued, 2 at the model.
# That absorbs the model's pace on a busy 2-core machine (6 streams share one replica), so the read times
# (`frames.wall_time`) measure the stream itself, yet a decoder actor that stopped taking frames for as
# long as the camera hangs (HANG_S) would stop the reader within 3 frames, and its read times show it.
PACED_SETTINGS = DecoderSettings(
    max_in_flight=2, queue_size=3, flush_frames=2, poll_s=0.2, open_timeout_s=HANG_S, read_timeout_s=HANG_S
)
# Process titles of a job's own actors (the Serve controller outlives jobs; these must not).
JOB_ACTOR_TITLES = ("DecoderHost", "WriterHost", "ServeReplica", "SERVE_REPLICA")
SETTINGS = DecoderSettings(max_in_flight=4, flush_frames=4, poll_s=0.2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("many-streams-videos")
    paced = write_sample_video(folder / "paced.mp4", seconds=PACED_SECONDS, fps=PACED_FPS, size=(64, 64))
    damaged = folder / "damaged.mp4"
    data = paced.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # cut mid-way: the index (moov, at the end) is gone
    return {
        "small": write_sample_video(folder / "small.mp4", seconds=1, fps=10, size=(64, 96)),
        "paced": paced,
        "damaged": damaged,
    }


def actor_processes() -> dict[int, str]:
    """pid -> title of this process's live descendants that are Ray actors (not idle workers)."""
    found: dict[int, str] = {}
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            cmdline = process.cmdline()
        except psutil.Error:  # exited between the listing and the look
            continue
        if cmdline and cmdline[0].startswith("ray::") and cmdline[0] != "ray::IDLE":
            found[process.pid] = cmdline[0]
    return found


def wait_for_no_job_actors(timeout_s: float = 90.0) -> None:
    """Until no decoder, writer or replica of an earlier job is still alive, so a count covers one job."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {
            pid: title
            for pid, title in actor_processes().items()
            if any(t in title for t in JOB_ACTOR_TITLES)
        }
        if not left:
            return
        assert time.monotonic() < deadline, f"actors of an earlier job are still alive: {left}"
        time.sleep(0.2)


@dataclass
class Watch:
    """What a sampling thread saw while one job ran."""

    stream_ids: list[str]
    url: str = ""
    #: the largest set of actor processes alive at once (pid -> title)
    peak: dict[int, str] = field(default_factory=dict)
    #: the most decoder (`DecoderHost`) and writer (`WriterHost`) processes alive at once
    most: dict[str, int] = field(default_factory=lambda: {"DecoderHost": 0, "WriterHost": 0})
    #: stream id -> (decoder actor name, writer actor name), as the job recorded them in its store
    actors: dict[str, tuple[str, str]] = field(default_factory=dict)
    samples: int = 0
    error: BaseException | None = None


@contextlib.contextmanager
def watching(job_id: str, stream_ids: list[str]) -> Iterator[Watch]:
    """Sample actor processes (every 0.1 s) and the streams' recorded actors while the body runs a job
    whose `on_started` sets `watch.url`."""
    watch = Watch(stream_ids)
    stop = threading.Event()

    def sample() -> None:
        store: JobStore | None = None
        try:
            while not stop.is_set():
                processes = actor_processes()
                watch.samples += 1
                if len(processes) > len(watch.peak):
                    watch.peak = processes
                for kind in watch.most:
                    alive = sum(kind in title for title in processes.values())
                    watch.most[kind] = max(watch.most[kind], alive)
                if watch.url and len(watch.actors) < len(stream_ids):
                    store = store or JobStore.from_url(watch.url)
                    for stream_id in stream_ids:
                        # The store goes away with the job's embedded Redis when the job ends.
                        with contextlib.suppress(redis.RedisError):
                            names = store.stream_actors(job_id, stream_id)
                            if all(names):
                                watch.actors[stream_id] = names
                stop.wait(0.1)
        except BaseException as error:
            watch.error = error
        finally:
            if store is not None:
                store.r.close()

    wait_for_no_job_actors()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join(10)
    if watch.error is not None:
        raise watch.error
    assert watch.samples >= 5, "the sampling thread hardly ran"


def run_watched(spec: dict[str, Any], settings: DecoderSettings = SETTINGS) -> tuple[JobOutcome, Watch]:
    """Run the job in this thread while a sampling thread watches it."""
    stream_ids = [stream["id"] for stream in spec["streams"]]
    with watching(spec["job_id"], stream_ids) as watch:

        def started(job_id: str, url: str) -> None:
            watch.url = url

        outcome = run_job(
            parse_job_spec(spec),
            settings=settings,
            show_progress=False,
            commit_interval_s=0.5,
            on_started=started,
        )
    return outcome, watch


def job(out: Path, job_id: str, streams: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "model": {"name": "san_tiny_test", "weights": "random"},
        "output": str(out),
        "streams": streams,
        "serve": {"batch_size": 8, "batch_wait_timeout_s": 0.05},
        **extra,
    }


def small_streams(clips: dict[str, Path], count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"s{i:02d}",
            "source": str(clips["small"]),
            "vocabulary": VOCABULARY,
            "sampling": {"every": SMALL_EVERY},
        }
        for i in range(count)
    ]


def stream_rows(out: Path, table: str, stream_id: str) -> list[tuple]:
    """A stream's rows of `table` (COMPARED's columns but the stream id), in frame and class order."""
    columns = COMPARED[table].replace("stream_id, ", "")
    order = "frame_index" + (", class_id" if table == "class_areas" else "")
    return duckdb.execute(
        f"SELECT {columns} FROM read_parquet('{out}/{table}/**/*.parquet') WHERE stream_id = ? "
        f"ORDER BY {order}",
        [stream_id],
    ).fetchall()


def frame_indices(out: Path) -> dict[str, list[int]]:
    rows = duckdb.sql(
        f"SELECT stream_id, list(frame_index ORDER BY frame_index) "
        f"FROM read_parquet('{out}/frames/**/*.parquet') GROUP BY 1"
    ).fetchall()
    return dict(rows)


def analysed_rate(out: Path, stream_id: str) -> float:
    """Analysed frames per second of wall time (when each frame was read): (n - 1) / (last - first)."""
    ((count, first, last),) = duckdb.execute(
        f"SELECT count(*), min(wall_time), max(wall_time) FROM read_parquet('{out}/frames/**/*.parquet') "
        "WHERE stream_id = ?",
        [stream_id],
    ).fetchall()
    assert count >= 3 and last > first, (stream_id, count, first, last)
    return (count - 1) / (last - first)


def expected_indices(video: Path, every: int) -> list[int]:
    return [frame.frame_index for frame in decode_frames(video, "x", Sampler(every=every))]


@dataclass
class SoloRun:
    out: Path
    outcome: JobOutcome
    watch: Watch


@pytest.fixture(scope="module")
def one_stream(local_ray: None, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> SoloRun:
    """The small clip as a job's only stream: the process count of the smallest job, and every later
    small-clip stream's expected rows."""
    out = tmp_path_factory.mktemp("one-stream")
    outcome, watch = run_watched(job(out, "one-stream", small_streams(clips, 1)))
    assert outcome.status == "completed", outcome
    assert frame_indices(out) == {"s00": expected_indices(clips["small"], SMALL_EVERY)}
    return SoloRun(out, outcome, watch)


@pytest.mark.slow  # 16 streams against one (2 jobs); bench/streams.py measures RSS per stream
def test_sixteen_streams_need_at_most_four_more_actor_processes_than_one(
    one_stream: SoloRun, clips: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    streams = small_streams(clips, 16)
    ids = [stream["id"] for stream in streams]
    outcome, watch = run_watched(job(out, "sixteen-streams", streams))

    assert outcome.status == "completed"
    assert {sid: s.status for sid, s in outcome.streams.items()} == dict.fromkeys(ids, "completed")
    expected = expected_indices(clips["small"], SMALL_EVERY)
    assert len(expected) == 2
    assert frame_indices(out) == dict.fromkeys(ids, expected)
    reference = stream_rows(one_stream.out, "class_areas", "s00")
    assert reference and all(stream_rows(out, "class_areas", sid) == reference for sid in ids)

    # The streams share their decoder actors (and the one node's writer).
    assert sorted(watch.actors) == ids, "not every stream recorded the actors carrying it"
    decoders = {watch.actors[sid][0] for sid in ids}
    writers = {watch.actors[sid][1] for sid in ids}
    assert len(decoders) < len(ids) and len(writers) == 1, watch.actors

    one, sixteen = one_stream.watch, watch
    for seen in (one, sixteen):  # the counts did see the jobs' actors
        assert seen.most["DecoderHost"] >= 1 and seen.most["WriterHost"] >= 1, seen.peak
        assert any("ServeReplica" in title or "SERVE_REPLICA" in title for title in seen.peak.values())
    assert len(sixteen.peak) <= len(one.peak) + 4, (
        f"16 streams ran on {len(sixteen.peak)} actor processes, 1 stream on {len(one.peak)}:\n"
        f"16: {sorted(sixteen.peak.values())}\n1: {sorted(one.peak.values())}"
    )


def test_hung_and_broken_sources_do_not_disturb_good_streams(
    local_ray: None, clips: dict[str, Path], tmp_path: Path
) -> None:
    """Six good streams paced like cameras share one decoder actor with a camera that accepts the
    connection and never sends, and with a damaged file. Each good stream must write what it writes alone,
    at the pace it keeps alone, and the two bad ones must fail with their errors.

    Baseline: ONE solo job with one good stream. The six good streams are the same file with the same
    vocabulary and sampling, so that run is each one's solo run (rows and pace), measured here just before
    the shared run so both see the same machine load."""

    def good(stream_id: str) -> dict[str, Any]:
        return {
            "id": stream_id,
            "source": str(clips["paced"]),
            "vocabulary": VOCABULARY,
            "sampling": {"every": PACED_EVERY},
            "realtime": True,
        }

    expected = expected_indices(clips["paced"], PACED_EVERY)
    solo_out = tmp_path / "solo"
    solo, _ = run_watched(job(solo_out, "paced-solo", [good("good0")]), PACED_SETTINGS)
    assert solo.status == "completed"
    assert frame_indices(solo_out) == {"good0": expected}
    solo_rows = {table: stream_rows(solo_out, table, "good0") for table in COMPARED}
    solo_rate = analysed_rate(solo_out, "good0")

    out = tmp_path / "shared"
    good_ids = [f"good{i}" for i in range(6)]
    with SilentServer() as camera:
        streams = [good(sid) for sid in good_ids]
        streams += [
            {"id": "hung", "source": camera.url("cam.mp4"), "vocabulary": VOCABULARY},
            {"id": "damaged", "source": str(clips["damaged"]), "vocabulary": VOCABULARY},
        ]
        spec = job(out, "paced-shared", streams, decoding={"streams_per_decoder": 8})
        outcome, watch = run_watched(spec, PACED_SETTINGS)
        connections = camera.connections

    assert sorted(watch.actors) == sorted([*good_ids, "hung", "damaged"])
    assert len({decoder for decoder, _ in watch.actors.values()}) == 1, watch.actors

    assert outcome.status == "completed"
    statuses = {sid: s.status for sid, s in outcome.streams.items()}
    assert statuses == {**dict.fromkeys(good_ids, "completed"), "hung": "failed", "damaged": "failed"}
    assert connections >= 1, "the hung source was never connected to"
    hung, damaged = outcome.streams["hung"], outcome.streams["damaged"]
    assert hung.error_kind in ("SourceUnreachable", "SourceStalled"), hung
    assert f"127.0.0.1:{camera.port}" in (hung.error or "")
    assert damaged.error_kind == "NotAVideo" and str(clips["damaged"]) in (damaged.error or ""), damaged
    errors = duckdb.sql(
        f"SELECT stream_id, kind, time FROM read_parquet('{out}/errors/**/*.parquet') ORDER BY 1"
    ).fetchall()
    assert [row[:2] for row in errors] == [("damaged", "NotAVideo"), ("hung", hung.error_kind)]
    # The camera hung for the good streams' whole run: their last frame was read before it gave up.
    ((last_read,),) = duckdb.sql(
        f"SELECT max(wall_time) FROM read_parquet('{out}/frames/**/*.parquet')"
    ).fetchall()
    assert last_read < errors[1][2], "the good streams ran on after the hung source had failed"

    rates = {}
    for sid in good_ids:
        for table in COMPARED:
            assert stream_rows(out, table, sid) == solo_rows[table], f"{sid}: {table} differs from solo"
        rates[sid] = analysed_rate(out, sid)
    slow = {sid: round(rate, 3) for sid, rate in rates.items() if rate < 0.8 * solo_rate}
    assert not slow, f"good streams slower than 0.8 x their solo {solo_rate:.3f} frames/s: {slow}"
