"""Live streams through the whole job: a real RTSP server (GStreamer) stopped and restarted mid-stream, a
server that accepts connections but never sends a frame, a 1 fps camera whose rows must be in Parquet
within the flush interval, a writer killed mid-stream (the lost window becomes a gap, the timeline goes on),
and a camera that cannot be reached (the stream shows `reconnecting` until cancelled)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import ray

from actors.job import JobOutcome, run_job
from actors.stream_config import DecoderSettings
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from tests.support.rtsp import RtspServer, free_port, running_rtsp_server

MODEL = {"name": "san_tiny_test", "weights": "random"}


def rows(out: Path, table: str, columns: str, order: str = "") -> list[tuple]:
    """Rows of a committed table, under whichever output layout (`**` matches both)."""
    if not any((out / table).rglob("*.parquet")):
        return []
    query = f"SELECT {columns} FROM read_parquet('{out}/{table}/**/*.parquet', union_by_name=true)"
    return duckdb.sql(query + (f" ORDER BY {order}" if order else "")).fetchall()


def start_job(
    spec_data: dict, settings: DecoderSettings, commit_interval_s: float = 0.3
) -> tuple[threading.Thread, dict[str, object], JobStore]:
    spec = parse_job_spec(spec_data)
    result: dict[str, object] = {}
    started = threading.Event()

    def target() -> None:
        try:
            result["outcome"] = run_job(
                spec,
                settings=settings,
                show_progress=False,
                commit_interval_s=commit_interval_s,
                on_started=lambda *_: started.set(),
            )
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert started.wait(60), result
    store = JobStore.from_url(EmbeddedRedis(spec.output).start().url)  # attach to the job's server
    return thread, result, store


def wait_for(predicate, thread: threading.Thread, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert thread.is_alive(), f"job ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture()
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    with running_rtsp_server(tmp_path / "rtsp.log") as server:
        yield server


def test_camera_restart_is_a_recorded_gap_and_the_stream_keeps_going(
    local_ray: None, rtsp_server: RtspServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    thread, result, store = start_job(
        {
            "job_id": "live-job",
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(out),
            "streams": [
                {
                    "id": "gate",
                    "source": rtsp_server.url,
                    "vocabulary": ["road", "person"],
                    "sampling": {"fps": 5},
                }
            ],
        },
        DecoderSettings(open_timeout_s=3, read_timeout_s=2, poll_s=0.2),
    )
    written = lambda: store.stream_counter("live-job", "gate", "written")  # noqa: E731
    wait_for(lambda: written() >= 5, thread, 90, "frames before the outage")
    rtsp_server.kill()
    outage_started = time.time()
    time.sleep(2.0)
    outage_ended = time.time()
    rtsp_server.start()
    before = written()
    wait_for(lambda: written() >= before + 5, thread, 90, "frames after the restart")
    store.request_cancel("live-job")
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in result, result
    outcome: JobOutcome = result["outcome"]  # type: ignore[assignment]
    assert outcome.status == "cancelled"
    gaps = duckdb.sql(
        f"SELECT start_pts, end_pts, start_wall, end_wall, reason FROM read_parquet('{out}/gaps/**/*.parquet')"
    ).fetchall()
    assert len(gaps) >= 1
    start_pts, end_pts, start_wall, end_wall, reason = gaps[0]
    assert end_pts > start_pts and end_wall - start_wall >= 1.5
    # The gap runs from the last frame before the outage to the first one after it, so it covers the
    # outage (a loaded machine may have delivered the last frame a while before the kill).
    assert start_wall <= outage_started + 2.0 and end_wall >= outage_ended
    assert "connection lost" in reason or "stalled" in reason
    rows = duckdb.sql(
        f"SELECT frame_index, pts_seconds FROM read_parquet('{out}/frames/**/*.parquet') ORDER BY frame_index"
    ).fetchall()
    assert all(b[0] > a[0] and b[1] > a[1] for a, b in itertools.pairwise(rows)), (
        "indices and pts must increase"
    )
    assert any(pts >= end_pts for _, pts in rows), "frames after the gap must be on the same timeline"


def test_a_camera_that_never_sends_is_detected_within_the_timeout(local_ray: None, tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) but never answers
    port = silent.getsockname()[1]
    try:
        began = time.monotonic()
        spec = parse_job_spec(
            {
                "job_id": "silent-job",
                "model": {"name": "san_tiny_test", "weights": "random"},
                "output": str(tmp_path / "out"),
                "streams": [{"id": "mute", "source": f"rtsp://127.0.0.1:{port}/cam", "vocabulary": ["road"]}],
            }
        )
        outcome = run_job(
            spec,
            settings=DecoderSettings(open_timeout_s=1, read_timeout_s=1, live_max_attempts=2),
            show_progress=False,
        )
    finally:
        silent.close()
    assert outcome.streams["mute"].status == "failed"
    assert outcome.streams["mute"].error_kind in ("SourceUnreachable", "SourceStalled")
    assert time.monotonic() - began < 60  # includes Ray Serve start-up; detection itself takes about 2 s


def finish(thread: threading.Thread, result: dict[str, object], store: JobStore, job_id: str) -> JobOutcome:
    """Cancel the job and return its outcome; cancel must work whatever state the stream is in."""
    store.request_cancel(job_id)
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in result, result
    outcome: JobOutcome = result["outcome"]  # type: ignore[assignment]
    assert outcome.status == "cancelled"
    return outcome


def test_a_1_fps_camera_has_rows_in_parquet_within_the_flush_interval(
    local_ray: None, rtsp_server: RtspServer, tmp_path: Path
) -> None:
    """One analysed frame a second used to wait for 32 frames (flush_frames) before reaching the writer;
    now it is committed within `flush_interval_s` (10 s by default) of being analysed. The writer's own
    commit interval is a minute here, so only the decoder's interval can commit."""
    out = tmp_path / "out"
    thread, result, store = start_job(
        {
            "job_id": "slow-cam",
            "model": MODEL,
            "output": str(out),
            "streams": [
                {"id": "gate", "source": rtsp_server.url, "vocabulary": ["road"], "sampling": {"fps": 1}}
            ],
        },
        DecoderSettings(open_timeout_s=3, read_timeout_s=3, poll_s=0.2),
        commit_interval_s=60.0,
    )
    wait_for(lambda: store.stream_counter("slow-cam", "gate", "analysed") >= 1, thread, 60, "a frame")
    wait_for(lambda: bool(rows(out, "class_areas", "frame_index")), thread, 20, "rows in Parquet")
    seen = time.time()
    finish(thread, result, store, "slow-cam")
    first_wall = rows(out, "frames", "wall_time", "frame_index")[0][0]
    assert seen - first_wall <= 15.0, f"first rows reached Parquet {seen - first_wall:.1f} s after the frame"


@pytest.mark.slow  # a killed writer in the default run: tests/e2e/test_faults.py
def test_a_writer_killed_mid_stream_leaves_a_gap_row_and_the_timeline_goes_on(
    local_ray: None, rtsp_server: RtspServer, tmp_path: Path
) -> None:
    """A live source cannot replay: what was analysed but not committed when the writer died is lost,
    recorded as a `gaps` row from the last committed frame to the first frame of the new attempt, and
    the new attempt continues the PTS timeline after the committed frames."""
    out = tmp_path / "out"
    thread, result, store = start_job(
        {
            "job_id": "kill-writer",
            "model": MODEL,
            "output": str(out),
            "flush_interval_s": 1.0,
            "streams": [
                {"id": "gate", "source": rtsp_server.url, "vocabulary": ["road"], "sampling": {"fps": 5}}
            ],
        },
        DecoderSettings(open_timeout_s=3, read_timeout_s=3, poll_s=0.2, flush_interval_s=1.0),
        commit_interval_s=60.0,
    )
    written = lambda: store.stream_counter("kill-writer", "gate", "written")  # noqa: E731
    wait_for(lambda: written() >= 5, thread, 90, "committed frames before the kill")
    writer = ray.get_actor(store.stream_actors("kill-writer", "gate")[1])
    os.kill(ray.get(writer.pid.remote()), signal.SIGKILL)
    wait_for(
        lambda: any(e["kind"] == "recovered" for e in store.errors("kill-writer", "gate")),
        thread,
        60,
        "the recovery",
    )
    before = written()
    wait_for(lambda: written() >= before + 5, thread, 60, "frames after the recovery")
    outcome = finish(thread, result, store, "kill-writer")
    assert outcome.streams["gate"].recoveries >= 1
    gaps = rows(out, "gaps", "start_pts, end_pts, start_wall, end_wall, reason", "start_pts")
    recovery = [g for g in gaps if g[4].startswith("recovery: ")]
    assert len(recovery) == 1, gaps
    start_pts, end_pts, start_wall, end_wall, _ = recovery[0]
    assert end_pts > start_pts and end_wall > start_wall
    frames = rows(out, "frames", "frame_index, pts_seconds", "frame_index")
    pts = [p for _, p in frames]
    assert [i for i, _ in frames] == sorted({i for i, _ in frames}), "frame indices are unique"
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts_seconds must never decrease"
    # The gap starts at the last frame committed before the kill and ends at the first one after it;
    # nothing was kept from inside it.
    assert start_pts in pts and end_pts in pts
    assert not [p for p in pts if start_pts < p < end_pts]
    areas = rows(out, "class_areas", "frame_index, pts_seconds", "frame_index")
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(areas))


def test_an_unreachable_camera_shows_reconnecting_with_rate_limited_errors(
    local_ray: None, tmp_path: Path
) -> None:
    """Nothing listens at the camera's address: the stream is `reconnecting` (not a healthy-looking
    `running` without rows), its connect errors are recorded at most once per `error_interval_s` with
    a count of the ones held back, and cancel still ends it at once."""
    out = tmp_path / "out"
    thread, result, store = start_job(
        {
            "job_id": "no-cam",
            "model": MODEL,
            "output": str(out),
            "streams": [
                {"id": "door", "source": f"rtsp://127.0.0.1:{free_port()}/cam", "vocabulary": ["road"]}
            ],
        },
        DecoderSettings(open_timeout_s=2, read_timeout_s=2, poll_s=0.2, error_interval_s=5.0),
    )
    reconnecting = lambda: [e for e in store.errors("no-cam", "door") if e["kind"] == "reconnecting"]  # noqa: E731
    wait_for(lambda: store.stream_status("no-cam", "door") == "reconnecting", thread, 60, "reconnecting")
    wait_for(lambda: len(reconnecting()) >= 2, thread, 30, "a second (rate-limited) error record")
    snapshot = store.snapshot("no-cam")["streams"]["door"]  # what `sanstream status` shows
    assert snapshot["status"] == "reconnecting"
    first, second = reconnecting()[:2]
    assert first["message"].startswith("connect failed") and "refused" in first["message"]
    assert second["time"] - first["time"] >= 5.0 - 0.1
    assert "more failed attempt" in second["message"], second  # attempts every 0.5, 1, 2, 4 s were held
    cancelled_at = time.monotonic()
    outcome = finish(thread, result, store, "no-cam")  # the job's Redis stops with it
    assert time.monotonic() - cancelled_at < 30
    assert outcome.streams["door"].status == "cancelled"
    assert rows(out, "class_areas", "frame_index") == []
