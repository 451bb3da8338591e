"""`sanstream run|status|cancel|resume --service URL`: the CLI as an HTTP client of `sanstream serve`.

The real service needs Ray, so these tests talk to a test double of it: a real HTTP server on 127.0.0.1
(`http.server`) that answers the routes of `actors.service.api` with the same documents and error bodies
(`{"error": ..., "problems": [{"field", "message"}]}`). urllib is not mocked: every request goes over a
socket. The end-to-end test against the real service lives with the service's tests.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import run as run_module
from pipeline.cli.client import ServiceClient, ServiceError
from pipeline.cli.main import main

JOB = "job-20240102-030405-abc123"


@dataclass
class FakeService:
    """State of the double: its jobs, what it was sent, and how its jobs progress."""

    token: str | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: per job: the snapshots later GETs return, one per GET (the last one repeats)
    scripts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 0
    url: str = ""

    def add_job(self, job_id: str, status: str, streams: dict[str, dict[str, Any]]) -> dict[str, Any]:
        now = time.time()
        snapshot = {
            "job_id": job_id,
            "status": status,
            "spec": {"output": "/srv/out", "streams": [{"id": sid} for sid in streams]},
            "created": now - 10,
            "updated": now,
            "started": now - 9,
            "finished": now if status in ("completed", "failed", "cancelled") else None,
            "cancel_requested": False,
            "interrupt_requested": False,
            "error_count": 0,
            "errors": [],
            "heartbeats": {},
            "streams": {sid: stream_info(**info) for sid, info in streams.items()},
        }
        self.jobs[job_id] = snapshot
        return snapshot


def stream_info(
    status: str = "running", analysed: int = 0, written: int = 0, errors: list[str] | None = None
) -> dict[str, Any]:
    records = [{"time": time.time(), "kind": "decode", "message": m} for m in errors or []]
    return {
        "status": status,
        "decoded": analysed,
        "analysed": analysed,
        "written": written,
        "dropped": 0,
        "last_written_frame": written - 1,
        "error_count": len(records),
        "committed": {},
        "errors": records,
    }


def progressing(job_id: str, spec: dict[str, Any], end: str = "completed") -> list[dict[str, Any]]:
    """queued -> running (twice, counters growing) -> `end`, for every stream of `spec`."""
    ids = [s["id"] for s in spec["streams"]]
    stages = [
        ("queued", "pending", 0, 0),
        ("running", "running", 3, 0),
        ("running", "running", 6, 4),
        (end, end, 10, 10),
    ]
    snapshots = []
    for job_status, stream_status, analysed, written in stages:
        snapshots.append(
            {
                "job_id": job_id,
                "status": job_status,
                "spec": {**spec, "output": spec.get("output", "/srv/out")},
                "created": 1.0,
                "updated": 2.0,
                "started": 1.0 if job_status != "queued" else None,
                "finished": 13.5 if job_status == end else None,
                "cancel_requested": False,
                "interrupt_requested": False,
                "error_count": 0,
                "errors": [],
                "heartbeats": {},
                "streams": {sid: stream_info(stream_status, analysed, written) for sid in ids},
            }
        )
    return snapshots


def _handler(service: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, problems: list[tuple[str, str]] = ()) -> None:
            self._send(
                status, {"error": message, "problems": [{"field": f, "message": m} for f, m in problems]}
            )

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            service.requests.append(
                {"method": method, "path": self.path, "body": body, "auth": self.headers.get("Authorization")}
            )
            if self.path == "/healthz":
                return self._send(200, {"status": "ok", "model": {"name": "san_vit_b_16"}, "running": []})
            if self.path == "/broken":
                data = b"<html>bad gateway</html>"
                self.send_response(502)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None
            if service.token and self.headers.get("Authorization") != f"Bearer {service.token}":
                return self._error(
                    401, "missing or wrong bearer token (Authorization: Bearer <SANSTREAM_TOKEN>)"
                )
            parts = self.path.strip("/").split("/")
            if parts == ["jobs"] and method == "GET":
                listing = [
                    {k: j[k] for k in ("job_id", "status", "created", "updated")}
                    for j in service.jobs.values()
                ]
                return self._send(200, {"jobs": listing})
            if parts == ["jobs"] and method == "POST":
                return self._submit(body)
            if len(parts) < 2 or parts[0] != "jobs":
                return self._send(404, {"detail": "Not Found"})
            job_id = parts[1]
            if job_id not in service.jobs:
                return self._error(404, f"no job {job_id!r}")
            if len(parts) == 2 and method == "GET":
                script = service.scripts.get(job_id)
                if script:
                    service.jobs[job_id] = script.pop(0) if len(script) > 1 else script[0]
                return self._send(200, service.jobs[job_id])
            action = parts[2]
            job = service.jobs[job_id]
            if action == "cancel" and method == "POST":
                job["cancel_requested"] = True
                return self._send(202, {"job_id": job_id, "status": job["status"]})
            if action == "resume" and method == "POST":
                if job["status"] == "running":
                    return self._error(409, f"job {job_id} is running already")
                service.scripts[job_id] = progressing(
                    job_id, {"streams": [{"id": s} for s in job["streams"]]}
                )
                return self._send(202, {"job_id": job_id, "status": job["status"]})
            if action == "streams" and method == "POST" and len(parts) == 3:
                if body["id"] in job["streams"]:
                    return self._error(409, f"stream {body['id']!r} exists", [("id", "taken")])
                return self._send(201, {"job_id": job_id, "stream_id": body["id"]})
            if action == "streams" and method == "DELETE" and len(parts) == 4:
                return self._send(202, {"job_id": job_id, "stream_id": parts[3]})
            if action == "streams" and method == "PUT" and parts[4:] == ["vocabulary"]:
                if not body.get("vocabulary"):
                    return self._error(
                        422, "vocabulary: must not be empty", [("vocabulary", "must not be empty")]
                    )
                return self._send(200, {"job_id": job_id, "stream_id": parts[3], "vocabulary_version": 2})
            return self._send(404, {"detail": "Not Found"})

        def _submit(self, spec: dict[str, Any]) -> None:
            problems = [
                (f"streams[{i}].vocabulary", "'forbidden' is not allowed here")
                for i, stream in enumerate(spec["streams"])
                if "forbidden" in stream["vocabulary"]
            ]
            if problems:
                lines = "; ".join(f"{f}: {m}" for f, m in problems)
                return self._error(422, f"invalid job spec: {lines}", problems)
            service.next_id += 1
            job_id = spec.get("job_id") or f"job-20240102-030405-{service.next_id:06d}"
            end = "failed" if any("broken" in s["source"] for s in spec["streams"]) else "completed"
            script = progressing(job_id, spec, end)
            if end == "failed":
                for info in script[-1]["streams"].values():
                    info["errors"] = [{"time": 1.0, "kind": "decode", "message": "cannot open broken.mp4"}]
            service.scripts[job_id] = script
            service.jobs[job_id] = script[0]
            return self._send(201, {"job_id": job_id})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeService]:
    monkeypatch.delenv("SANSTREAM_TOKEN", raising=False)
    monkeypatch.delenv("SANSTREAM_SERVICE", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setattr(run_module, "POLL_S", 0.01)
    state = FakeService()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submitted(service: FakeService) -> dict[str, Any]:
    (request,) = [r for r in service.requests if r["method"] == "POST" and r["path"] == "/jobs"]
    return request["body"]


def test_run_submits_and_follows_until_completed(
    service: FakeService, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(
        capsys, "run", "cam1.mp4", "cam2.mkv", "--vocab", "road,car", "--service", service.url
    )
    assert code == 0, err
    spec = submitted(service)
    assert "output" not in spec and "model" not in spec  # the service fills in its own
    assert [s["source"] for s in spec["streams"]] == [str(tmp_path / "cam1.mp4"), str(tmp_path / "cam2.mkv")]
    assert spec["streams"][0]["vocabulary"] == ["road", "car"]
    (job_id,) = service.jobs
    # progress: the job's status changes and a line per stream with its counters
    assert f"job {job_id}: queued" in err and f"job {job_id}: completed" in err
    assert "cam1: running, analysed 3, written 0" in err
    assert "cam2: completed, analysed 10, written 10" in err
    # the end summary: per-stream table, status, where to look
    assert re.search(r"cam1\s+│\s+completed", out), out
    assert f"job {job_id} completed after 12.5 s; output in /srv/out/" in out
    assert f"sanstream status {job_id} --service {service.url}" in out
    assert "no sanstream service" not in err


def test_run_sends_output_and_model_only_when_given(
    service: FakeService, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(
        capsys,
        "run",
        "cam1.mp4",
        "--vocab",
        "road",
        "--out",
        tmp_path / "o",
        "--model",
        "san_vit_b_16",
        "--job-id",
        JOB,
        "--service",
        service.url,
        "--no-progress",
    )
    assert code == 0, err
    spec = submitted(service)
    assert spec["output"] == str(tmp_path / "o")
    assert spec["model"]["name"] == "san_vit_b_16"
    assert spec["job_id"] == JOB
    assert "analysed" not in err  # --no-progress


def test_run_with_config_keeps_its_output_and_leaves_out_model(
    service: FakeService, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(
        "output: results\nstreams:\n  - {id: cam, source: rtsp://10.0.0.5/live, vocabulary: [road]}\n"
    )
    code, _, err = cli(capsys, "run", "--config", config, "--service", service.url)
    assert code == 0, err
    spec = submitted(service)
    assert spec["output"] == str(tmp_path / "results")
    assert "model" not in spec
    assert spec["streams"][0]["source"] == "rtsp://10.0.0.5/live"

    config.write_text(config.read_text() + "model: {name: san_vit_b_16}\n")
    service.requests.clear()
    assert cli(capsys, "run", "--config", config, "--service", service.url)[0] == 0
    assert submitted(service)["model"]["name"] == "san_vit_b_16"


def test_failed_stream_exits_1_with_its_error(
    service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "run", "broken.mp4", "--vocab", "road", "--service", service.url)
    assert code == 1
    assert "stream broken failed: cannot open broken.mp4" in out
    assert " failed after " in out


def test_detach_prints_the_job_id_and_returns(
    service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", "cam.mp4", "--vocab", "road", "--service", service.url, "--detach")
    assert code == 0
    job_id = out.strip()
    assert job_id in service.jobs
    assert f"sanstream status {job_id} --service {service.url}" in err
    assert not [r for r in service.requests if r["method"] == "GET"]  # not followed


def test_ctrl_c_stops_following_only(
    service: FakeService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def interrupted(snapshot: dict[str, Any], shown: dict[str, Any]) -> None:
        calls.append(snapshot["status"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "print_progress", interrupted)
    code, _, err = cli(capsys, "run", "cam.mp4", "--vocab", "road", "--service", service.url)
    assert code == 130
    (job_id,) = service.jobs
    assert (
        f"job {job_id} keeps running on the service; follow it with sanstream status {job_id} --service "
        in err
    )
    assert not [r for r in service.requests if r["path"].endswith("/cancel")]


def test_422_names_each_problem_field(service: FakeService, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "run", "a.mp4", "b.mp4", "--vocab", "road,forbidden", "--service", service.url
    )
    assert code == 2
    assert "sanstream run: invalid job spec, 2 problems:" in err
    assert "  streams[0].vocabulary: 'forbidden' is not allowed here" in err
    assert "  streams[1].vocabulary: 'forbidden' is not allowed here" in err
    assert "Traceback" not in err and out == ""


def test_client_errors_carry_status_and_problems(service: FakeService) -> None:
    service.add_job(JOB, "running", {"cam": {}})
    client = ServiceClient(service.url)
    with pytest.raises(ServiceError) as caught:
        client.set_vocabulary(JOB, "cam", [])
    assert caught.value.status == 422
    assert caught.value.problems == [("vocabulary", "must not be empty")]
    assert str(caught.value) == "vocabulary: must not be empty"
    with pytest.raises(ServiceError, match=r"stream 'cam' exists\n  id: taken") as caught:
        client.add_stream(JOB, {"id": "cam", "source": "rtsp://h/x", "vocabulary": ["a"]})
    assert caught.value.status == 409
    with pytest.raises(ServiceError, match="no job 'nope'"):
        client.job("nope")
    with pytest.raises(ServiceError, match=r"answered HTTP 502"):
        client._request("GET", "/broken")


def test_client_methods(service: FakeService) -> None:
    service.add_job(JOB, "running", {"cam": {}})
    client = ServiceClient(service.url + "/")  # a trailing slash is fine
    assert client.healthz()["status"] == "ok"
    assert [j["job_id"] for j in client.jobs()] == [JOB]
    assert client.job(JOB)["streams"]["cam"]["status"] == "running"
    assert client.add_stream(JOB, {"id": "cam2", "source": "rtsp://h/x", "vocabulary": ["a"]}) == "cam2"
    assert client.set_vocabulary(JOB, "cam2", ["a", "b"]) == 2
    client.remove_stream(JOB, "cam2")
    assert client.cancel(JOB) == {"job_id": JOB, "status": "running"}
    paths = [(r["method"], r["path"]) for r in service.requests]
    assert paths[-4:] == [
        ("POST", f"/jobs/{JOB}/streams"),
        ("PUT", f"/jobs/{JOB}/streams/cam2/vocabulary"),
        ("DELETE", f"/jobs/{JOB}/streams/cam2"),
        ("POST", f"/jobs/{JOB}/cancel"),
    ]
    assert service.requests[-3]["body"] == {"vocabulary": ["a", "b"]}
    with pytest.raises(ServiceError, match="no job"):
        client.job("a/b?c")  # quoted into one path segment, never another route
    assert service.requests[-1]["path"] == "/jobs/a%2Fb%3Fc"


def test_connection_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANSTREAM_TOKEN", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = cli(capsys, "status", "--service", url)
    assert code == 2
    assert err.strip() == (
        f"sanstream status: no sanstream service at {url} (connection refused); start one with "
        "`sanstream serve` or leave out --service"
    )
    monkeypatch.setenv("SANSTREAM_SERVICE", url)  # the environment variable works the same
    code, _, err = cli(capsys, "run", "cam.mp4", "--vocab", "road")
    assert code == 2 and "connection refused" in err


def test_token_is_sent_when_set(
    service: FakeService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    service.token = "s3cret"
    code, _, err = cli(capsys, "status", "--service", service.url)
    assert code == 2
    assert "missing or wrong bearer token" in err
    assert service.requests[-1]["auth"] is None
    monkeypatch.setenv("SANSTREAM_TOKEN", "s3cret")
    code, out, err = cli(capsys, "status", "--service", service.url)
    assert code == 0, err
    assert service.requests[-1]["auth"] == "Bearer s3cret"
    assert "no jobs on the service" in out


def test_status_json_prints_the_service_document(
    service: FakeService, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = service.add_job(JOB, "running", {"cam-a": {"analysed": 10, "written": 5}})
    code, out, _ = cli(capsys, "status", JOB, "--service", service.url, "--json")
    assert code == 0
    assert json.loads(out) == snapshot
    code, out, _ = cli(capsys, "status", "--service", service.url, "--json")
    assert code == 0
    assert [j["job_id"] for j in json.loads(out)] == [JOB]


def test_status_renders_like_the_local_one(service: FakeService, capsys: pytest.CaptureFixture[str]) -> None:
    service.add_job(JOB, "interrupted", {"cam-a": {"status": "interrupted", "analysed": 10, "written": 5}})
    code, out, _ = cli(capsys, "status", JOB, "--service", service.url)
    assert code == 0
    assert f"job {JOB}: interrupted" in out
    assert re.search(r"cam-a\s+│\s+interrupted\s+│\s+10\s+│\s+10\s+│\s+5\s+│\s+4", out), out
    assert f"resume with: sanstream resume {JOB} --service {service.url}" in out
    assert "no driver holds" not in out  # the service's snapshot does not say who runs it
    code, out, _ = cli(capsys, "status", "--service", service.url)
    assert code == 0
    assert f"jobs in {service.url}" in out and JOB in out


def test_unknown_job_lists_the_service_jobs(service: FakeService, capsys: pytest.CaptureFixture[str]) -> None:
    service.add_job(JOB, "running", {"cam": {}})
    code, _, err = cli(capsys, "status", "job-20240102-030405-zzzzzz", "--service", service.url)
    assert code == 2
    assert f"no job 'job-20240102-030405-zzzzzz' on the service at {service.url}; jobs there: {JOB}" in err


def test_cancel(service: FakeService, capsys: pytest.CaptureFixture[str]) -> None:
    service.add_job(JOB, "running", {"cam": {}})
    code, out, _ = cli(capsys, "cancel", JOB, "--service", service.url)
    assert code == 0
    assert service.requests[-1]["method"] == "POST" and service.requests[-1]["path"] == f"/jobs/{JOB}/cancel"
    assert service.jobs[JOB]["cancel_requested"] is True
    assert f"cancel requested for job {JOB} (was running)" in out

    service.jobs[JOB]["status"] = "completed"
    service.requests.clear()
    code, out, _ = cli(capsys, "cancel", JOB, "--service", service.url)
    assert code == 0
    assert "already finished (completed); nothing to cancel" in out
    assert not [r for r in service.requests if r["method"] == "POST"]


def test_resume_posts_and_follows(service: FakeService, capsys: pytest.CaptureFixture[str]) -> None:
    service.add_job(JOB, "interrupted", {"cam": {"status": "interrupted"}})
    code, out, err = cli(capsys, "resume", JOB, "--service", service.url)
    assert code == 0, err
    assert ("POST", f"/jobs/{JOB}/resume") in [(r["method"], r["path"]) for r in service.requests]
    assert "cam: completed, analysed 10, written 10" in err
    assert f"job {JOB} completed" in out

    service.jobs[JOB]["status"] = "running"
    service.scripts.pop(JOB)
    code, _, err = cli(capsys, "resume", JOB, "--service", service.url)
    assert code == 2 and f"job {JOB} is running already" in err


def test_local_only_and_service_only_options(
    service: FakeService, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli(capsys, "run", "c.mp4", "--vocab", "r", "--service", service.url, "--address", "h:1")
    assert code == 2 and "not with --service: --address" in err
    code, _, err = cli(capsys, "run", "c.mp4", "--vocab", "r", "--detach", "--out", tmp_path)
    assert code == 2 and "--detach needs --service" in err
    assert not service.requests
    # --service '' runs locally even when $SANSTREAM_SERVICE names a service
    monkeypatch.setenv("SANSTREAM_SERVICE", service.url)
    code, _, err = cli(capsys, "status", "--service", "", "--out", tmp_path / "missing")
    assert code == 2 and "does not exist" in err
    assert not service.requests


def test_client_module_imports_no_ray_torch_or_redis() -> None:
    code = (
        "import sys, pipeline.cli.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'redis', 'numpy'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
