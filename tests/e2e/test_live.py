"""Live streams through the whole job: a real RTSP server (GStreamer) stopped and restarted mid-stream, and
a server that accepts connections but never sends a frame."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from actors.decoder import DecoderSettings
from actors.job import JobOutcome, run_job
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from tests.support.rtsp import RtspServer, running_rtsp_server


def start_job(
    spec_data: dict, settings: DecoderSettings
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
                commit_interval_s=0.3,
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
        f"SELECT start_pts, end_pts, start_wall, end_wall, reason FROM read_parquet('{out}/gaps/*/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert len(gaps) >= 1
    start_pts, end_pts, start_wall, end_wall, reason = gaps[0]
    assert end_pts > start_pts and end_wall - start_wall >= 1.5
    # The gap runs from the last frame before the outage to the first one after it, so it covers the
    # outage (a loaded machine may have delivered the last frame a while before the kill).
    assert start_wall <= outage_started + 2.0 and end_wall >= outage_ended
    assert "connection lost" in reason or "stalled" in reason
    rows = duckdb.sql(
        f"SELECT frame_index, pts_seconds FROM read_parquet('{out}/frames/*/*.parquet', hive_partitioning=true) ORDER BY frame_index"
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
