"""`sanstream run` on an existing Ray cluster (started with `ray start --head`), found through RAY_ADDRESS
as `ray job submit` sets it, then `status --json` and `query` on the output after the run exited."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from pipeline.sample_video import write_sample_video

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's token authentication would make every client of this throw-away local cluster fetch the token;
# the cluster listens on this machine only, for the duration of the test.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    log = (tmp_path_factory.mktemp("ray-head") / "head.log").open("w")
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=ENV,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while (
        subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=ENV).returncode != 0
    ):
        assert head.poll() is None, "ray start --head exited"
        assert time.monotonic() < deadline, "the Ray head did not come up"
        time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(5)  # `ray start --block` often ignores SIGTERM for half a minute; the test is over
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)


def sanstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, **(env or {})},
    )


@pytest.mark.slow  # the CLI against a second Ray cluster; jobs on a cluster run by default (test_cluster.py)
def test_run_on_an_existing_cluster_then_status_and_query(ray_head: str, tmp_path: Path) -> None:
    video = write_sample_video(tmp_path / "harbour cam.mp4", seconds=2, fps=10, size=(48, 64))
    out = tmp_path / "out"
    result = sanstream(
        "run",
        str(video),
        "--vocab",
        "water,boat,car, automobile",
        "--fps",
        "2",
        "--weights",
        "random",
        "--model",
        "san_tiny_test",
        "--out",
        str(out),
        "--job-id",
        "on-cluster",
        "--no-progress",
        env={"RAY_ADDRESS": ray_head},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "job on-cluster completed" in result.stdout
    status = sanstream("status", "on-cluster", "--out", str(out), "--json")
    snapshot = json.loads(status.stdout)
    assert snapshot["status"] == "completed"
    assert snapshot["streams"]["harbour-cam"]["written"] == 4
    query = sanstream(
        "query", str(out), "SELECT count(*) AS n, sum(fraction) AS total FROM class_areas", "--json"
    )
    assert json.loads(query.stdout) == [{"n": 16, "total": pytest.approx(4.0)}]
