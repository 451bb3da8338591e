"""The CLI as a client of `sanstream serve`: `run`, `status`, `cancel` and `resume` with `--service URL` (or
$SANSTREAM_SERVICE) talk to the service's HTTP API only, and never to Ray, Redis or the output folder.

Standard library only (urllib and json): a laptop that submits jobs needs neither Ray nor torch, and this
module imports neither, directly or through the package.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

SERVICE_ENV = "SANSTREAM_SERVICE"
TOKEN_ENV = "SANSTREAM_TOKEN"
#: Submit and resume answer once the job is registered, which the service waits up to 60 s for.
START_TIMEOUT_S = 90.0


class ServiceError(Exception):
    """The service refused a request, or could not be reached; the message is the whole story.

    `status` is the HTTP status (None when no answer came), `problems` the (field, message) pairs of a 422.
    """

    def __init__(
        self, message: str, status: int | None = None, problems: list[tuple[str, str]] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.problems = problems or []


def add_service_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--service",
        default=None,
        metavar="URL",
        help=f"talk to a running `sanstream serve` at URL over HTTP, e.g. http://127.0.0.1:8000 (env: "
        f"{SERVICE_ENV}; --service '' runs locally even when it is set). Sends $SANSTREAM_TOKEN as bearer "
        "token when set",
    )


def service_url(args: argparse.Namespace) -> str | None:
    """The service to talk to: --service, else $SANSTREAM_SERVICE; None (an empty value too) means local."""
    given = getattr(args, "service", None)
    if given is None:
        given = os.environ.get(SERVICE_ENV)
    if not given or not given.strip():
        return None
    return given.strip()


def client_for(url: str) -> ServiceClient:
    """A client of `url` with $SANSTREAM_TOKEN as its token."""
    return ServiceClient(url, token=os.environ.get(TOKEN_ENV) or None)


class ServiceClient:
    """The service's HTTP API (`actors.service.api`) as methods; every failure is a `ServiceError`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30) -> None:
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = f"http://{url}"  # `--service 127.0.0.1:8000`
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(f"--service must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
        self.url = url
        self.token = token
        self.timeout = timeout

    # the API ----------------------------------------------------------------------------------------
    def healthz(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def submit(self, spec: dict[str, Any]) -> str:
        """Start a job; returns its id."""
        return str(self._request("POST", "/jobs", spec, slow=True)["job_id"])

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the service's job store, oldest first (job_id, status, created, updated)."""
        return list(self._request("GET", "/jobs")["jobs"])

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's snapshot: the document `sanstream status JOB --json` prints."""
        return self._request("GET", f"/jobs/{_part(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the job to stop; returns {"job_id", "status"} (the status when the request arrived)."""
        return self._request("POST", f"/jobs/{_part(job_id)}/cancel")

    def resume(self, job_id: str) -> dict[str, Any]:
        """Continue an interrupted job on the service; returns {"job_id", "status"}."""
        return self._request("POST", f"/jobs/{_part(job_id)}/resume", slow=True)

    def add_stream(self, job_id: str, stream: dict[str, Any]) -> str:
        """Add a stream to a running job; returns its id."""
        return str(self._request("POST", f"/jobs/{_part(job_id)}/streams", stream)["stream_id"])

    def remove_stream(self, job_id: str, stream_id: str) -> None:
        self._request("DELETE", f"/jobs/{_part(job_id)}/streams/{_part(stream_id)}")

    def set_vocabulary(self, job_id: str, stream_id: str, vocabulary: list[str] | str) -> int:
        """Change a running stream's classes; returns the new vocabulary version."""
        path = f"/jobs/{_part(job_id)}/streams/{_part(stream_id)}/vocabulary"
        return int(self._request("PUT", path, {"vocabulary": vocabulary})["vocabulary_version"])

    # transport --------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, slow: bool = False) -> Any:
        """The JSON answer of one request; `slow` for requests that start a job (longer timeout)."""
        timeout = max(self.timeout, START_TIMEOUT_S) if slow else self.timeout
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            try:
                answer = error.read()
            except (OSError, http.client.HTTPException):
                answer = b""
            finally:
                error.close()
            raise self._answer_error(error.code, str(error.reason), answer) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason, timeout, method) from None
        except (OSError, http.client.HTTPException) as error:  # reset, timeout while reading, bad status line
            raise self._unreachable(error, timeout, method) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServiceError(
                f"{self.url}{path} answered with something other than JSON; is it a sanstream service?"
            ) from None

    def _unreachable(self, reason: Any, timeout: float, method: str) -> ServiceError:
        if isinstance(reason, ConnectionRefusedError):
            return ServiceError(
                f"no sanstream service at {self.url} (connection refused); start one with `sanstream serve` "
                "or leave out --service"
            )
        if isinstance(reason, TimeoutError):
            maybe = (
                "" if method == "GET" else "; the request may still take effect (check `sanstream status`)"
            )
            return ServiceError(
                f"the sanstream service at {self.url} did not answer within {timeout:g} s{maybe}"
            )
        if isinstance(reason, socket.gaierror):
            return ServiceError(f"cannot reach {self.url}: unknown host ({reason.strerror or reason})")
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return ServiceError(f"cannot reach the sanstream service at {self.url}: {text}")

    def _answer_error(self, status: int, reason: str, raw: bytes) -> ServiceError:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("error", body.get("detail")), str):
            # Not the service's error document: a proxy's page, or a route an older service lacks.
            return ServiceError(f"{self.url} answered HTTP {status} {reason}", status)
        message = str(body.get("error") or body.get("detail"))
        problems = [
            (str(p.get("field") or ""), str(p.get("message") or ""))
            for p in body.get("problems") or []
            if isinstance(p, dict)
        ]
        return ServiceError(problem_text(message, problems), status, problems)


def problem_text(message: str, problems: list[tuple[str, str]]) -> str:
    """The service's message with one line per problem (`streams[0].sampling.fps: must be > 0`), as a
    local job spec error reads; a single problem the message already spells out stays one line."""
    lines = [f"{field}: {text}" if field else text for field, text in problems]
    if not lines or (len(lines) == 1 and lines[0] in message):
        return message
    if len(lines) == 1:
        return f"{message}\n  {lines[0]}"
    joined = "; ".join(lines)
    head = message[: -len(joined)].rstrip(": ") if message.endswith(joined) else message
    return f"{head}, {len(lines)} problems:\n  " + "\n  ".join(lines)


def known_jobs_error(client: ServiceClient, job_id: str, error: ServiceError) -> ServiceError:
    """A 404 for `job_id` with the service's job ids listed, so a typo is easy to spot; other errors as
    they are."""
    if error.status != 404:
        return error
    try:
        ids = [job["job_id"] for job in client.jobs()]
    except ServiceError:
        return error
    listing = f"; jobs there: {', '.join(ids[-10:])}" if ids else "; it holds no jobs"
    return ServiceError(f"no job {job_id!r} on the service at {client.url}{listing}", 404)


def _part(text: str) -> str:
    """One path segment: ids are checked by the service, but a '/' or '?' must not change the route."""
    return quote(text, safe="")
