"""The service's warm decoders and writers (`actors.fleet`), with real Ray actors and a real Redis: streams of
every job share them, a full decoder makes the fleet grow, and an ended job is forgotten everywhere, so a
service that runs jobs all day does not keep them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from actors.fleet import WarmFleet
from actors.placement import Placement, place_streams, uses_fleet
from actors.stream_config import JobContext
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis-fleet")) as server:
        yield server.url


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


def spec(job_id: str, out: Path, streams: int, **extra: object) -> object:
    return parse_job_spec(
        {
            "job_id": job_id,
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(out),
            "streams": [
                {"id": f"cam{i}", "source": f"/videos/{i}.mp4", "vocabulary": ["sky"]} for i in range(streams)
            ],
            **extra,
        }
    )


def test_jobs_share_the_warm_actors_the_fleet_grows_when_full_and_forgets_ended_jobs(
    local_ray: None, redis_url: str, tmp_path: Path
) -> None:
    fleet = WarmFleet(redis_url, pool=None, decoders=1, streams_per_decoder=2)
    (first_decoder, name, node) = fleet.decoders[0]
    assert name == "sanstream-service:decoder:0"
    assert ray.get_actor(name) is not None and len(fleet.writers) == 1

    a, b = spec("job-a", tmp_path, 2), spec("job-b", tmp_path, 1)
    carried_a = place_streams(
        a, JobContext("job-a", str(tmp_path)), a.streams, redis_url, None, Placement(), fleet
    )
    # job-a's two streams fill the first decoder; job-b's stream needs a second one, which is kept.
    assert {carried_a.assign(s)[0] for s in a.streams} == {"sanstream-service:decoder:0"}
    carried_b = place_streams(
        b, JobContext("job-b", str(tmp_path)), b.streams, redis_url, None, Placement(), fleet
    )
    assert carried_b.assign(b.streams[0])[0] == "sanstream-service:decoder:1"
    assert fleet.load == [2, 1] and not carried_a.own_actors and not carried_b.own_actors
    # Both jobs write through the one writer of the node.
    writer = fleet.writers[node]
    assert carried_a.carriers("cam0")[1] == writer and carried_b.carriers("cam0")[1] == writer

    # A stream open on the writer for each job (what a running stream does first).
    store = JobStore.from_url(redis_url)
    for job_id in ("job-a", "job-b"):
        store.create_job(job_id, {}, ["cam0"])
        ray.get(writer.begin.remote(job_id, "cam0", ["sky"], str(tmp_path), 10.0))
    assert ray.get(writer.streams.remote()) == ["job-a/cam0", "job-b/cam0"]

    carried_a.release()  # job-a ended: its load and its sinks go, job-b's stay, no actor is killed
    assert fleet.load == [0, 1] and ("job-a", "cam0") not in fleet.assigned
    # The actors are told without waiting (a threaded actor may answer a later call first): poll.
    deadline = time.monotonic() + 10
    while ray.get(writer.streams.remote()) != ["job-b/cam0"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(writer.streams.remote()) == ["job-b/cam0"]
    while ray.get(first_decoder.remembered.remote()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(first_decoder.remembered.remote()) == 0
    assert ray.get(first_decoder.pid.remote()) > 0  # still alive, warm for the next job

    # A new job fills the emptied decoder first rather than starting a third.
    c = spec("job-c", tmp_path, 1)
    carried_c = place_streams(
        c, JobContext("job-c", str(tmp_path)), c.streams, redis_url, None, Placement(), fleet
    )
    assert carried_c.assign(c.streams[0])[0] == "sanstream-service:decoder:0" and len(fleet.decoders) == 2


def test_a_job_that_asks_where_to_decode_gets_actors_of_its_own(tmp_path: Path) -> None:
    assert uses_fleet(spec("plain", tmp_path, 1), Placement())
    assert not uses_fleet(spec("edge", tmp_path, 1, decoding={"resources": {"edge": 1}}), Placement())
    assert not uses_fleet(spec("spread", tmp_path, 1, decoding={"streams_per_decoder": 1}), Placement())
    assert not uses_fleet(spec("placed", tmp_path, 1), Placement(decoders={"edge": 1}))
