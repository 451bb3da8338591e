"""Job control with real Ray and Redis: cancel within seconds with committed output intact, per-stream
failure policy (retry, then fail while the other streams finish), and a full output disk."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from actors.job import run_job
from actors.pool_errors import PoolStartError
from actors.stream_config import DecoderSettings
from pipeline.cli.main import main as cli
from pipeline.decode import Sampler, decode_frames
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.sample_video import write_sample_video
from pipeline.storage.writer import OutputDirError


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=30, fps=10, size=(48, 64))


def committed_frames(out: Path) -> list[int]:
    return [
        row[0]
        for row in duckdb.sql(
            f"SELECT DISTINCT frame_index FROM read_parquet('{out}/class_areas/**/*.parquet') ORDER BY 1"
        ).fetchall()
    ]


def test_cancel_stops_within_seconds_and_keeps_committed_output(
    local_ray: None, long_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = parse_job_spec(
        {
            "job_id": "cancel-me",
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(tmp_path),
            "streams": [
                {
                    "id": "cam",
                    "source": str(long_video),
                    "vocabulary": ["road", "car"],
                    "sampling": {"every": 1},
                }
            ],
        }
    )
    result: dict[str, object] = {}
    started = threading.Event()
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "outcome",
            run_job(
                spec,
                settings=DecoderSettings(poll_s=0.2),
                show_progress=False,
                commit_interval_s=0.3,
                on_started=lambda *_: started.set(),
            ),
        ),
        daemon=True,
    )
    thread.start()
    assert started.wait(60)
    redis_url = EmbeddedRedis(tmp_path).start().url  # attaches to the job's server
    store = JobStore.from_url(redis_url)
    deadline = time.monotonic() + 120
    while store.stream_counter("cancel-me", "cam", "written") < 10:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    asked = time.monotonic()
    assert cli(["cancel", "cancel-me", "--out", str(tmp_path)]) == 0
    thread.join(timeout=30)
    assert not thread.is_alive()
    stopped_after = time.monotonic() - asked
    assert stopped_after < 10, f"cancel took {stopped_after:.1f} s"
    assert result["outcome"].status == "cancelled"
    store = JobStore.from_url(EmbeddedRedis(tmp_path).start().url)  # the job's driver stopped its server
    assert store.status("cancel-me") == "cancelled"
    frames = committed_frames(tmp_path)
    assert 10 <= len(frames) < 300
    assert frames == list(range(len(frames))), "committed output must be a gap-free prefix"
    assert store.stream_counter("cancel-me", "cam", "written") == len(frames)
    capsys.readouterr()


@pytest.fixture()
def refusing_port() -> Iterator[int]:
    """A port with nothing listening (bound, never accepting), so connects are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_failure_policy_retries_then_fails_the_stream_only(
    local_ray: None, long_video: Path, tmp_path: Path, refusing_port: int
) -> None:
    short = write_sample_video(tmp_path / "short.mp4", seconds=2, fps=10, size=(48, 64))
    spec = parse_job_spec(
        {
            "job_id": "retries",
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(tmp_path / "out"),
            "streams": [
                {"id": "good", "source": str(short), "vocabulary": ["road"], "sampling": {"fps": 5}},
                {
                    "id": "dead-camera",
                    "source": f"http://127.0.0.1:{refusing_port}/live.ts",
                    "vocabulary": ["road"],
                    "failure_policy": {"retries": 2},
                },
            ],
        }
    )
    outcome = run_job(spec, settings=DecoderSettings(open_timeout_s=2, read_timeout_s=2), show_progress=False)
    assert outcome.status == "completed"
    assert outcome.streams["good"].status == "completed"
    assert outcome.streams["dead-camera"].status == "failed"
    assert outcome.streams["dead-camera"].error_kind == "SourceUnreachable"
    server = EmbeddedRedis(tmp_path / "out").start()
    errors = JobStore.from_url(server.url).errors("retries", "dead-camera")
    server.stop()
    assert [e["kind"] for e in errors].count("retry") == 2
    assert [e["kind"] for e in errors].count("SourceUnreachable") == 3
    assert committed_frames(tmp_path / "out") == [
        f.frame_index for f in decode_frames(short, "good", Sampler(fps=5))
    ]


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_output_disk_fails_clearly_before_starting(small_disk: Path, long_video: Path) -> None:
    spec = parse_job_spec(
        {
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(small_disk / "out"),
            "streams": [{"id": "cam", "source": str(long_video), "vocabulary": ["road"]}],
        }
    )
    with pytest.raises(OutputDirError, match=r"only .* free"):
        run_job(spec, show_progress=False)
    assert not (small_disk / "out" / "class_areas").exists()


def test_a_pool_that_cannot_start_fails_the_job_with_the_replicas_own_error(
    local_ray: None, long_video: Path, tmp_path: Path
) -> None:
    """Weights that exist (so the checks before start-up pass) but do not load: the replicas fail, and the
    job, its streams and the errors table say why in the replicas' words, not Serve's "Deploying
    application ... failed"."""
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}" + bytes(64))
    out = tmp_path / "out"
    spec = parse_job_spec(
        {
            "job_id": "no-pool",
            "model": {"name": "san_tiny_test", "weights": str(garbage)},
            "output": str(out),
            "streams": [{"id": "cam", "source": str(long_video), "vocabulary": ["road"]}],
        }
    )
    with pytest.raises(PoolStartError) as failed:
        run_job(spec, show_progress=False)
    message = str(failed.value)
    assert message.startswith("the model pool did not start: ") and "Deploying application" not in message
    assert "garbage.safetensors" in message, message
    server = EmbeddedRedis(out).start()
    try:
        store = JobStore.from_url(server.url)
        assert store.status("no-pool") == "failed" and store.stream_status("no-pool", "cam") == "failed"
        assert any(e["message"] == message for e in store.errors("no-pool", "cam"))
    finally:
        server.stop()
    exported = duckdb.sql(
        f"SELECT message FROM read_parquet('{out}/errors/**/*.parquet', union_by_name=true) "
        "WHERE stream_id = 'cam'"
    ).fetchall()
    assert (message,) in exported, exported
