"""Stopping and sharing a driver, with real Ray, Serve, Redis and Parquet.

* SIGINT/SIGTERM to a `sanstream run` driver stop the job within seconds as `interrupted` (streams too,
  with error rows that say why), exit 130/143; `sanstream resume` or the same `run` again continues it,
  and the output equals, row for row, an undisturbed run of the same job.
* A second driver for a running job is refused (exit 2, naming the first), which runs on.
* A REDIS_URL that does not persist runs only with `--allow-volatile-state`; one that does just runs.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import redis
import yaml
from rich.console import Console

from actors.job import run_job
from actors.progress import progress_bars, update_progress
from actors.segmentation import undeploy
from actors.signals import DriverSignals, JobInterrupted
from actors.stream_config import DecoderSettings
from pipeline.cli.main import main as cli
from pipeline.jobs.lease import Holder, lease_key
from pipeline.jobs.redis_server import EmbeddedRedis, resolve_redis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.takeover import DriverReplacedError
from pipeline.sample_video import write_sample_video
from tests.support.jobs import (
    TWO_STREAM_TABLES,
    BackgroundJob,
    continue_job,
    sanstream,
    start_redis,
    table_rows,
    two_stream_job,
    wait_for_progress,
)

SAMPLED = {"alpha": 80, "beta": 30}  # frames each stream analyses (every frame of 8 s and 3 s at 10 fps)
SETTINGS = DecoderSettings(max_in_flight=4, flush_frames=4, poll_s=0.2)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("interrupt-videos")
    return {
        "alpha": write_sample_video(folder / "alpha.mp4", seconds=8, fps=10, size=(64, 96)),
        "beta": write_sample_video(folder / "beta.mkv", seconds=3, fps=10, size=(48, 64)),
        "long": write_sample_video(folder / "long.mp4", seconds=10, fps=10, size=(48, 64)),
    }


@pytest.fixture(autouse=True)
def no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at 80 columns when output is not a terminal
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SANSTREAM_ALLOW_VOLATILE_STATE", raising=False)


@pytest.fixture(scope="module")
def reference(
    local_ray: None, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple]]:
    out = tmp_path_factory.mktemp("reference")
    spec = parse_job_spec(two_stream_job(out, "ref", clips))
    outcome = run_job(spec, settings=SETTINGS, show_progress=False, commit_interval_s=0.3)
    assert outcome.status == "completed"
    rows = {table: table_rows(out, table) for table in TWO_STREAM_TABLES}
    assert len(rows["frames"]) == sum(SAMPLED.values())
    return rows


@pytest.fixture
def job_server(tmp_path: Path) -> Iterator[list[EmbeddedRedis]]:
    """Servers a test (re)starts on a job's state after its driver stopped it; stopped at the end."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("signum", "how"),
    [
        pytest.param(signal.SIGINT, "resume", id="SIGINT-then-resume"),
        # The same stop by the other signal, continued by running the spec again: with `-m slow`.
        pytest.param(signal.SIGTERM, "run-again", id="SIGTERM-then-run-again", marks=pytest.mark.slow),
    ],
)
def test_signal_interrupts_cleanly_and_the_job_continues_exactly_once(
    signum: int,
    how: str,
    reference: dict[str, list[tuple]],
    clips: dict[str, Path],
    tmp_path: Path,
    job_server: list[EmbeddedRedis],
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = f"stop-{signal.Signals(signum).name.lower()}"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(two_stream_job(tmp_path, job_id, clips)))
    driver = sanstream("run", "--config", str(config), "--no-progress")
    store = wait_for_progress(driver, tmp_path, job_id, 8)
    if how == "resume":  # while the driver runs, a second one is refused (exit 2, naming the first)
        assert cli(["run", "--config", str(config), "--no-progress"]) == 2
        refused = capsys.readouterr().err
        assert f"job {job_id} is already being run by the driver with pid {driver.pid}" in refused, refused
        assert len(refused.strip().splitlines()) == 1
        assert cli(["resume", job_id, "--out", str(tmp_path), "--no-progress"]) == 2
        assert f"pid {driver.pid}" in capsys.readouterr().err
        assert driver.poll() is None and store.status(job_id) == "running"  # refused by a live driver
    os.kill(driver.pid, signum)
    asked = time.monotonic()
    output, _ = driver.communicate(timeout=90)
    took = time.monotonic() - asked
    assert driver.returncode == 128 + signum, output
    assert took < 45, f"the driver took {took:.0f} s to stop"
    assert f"sanstream resume {job_id} --out {tmp_path}" in output
    assert "Traceback" not in output

    server = EmbeddedRedis(tmp_path).start()  # the driver stopped its server; the state persisted
    job_server.append(server)
    store = JobStore(server.client(decode_responses=True))
    snapshot = store.snapshot(job_id)
    assert snapshot["status"] == "interrupted"
    streams = {sid: info["status"] for sid, info in snapshot["streams"].items()}
    assert streams["alpha"] == "interrupted" and streams["beta"] in ("interrupted", "completed")
    assert store.committed_frames(job_id, "alpha") < SAMPLED["alpha"] - 1, "nothing left to resume"
    name = signal.Signals(signum).name
    assert any(
        e["kind"] == "interrupted" and f"interrupted by {name}" in e["message"] for e in snapshot["errors"]
    )
    alpha_errors = snapshot["streams"]["alpha"]["errors"]
    assert alpha_errors and alpha_errors[-1]["kind"] == "interrupted" and name in alpha_errors[-1]["message"]
    exported = duckdb.sql(
        f"SELECT message FROM read_parquet('{tmp_path}/errors/**/*.parquet', union_by_name=true) "
        "WHERE kind = 'interrupted' AND stream_id = 'alpha'"
    ).fetchall()
    assert exported and all(message for (message,) in exported), "error rows must carry a message"

    assert cli(["status", job_id, "--out", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "interrupted" in shown and f"resume with: sanstream resume {job_id} --out {tmp_path}" in shown

    if how == "run-again":  # the same id with another vocabulary is refused, naming what changed
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump(two_stream_job(tmp_path, job_id, clips, vocabulary=["boat"])))
        assert cli(["run", "--config", str(changed), "--no-progress"]) == 2
        refused = capsys.readouterr().err
        assert "streams[0].vocabulary: was ['sky', 'road', 'car'], now ['boat']" in refused
        assert store.status(job_id) == "interrupted"

    continue_job(how, job_id, tmp_path, config)
    assert store.status(job_id) == "completed"
    assert {info["status"] for info in store.snapshot(job_id)["streams"].values()} == {"completed"}
    # One fencing token per lease taken: the first driver, the refused changed spec (run-again), this one.
    assert store.r.hget(f"sanstream:job:{job_id}", "lease_token") == ("3" if how == "run-again" else "2")
    for table in TWO_STREAM_TABLES:
        assert table_rows(tmp_path, table) == reference[table], f"{table} differs after {how}"


@pytest.mark.slow  # two whole jobs; the persistence check itself: tests/pipeline/jobs/test_jobs_persistence.py
def test_redis_url_must_persist_unless_allowed(
    local_ray: None, clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    volatile, volatile_url = start_redis(tmp_path / "volatile", "appendonly no")
    persistent, persistent_url = start_redis(tmp_path / "persistent", "appendonly yes")
    try:
        data = two_stream_job(tmp_path / "out", "volatile", clips)
        data["streams"] = [{**data["streams"][1], "sampling": {"fps": 2}}]  # 6 frames
        config = tmp_path / "job.yaml"
        config.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("REDIS_URL", volatile_url)
        assert cli(["run", "--config", str(config), "--no-progress"]) == 2
        assert "CONFIG SET appendonly yes" in capsys.readouterr().err
        assert cli(["run", "--config", str(config), "--no-progress", "--allow-volatile-state"]) == 0
        assert "does not persist" in capsys.readouterr().out
        assert JobStore(redis.Redis.from_url(volatile_url)).status("volatile") == "completed"

        monkeypatch.setenv("REDIS_URL", persistent_url)
        assert cli(["run", "--config", str(config), "--no-progress", "--job-id", "persistent"]) == 0
        assert "does not persist" not in capsys.readouterr().out
        assert JobStore(redis.Redis.from_url(persistent_url)).status("persistent") == "completed"
    finally:
        for process in (volatile, persistent):
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.slow  # a stop during start-up (90 s); a stop mid-job runs by default
def test_signal_during_start_up_and_a_forced_second_signal_leave_the_job_interrupted(
    clips: dict[str, Path], tmp_path: Path, job_server: list[EmbeddedRedis]
) -> None:
    job_id = "stop-early"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(two_stream_job(tmp_path, job_id, clips)))
    driver = sanstream("run", "--config", str(config), "--no-progress")
    deadline = time.monotonic() + 240
    while not (tmp_path / "redis" / "connection.json").exists():
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    url, _ = resolve_redis(tmp_path)
    store = JobStore.from_url(url)
    while not store.list_jobs():  # registered: Ray and the Serve pool are starting now
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=90)
    assert driver.returncode == 130, output
    assert "Traceback" not in output and f"sanstream resume {job_id}" in output
    job_server.append(EmbeddedRedis(tmp_path).start())
    store = JobStore(job_server[0].client(decode_responses=True))
    assert store.status(job_id) == "interrupted"
    assert {info["status"] for info in store.snapshot(job_id)["streams"].values()} == {"interrupted"}

    # Resumed, then stopped with a second signal while the streams wind down: out at once, resumable.
    again = sanstream("resume", job_id, "--out", str(tmp_path), "--no-progress")
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in again.stdout or []], daemon=True)
    reader.start()
    while store.stream_counter(job_id, "alpha", "analysed") < 3:
        assert again.poll() is None and time.monotonic() < deadline + 240, list(lines.queue)
        time.sleep(0.05)
    os.kill(again.pid, signal.SIGINT)
    seen: list[str] = []
    while not any("stopping job" in line for line in seen):  # the first signal was taken
        seen.append(lines.get(timeout=30))
    os.kill(again.pid, signal.SIGINT)
    again.wait(timeout=90)
    reader.join(timeout=30)
    output = "".join(seen + list(lines.queue))
    assert again.returncode == 130, output
    assert "stopped at once by a second signal (SIGINT)" in output and "Traceback" not in output
    assert store.status(job_id) == "interrupted"
    assert "running" not in {info["status"] for info in store.snapshot(job_id)["streams"].values()}


def test_a_driver_that_loses_its_lease_stops_without_finishing_the_job(
    local_ray: None, clips: dict[str, Path], tmp_path: Path, job_server: list[EmbeddedRedis]
) -> None:
    data = two_stream_job(tmp_path, "usurped", clips)
    data["streams"] = [{**data["streams"][0], "source": str(clips["long"])}]
    job = BackgroundJob(parse_job_spec(data), settings=SETTINGS, show_progress=False, commit_interval_s=0.3)
    job.wait_analysed("usurped", "alpha", 3)
    store, thread, result = job.store, job.thread, job.result
    # Another driver takes the job over (as if this one had stalled past its lease).
    store.r.set(lease_key("usurped"), f"99 {Holder('other-host', 1, '')}", px=60_000)
    taken = time.monotonic()
    thread.join(timeout=60)
    try:
        assert not thread.is_alive(), "the driver kept running without its lease"
        assert time.monotonic() - taken < 30
        error = result.get("error")
        assert isinstance(error, DriverReplacedError), result
        assert "lost its lease" in str(error) and "pid 1 on host other-host (token 99)" in str(error)
        job_server.append(EmbeddedRedis(tmp_path).start())  # the driver stopped its server on exit
        store = JobStore(job_server[0].client(decode_responses=True))
        assert store.status("usurped") == "running"  # nothing marked: the job is the new holder's
        assert store.stream_status("usurped", "alpha") == "running"
        assert store.committed_frames("usurped", "alpha") < 99
    finally:
        undeploy("usurped")  # left to the new holder by the driver; nobody else here will remove it


def test_progress_advances_per_analysed_frame_and_prints_the_status_as_text(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as server:
        store = JobStore(server.client(decode_responses=True))
        store.create_job("bars", {"output": str(tmp_path)}, ["cam"])
        store.set_stream_status("bars", "cam", "running")
        store.incr("bars", "cam", "analysed", 7)
        store.incr("bars", "cam", "written", 4)
        console = Console(file=io.StringIO(), width=200)
        progress = progress_bars(console, True)
        tasks = {"cam": progress.add_task("cam", total=40, written=0)}
        update_progress(progress, tasks, store, "bars")
    console.print(progress.make_tasks_table(progress.tasks))
    shown = console.file.getvalue()
    assert "cam [running]" in shown  # not swallowed as a rich style tag
    assert "7/40 analysed, written 4" in shown


def test_signal_handlers_stop_in_stages_and_are_put_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stages = DriverSignals("sanstream resume JOB --out OUT")
    stages.install()
    try:
        with pytest.raises(KeyboardInterrupt):  # during start-up the first signal unwinds at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert stages.signum == signal.SIGTERM and not stages.forced
        stages.graceful = True
        with pytest.raises(JobInterrupted) as forced:  # the second one always does
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert forced.value.exit_code == 130 and "sanstream resume JOB --out OUT" in str(forced.value)
    finally:
        stages.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    # From another thread nothing is installed: Python delivers signals to the main thread only.
    elsewhere = DriverSignals("hint")
    worker = threading.Thread(target=elsewhere.install)
    worker.start()
    worker.join()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_graceful_first_signal_is_only_recorded() -> None:
    stages = DriverSignals("hint")
    stages.install()
    stages.graceful = True
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, and raises nothing
        assert stages.signum == signal.SIGINT and stages.name == "SIGINT"
    finally:
        stages.restore()
