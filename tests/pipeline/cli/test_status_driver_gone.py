"""`sanstream status` of a job whose driver was killed: its lease outlives it by up to 15 s, and during
that time too the status must say that the driver is gone and how to resume, not show a live driver."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.jobs.lease import Holder, JobLease, driver_gone
from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore

JOB = "killed-driver"


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_drivers_lease_says_driver_gone_and_how_to_resume(tmp_path: Path, capsys) -> None:
    holder = dataclasses.replace(Holder.this_process(), pid=dead_pid())
    with EmbeddedRedis(tmp_path) as server:
        store = JobStore(server.client(decode_responses=True))
        store.create_job(JOB, {"output": str(tmp_path)}, ["cam"])
        store.set_status(JOB, "running")
        JobLease(server.client(decode_responses=True), JOB, holder=holder).acquire()  # left by the killed one
        assert main(["status", JOB, "--out", str(tmp_path)]) == 0
        shown = capsys.readouterr().out
        assert f"driver gone: pid {holder.pid} on {holder.host} no longer runs" in shown, shown
        assert f"resume with: sanstream resume {JOB} --out {tmp_path}" in shown
        assert main(["status", JOB, "--out", str(tmp_path), "--json"]) == 0
        lease = json.loads(capsys.readouterr().out)["lease"]
        assert driver_gone(lease) and lease["pid"] == holder.pid


def test_a_live_driver_is_shown_without_a_resume_hint(tmp_path: Path, capsys) -> None:
    with EmbeddedRedis(tmp_path) as server:
        store = JobStore(server.client(decode_responses=True))
        store.create_job(JOB, {"output": str(tmp_path)}, ["cam"])
        store.set_status(JOB, "running")
        lease = JobLease(server.client(decode_responses=True), JOB)  # this process: alive
        lease.acquire()
        assert main(["status", JOB, "--out", str(tmp_path)]) == 0
        shown = capsys.readouterr().out
        assert "driver gone" not in shown and "resume with" not in shown
        assert not driver_gone({"host": "elsewhere", "pid": 1, "started": "", "pid_namespace": ""})
        lease.release()
