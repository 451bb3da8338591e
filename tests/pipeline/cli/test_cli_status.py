"""`sanstream status` and `sanstream cancel` against a real embedded Redis that persists under the output dir.

The job state is written while one server runs, that server is stopped, and the commands must find the
same numbers by restarting it from `OUT/redis/` — and stop it again, because nothing else will.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.common import TERMINAL_STATUSES
from pipeline.cli.main import main
from pipeline.frames import FrameAreas
from pipeline.jobs.lease import Holder, JobLease
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore
from pipeline.storage.recorder import StreamRecorder
from pipeline.storage.rows import class_area_table
from pipeline.storage.writer import PartWriter

JOB = "job-20240102-030405-abc123"
VOCAB = ["road", "car"]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def recorded_port(out: Path) -> int:
    return int(json.loads((out / "redis" / "connection.json").read_text())["port"])


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps tables at 80 columns when stdout is not a terminal


@pytest.fixture
def job_out(tmp_path: Path) -> Iterator[Path]:
    """An output dir whose job state was written by a server that is stopped again before the test runs.

    cam-a: running, 12 decoded, 10 analysed, 5 frames committed in two class_areas parts (frames 0-2, 3-4).
    cam-b: failed, with one recorded error.
    """
    out = tmp_path / "out"
    out.mkdir()
    with EmbeddedRedis(out) as server:
        store = JobStore(server.client(decode_responses=True))
        store.create_job(JOB, {"output": str(out)}, ["cam-a", "cam-b"])
        store.set_status(JOB, "running")
        store.set_stream_status(JOB, "cam-a", "running")
        store.incr(JOB, "cam-a", "decoded", 12)
        store.incr(JOB, "cam-a", "analysed", 10)
        epoch = store.bump_writer_epoch(JOB, "cam-a")
        areas = [
            FrameAreas("cam-a", i, i / 2.0, 10, 10, np.array([100 - 10 * i, 10 * i]), 0.01) for i in range(5)
        ]
        recorder = StreamRecorder(store, JOB, "cam-a")
        with PartWriter(
            out, "class_areas", JOB, "cam-a", epoch=epoch, max_rows=6, recorder=recorder
        ) as writer:
            writer.append(class_area_table(areas, VOCAB, JOB))
        store.record_error(JOB, "cam-b", "decode", "cam-b: Connection refused by rtsp://cam-b.local/live")
        store.set_stream_status(JOB, "cam-b", "failed")
        port = server.port
    assert port is not None and not port_open(port)
    yield out
    # Every command must have stopped the server it started: nothing may outlive the test.
    assert not port_open(recorded_port(out))


def test_status_json_reads_persisted_state_and_stops_its_server(job_out: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["job_id"] == JOB and snap["status"] == "running"
    assert snap["cancel_requested"] is False and snap["error_count"] == 1
    a, b = snap["streams"]["cam-a"], snap["streams"]["cam-b"]
    assert (a["status"], a["decoded"], a["analysed"], a["written"], a["last_written_frame"]) == (
        "running",
        12,
        10,
        5,
        4,
    )
    # last_pts: pts of frame 4 (2 fps), recorded with the part so a restarted live stream resumes after it
    assert a["committed"]["class_areas"] == {"rows": 10, "parts": 2, "last_frame": 4, "last_pts": 2.0}
    assert (b["status"], b["written"], b["last_written_frame"], b["error_count"]) == ("failed", 0, -1, 1)
    assert b["errors"][0]["kind"] == "decode" and "Connection refused" in b["errors"][0]["message"]
    assert not port_open(recorded_port(job_out))
    # A second run restarts the server once more and sees the same state.
    code, again, _ = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
    assert code == 0 and json.loads(again)["streams"] == snap["streams"]


def test_status_table_and_job_list_in_a_real_process(job_out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"COLUMNS": "160"}
    command = [sys.executable, "-m", "pipeline.cli.main", "status"]
    shown = subprocess.run([*command, JOB, "--out", str(job_out)], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"job {JOB}: running" in lines[0]
    cells = {
        row[0]: row[1:]
        for line in lines
        if line.startswith("│ cam-")
        for row in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    assert cells == {
        "cam-a": ["running", "12", "10", "5", "4", "0"],
        "cam-b": ["failed", "0", "0", "0", "-", "1"],
    }
    error_row = next(line for line in lines if "Connection refused by rtsp://cam-b.local/live" in line)
    assert [cell.strip() for cell in error_row.strip("│").split("│")][1:3] == ["cam-b", "decode"]
    listed = subprocess.run([*command, "--out", str(job_out)], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if JOB in line)
    assert "running" in row and "20" in row  # the created date


def test_status_leaves_a_running_server_running(job_out: Path, capsys) -> None:
    with EmbeddedRedis(job_out) as server:
        JobStore(server.client(decode_responses=True)).incr(JOB, "cam-a", "decoded", 3)
        code, out, err = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
        assert code == 0, err
        assert json.loads(out)["streams"]["cam-a"]["decoded"] == 15
        assert server.client().ping()  # still up: it belongs to the (pretend) running job


def test_status_uses_redis_url_without_an_output_dir(
    job_out: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    with EmbeddedRedis(job_out) as server:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, out, err = run_cli(capsys, "status", JOB, "--out", tmp_path / "elsewhere", "--json")
        assert code == 0, err
        assert json.loads(out)["streams"]["cam-a"]["written"] == 5
        assert not (tmp_path / "elsewhere").exists()


def test_cancel_sets_the_flag_once_and_reports_finished_jobs(job_out: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "cancel", JOB, "--out", job_out)
    assert code == 0, err
    assert f"cancel requested for job {JOB} (was running)" in out
    code, out, _ = run_cli(capsys, "cancel", JOB, "--out", job_out)
    assert code == 0 and "already requested" in out
    with EmbeddedRedis(job_out) as server:  # persisted: a fresh server on the same data sees the flag
        store = JobStore(server.client(decode_responses=True))
        assert store.cancel_requested(JOB)
        store.set_status(JOB, "cancelled")
    code, out, _ = run_cli(capsys, "cancel", JOB, "--out", job_out)
    assert code == 0 and f"job {JOB} already finished (cancelled)" in out
    code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
    assert json.loads(out)["cancel_requested"] is True


@pytest.mark.parametrize("command", ["status", "cancel"])
def test_unknown_job_names_it_and_lists_the_known_ones(job_out: Path, capsys, command: str) -> None:
    code, out, err = run_cli(capsys, command, "job-nope", "--out", job_out)
    assert code == 2 and out == ""
    assert err.strip() == f"sanstream {command}: no job 'job-nope' in {job_out}; jobs there: {JOB}"


def test_user_errors_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = tmp_path / "missing"
    code, _, err = run_cli(capsys, "status", "job-1", "--out", missing)
    assert code == 2 and str(missing) in err and "does not exist" in err
    assert len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "cancel", "job-1", "--out", empty)
    assert code == 2 and "no job state under" in err and str(empty) in err
    assert not (empty / "redis").exists()  # no server was started (and left behind) for a typo
    code, _, err = run_cli(capsys, "status", "../etc", "--out", empty)
    assert code == 2 and "job id '../etc'" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret@127.0.0.1:{dead}/0")
    code, _, err = run_cli(capsys, "status", "--out", empty)
    assert code == 2 and f"cannot reach REDIS_URL=redis://:***@127.0.0.1:{dead}/0" in err
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("REDIS_URL", "localhost:6379")
    code, _, err = run_cli(capsys, "status", "--out", empty)
    assert code == 2 and "cannot use REDIS_URL=localhost:6379" in err and "redis://" in err


def test_interrupted_job_is_shown_with_how_to_resume_it(job_out: Path, capsys) -> None:
    with EmbeddedRedis(job_out) as server:
        store = JobStore(server.client(decode_responses=True))
        store.set_status(JOB, "interrupted")
        store.set_stream_status(JOB, "cam-a", "interrupted")
        store.record_error(JOB, "cam-a", "interrupted", "stopped by SIGINT [driver] at frame 4")
    code, out, err = run_cli(capsys, "status", JOB, "--out", job_out)
    assert code == 0, err
    assert f"job {JOB}: interrupted" in out
    assert f"resume with: sanstream resume {JOB} --out {job_out}" in out
    assert "stopped by SIGINT [driver] at frame 4" in out  # user text is not eaten as rich markup
    assert any(line.startswith("│ cam-a") and "interrupted" in line for line in out.splitlines())
    code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
    assert json.loads(out)["lease"] is None
    # `interrupted` is not final: cancel ends it at once (no driver runs it to see a flag).
    code, out, _ = run_cli(capsys, "cancel", JOB, "--out", job_out)
    assert code == 0 and f"job {JOB} cancelled (it was interrupted)" in out
    code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
    snap = json.loads(out)
    assert snap["status"] == "cancelled"
    assert {sid: s["status"] for sid, s in snap["streams"].items()} == {
        "cam-a": "cancelled",
        "cam-b": "failed",
    }


def test_running_job_shows_its_driver_or_that_it_has_none(job_out: Path, capsys) -> None:
    # The fixture's job says running but no driver holds its lease: its driver died.
    code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out)
    assert code == 0 and "no driver holds this job" in out
    assert f"resume with: sanstream resume {JOB} --out {job_out}" in out
    with EmbeddedRedis(job_out) as server:
        client = server.client(decode_responses=True)
        lease = JobLease(client, JOB, holder=Holder("gpu-node-7", 4242, ""))
        lease.acquire()
        code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out)
        assert code == 0 and "driver: pid 4242 on gpu-node-7 (lease token 1" in out
        assert "resume with" not in out
        code, out, _ = run_cli(capsys, "status", JOB, "--out", job_out, "--json")
        assert json.loads(out)["lease"] == {
            "host": "gpu-node-7",
            "pid": 4242,
            "started": "",
            "pid_namespace": "",
            "token": 1,
            "ttl_s": pytest.approx(15, abs=2),
        }
        lease.release()


def test_interrupted_is_not_a_terminal_status() -> None:
    assert "interrupted" not in TERMINAL_STATUSES
