"""`sanstream serve` as a subprocess for the end-to-end service tests and the service benchmark: start it,
wait until it is ready, talk to its HTTP API with urllib, find its processes, stop it cleanly (SIGINT) or
crash it (SIGKILL), and make sure nothing it started is left behind.

The service runs in its own session, so its process group holds the CLI process and everything its local
Ray started (GCS, raylet, Serve's actors and replicas); its embedded redis-server runs in a session of its
own, as it would on its own host, and is stopped by the service on a clean exit (or by `stop_redis`).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from tests.support.jobs import free_port

READY = "sanstream service ready at"
#: Statuses after which a service job changes no more (`interrupted` is continued by the next service).
FINAL = ("completed", "failed", "cancelled")
#: The cmdline marker of the service's SAN replicas (Serve app `sanstream`, deployment `SegmentationReplica`).
REPLICA_MARK = "ServeReplica:sanstream:SegmentationReplica"
ROOT = Path(__file__).resolve().parents[2]


class ServiceError(AssertionError):
    """The service did not start, answer or stop as expected."""


class Response:
    """An HTTP answer: status code, the body parsed as JSON when it is JSON, and the raw text."""

    def __init__(self, status: int, text: str, content_type: str) -> None:
        self.status = status
        self.text = text
        self.content_type = content_type
        self.json: Any = None
        if "json" in content_type:
            with contextlib.suppress(ValueError):
                self.json = json.loads(text)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.text[:500]!r}>"

    def problem_fields(self) -> list[str]:
        """Field paths named by an error answer's `problems`."""
        if not isinstance(self.json, dict):
            return []
        return [str(p.get("field")) for p in self.json.get("problems", [])]


def http(
    method: str, url: str, body: Any = None, timeout_s: float = 60.0, token: str | None = None
) -> Response:
    """One request with urllib; `body` is sent as JSON (a str or bytes as they are), with `token` as a
    bearer token when given. 4xx and 5xx answers are returned, not raised."""
    data = None
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body))
        data = data.encode() if isinstance(data, str) else data
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return Response(answer.status, answer.read().decode(), answer.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        return Response(error.code, text, error.headers.get("Content-Type", "") if error.headers else "")


class Service:
    """One `sanstream serve` process on `out`, listening on 127.0.0.1:`port`.

    Args:
        out: the service's --out (its jobs' output and its embedded Redis under `out/redis`).
        port: HTTP port; a free one when None.
        log: where the service's stdout and stderr go (appended); `out/../serve-<port>.log` when None.
        args: more `sanstream serve` arguments.
        token: the bearer token the service requires (its $SANSTREAM_TOKEN), sent with every request.
    """

    def __init__(
        self,
        out: Path,
        port: int | None = None,
        log: Path | None = None,
        model: str = "san_tiny_test",
        weights: str = "random",
        args: Iterable[str] = (),
        token: str | None = None,
    ) -> None:
        self.token = token
        self.out = Path(out)
        self.port = port or free_port()
        self.log = log or self.out.parent / f"serve-{self.out.name}-{self.port}.log"
        self.model = model
        self.weights = weights
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.session: int | None = None
        self._log_start = 0

    # --------------------------------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> Service:
        """Start `sanstream serve` and wait until it prints that it is ready and answers /healthz."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        command = [
            sys.executable,
            "-m",
            "pipeline.cli.main",
            "serve",
            "--model",
            self.model,
            "--weights",
            self.weights,
            "--port",
            str(self.port),
            "--out",
            str(self.out),
            *self.args,
        ]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**self.environment(), "PYTHONUNBUFFERED": "1", "COLUMNS": "400"},
            )
        self.session = self.process.pid
        deadline = time.monotonic() + timeout_s
        try:
            while READY not in self.output():
                if self.process.poll() is not None:
                    raise ServiceError(
                        f"sanstream serve exited with {self.process.returncode}:\n{self.tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServiceError(f"sanstream serve not ready in {timeout_s:.0f} s:\n{self.tail()}")
                time.sleep(0.2)
            while True:
                with contextlib.suppress(OSError):
                    if self.get("/healthz", timeout_s=10).status == 200:
                        return self
                if time.monotonic() > deadline:
                    raise ServiceError(f"/healthz did not answer 200 in {timeout_s:.0f} s:\n{self.tail()}")
                time.sleep(0.2)
        except BaseException:
            self.kill()
            self.stop_redis()
            raise

    def environment(self) -> dict[str, str]:
        """This environment, with the service's token as $SANSTREAM_TOKEN (or none at all): what the
        service and a CLI client of it run with."""
        env = {k: v for k, v in os.environ.items() if k != "SANSTREAM_TOKEN"}
        if self.token:
            env["SANSTREAM_TOKEN"] = self.token
        return env

    def output(self) -> str:
        """What this start of the service printed so far."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, chars: int = 6000) -> str:
        return self.output()[-chars:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def family(self) -> list[psutil.Process]:
        """Every live process of the service's session (the CLI process, Ray, its workers), redis-server
        excluded (it runs in a session of its own)."""
        if self.session is None:
            return []
        members = []
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) == self.session and process.status() != psutil.STATUS_ZOMBIE:
                    members.append(process)
        return members

    def processes_with(self, mark: str) -> list[psutil.Process]:
        """The service's processes whose command line contains `mark`."""
        found = []
        for process in self.family():
            with contextlib.suppress(psutil.Error):
                if mark in " ".join(process.cmdline()):
                    found.append(process)
        return found

    def replica_pids(self) -> list[int]:
        """Pids of the service's SAN replicas (`ray::ServeReplica:sanstream:SegmentationReplica`)."""
        return sorted(p.pid for p in self.processes_with(REPLICA_MARK))

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """Stop cleanly: SIGINT to the process group (running jobs are interrupted, the next start on the
        same --out continues them); whatever is left after `timeout_s` is killed. Returns the exit code."""
        code = None
        if self.alive():
            assert self.process is not None and self.session is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.session, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.process.wait(timeout=timeout_s)
        elif self.process is not None:
            code = self.process.returncode
        self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL every process left in the service's session (never its redis-server), and reap."""
        for _ in range(3):
            members = self.family()
            if not members:
                break
            for member in members:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            psutil.wait_procs(members, timeout=10)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)

    def crash(self) -> None:
        """SIGKILL the service and everything it started except the job store's redis-server, like a
        machine losing power while the store (on its own host) survives."""
        if self.process is None:
            return
        root = psutil.Process(self.process.pid)
        family = [root, *root.children(recursive=True)]
        for member in family:
            with contextlib.suppress(psutil.Error):
                if "redis-server" not in " ".join(member.cmdline()):
                    member.kill()
        self.process.wait(timeout=30)
        self.kill()  # anything of the session that was not a descendant any more

    def redis_pid(self) -> int | None:
        """Pid of the redis-server running on `out/redis`, if one runs."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.out / "redis" / "redis.pid").read_text().strip())
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        return None

    def stop_redis(self, timeout_s: float = 30.0) -> None:
        """Stop a redis-server left on `out/redis` (the service stops the one it started on a clean exit;
        one it only attached to, after a crash, is left running): SIGTERM makes it save and exit."""
        pid = self.redis_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.redis_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.redis_pid() == pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the service (cleanly if it still runs) and its redis-server; nothing is left running."""
        try:
            self.stop()
        finally:
            self.stop_redis()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, body: Any = None, timeout_s: float = 60.0) -> Response:
        return http(method, self.url + path, body, timeout_s, self.token)

    def get(self, path: str, timeout_s: float = 60.0) -> Response:
        return self.request("GET", path, timeout_s=timeout_s)

    def post(self, path: str, body: Any = None) -> Response:
        return self.request("POST", path, {} if body is None else body)

    def put(self, path: str, body: Any) -> Response:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Response:
        return self.request("DELETE", path)

    def submit(self, spec: dict[str, Any]) -> str:
        """POST /jobs; returns the job id (the answer must be 201)."""
        answer = self.post("/jobs", spec)
        assert answer.status == 201, answer
        return str(answer.json["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}: the job's snapshot (as `sanstream status JOB --json`)."""
        answer = self.get(f"/jobs/{job_id}")
        assert answer.status == 200, answer
        return dict(answer.json)

    def wait(self, job_id: str, timeout_s: float = 180.0, statuses: Iterable[str] = FINAL) -> dict[str, Any]:
        """The job's snapshot once its status is one of `statuses` (by default a final one)."""
        wanted = tuple(statuses)
        deadline = time.monotonic() + timeout_s
        while True:
            snapshot = self.job(job_id)
            if snapshot["status"] in wanted:
                return snapshot
            if not self.alive():
                raise ServiceError(f"the service exited while job {job_id} ran:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"job {job_id} still {snapshot['status']} after {timeout_s:.0f} s: "
                    f"{_progress(snapshot)}\n{self.tail()}"
                )
            time.sleep(0.2)

    def wait_counter(
        self, job_id: str, stream_id: str, counter: str, frames: int, timeout_s: float = 180.0
    ) -> dict[str, Any]:
        """The job's snapshot once the stream's `counter` (`analysed`, `written`, ...) reached `frames`;
        the job must not have ended before."""
        deadline = time.monotonic() + timeout_s
        while True:
            snapshot = self.job(job_id)
            stream = snapshot["streams"].get(stream_id, {})
            if int(stream.get(counter) or 0) >= frames:
                return snapshot
            if snapshot["status"] in FINAL:
                raise ServiceError(
                    f"job {job_id} ended before {stream_id} had {counter} {frames} frames: {_progress(snapshot)}"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{stream_id} of job {job_id} did not reach {counter} {frames} in {timeout_s:.0f} s: "
                    f"{_progress(snapshot)}"
                )
            time.sleep(0.05)

    def wait_analysed(self, job_id: str, stream_id: str, frames: int, timeout_s: float = 180.0) -> None:
        """Block until the stream analysed at least `frames` frames; the job must still run."""
        self.wait_counter(job_id, stream_id, "analysed", frames, timeout_s)

    def metrics_text(self) -> str:
        answer = self.get("/metrics")
        assert answer.status == 200, answer
        return answer.text

    def store(self) -> Any:
        """A `JobStore` on the service's embedded Redis (attached, never owned: the service stops it)."""
        from pipeline.jobs.redis_server import EmbeddedRedis
        from pipeline.jobs.state import JobStore

        redis = EmbeddedRedis(self.out).start()
        assert not redis.owned, "the service's Redis was not running: started a second one"
        return JobStore.from_url(redis.url)


def _progress(snapshot: dict[str, Any]) -> str:
    streams = snapshot.get("streams", {})
    return ", ".join(
        f"{sid}: {s.get('status')} {s.get('analysed')}/{s.get('written')}" for sid, s in streams.items()
    )


@functools.cache
def api_names_missing_in_replica() -> frozenset[str]:
    """Module globals of `actors.service.api` that the methods of `ServiceApi` use but that the copy of the
    class Ray Serve ships to its replica lacks (a request that reaches one answers 500 `NameError`).

    `@serve.deployment` pickles the ingress class by value when the decorator runs, with only the module
    globals that exist at that moment: anything defined further down the module is missing in the
    replica. Read from the very bytes Serve ships; empty when they cannot be read (Serve's internals
    changed), so that tests then run unmarked."""
    try:
        from ray import cloudpickle

        import actors.service.api as module

        shipped = cloudpickle.loads(module.ServiceApi._replica_config.serialized_deployment_def)
    except Exception:
        return frozenset()

    def codes(code: types.CodeType) -> Iterable[types.CodeType]:
        yield code
        for constant in code.co_consts:
            if isinstance(constant, types.CodeType):
                yield from codes(constant)

    missing = set()
    for klass in shipped.__mro__:
        if klass.__module__ != module.__name__:
            continue
        for value in vars(klass).values():
            function = getattr(value, "__func__", value)
            if not isinstance(function, types.FunctionType):
                continue
            for code in codes(function.__code__):
                missing.update(
                    name
                    for name in code.co_names
                    if name in vars(module)
                    and name not in function.__globals__
                    and not hasattr(builtins, name)
                )
    return frozenset(missing)
