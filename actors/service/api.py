"""The service's HTTP API: FastAPI behind Ray Serve's proxy, JSON in and out, described by its OpenAPI schema
(`/openapi.json`, `/docs`).

Every request is checked before anything changes: a bad spec gets 422 with each problem under its field
path (`streams[0].sampling.fps: must be > 0`), an unknown job or stream 404, a conflict (a stream id taken,
a finished job) 409, and never a 500 with a traceback. Outside loopback every request needs
`Authorization: Bearer <token>`.

Job state is read straight from the job store; jobs run in the job manager (`actors.service.manager`).
"""

import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from actors.service.manager import JobRejected, get_or_create_manager
from pipeline.jobs.spec import JobSpecError, ServeSpec, parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.jobs.state_errors import UnknownJobError
from pipeline.jobs.stream_changes import (
    StreamChangeError,
    add_stream,
    remove_stream,
    set_vocabulary,
)

api = FastAPI(
    title="sanstream",
    description="Open-vocabulary semantic segmentation of video: jobs, streams and vocabularies.",
)


class ApiError(Exception):
    """An answer other than 2xx: `problems` are (field path, message) pairs."""

    def __init__(self, status: int, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


@api.exception_handler(ApiError)
async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
    body = {"error": str(error), "problems": [{"field": f, "message": m} for f, m in error.problems]}
    return JSONResponse(body, status_code=error.status)


@api.exception_handler(Exception)
async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
    # A bug of ours: say what failed, without a traceback (it is in the service's log).
    return JSONResponse({"error": f"{type(error).__name__}: {error}", "problems": []}, status_code=500)


async def _json_object(request: Request, what: str) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object ({what})")
    return body


def _spec_error(error: JobSpecError) -> ApiError:
    """A 422 naming every problem of a job spec under its field path."""
    lines = "; ".join(f"{f}: {m}" if f else m for f, m in error.problems)
    return ApiError(422, f"invalid job spec: {lines}", list(error.problems))


# A stream that passes validation, to check other parts of a spec on their own.
_PLACEHOLDER = {"id": "probe", "source": "rtsp://127.0.0.1/probe", "vocabulary": ["x"]}


def _sizes_the_pool(serve_section: Any) -> bool:
    """Whether a job's `serve` section asks for anything but the defaults (a spec written out by
    `JobSpec.to_dict` always carries them)."""
    if serve_section is None:
        return False
    try:
        spec = parse_job_spec({"output": "/", "streams": [_PLACEHOLDER], "serve": serve_section})
    except JobSpecError:
        return True
    return spec.serve != ServeSpec()


def _stream_error(error: JobSpecError, index: int) -> ApiError:
    """Problems of an added stream, named as fields of the stream itself (`sampling.fps`)."""
    prefix = f"streams[{index}]"
    problems = [
        (path[len(prefix) + 1 :] if path.startswith(prefix + ".") else path, message)
        for path, message in error.problems
    ]
    return ApiError(422, "invalid stream: " + "; ".join(f"{f}: {m}" for f, m in problems), problems)


# Everything the ingress uses is defined above it: Serve pickles the decorated class by value when the
# decorator runs, so a module global defined below it would be missing in the API replica.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class ServiceApi:
    """The HTTP ingress. `model` is the pool's model spec (a job may leave `model` out, or must name the
    same); `default_out` is where jobs without `output` write."""

    def __init__(
        self,
        pool: Any,
        redis_url: str,
        default_out: str,
        model: dict[str, str],
        token: str | None = None,
        fleet: dict[str, int] | None = None,
    ) -> None:
        self.store = JobStore.from_url(redis_url)
        self.default_out = default_out
        self.model = model
        self.token = token
        self.manager = get_or_create_manager(redis_url, pool, fleet=fleet)

    def _authorise(self, request: Request) -> None:
        if not self.token:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <SANSTREAM_TOKEN>)")

    def _job_spec(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job spec as the manager runs it: output and model filled in from the service."""
        data = dict(body)
        data.setdefault("output", self.default_out)
        if _sizes_the_pool(data.pop("serve", None)):  # one pool serves every job: a job cannot size it
            message = (
                "the service's pool is set when the service starts (sanstream serve --replicas, "
                "--batch-size, or configs/serve.yaml); leave `serve` out"
            )
            raise ApiError(422, f"serve: {message}", [("serve", message)])
        if "model" in data:
            try:
                asked = parse_job_spec({"output": "/", "streams": [_PLACEHOLDER], "model": data["model"]})
            except JobSpecError as error:
                raise _spec_error(error) from None
            serving = parse_job_spec({"output": "/", "streams": [_PLACEHOLDER], "model": self.model})
            if (asked.model.compile, asked.model.max_padding) != (None, None):
                message = (
                    "compile and max_padding tune the service's shared pool and are set when it starts "
                    "(sanstream serve --compile/--max-padding, or configs/serve.yaml); leave them out"
                )
                raise ApiError(422, f"model: {message}", [("model", message)])
            if asked.model != serving.model:
                raise ApiError(
                    422,
                    f"model: this service runs {serving.model.name} ({serving.model.weights}); "
                    "leave `model` out or name the same",
                    [("model", f"this service runs {serving.model.name}")],
                )
        data["model"] = self.model
        try:
            parse_job_spec(data)
        except JobSpecError as error:
            raise _spec_error(error) from None
        return data

    def _known_job(self, job_id: str) -> dict[str, Any]:
        try:
            return self.store.snapshot(job_id)
        except (UnknownJobError, ValueError):
            raise ApiError(404, f"no job {job_id!r}") from None

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        self.store.r.ping()
        return {"status": "ok", "model": self.model, "running": await self.manager.running.remote()}

    @api.post("/jobs", status_code=201)
    async def submit(self, request: Request) -> dict[str, str]:
        self._authorise(request)
        data = self._job_spec(await _json_object(request, "a job spec"))
        try:
            job_id = await self.manager.submit.remote(data)
        except JobRejected as error:
            raise ApiError(409, str(error)) from None
        return {"job_id": job_id}

    @api.get("/jobs")
    async def jobs(self, request: Request) -> dict[str, Any]:
        self._authorise(request)
        return {"jobs": self.store.list_jobs()}

    @api.get("/jobs/{job_id}")
    async def job(self, job_id: str, request: Request) -> dict[str, Any]:
        self._authorise(request)
        return self._known_job(job_id)

    @api.post("/jobs/{job_id}/cancel", status_code=202)
    async def cancel(self, job_id: str, request: Request) -> dict[str, str]:
        self._authorise(request)
        self._known_job(job_id)
        self.store.request_cancel(job_id)
        return {"job_id": job_id, "status": self.store.status(job_id)}

    @api.post("/jobs/{job_id}/resume", status_code=202)
    async def resume(self, job_id: str, request: Request) -> dict[str, str]:
        self._authorise(request)
        self._known_job(job_id)
        try:
            await self.manager.resume.remote(job_id)
        except JobRejected as error:
            raise ApiError(409, str(error)) from None
        return {"job_id": job_id, "status": self.store.status(job_id)}

    @api.post("/jobs/{job_id}/streams", status_code=201)
    async def add(self, job_id: str, request: Request) -> dict[str, str]:
        self._authorise(request)
        snapshot = self._known_job(job_id)
        body = await _json_object(request, "a stream spec")
        spec = {**snapshot["spec"], "streams": [*snapshot["spec"]["streams"], body]}
        try:
            parsed = parse_job_spec(spec)
        except JobSpecError as error:
            raise _stream_error(error, len(snapshot["spec"]["streams"])) from None
        stream = parsed.streams[-1]
        try:
            add_stream(self.store, job_id, parsed.to_dict()["streams"][-1])
        except StreamChangeError as error:
            raise ApiError(409, str(error), [(error.field, str(error))]) from None
        return {"job_id": job_id, "stream_id": stream.id}

    @api.delete("/jobs/{job_id}/streams/{stream_id}", status_code=202)
    async def remove(self, job_id: str, stream_id: str, request: Request) -> dict[str, str]:
        self._authorise(request)
        self._known_job(job_id)
        try:
            remove_stream(self.store, job_id, stream_id)
        except (UnknownJobError, ValueError):
            raise ApiError(404, f"no stream {stream_id!r} in job {job_id!r}") from None
        return {"job_id": job_id, "stream_id": stream_id}

    @api.put("/jobs/{job_id}/streams/{stream_id}/vocabulary")
    async def vocabulary(self, job_id: str, stream_id: str, request: Request) -> dict[str, Any]:
        self._authorise(request)
        self._known_job(job_id)
        body = await _json_object(request, '{"vocabulary": [...]}')
        unknown = sorted(set(body) - {"vocabulary"})
        if unknown:
            raise ApiError(
                422,
                f'{unknown[0]}: unknown field; send {{"vocabulary": [...]}}',
                [(unknown[0], "unknown field")],
            )
        if "vocabulary" not in body:
            raise ApiError(422, "vocabulary: is required", [("vocabulary", "is required")])
        probe = {"output": "/", "streams": [{**_PLACEHOLDER, "vocabulary": body["vocabulary"]}]}
        try:
            classes = parse_job_spec(probe).streams[0].vocabulary
        except JobSpecError as error:
            problems = [(path.replace("streams[0].", ""), message) for path, message in error.problems]
            raise ApiError(422, "; ".join(f"{f}: {m}" for f, m in problems), problems) from None
        try:
            version = set_vocabulary(self.store, job_id, stream_id, classes)
        except (UnknownJobError, ValueError):
            raise ApiError(404, f"no stream {stream_id!r} in job {job_id!r}") from None
        return {"job_id": job_id, "stream_id": stream_id, "vocabulary_version": version}

    @api.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        self._authorise(request)
        from actors.service.metrics import CONTENT_TYPE, render_metrics

        return Response(render_metrics(self.store), media_type=CONTENT_TYPE)
