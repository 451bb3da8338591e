"""What the end-to-end job tests share: the two-stream tiny-model job they run, its output read in a stable
order, the `sanstream` CLI as a subprocess, and a plain redis-server configured like an operator's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import redis

from pipeline.jobs.redis_server import find_redis_server

#: Columns compared between a disturbed run and an undisturbed one (wall times and latencies differ).
COMPARED = {
    "class_areas": "stream_id, frame_index, pts_seconds, class_id, class_name, pixels, fraction",
    "frames": "stream_id, frame_index, pts_seconds, width, height",
}
#: What `two_stream_job` also writes (alpha has regions, both streams have an alert that opens and is
#: still open when the stream ends); wall times differ from run to run and are left out.
ALERT_COMPARED = {
    "region_areas": "stream_id, frame_index, pts_seconds, region, class_id, class_name, pixels, fraction",
    "events": "stream_id, sequence, event_id, rule, region, class_name, status, start_pts, end_pts, peak, "
    "frame_index, pts_seconds",
}
TWO_STREAM_TABLES = {**COMPARED, **ALERT_COMPARED}
_ORDER = {
    "class_areas": "stream_id, frame_index, class_id",
    "frames": "stream_id, frame_index",
    "region_areas": "stream_id, frame_index, region, class_id",
    "events": "stream_id, sequence",
}


def two_stream_job(
    out: Path, job_id: str, videos: dict[str, Path], vocabulary: list[str] | None = None
) -> dict[str, Any]:
    """A job spec (as data) over videos `alpha` and `beta`, every frame, on the tiny random model; alpha
    has regions (left and right halves, and a triangle over both) and an alert on its left half (with the
    default vocabulary), beta an alert on the whole frame: both open after a while and stay open."""
    alpha_vocabulary = vocabulary or ["sky", "road", "car"]
    return {
        "job_id": job_id,
        "model": {"name": "san_tiny_test", "weights": "random"},
        "output": str(out),
        "streams": [
            {
                "id": "alpha",
                "source": str(videos["alpha"]),
                "vocabulary": alpha_vocabulary,
                "sampling": {"every": 1},
                "regions": [
                    {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]},
                    {"name": "right", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]},
                    {"name": "roof", "polygon": [[10, 0], [60, 0], [35, 30]], "units": "pixels"},
                ],
                "alerts": [{"name": "parked", "region": "left", "class": "car", "above": 0.5, "for_s": 1.0}]
                if "car" in alpha_vocabulary
                else [],
            },
            {
                "id": "beta",
                "source": str(videos["beta"]),
                "vocabulary": ["water", "grass"],
                "sampling": {"every": 1},
                "alerts": [{"name": "lawn", "class": "grass", "above": 0.5, "for_s": 0.5}],
            },
        ],
        "serve": {"batch_size": 4, "batch_wait_timeout_s": 0.05},
    }


def table_rows(out: Path, table: str) -> list[tuple]:
    """Every job's rows of `table` under `out` through a plain DuckDB glob, as any reader sees them."""
    return duckdb.sql(
        f"SELECT {TWO_STREAM_TABLES[table]} FROM read_parquet('{out}/{table}/**/*.parquet') "
        f"ORDER BY {_ORDER[table]}"
    ).fetchall()


def sanstream(*args: str) -> subprocess.Popen[str]:
    """`sanstream ARGS` in its own session (signals reach only what a test sends it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "400"},  # rich wraps at 80 columns when output is not a terminal
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(folder: Path, *config: str) -> tuple[subprocess.Popen[bytes], str]:
    """A plain redis-server on 127.0.0.1 with `config` lines added (what an operator's server could be)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "redis.conf"
    conf.write_text(
        "\n".join([f"port {port}", "bind 127.0.0.1", f'dir "{folder}"', 'save ""', *config]) + "\n"
    )
    process = subprocess.Popen(
        [find_redis_server(), str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return process, url
        except redis.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


class BackgroundJob:
    """`run_job(spec, **kwargs)` in a thread, so a test can disturb the job while it runs.

    `store` is the job's store once the job is registered; `wait_analysed` blocks until a stream analysed
    some frames; `join` returns the outcome, or raises what the job raised."""

    def __init__(self, spec: Any, timeout_s: float = 180.0, **kwargs: Any) -> None:
        from actors.job import run_job  # Ray and the model stack only for the tests that run jobs
        from pipeline.jobs.state import JobStore

        self.result: dict[str, Any] = {}
        self.deadline = time.monotonic() + timeout_s
        started: dict[str, str] = {}

        def drive() -> None:
            try:
                self.result["outcome"] = run_job(
                    spec, on_started=lambda job, url: started.setdefault("url", url), **kwargs
                )
            except BaseException as error:  # surfaced by join()
                self.result["error"] = error

        self.thread = threading.Thread(target=drive, daemon=True)
        self.thread.start()
        while "url" not in started:
            assert self.thread.is_alive() and time.monotonic() < self.deadline, self.result
            time.sleep(0.05)
        self.store = JobStore.from_url(started["url"])

    def wait_analysed(self, job_id: str, stream_id: str, frames: int) -> None:
        while self.store.stream_counter(job_id, stream_id, "analysed") < frames:
            assert self.thread.is_alive(), f"job ended before {frames} frames: {self.result}"
            assert time.monotonic() < self.deadline, "job made no progress"
            time.sleep(0.02)

    def join(self, timeout_s: float = 180.0) -> Any:
        self.thread.join(timeout=timeout_s)
        assert not self.thread.is_alive(), "job did not finish"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["outcome"]


def wait_for_progress(
    driver: subprocess.Popen[str], out: Path, job_id: str, frames: int, seen: dict[Any, str] | None = None
) -> Any:
    """The job's store (a `JobStore`) once stream alpha of a `sanstream run` subprocess analysed `frames`
    frames; the driver must still run. `seen` collects the processes the driver started meanwhile (see
    `tests.support.processes.descendants`)."""
    from pipeline.jobs.redis_server import resolve_redis
    from pipeline.jobs.state import JobStore
    from tests.support.processes import descendants

    def note() -> None:
        if seen is not None:
            seen.update(descendants(driver.pid))

    deadline = time.monotonic() + 240
    while not (out / "redis" / "connection.json").exists():
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        assert time.monotonic() < deadline
        note()
        time.sleep(0.1)
    url, _ = resolve_redis(out)  # attaches to the driver's server; the handle dropped here is no user
    store = JobStore.from_url(url)
    while not store.list_jobs() or store.stream_counter(job_id, "alpha", "analysed") < frames:
        assert driver.poll() is None, f"driver ended early: {driver.stdout.read() if driver.stdout else ''}"
        assert time.monotonic() < deadline, "job made no progress"
        note()
        time.sleep(0.05)
    return store


def continue_job(how: str, job_id: str, out: Path, config: Path) -> None:
    """Continue a stopped job as a user would: `sanstream resume` ("resume") or the same `run` again
    ("run-again"); it must complete."""
    again = (
        sanstream("resume", job_id, "--out", str(out), "--no-progress")
        if how == "resume"
        else sanstream("run", "--config", str(config), "--no-progress")
    )
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
