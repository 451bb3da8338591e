"""Alert records POSTed to a webhook: one JSON record when an alert event opens, one when it closes.

    webhook: https://alerts.example.com/hook
    webhook: {url: https://alerts.example.com/hook, timeout_s: 5, max_attempts: 8, backoff_s: 0.5}

Delivery must never hold up the stream: a receiver that is down, slow or never answers would otherwise stall
the segmentation of every frame behind it. So `WebhookSender.submit` only queues a record, and one daemon
thread per sender POSTs the records in submission order, retrying each with exponential backoff before it
gives up on it and moves on. The queue is bounded; when it is full the oldest queued record is dropped.

Records carry an `Idempotency-Key` header (the same on every attempt and in every run), because delivery is
at least once: an answer lost on the way back, or a stream resumed before a delivery was recorded, sends a
record again, and the key lets the receiver see that it already has it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from pipeline.jobs.checks import Checker, describe, join_path, show

_KEYS = ("url", "timeout_s", "max_attempts", "backoff_s", "max_backoff_s")

# Answers worth asking again: the receiver timed out or is rate-limiting us. Every other 4xx says the
# request itself is wrong (bad payload, wrong path, no permission), which the same request will not fix, and
# since records go in order, retrying it would only hold back the records behind it for minutes.
_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class WebhookSpec:
    """Where and how persistently to deliver alert records.

    Attributes:
        url: an http:// or https:// URL; each record is POSTed to it as a JSON body.
        timeout_s: seconds to connect, and to wait for each part of the answer, per attempt.
        max_attempts: attempts per record before it is given up and reported (>= 1).
        backoff_s: delay before the second attempt; it doubles before each further one (>= 0).
        max_backoff_s: the longest delay between two attempts (a Retry-After answer is capped by it too).
    """

    url: str
    timeout_s: float = 5.0
    max_attempts: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        """The job-spec form, which `parse_webhook` reads back to an equal spec."""
        return {
            "url": self.url,
            "timeout_s": self.timeout_s,
            "max_attempts": self.max_attempts,
            "backoff_s": self.backoff_s,
            "max_backoff_s": self.max_backoff_s,
        }

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt of a record (1, 2, ...)."""
        return min(self.backoff_s * 2.0 ** min(failures - 1, 64), self.max_backoff_s)


# ------------------------------------------------------------------------------------------ validation


def parse_webhook(c: Checker, value: Any, path: str = "webhook") -> WebhookSpec | None:
    """Validate a `webhook` entry, recording problems on `c`: None (or absent) means no webhook, a string
    is the URL with default settings, a mapping gives the URL and any settings. Returns None when there is
    no webhook or it has problems; never raises."""
    if value is None:
        return None
    if isinstance(value, str):
        url = _parse_url(c, value, path)
        return None if url is None else WebhookSpec(url)
    if not isinstance(value, Mapping):
        c.error(
            path, f"must be an http(s) URL or a mapping with keys {', '.join(_KEYS)}, got {describe(value)}"
        )
        return None
    problems = len(c.problems)
    raw = c.mapping(value, path, _KEYS)
    if raw is None:
        return None
    url = None
    if "url" not in raw:
        c.error(join_path(path, "url"), "is required (the http:// or https:// address to POST alerts to)")
    else:
        url = _parse_url(c, raw["url"], join_path(path, "url"))
    # Only the settings given (null: the default) are passed on, so the defaults live in one place.
    given = {key: (raw[key], join_path(path, key)) for key in _KEYS[1:] if raw.get(key) is not None}
    settings: dict[str, Any] = {}
    if "timeout_s" in given:
        settings["timeout_s"] = c.number(*given["timeout_s"], lower=0.0, inclusive=False)
    if "max_attempts" in given:
        settings["max_attempts"] = c.integer(*given["max_attempts"], minimum=1)
    if "backoff_s" in given:
        settings["backoff_s"] = c.number(*given["backoff_s"], lower=0.0, inclusive=True)
    if "max_backoff_s" in given:
        settings["max_backoff_s"] = c.number(*given["max_backoff_s"], lower=0.0, inclusive=False)
    if url is None or len(c.problems) > problems:
        return None
    return WebhookSpec(url, **settings)


def _parse_url(c: Checker, value: Any, path: str) -> str | None:
    """An http(s) URL with a host, as written (surrounding blanks removed); None after recording why not."""
    text = c.string(value, path)
    if text is None:
        return None
    expected = f"must be an http:// or https:// URL, got {show(text)}"
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in text):
        c.error(path, f"{expected}; it contains blanks or control characters (percent-encode them)")
        return None
    try:
        parts = urlsplit(text)
        hostname, _ = parts.hostname, parts.port  # both raise ValueError for a malformed host or port
    except ValueError as error:
        c.error(path, f"{expected}; {error}")
        return None
    if parts.scheme.lower() not in ("http", "https"):
        c.error(path, expected)
        return None
    if not hostname:
        c.error(path, f"{expected}; it names no host (write it like https://host/path)")
        return None
    return text


# ------------------------------------------------------------------------------------------ delivery


@dataclass(frozen=True)
class _Record:
    sequence: int
    key: str
    body: bytes | None  # None: the payload could not be made JSON, and `error` says why
    error: str | None = None


class WebhookSender:
    """Delivers records to one URL in submission order from a background daemon thread.

    Every submitted record is settled exactly once, in one of four ways:
    - delivered (a 2xx answer): `on_delivered(sequence)`;
    - given up, after `spec.max_attempts` failed attempts (no answer, or a 5xx, 408 or 429), or at once when
      retrying cannot help (a payload that is not JSON; a 4xx other than 408 and 429, which rejects the
      request itself; a redirect, which is not followed because it would turn the POST into a GET):
      `on_failure(message)`, then `on_delivered(sequence)`, since a record given up must not be retried
      after a restart either;
    - dropped from a full queue (`max_queued`), oldest first: `on_failure(message)` only;
    - still undelivered at `close`: counted in its return value and in one `on_failure` message.
    Hence `on_delivered` sees the sequences in submission order. The callbacks run on the sender's thread
    (drops: on the submitting thread) and should be quick; an exception they raise is ignored.

    Args:
        spec: where to deliver and how persistently.
        on_failure: receives one human-readable line per problem (to log it or show it on the job).
        on_delivered: receives the sequence of each record that is settled and must not be sent again.
        max_queued: records waiting (besides the one being delivered) beyond which the oldest is dropped.
        sleep: waits between attempts; the default waits on an event that `close` sets, to cut it short.
    """

    def __init__(
        self,
        spec: WebhookSpec,
        on_failure: Callable[[str], None],
        on_delivered: Callable[[int], None] | None = None,
        max_queued: int = 10_000,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.spec = spec
        self._on_failure = on_failure
        self._on_delivered = on_delivered
        self._max_queued = max_queued
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._where = f"webhook {display_url(spec.url)}"
        self._queue: collections.deque[_Record] = collections.deque()
        self._current: _Record | None = None  # taken off the queue, not yet settled
        self._closed = False
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()  # guards the fields above; notified when a record settles
        # Held while settling a record, so that close() never counts as undelivered a record whose
        # callbacks are running, and never returns while they still run. Re-entrant: a callback may close.
        self._settling = threading.RLock()

    @property
    def pending(self) -> int:
        """Records submitted and not yet settled: queued, plus the one being delivered."""
        with self._changed:
            return len(self._queue) + (self._current is not None)

    def submit(self, sequence: int, payload: dict[str, Any], key: str) -> None:
        """Queue one record for delivery and return at once; never blocks, never raises for delivery.

        The payload is serialised here, so the caller may reuse or change it afterwards. `key` identifies
        the record to the receiver (the `Idempotency-Key` header) and in messages; `sequence` is what
        `on_delivered` reports back.
        """
        try:
            record = _Record(sequence, key, json.dumps(payload, allow_nan=False).encode())
        except (TypeError, ValueError) as error:  # settled in its turn, so on_delivered stays in order
            record = _Record(sequence, key, None, f"payload is not JSON: {error}")
        dropped: _Record | None = None
        with self._changed:
            if self._closed:
                dropped = record
            else:
                if len(self._queue) >= self._max_queued:
                    dropped = self._queue.popleft()
                self._queue.append(record)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=f"webhook-{urlsplit(self.spec.url).hostname}", daemon=True
                    )
                    self._thread.start()
                self._changed.notify_all()
        if dropped is record:
            self._report(f"{self._where}: record {dropped.key} submitted after the sender was closed")
        elif dropped is not None:
            self._report(
                f"{self._where}: dropped record {dropped.key}: {self._max_queued} records were already "
                "waiting (the receiver is too slow or down)"
            )

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every submitted record to be settled; returns how many are not."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._changed:
            while not self._closed and (self._queue or self._current is not None):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or threading.current_thread() is self._thread:
                    break  # on the sender's own thread (a callback), waiting would wait for itself
                self._changed.wait(remaining)
            return len(self._queue) + (self._current is not None)

    def close(self, timeout_s: float = 0.0) -> int:
        """Drain for up to `timeout_s`, then stop; returns how many records were not delivered.

        A request in progress is abandoned, not awaited (the thread is a daemon and ends once it returns):
        a receiver that never answers must not hang the end of a stream. The undelivered records are
        reported in one `on_failure` message. Closing again returns 0.
        """
        self.drain(timeout_s)
        with self._settling, self._changed:
            if self._closed:
                return 0
            self._closed = True
            undelivered = [*([self._current] if self._current is not None else []), *self._queue]
            self._queue.clear()
            self._current = None
            self._changed.notify_all()
        self._stop.set()
        if undelivered:
            noun = "record was" if len(undelivered) == 1 else "records were"
            self._report(
                f"{self._where}: {len(undelivered)} alert {noun} not delivered: the stream ended "
                f"(first {undelivered[0].key}, last {undelivered[-1].key})"
            )
        return len(undelivered)

    # -------------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": f"sanstream/{_version()}"}
        try:
            with requests.Session() as session:  # one connection reused across records, where allowed
                self._loop(session, headers)
        except Exception as error:  # a bug here: say so, rather than leave records silently pending
            self._report(f"{self._where}: delivery stopped: {type(error).__name__}: {_shorten(error)}")

    def _loop(self, session: requests.Session, headers: dict[str, str]) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                record = self._queue.popleft()
                self._current = record
            failure = self._deliver(session, headers, record)
            with self._settling:
                with self._changed:
                    if self._closed:  # close() counted this record as undelivered
                        return
                if failure is not None:
                    self._report(failure)
                if self._on_delivered is not None:
                    # The caller's bug must not stop the deliveries behind it.
                    with contextlib.suppress(Exception):
                        self._on_delivered(record.sequence)
                with self._changed:
                    self._current = None
                    self._changed.notify_all()

    def _deliver(self, session: requests.Session, headers: dict[str, str], record: _Record) -> str | None:
        """POST one record until it is delivered (None) or given up (the message saying why)."""
        if record.body is None:
            return f"{self._where}: gave up on record {record.key}: {record.error}"
        error = "not attempted"
        for attempt in range(1, self.spec.max_attempts + 1):
            if self._closed:  # a plain read: at worst one more attempt before the thread notices
                return None  # the caller sees _closed and settles nothing
            retry_after = 0.0
            try:
                answer = session.post(
                    self.spec.url,
                    data=record.body,
                    timeout=self.spec.timeout_s,
                    headers={**headers, "Idempotency-Key": record.key},
                    allow_redirects=False,  # followed, a 301/302 turns the POST into a body-less GET
                )
                answer.close()
            except requests.Timeout:
                error = f"no answer within {self.spec.timeout_s:g} s"
            except requests.RequestException as exc:  # refused, reset, DNS, TLS
                error = f"{type(exc).__name__}: {_shorten(exc)}"
            except Exception as exc:  # anything else is a bug that retrying would only repeat
                return f"{self._where}: gave up on record {record.key}: {type(exc).__name__}: {_shorten(exc)}"
            else:
                if 200 <= answer.status_code < 300:
                    return None
                error = f"HTTP {answer.status_code}" + (f" {answer.reason}" if answer.reason else "")
                if 300 <= answer.status_code < 400:
                    where_to = display_url(answer.headers.get("Location", ""))
                    return (
                        f"{self._where}: gave up on record {record.key}: {error}: the receiver redirects "
                        f"to {where_to}; put that address in the spec"
                    )
                if 400 <= answer.status_code < 500 and answer.status_code not in _RETRYABLE_4XX:
                    noun = "attempt" if attempt == 1 else "attempts"
                    return (
                        f"{self._where}: gave up on record {record.key} after {attempt} {noun}: {error} "
                        "(the receiver rejects the request itself; check the URL and its credentials)"
                    )
                retry_after = _retry_after(answer.headers.get("Retry-After"))
            if attempt < self.spec.max_attempts:
                self._sleep(min(max(self.spec.delay(attempt), retry_after), self.spec.max_backoff_s))
        noun = "attempt" if self.spec.max_attempts == 1 else "attempts"
        return f"{self._where}: gave up on record {record.key} after {self.spec.max_attempts} {noun}: {error}"

    def _report(self, message: str) -> None:
        # A failing reporter must not stop the deliveries (nor the stream's submit).
        with contextlib.suppress(Exception):
            self._on_failure(message)


def display_url(url: str) -> str:
    """The URL for messages and logs: any user:password@ and query string (often a token) left out."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))
    except ValueError:
        return "<malformed URL>"


def _retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks for (its delta-seconds form; a date is ignored), else 0."""
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _shorten(error: BaseException, limit: int = 200) -> str:
    text = str(error)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _version() -> str:
    try:
        return version("sanstream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
