"""Fault injection with real Ray, Serve and Redis: kill a decoder, a writer, a replica (SIGKILL of the
actor's process), or restart the Redis server, at chosen points mid-job. After recovery the output must
equal, row for row, the output of an undisturbed run of the same job.

Kill points are drawn from a seeded generator over the job's progress (frames analysed), so every run of
the suite tries the same points; `KILL_POINTS` below records how many.

The in-process jobs share one SAN pool (`pool`), as the service's jobs do: a job's own deploy and model
load are covered by the driver tests at the end and elsewhere, and would cost each case a replica start.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import ray
import yaml

from actors.job import JobOutcome, run_job
from actors.segmentation import app_name, deploy, undeploy
from actors.stream_config import DecoderSettings
from actors.writer import WriterRestarted
from pipeline.frames import FrameAreas
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.sample_video import write_sample_video
from pipeline.storage.query import run_sql
from pipeline.storage.stream_sink import StreamSink
from tests.support.jobs import (
    TWO_STREAM_TABLES,
    BackgroundJob,
    sanstream,
    table_rows,
    two_stream_job,
    wait_for_progress,
)
from tests.support.processes import ProcessKey, descendants, follow, redis_servers_under, wait_gone
from tests.support.receiver import running_receiver

SAMPLED = {"alpha": 40, "beta": 30}  # frames each stream analyses (every frame of 4 s and 3 s at 10 fps)
RNG = random.Random(20261126)
# One point per kind: the decoder and writer are shared by both streams, so one kill already disturbs
# every stream at a different place in its own timeline (and keeps the suite within CI's time budget).
KILL_POINTS = {
    "decoder": sorted(RNG.sample(range(2, 30), 1)),
    "writer": sorted(RNG.sample(range(2, 30), 1)),
    "replica": sorted(RNG.sample(range(2, 30), 1)),
    "redis": sorted(RNG.sample(range(2, 30), 1)),
}
# Crash points of the commit protocol (stage, record, publish): each must leave a reader exactly the
# undisturbed rows. Seeded like the kill points above.
COMMIT_FAULTS = [
    "crash-after-staging",
    "crash-between-record-and-publish",
    "lost-commit-reply",
    "zombie-writer",
]
COMMIT_FAULT_POINTS = [RNG.randrange(2, 24) for _ in COMMIT_FAULTS]


@pytest.fixture(scope="module")
def fault_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fault-videos")
    return {
        "alpha": write_sample_video(folder / "alpha.mp4", seconds=4, fps=10, size=(64, 96)),
        "beta": write_sample_video(folder / "beta.mkv", seconds=3, fps=10, size=(48, 64)),
    }


def spec_for(out: Path, job_id: str, videos: dict[str, Path]):
    return parse_job_spec(two_stream_job(out, job_id, videos))


SETTINGS = DecoderSettings(max_in_flight=4, flush_frames=4, poll_s=0.2)


POOL = "faults-pool"


@pytest.fixture(scope="module")
def pool(
    local_ray: None, fault_videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The SAN pool every in-process job of this module runs on (the spec's model and batching)."""
    handle = deploy(spec_for(tmp_path_factory.mktemp("pool"), POOL, fault_videos), POOL)
    yield handle
    undeploy(POOL)


@pytest.fixture(scope="module")
def reference(
    pool: Any, fault_videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[tuple]]:
    out = tmp_path_factory.mktemp("reference")
    outcome = run_job(
        spec_for(out, "ref", fault_videos),
        settings=SETTINGS,
        show_progress=False,
        commit_interval_s=0.3,
        pool=pool,
    )
    assert outcome.status == "completed"
    rows = {table: table_rows(out, table) for table in TWO_STREAM_TABLES}
    assert len(rows["frames"]) == sum(SAMPLED.values())
    # The tiny random model labels every pixel alike: each alert opens once its for_s has passed and is
    # still open when its stream ends, so every fault below lands before, inside or after an open event.
    events = [(row[0], row[3], row[6], row[7], row[8], row[10]) for row in rows["events"]]
    assert events == [
        ("alpha", "parked", "open", 0.0, None, 10),
        ("alpha", "parked", "ended", 0.0, 3.9, 39),
        ("beta", "lawn", "open", 0.0, None, 5),
        ("beta", "lawn", "ended", 0.0, 2.9, 29),
    ]
    assert len(rows["region_areas"]) == 3 * 3 * SAMPLED["alpha"]
    return rows


def run_with_fault(
    out: Path,
    job_id: str,
    videos: dict[str, Path],
    at_frame: int,
    inject: Callable[[JobStore, str], None],
    pool: Any,
) -> JobOutcome:
    """Run the job in a thread on `pool`; when stream alpha has analysed `at_frame` frames, call `inject`."""
    job = BackgroundJob(
        spec_for(out, job_id, videos),
        settings=SETTINGS,
        show_progress=False,
        commit_interval_s=0.3,
        pool=pool,
    )
    job.wait_analysed(job_id, "alpha", at_frame)
    store = job.store
    assert store.stream_status(job_id, "alpha") == "running"
    assert store.committed_frames(job_id, "alpha") < SAMPLED["alpha"] - 1, (
        "kill point came after the last commit"
    )
    inject(store, job_id)
    return job.join()


def stream_actor(store: JobStore, job_id: str, stream_id: str, role: str) -> ray.actor.ActorHandle:
    """The decoder or writer actor carrying `stream_id`, as the job recorded it."""
    decoder, writer = store.stream_actors(job_id, stream_id)
    return ray.get_actor(decoder if role == "decoder" else writer)


def kill_actor(role: str) -> Callable[[JobStore, str], None]:
    """SIGKILL the decoder or writer process of stream alpha, which carries stream beta as well."""

    def inject(store: JobStore, job_id: str) -> None:
        assert store.stream_actors(job_id, "alpha") == store.stream_actors(job_id, "beta"), (
            "both streams should share their actors"
        )
        actor = stream_actor(store, job_id, "alpha", role)
        os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)

    return inject


def kill_replica(store: JobStore, job_id: str) -> None:
    """SIGKILL the replica of the module's pool (Serve starts another; the job's frames in flight fail)."""
    victims = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(f"ServeReplica:{app_name(POOL)}" in part for part in (p.info["cmdline"] or []))
    ]
    assert victims, "no replica process found"
    victims[0].send_signal(signal.SIGKILL)


def restart_redis(out: Path) -> Callable[[JobStore, str], None]:
    def inject(store: JobStore, job_id: str) -> None:
        pid = int((out / "redis" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)  # the job keeps running against a dead server for a moment
        EmbeddedRedis(out).start()  # same data dir and port; left running, the job's driver stops it

    return inject


def arm_writer(point: str, action: str) -> Callable[[JobStore, str], None]:
    """Crash the real writer of stream alpha (or lose a reply) at a step of its next part commit."""

    def inject(store: JobStore, job_id: str) -> None:
        writer = stream_actor(store, job_id, "alpha", "writer")
        ray.get(writer.arm_failpoint.remote(job_id, "alpha", point, action))
        if action == "lose_reply":  # the writer lives on: wait until the reply was really lost once
            deadline = time.monotonic() + 60
            while ray.get(writer.armed_failpoints.remote(job_id, "alpha")):
                assert time.monotonic() < deadline, f"failpoint {point} never hit"
                time.sleep(0.05)

    return inject


def zombie_writer(out: Path) -> Callable[[JobStore, str], None]:
    """A writer of an old epoch that keeps writing after a new attempt began: it takes an epoch (which
    fences the real writer off, so the real stream starts a new attempt with a newer epoch), then keeps
    appending made-up rows for frames the stream has not committed yet. None of them may become visible."""

    def inject(store: JobStore, job_id: str) -> None:
        zombie = StreamSink(out, job_id, "alpha", ["sky", "road", "car"], store, commit_interval_s=0.0)
        start = zombie.begin()
        deadline = time.monotonic() + 60
        while store.writer_epoch(job_id, "alpha") <= start.epoch:  # the real stream began again
            assert time.monotonic() < deadline, "the real writer never started a new attempt"
            time.sleep(0.05)
        bogus = [
            FrameAreas("alpha", i, i / 10, 64, 96, np.array([1, 2, 64 * 96 - 3]), 0.0)
            for i in range(start.next_frame, SAMPLED["alpha"])
        ]
        with pytest.raises(WriterRestarted):
            zombie.append(bogus, [time.time()] * len(bogus), start.epoch, commit=True)
        assert not any(
            staged.is_file() for staged in (out / "_staging" / job_id).rglob(f"*-{start.epoch:06d}-*")
        )

    return inject


CASES = [(kind, point) for kind, points in KILL_POINTS.items() for point in points]
CASES += [(kind, point) for kind, point in zip(COMMIT_FAULTS, COMMIT_FAULT_POINTS, strict=True)]


# The default run covers one fault of each mechanism: a process killed mid-stream (the writer, which holds
# staged parts), a crash inside the commit protocol, and a fenced-off writer of an old epoch. The other kinds
# (decoder and replica killed, Redis restarted, the other commit crash points) run with `-m slow`.
IN_DEFAULT_RUN = {"writer", "crash-between-record-and-publish", "zombie-writer"}
FAULT_PARAMS = [
    pytest.param(
        kind, point, id=f"{kind}-at-{point}", marks=() if kind in IN_DEFAULT_RUN else pytest.mark.slow
    )
    for kind, point in CASES
]


@pytest.mark.parametrize(("kind", "point"), FAULT_PARAMS)
def test_output_after_a_fault_equals_the_undisturbed_run(
    kind: str,
    point: int,
    reference: dict[str, list[tuple]],
    pool: Any,
    fault_videos: dict[str, Path],
    tmp_path: Path,
) -> None:
    inject = {
        "decoder": kill_actor("decoder"),
        "writer": kill_actor("writer"),
        "replica": kill_replica,
        "redis": restart_redis(tmp_path),
        "crash-after-staging": arm_writer("staged", "crash"),
        "crash-between-record-and-publish": arm_writer("recorded", "crash"),
        "lost-commit-reply": arm_writer("record_reply", "lose_reply"),
        "zombie-writer": zombie_writer(tmp_path),
    }[kind]
    outcome = run_with_fault(tmp_path, f"fault-{kind}-{point}", fault_videos, point, inject, pool)
    assert outcome.status == "completed", outcome
    assert {s.status for s in outcome.streams.values()} == {"completed"}
    for table in TWO_STREAM_TABLES:
        assert table_rows(tmp_path, table) == reference[table], f"{table} differs after killing the {kind}"
    if kind in ("writer", "replica") or kind.startswith(("crash", "zombie")):
        assert outcome.streams["alpha"].recoveries >= 1 or outcome.streams["beta"].recoveries >= 1
    if kind == "lost-commit-reply":  # resolved by reading the record back: no new attempt was needed
        assert outcome.streams["alpha"].recoveries == 0
    # Nothing is left in staging: every staged part was published or rolled back by the record.
    assert not [p for p in (tmp_path / "_staging").rglob("*") if p.is_file()]


DRIVER_KILL_POINT = RNG.randrange(3, 30)


def test_a_killed_driver_leaves_nothing_running_and_resume_finishes_the_job_exactly_once(
    reference: dict[str, list[tuple]], fault_videos: dict[str, Path], tmp_path: Path
) -> None:
    """SIGKILL of a `sanstream run` driver mid-job (its own local Ray and embedded Redis). Everything it
    started is stopped by its watcher without anyone resuming the job; `status` says the driver is gone and
    how to resume (leaving no server running either); `resume` finishes the job, its output equal row for
    row to an undisturbed run, and leaves nothing running when it returns."""
    job_id = f"driver-{DRIVER_KILL_POINT}"
    data = spec_for(tmp_path, job_id, fault_videos).to_dict()
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(data))
    driver = sanstream("run", "--config", str(config), "--no-progress")
    started: dict[ProcessKey, str] = {}
    try:
        store = wait_for_progress(driver, tmp_path, job_id, DRIVER_KILL_POINT, seen=started)
        assert store.committed_frames(job_id, "alpha") < SAMPLED["alpha"] - 1
        started |= descendants(driver.pid)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    names = " ".join(started.values())
    for program in ("redis-server", "raylet", "gcs_server", "ray::"):  # what the driver started
        assert program in names, names
    wait_gone(started, tmp_path, timeout_s=30)  # its watcher stopped its Ray and its Redis

    shown = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "status", job_id, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown
    assert f"job {job_id}: running" in shown.stdout and "driver gone" in shown.stdout, shown.stdout
    assert f"resume with: sanstream resume {job_id} --out {tmp_path}" in shown.stdout, shown.stdout
    assert not redis_servers_under(tmp_path), "status left the server it started running"

    resumed = sanstream("resume", job_id, "--out", str(tmp_path), "--no-progress")
    output, resumed_started = follow(resumed)
    assert resumed.returncode == 0 and f"job {job_id} completed" in output and "Traceback" not in output, (
        output
    )
    wait_gone(resumed_started, tmp_path, timeout_s=5)  # gone when the command returns, or right after
    for table in TWO_STREAM_TABLES:
        assert table_rows(tmp_path, table) == reference[table], f"{table} differs after the resume"


# ------------------------------------------------------------------------------ regions and alert webhooks


def centres_inside_triangle(points: list[tuple[int, int]], width: int, height: int) -> int:
    """Pixels whose centre is inside the triangle, by exact arithmetic (the documented rule; none of the
    centres of this frame lies on an edge), independently of `pipeline.regions`."""
    (ax, ay), (bx, by), (cx, cy) = points

    def side(px: float, py: float, x0: int, y0: int, x1: int, y1: int) -> float:
        return (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)

    count = 0
    for j in range(height):
        for i in range(width):
            x, y = i + 0.5, j + 0.5
            signs = [side(x, y, ax, ay, bx, by), side(x, y, bx, by, cx, cy), side(x, y, cx, cy, ax, ay)]
            assert all(s != 0 for s in signs)
            count += all(s > 0 for s in signs) or all(s < 0 for s in signs)
    return count


def test_regions_split_the_frame_and_overlapping_regions_both_count(
    reference: dict[str, list[tuple]],
) -> None:
    """alpha (96 x 64) has left and right halves and a `roof` triangle over both (spec in tests/support)."""
    frame_pixels = {(f, c): pixels for s, f, _, c, _, pixels, _ in reference["class_areas"] if s == "alpha"}
    region_pixels: dict[tuple[int, str], int] = {}
    halves: dict[tuple[int, int], int] = {}
    for _, frame, _, region, class_id, _, pixels, _ in reference["region_areas"]:
        region_pixels[frame, region] = region_pixels.get((frame, region), 0) + pixels
        if region in ("left", "right"):
            halves[frame, class_id] = halves.get((frame, class_id), 0) + pixels
    assert halves == frame_pixels  # every frame and class: left + right == the whole frame
    roof = centres_inside_triangle([(10, 0), (60, 0), (35, 30)], 96, 64)
    for frame in range(SAMPLED["alpha"]):
        assert region_pixels[frame, "left"] == region_pixels[frame, "right"] == 48 * 64
        assert region_pixels[frame, "roof"] == roof  # also counted in left and right: regions overlap


def webhook_job(out: Path, job_id: str, videos: dict[str, Path], webhook: dict[str, Any]) -> Any:
    data = spec_for(out, job_id, videos).to_dict()
    return parse_job_spec({**data, "webhook": webhook})


def test_a_webhook_failing_at_first_still_receives_every_event_once(
    reference: dict[str, list[tuple]], pool: Any, fault_videos: dict[str, Path], tmp_path: Path
) -> None:
    with running_receiver() as receiver:
        receiver.fail_first = 2
        webhook = {"url": receiver.url, "timeout_s": 5, "backoff_s": 0.05, "max_backoff_s": 0.2}
        spec = webhook_job(tmp_path, "hooked", fault_videos, webhook)
        outcome = run_job(spec, settings=SETTINGS, show_progress=False, commit_interval_s=0.3, pool=pool)
        assert outcome.status == "completed", outcome
        events = table_rows(tmp_path, "events")
        assert events == reference["events"]
        delivered = receiver.delivered_keys()
        assert sorted(delivered) == sorted(f"hooked/{row[0]}/{row[1]}" for row in events)  # each once
        assert [key for key, status in receiver.attempts[:2]] == [delivered[0]] * 2  # retried, not lost
        bodies = {(body["stream_id"], body["sequence"]): body for body in receiver.bodies}
        for stream, sequence, event_id, rule, *_ in events:
            body = bodies[stream, sequence]
            assert (body["job_id"], body["event_id"], body["rule"]) == ("hooked", event_id, rule)
    assert not run_sql(tmp_path, "SELECT * FROM errors WHERE kind = 'webhook'").num_rows


def test_a_webhook_that_never_answers_does_not_hold_the_streams(
    pool: Any, fault_videos: dict[str, Path], tmp_path: Path
) -> None:
    """Each request would hang for a minute; the streams run at their own pace, and what was not
    delivered when they ended is reported (it is in the events table)."""
    with running_receiver() as receiver:
        receiver.hang = True
        spec = webhook_job(tmp_path, "unheard", fault_videos, {"url": receiver.url, "timeout_s": 60})
        started = time.monotonic()
        outcome = run_job(spec, settings=SETTINGS, show_progress=False, commit_interval_s=0.3, pool=pool)
        elapsed = time.monotonic() - started
        assert outcome.status == "completed", outcome
        assert receiver.got_request.is_set()
    assert elapsed < 50, f"the job took {elapsed:.0f} s: the streams waited for the webhook"
    assert len(table_rows(tmp_path, "frames")) == sum(SAMPLED.values())
    reported = run_sql(tmp_path, "SELECT stream_id, message FROM errors WHERE kind = 'webhook'").to_pylist()
    assert {row["stream_id"] for row in reported} == {"alpha", "beta"}
    assert all("not delivered" in row["message"] for row in reported), reported
