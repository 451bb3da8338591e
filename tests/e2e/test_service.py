"""`sanstream serve` end to end: the real service (a subprocess with its own local Ray, Serve, embedded Redis)
driven over HTTP with urllib, its output read from Parquet with DuckDB.

One service is started for the module (`service`) and shared by every test. The last test kills it mid-job
(SIGKILL of the whole service but its redis-server) and starts `sanstream serve` again on the same --out,
which must continue the job exactly once; a second service of its own would cost another start-up (most
of a minute on a small machine) for nothing the first one does not show.

Covered: two jobs at once on the one warm replica (same replica process throughout, correct rows), streams
added and removed and a vocabulary changed while a job runs, bad requests answered 4xx naming the field,
a bad stream failing alone, exactly-once output after the replica is killed mid-job, /metrics against the
Parquet output, and exactly-once output after the whole service is killed mid-job and started again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.jobs.stream_changes import set_vocabulary
from pipeline.sample_video import write_sample_video
from tests.support.jobs import COMPARED
from tests.support.service import Service, api_names_missing_in_replica, http

SIZE = (48, 64)  # (height, width) of every video here
PIXELS = SIZE[0] * SIZE[1]
FPS = 10
STREET, HARBOUR = ["sky", "road", "car"], ["water", "boat"]
#: The module's service requires this bearer token ($SANSTREAM_TOKEN); `Service` sends it.
TOKEN = "e2e-token-7f3a"


def test_the_api_replica_has_every_name_its_handlers_use() -> None:
    """`@serve.deployment` pickles the ingress class by value when the decorator runs: a module global of
    actors/service/api.py defined below `ServiceApi` is missing in its replica, and requests using it answer
    500 `NameError` (a bug this guard caught once)."""
    assert api_names_missing_in_replica() == frozenset()


# -------------------------------------------------------------------------------------------- helpers
def stream(
    stream_id: str, video: Path, vocabulary: list[str], every: int = 1, realtime: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": stream_id,
        "source": str(video),
        "vocabulary": list(vocabulary),
        "sampling": {"every": every},
    }
    if realtime:
        spec["realtime"] = True  # played at its own frame rate: the stream runs for the video's length
    return spec


def job(job_id: str, *streams: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A job spec as POST /jobs takes it: no `model` (the service's) and no `output` (the service's)."""
    return {"job_id": job_id, "streams": list(streams), **extra}


def frame_count(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def parquet(out: Path, table: str, job_id: str, stream_id: str = "*") -> str:
    """DuckDB's `read_parquet(...)` of one job's (or one stream's) committed parts of `table`."""
    return f"read_parquet('{out}/{table}/{job_id}/{stream_id}/*.parquet')"


def has_parts(out: Path, table: str, job_id: str, stream_id: str = "*") -> bool:
    return any((out / table / job_id).glob(f"{stream_id}/*.parquet"))


def job_rows(out: Path, table: str, job_id: str) -> list[tuple]:
    """The job's rows of `table` in a stable order, without the columns that differ between runs (job id,
    wall times, latencies): what an undisturbed run of the same spec must equal."""
    if not has_parts(out, table, job_id):
        return []
    order = "stream_id, frame_index" + (", class_id" if table == "class_areas" else "")
    return duckdb.sql(
        f"SELECT {COMPARED[table]} FROM {parquet(out, table, job_id)} ORDER BY {order}"
    ).fetchall()


def frames_by_version(out: Path, job_id: str, stream_id: str) -> list[tuple[int, int, list[str], int, int]]:
    """(frame_index, vocabulary_version, class names by class id, rows, pixels) per analysed frame."""
    return duckdb.sql(
        "SELECT frame_index, vocabulary_version, list(class_name ORDER BY class_id), count(*), sum(pixels) "
        f"FROM {parquet(out, 'class_areas', job_id, stream_id)} GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()


def assert_complete_rows(
    out: Path, job_id: str, stream_id: str, vocabulary: list[str], frames: list[int]
) -> None:
    """class_areas has one row per analysed frame per class (ids 0..C-1 named as the vocabulary, version 1,
    areas covering the frame), frames one row per analysed frame, for exactly `frames`."""
    rows = duckdb.sql(
        "SELECT frame_index, list(class_id ORDER BY class_id), list(class_name ORDER BY class_id), "
        "sum(pixels), min(vocabulary_version), max(vocabulary_version), count(*) "
        f"FROM {parquet(out, 'class_areas', job_id, stream_id)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == frames, f"{job_id}/{stream_id}: frames analysed"
    for index, ids, names, pixels, low, high, count in rows:
        where = f"{job_id}/{stream_id} frame {index}"
        assert ids == list(range(len(vocabulary))) and names == vocabulary, where
        assert (low, high, count) == (1, 1, len(vocabulary)), where
        assert pixels == PIXELS, where
    table = duckdb.sql(
        f"SELECT frame_index, width, height FROM {parquet(out, 'frames', job_id, stream_id)} ORDER BY 1"
    ).fetchall()
    assert table == [(i, SIZE[1], SIZE[0]) for i in frames], f"{job_id}/{stream_id}: frames table"


def cancel_quietly(service: Service, job_id: str) -> None:
    """Leave no job of a failed test running into the next test."""
    with contextlib.suppress(Exception):
        if service.job(job_id)["status"] not in ("completed", "failed", "cancelled"):
            service.post(f"/jobs/{job_id}/cancel")
            service.wait(job_id, timeout_s=60)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("service-videos")
    made = {
        "short": write_sample_video(folder / "short.mp4", seconds=2, fps=FPS, size=SIZE),
        "medium": write_sample_video(folder / "medium.mkv", seconds=3, fps=FPS, size=SIZE),
        "long": write_sample_video(folder / "long.mp4", seconds=5, fps=FPS, size=SIZE),
    }
    assert {name: frame_count(path) for name, path in made.items()} == {"short": 20, "medium": 30, "long": 50}
    return made


def finish(service: Service) -> None:
    """Stop `service` cleanly and check that it left nothing running: no process of its session, and its
    embedded redis-server stopped by the service itself."""
    service.stop()
    leftover = [p.pid for p in service.family()]
    redis_left = service.redis_pid()
    service.kill()
    service.stop_redis()
    assert not leftover, f"processes left after the service stopped: {leftover}"
    assert redis_left is None, "the service did not stop its redis-server"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("service")
    running = Service(folder / "out", log=folder / "serve.log", token=TOKEN)
    try:
        running.start()
        yield running
    finally:
        finish(running)


@pytest.fixture(scope="module")
def finished_job(service: Service, videos: dict[str, Path]) -> str:
    """A small job that has completed, for requests about an existing job."""
    job_id = service.submit(job("finished", stream("cam", videos["short"], STREET, every=4)))
    assert service.wait(job_id)["status"] == "completed"
    return job_id


ALPHA_FRAMES = 30  # frames of stream alpha of `restart_spec`


def restart_spec(job_id: str, videos: dict[str, Path]) -> dict[str, Any]:
    """Two realtime streams (3 s and 2 s), committed every half second: long enough to be disturbed
    mid-job with part of its output committed."""
    return job(
        job_id,
        stream("alpha", videos["medium"], STREET, realtime=True),
        stream("beta", videos["short"], HARBOUR, realtime=True),
        flush_interval_s=0.5,
    )


@pytest.fixture(scope="module")
def undisturbed(service: Service, videos: dict[str, Path]) -> str:
    """The job of `restart_spec`, run without disturbance: what a disturbed run must equal row for row."""
    job_id = service.submit(restart_spec("undisturbed", videos))
    snapshot = service.wait(job_id)
    assert snapshot["status"] == "completed", snapshot
    for table in COMPARED:
        assert job_rows(service.out, table, job_id), f"the undisturbed job wrote no {table}"
    return job_id


def assert_same_rows(out: Path, job_id: str, reference: str, what: str) -> None:
    for table in COMPARED:
        assert job_rows(out, table, job_id) == job_rows(out, table, reference), (
            f"{table} differs after {what}"
        )


# ------------------------------------------------------------------------------------- the shared pool
def carrier_pids(service: Service) -> dict[str, set[int]]:
    """Pids of the service's decoder and writer processes (`ray::DecoderHost`, `ray::WriterHost`)."""
    return {
        kind: {p.pid for p in service.processes_with(f"ray::{kind}")}
        for kind in ("DecoderHost", "WriterHost")
    }


def test_two_jobs_at_once_complete_on_the_one_warm_replica(service: Service, videos: dict[str, Path]) -> None:
    before = service.replica_pids()
    assert len(before) == 1, f"the service should run exactly one SAN replica: {before}"
    warm = carrier_pids(service)
    assert all(len(pids) == 1 for pids in warm.values()), f"one warm decoder and writer expected: {warm}"
    samples: list[tuple[int, ...]] = []
    carriers: list[dict[str, set[int]]] = []
    per_job_pools: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            samples.append(tuple(service.replica_pids()))
            carriers.append(carrier_pids(service))
            for process in service.processes_with("ServeReplica:sanstream-"):
                with contextlib.suppress(Exception):
                    per_job_pools.add(" ".join(process.cmdline()))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    specs = [
        job(
            "pool-a",
            stream("cam", videos["short"], STREET),
            stream("dock", videos["medium"], HARBOUR, every=2),
        ),
        job("pool-b", stream("cam", videos["medium"], HARBOUR, every=3)),
    ]
    try:
        with ThreadPoolExecutor(len(specs)) as pool:  # both submitted at once
            ids = list(pool.map(service.submit, specs))
        assert ids == ["pool-a", "pool-b"]
        snapshots = {job_id: service.wait(job_id) for job_id in ids}
    finally:
        done.set()
        watcher.join(timeout=30)
    after = service.replica_pids()

    for snapshot in snapshots.values():
        assert snapshot["status"] == "completed", snapshot
        assert {s["status"] for s in snapshot["streams"].values()} == {"completed"}, snapshot["streams"]
    a, b = snapshots["pool-a"], snapshots["pool-b"]
    assert a["started"] < b["finished"] and b["started"] < a["finished"], "the two jobs should overlap"
    expected = {
        ("pool-a", "cam"): (STREET, list(range(0, 20))),
        ("pool-a", "dock"): (HARBOUR, list(range(0, 30, 2))),
        ("pool-b", "cam"): (HARBOUR, list(range(0, 30, 3))),
    }
    for (job_id, stream_id), (vocabulary, frames) in expected.items():
        assert_complete_rows(service.out, job_id, stream_id, vocabulary, frames)
        assert snapshots[job_id]["streams"][stream_id]["written"] == len(frames)

    # The model was loaded once per replica: one replica process, the same one, before, during and after.
    assert samples, "the replica watcher took no sample"
    assert set(samples) == {tuple(before)}, f"replica processes seen while the jobs ran: {set(samples)}"
    assert after == before, f"replica pid changed: {before} -> {after}"
    assert not per_job_pools, f"a job deployed a pool of its own: {per_job_pools}"
    # Both jobs' streams ran on the service's warm decoder and writer, started before the jobs: no job
    # started a process of its own, and the status names the shared actors.
    assert all(seen == warm for seen in carriers), f"carrier processes seen: {carriers} (warm: {warm})"
    assert carrier_pids(service) == warm
    for job_id, stream_id in expected:
        actors = snapshots[job_id]["streams"][stream_id]
        assert actors.get("decoder", "").startswith("sanstream-service:decoder:"), actors
        assert actors.get("writer", "").startswith("sanstream-service:writer:"), actors


# --------------------------------------------------------------------------------- changes while it runs
OLD, NEW = ["sky", "road"], ["water", "boat", "dock"]


def test_streams_added_and_removed_and_vocabulary_changed_while_a_job_runs(
    service: Service, videos: dict[str, Path]
) -> None:
    """`keep` (realtime, 50 frames) gets a new vocabulary mid-stream, `gone` (realtime, 50 frames) is removed
    after a few frames, `late` (20 frames) is added while the job runs.

    The vocabulary is changed through the job store, the one place such changes are made (what PUT
    .../vocabulary calls): the PUT answered 500 when this was written (see the replica-names guard), and has a test of its
    own, test_vocabulary_put_changes_a_running_stream."""
    job_id = service.submit(
        job(
            "changes",
            stream("keep", videos["long"], OLD, realtime=True),
            stream("gone", videos["long"], STREET, realtime=True),
        )
    )
    try:
        service.wait_analysed(job_id, "gone", 3)
        added = service.post(f"/jobs/{job_id}/streams", stream("late", videos["short"], HARBOUR))
        assert added.status == 201 and added.json["stream_id"] == "late", added
        removed = service.delete(f"/jobs/{job_id}/streams/gone")
        assert removed.status == 202, removed
        service.wait_analysed(job_id, "keep", 5)
        assert set_vocabulary(service.store(), job_id, "keep", NEW) == 2
        snapshot = service.wait(job_id)
    finally:
        cancel_quietly(service, job_id)

    assert snapshot["status"] == "completed", snapshot
    streams = snapshot["streams"]
    assert {sid: s["status"] for sid, s in streams.items()} == {
        "keep": "completed",
        "gone": "cancelled",
        "late": "completed",
    }
    assert [s["id"] for s in snapshot["spec"]["streams"]] == ["keep", "gone", "late"]
    out = service.out

    # keep: every frame exactly once; version 1 with the old names, then version 2 with the new, once.
    rows = frames_by_version(out, job_id, "keep")
    assert [r[0] for r in rows] == list(range(50)), "every frame of `keep` exactly once"
    versions = [r[1] for r in rows]
    assert 2 in versions, f"the new vocabulary never took effect: {versions}"
    switch = versions.index(2)
    assert 5 <= switch < 50, versions
    assert versions == [1] * switch + [2] * (50 - switch), "the change takes effect once, for good"
    for index, version, names, count, pixels in rows:
        assert names == (OLD if version == 1 else NEW), (index, version, names)
        assert count == len(names) and pixels == PIXELS, index
    vocabularies = duckdb.sql(
        "SELECT vocabulary_version, list(class_name ORDER BY class_id) "
        f"FROM {parquet(out, 'vocabularies', job_id, 'keep')} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert vocabularies == [(1, OLD), (2, NEW)]

    # gone: what it committed before it stopped is a prefix of its frames, each once, all version 1.
    rows = frames_by_version(out, job_id, "gone")
    kept = [r[0] for r in rows]
    assert kept == list(range(len(kept))) and len(kept) < 50, f"`gone` rows are not a strict prefix: {kept}"
    assert all(r[1:4] == (1, STREET, 3) for r in rows)
    assert streams["gone"]["written"] == len(kept)

    # late: added while the job ran, completed with all its frames.
    assert_complete_rows(out, job_id, "late", HARBOUR, list(range(20)))


def test_vocabulary_put_changes_a_running_stream(service: Service, videos: dict[str, Path]) -> None:
    job_id = service.submit(job("put-vocabulary", stream("cam", videos["medium"], OLD, realtime=True)))
    try:
        service.wait_analysed(job_id, "cam", 3)
        answer = service.put(f"/jobs/{job_id}/streams/cam/vocabulary", {"vocabulary": NEW})
        assert answer.status == 200, answer
        assert answer.json["vocabulary_version"] == 2
        snapshot = service.wait(job_id)
    finally:
        cancel_quietly(service, job_id)
    assert snapshot["status"] == "completed", snapshot
    rows = frames_by_version(service.out, job_id, "cam")
    assert [r[0] for r in rows] == list(range(30))
    versions = [r[1] for r in rows]
    switch = versions.index(2)
    assert versions == [1] * switch + [2] * (30 - switch)
    assert all(names == (OLD if version == 1 else NEW) for _, version, names, _, _ in rows)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_requests_are_answered_4xx_naming_the_field(service: Service, finished_job: str) -> None:
    video = service.out / "nowhere.mp4"
    unknown_key = service.post(
        "/jobs", {"streams": [{"id": "x", "source": str(video), "vocabulary": ["a"]}], "colour": "red"}
    )
    assert unknown_key.status == 422, unknown_key
    assert unknown_key.problem_fields() == ["colour"] and "unknown" in unknown_key.json["error"]
    unknown_stream_key = service.post(
        "/jobs", {"streams": [{"id": "x", "source": str(video), "vocabulary": ["a"], "fps": 2}]}
    )
    assert unknown_stream_key.status == 422, unknown_stream_key
    assert unknown_stream_key.problem_fields() == ["streams[0].fps"]
    bad_value = service.post(
        "/jobs", {"streams": [{"id": "x", "source": str(video), "vocabulary": ["a"], "sampling": {"fps": 0}}]}
    )
    assert bad_value.status == 422 and bad_value.problem_fields() == ["streams[0].sampling.fps"], bad_value
    tuned = service.post(
        "/jobs",
        {
            "streams": [{"id": "x", "source": str(video), "vocabulary": ["a"]}],
            "model": {"compile": "default"},
        },
    )
    assert tuned.status == 422 and tuned.problem_fields() == ["model"], tuned
    assert "sanstream serve --compile" in tuned.json["error"], tuned
    not_json = service.request("POST", "/jobs", "{not json")
    assert not_json.status == 400 and not_json.json["error"], not_json

    for method, path in [
        ("GET", "/jobs/no-such-job"),
        ("POST", "/jobs/no-such-job/cancel"),
        ("POST", "/jobs/no-such-job/resume"),
        ("DELETE", "/jobs/no-such-job/streams/cam"),
        ("DELETE", f"/jobs/{finished_job}/streams/no-such-stream"),
    ]:
        answer = service.request(method, path, {} if method == "POST" else None)
        assert answer.status == 404, (method, path, answer)
        assert "no job" in answer.json["error"] or "no stream" in answer.json["error"], answer
    assert service.get("/healthz").status == 200


def test_requests_without_the_bearer_token_are_refused_and_the_cli_client_sends_it(
    service: Service, finished_job: str
) -> None:
    for token in (None, "wrong-token"):
        for method, path in [("GET", "/jobs"), ("GET", f"/jobs/{finished_job}"), ("GET", "/metrics")]:
            answer = http(method, service.url + path, token=token)
            assert answer.status == 401, (token, path, answer)
            assert "bearer token" in answer.json["error"], answer
        refused = http("POST", service.url + "/jobs", {"streams": []}, token=token)
        assert refused.status == 401, refused
    assert http("GET", service.url + "/healthz").status == 200  # liveness probes carry no token
    # The CLI as a client, with the token in $SANSTREAM_TOKEN as an operator would set it.
    env = service.environment()
    command = [sys.executable, "-m", "pipeline.cli.main", "status", finished_job, "--service", service.url]
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "completed" in shown.stdout, shown
    del env["SANSTREAM_TOKEN"]
    refused_cli = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused_cli.returncode != 0 and "Traceback" not in refused_cli.stdout + refused_cli.stderr
    assert "token" in (refused_cli.stdout + refused_cli.stderr).lower(), refused_cli


def test_an_added_stream_with_a_taken_id_is_refused_naming_the_field(
    service: Service, finished_job: str
) -> None:
    path = f"/jobs/{finished_job}/streams"
    taken = service.post(path, {"id": "cam", "source": "/x.mp4", "vocabulary": ["a"]})
    assert 400 <= taken.status < 500, taken
    assert "id" in taken.problem_fields(), taken
    incomplete = service.post(path, {"id": "more", "source": "/x.mp4"})
    assert incomplete.status == 422 and incomplete.problem_fields() == ["vocabulary"], incomplete


def test_empty_vocabulary_is_refused_naming_the_field(service: Service, finished_job: str) -> None:
    answer = service.put(f"/jobs/{finished_job}/streams/cam/vocabulary", {"vocabulary": []})
    assert answer.status == 422, answer
    assert answer.problem_fields() == ["vocabulary"], answer


def test_a_job_naming_a_model_must_name_the_services(service: Service, videos: dict[str, Path]) -> None:
    other = service.post(
        "/jobs",
        job("other-model", stream("cam", videos["short"], STREET), model={"name": "san_vit_b_16"}),
    )
    assert other.status == 422 and other.problem_fields() == ["model"], other
    same = service.post(
        "/jobs",
        job(
            "same-model",
            stream("cam", videos["short"], STREET, every=5),
            model={"name": "san_tiny_test", "weights": "random"},
        ),
    )
    assert same.status == 201, same
    assert service.wait("same-model")["status"] == "completed"


def test_a_bad_stream_fails_alone_and_the_service_stays_healthy(
    service: Service, videos: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.mp4"
    job_id = service.submit(
        job("one-bad", stream("bad", missing, STREET), stream("good", videos["short"], HARBOUR, every=2))
    )
    snapshot = service.wait(job_id)
    assert snapshot["status"] == "completed", snapshot
    bad, good = snapshot["streams"]["bad"], snapshot["streams"]["good"]
    assert good["status"] == "completed" and bad["status"] == "failed", snapshot["streams"]
    assert any(str(missing) in error.get("message", "") for error in bad["errors"]), bad["errors"]
    assert_complete_rows(service.out, job_id, "good", HARBOUR, list(range(0, 20, 2)))
    assert not has_parts(service.out, "class_areas", job_id, "bad")
    health = service.get("/healthz")
    assert health.status == 200 and health.json["status"] == "ok", health
    assert job_id not in health.json["running"]
    assert job_id in [j["job_id"] for j in service.get("/jobs").json["jobs"]]


# ------------------------------------------------------------------------------ restart: a replica dies
def test_restart_replica_killed_mid_job_the_job_completes_exactly_once(
    service: Service, undisturbed: str, videos: dict[str, Path]
) -> None:
    """SIGKILL the service's SAN replica while a job runs: Serve starts a new one, the streams recover from
    their committed frames, and the output equals that of the undisturbed job with the same spec."""
    replicas = service.replica_pids()
    assert len(replicas) == 1, replicas
    job_id = service.submit(restart_spec("replica-killed", videos))
    try:
        snapshot = service.wait_counter(job_id, "alpha", "written", 5)
        assert (
            snapshot["status"] == "running" and snapshot["streams"]["alpha"]["written"] < ALPHA_FRAMES - 1
        ), snapshot
        os.kill(replicas[0], signal.SIGKILL)
        snapshot = service.wait(job_id, timeout_s=300)
    finally:
        cancel_quietly(service, job_id)
    assert snapshot["status"] == "completed", snapshot
    assert {s["status"] for s in snapshot["streams"].values()} == {"completed"}, snapshot["streams"]
    assert_same_rows(service.out, job_id, undisturbed, "the replica was killed")
    deadline = time.monotonic() + 60
    while len(now := service.replica_pids()) != 1 or now == replicas:
        assert time.monotonic() < deadline, f"no new replica replaced {replicas}: {now}"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- /metrics
def test_metrics_frames_written_equal_the_parquet_frames_per_stream(
    service: Service, videos: dict[str, Path]
) -> None:
    """Every stream of every job the service ran (by now: completed, cancelled, failed and recovered ones,
    when the module runs whole) reports `frames_written` equal to its rows in the `frames` table."""
    job_id = service.submit(
        job(
            "metrics",
            stream("cam", videos["short"], STREET),
            stream("dock", videos["medium"], HARBOUR, every=3),
        )
    )
    assert service.wait(job_id)["status"] == "completed"
    jobs = service.get("/jobs").json["jobs"]
    assert all(j["status"] in ("completed", "failed", "cancelled") for j in jobs), jobs

    families = {f.name: f for f in text_string_to_metric_families(service.metrics_text())}
    counters: dict[str, dict[tuple[str, str], float]] = {}
    for name in ("written", "analysed", "decoded"):
        family = families[f"sanstream_stream_frames_{name}"]
        assert family.type == "counter"
        counters[name] = {
            (s.labels["job_id"], s.labels["stream_id"]): s.value
            for s in family.samples
            if s.name.endswith("_total")
        }
    written = counters["written"]
    parquet_frames = {
        (job_id, stream_id): count
        for job_id, stream_id, count in duckdb.sql(
            f"SELECT job_id, stream_id, count(*) FROM read_parquet('{service.out}/frames/**/*.parquet') GROUP BY ALL"
        ).fetchall()
    }
    known = {(j["job_id"], sid) for j in jobs for sid in service.job(j["job_id"])["streams"]}
    assert set(written) == known, "one frames_written series per stream of every job"
    assert set(parquet_frames) <= known
    assert {key: written[key] for key in sorted(known)} == {
        key: float(parquet_frames.get(key, 0)) for key in sorted(known)
    }
    assert written[(job_id, "cam")] == 20 and written[(job_id, "dock")] == 10
    for key, value in written.items():
        assert counters["analysed"][key] >= value, key


# ------------------------------------------------------------------- restart: the whole service dies (last)
@pytest.mark.slow  # a whole service restarted (3 minutes); a replica killed mid-job runs by default
def test_restart_service_killed_mid_job_is_continued_by_the_next_serve_exactly_once(
    service: Service, undisturbed: str, videos: dict[str, Path]
) -> None:
    """SIGKILL the module's service (its CLI process, Ray, Serve, the job manager; not its redis-server) while
    a job runs, start `sanstream serve` again on the same --out: the job is continued and completes, and its
    output equals, row for row, that of the undisturbed job with the same spec. Runs last: it ends the
    module's service."""
    job_id = service.submit(restart_spec("service-killed", videos))
    service.wait_counter(job_id, "alpha", "written", 5)
    service.crash()
    redis_pid = service.redis_pid()
    assert redis_pid is not None, "the job store's redis-server should survive the crash"
    store = service.store()
    assert store.status(job_id) == "running", "the crash should leave the job running in the store"
    assert store.stream_counter(job_id, "alpha", "written") < ALPHA_FRAMES - 1, (
        "killed after the last commit: too late"
    )

    again = Service(service.out, log=service.log.with_name("serve-again.log"), token=TOKEN)
    try:
        again.start()
        snapshot = again.wait(job_id, timeout_s=300)
        assert snapshot["status"] == "completed", snapshot
        assert {s["status"] for s in snapshot["streams"].values()} == {"completed"}, snapshot["streams"]
        assert again.redis_pid() == redis_pid, "the new service should use the surviving redis-server"
        assert_same_rows(service.out, job_id, undisturbed, "the service was killed and started again")
        staged = [p for p in (service.out / "_staging").rglob("*") if p.is_file()]
        assert not staged, f"staged parts left behind: {staged}"
        finished = {j["job_id"]: j["status"] for j in again.get("/jobs").json["jobs"]}
        assert set(finished.values()) <= {"completed", "failed", "cancelled"}, finished
    finally:
        again.stop()
        leftover = [p.pid for p in [*again.family(), *service.family()]]
        again.kill()
        service.stop_redis()  # started by the killed service; the new one only attached to it
    assert not leftover, f"processes left after the service stopped: {leftover}"
