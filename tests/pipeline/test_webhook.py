"""Webhook delivery against a real HTTP server on 127.0.0.1: retries, order, give-up, overflow, close."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.jobs.checks import Checker
from pipeline.webhook import WebhookSender, WebhookSpec, display_url, parse_webhook
from tests.support.receiver import Receiver, running_receiver

# --------------------------------------------------------------------------------------------- parsing


def parse(value: Any) -> tuple[WebhookSpec | None, list[tuple[str, str]]]:
    c = Checker(Path.cwd())
    return parse_webhook(c, value), c.problems


def test_no_webhook() -> None:
    assert parse(None) == (None, [])


def test_string_form_is_the_url_with_defaults() -> None:
    assert parse("  https://alerts.example.com/hook?token=x ") == (
        WebhookSpec("https://alerts.example.com/hook?token=x"),
        [],
    )


def test_mapping_form_and_round_trip() -> None:
    raw = {
        "url": "http://10.0.0.1:8080/a",
        "timeout_s": 2,
        "max_attempts": 3,
        "backoff_s": 0,
        "max_backoff_s": 4,
    }
    spec, problems = parse(raw)
    assert problems == []
    assert spec == WebhookSpec(
        "http://10.0.0.1:8080/a", timeout_s=2.0, max_attempts=3, backoff_s=0.0, max_backoff_s=4.0
    )
    assert parse(spec.to_dict()) == (spec, [])
    assert parse({"url": "https://h/x", "timeout_s": None}) == (WebhookSpec("https://h/x"), [])


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ("ftp://x", "webhook", "must be an http:// or https:// URL, got 'ftp://x'"),
        ({"url": "ftp://x"}, "webhook.url", "must be an http:// or https:// URL, got 'ftp://x'"),
        ({"url": "http:///path"}, "webhook.url", "names no host"),
        ({"url": "alerts.example.com/hook"}, "webhook.url", "must be an http:// or https:// URL"),
        ({"url": "http://h:99999/"}, "webhook.url", "out of range"),
        ({"url": "http://a b/"}, "webhook.url", "blanks"),
        ({"url": ""}, "webhook.url", "non-empty string"),
        ({"timeout_s": 1}, "webhook.url", "is required"),
        ({"url": "http://h/", "timeout_s": 0}, "webhook.timeout_s", "must be > 0"),
        ({"url": "http://h/", "timeout_s": "5"}, "webhook.timeout_s", "must be a number"),
        ({"url": "http://h/", "max_attempts": 0}, "webhook.max_attempts", "must be >= 1"),
        ({"url": "http://h/", "max_attempts": 2.5}, "webhook.max_attempts", "must be an integer"),
        ({"url": "http://h/", "backoff_s": -1}, "webhook.backoff_s", "must be >= 0"),
        ({"url": "http://h/", "max_backoff_s": 0}, "webhook.max_backoff_s", "must be > 0"),
        ({"url": "http://h/", "max_backof_s": 1}, "webhook.max_backof_s", "did you mean 'max_backoff_s'?"),
        (42, "webhook", "must be an http(s) URL or a mapping"),
    ],
)
def test_problems_name_the_field(value: Any, path: str, fragment: str) -> None:
    spec, problems = parse(value)
    assert spec is None
    assert len(problems) == 1, problems
    assert problems[0][0] == path
    assert fragment in problems[0][1]


def test_all_problems_reported_at_once() -> None:
    spec, problems = parse({"url": "gopher://h", "timeout_s": -1, "max_attempts": 0})
    assert spec is None
    assert [p for p, _ in problems] == ["webhook.url", "webhook.timeout_s", "webhook.max_attempts"]


def test_display_url_hides_credentials_and_query() -> None:
    assert display_url("https://user:secret@h:8443/hook?token=abc") == "https://h:8443/hook?..."
    assert display_url("http://h/x") == "http://h/x"


def test_backoff_doubles_up_to_the_cap() -> None:
    spec = WebhookSpec("http://h/", backoff_s=0.5, max_backoff_s=3.0)
    assert [spec.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# ---------------------------------------------------------------------------------------- the receiver


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set in the environment must not see (or answer) these requests to 127.0.0.1."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as state:
        yield state


@dataclass
class Calls:
    failures: list[str] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)


def sender(receiver: Receiver, calls: Calls, max_queued: int = 10_000, **spec: Any) -> WebhookSender:
    settings = {"timeout_s": 2.0, "backoff_s": 0.01, "max_backoff_s": 0.05, **spec}
    webhook_spec = WebhookSpec(receiver.url, **settings)
    return WebhookSender(webhook_spec, calls.failures.append, calls.delivered.append, max_queued=max_queued)


def submit_records(webhook: WebhookSender, count: int) -> list[str]:
    keys = [f"job/stream/{i}" for i in range(count)]
    for i, key in enumerate(keys):
        webhook.submit(i, {"event_id": f"rule:{i}", "status": "open", "peak": i / 10}, key)
    return keys


# ------------------------------------------------------------------------------------------- delivery


def test_records_arrive_once_in_order_through_early_failures(receiver: Receiver) -> None:
    receiver.fail_first = 2
    calls = Calls()
    webhook = sender(receiver, calls)
    keys = submit_records(webhook, 5)
    assert webhook.drain(5.0) == 0
    assert webhook.pending == 0
    assert receiver.delivered_keys() == keys  # each exactly once, in submission order
    assert receiver.attempts_per_key()[keys[0]] == 3  # the first record waited out the two failures
    assert receiver.bodies == [{"event_id": f"rule:{i}", "status": "open", "peak": i / 10} for i in range(5)]
    assert all(agent.startswith("sanstream/") for agent in receiver.user_agents)
    assert calls.delivered == [0, 1, 2, 3, 4]
    assert calls.failures == []
    assert webhook.close() == 0
    assert calls.failures == []


def test_rate_limited_answers_are_retried(receiver: Receiver) -> None:
    receiver.fail_first, receiver.fail_status = 2, 429
    receiver.headers = {"Retry-After": "0"}
    calls = Calls()
    webhook = sender(receiver, calls)
    keys = submit_records(webhook, 2)
    assert webhook.drain(5.0) == 0
    assert receiver.delivered_keys() == keys
    assert calls.failures == []


def test_server_errors_give_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.status = 500
    calls = Calls()
    webhook = sender(receiver, calls, max_attempts=3)
    keys = submit_records(webhook, 2)
    assert webhook.drain(5.0) == 0
    assert receiver.attempts_per_key() == {key: 3 for key in keys}
    assert [key for key, _ in receiver.attempts] == [keys[0]] * 3 + [keys[1]] * 3  # in order
    assert len(calls.failures) == 2
    for key, message in zip(keys, calls.failures, strict=True):
        assert f"webhook {receiver.url}: gave up on record {key} after 3 attempts: HTTP 500" in message
    assert calls.delivered == [0, 1]  # settled: not to be sent again after a restart
    webhook.close()


def test_rejected_request_is_given_up_at_once(receiver: Receiver) -> None:
    receiver.status = 404
    calls = Calls()
    webhook = sender(receiver, calls, max_attempts=5)
    keys = submit_records(webhook, 2)
    assert webhook.drain(5.0) == 0
    assert receiver.attempts_per_key() == {key: 1 for key in keys}
    assert len(calls.failures) == 2
    assert "after 1 attempt: HTTP 404" in calls.failures[0]
    assert calls.delivered == [0, 1]


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.status = 301
    receiver.headers = {"Location": "https://elsewhere.example.com/hook"}
    calls = Calls()
    webhook = sender(receiver, calls)
    submit_records(webhook, 1)
    assert webhook.drain(5.0) == 0
    assert len(receiver.attempts) == 1
    assert "redirects to https://elsewhere.example.com/hook" in calls.failures[0]


def test_unreachable_receiver_is_reported() -> None:
    calls = Calls()
    spec = WebhookSpec("http://127.0.0.1:9/x", timeout_s=1.0, max_attempts=2, backoff_s=0.01)
    webhook = WebhookSender(spec, calls.failures.append, calls.delivered.append)
    webhook.submit(3, {"a": 1}, "job/stream/3")
    assert webhook.drain(5.0) == 0
    assert len(calls.failures) == 1
    assert calls.failures[0].startswith(
        "webhook http://127.0.0.1:9/x: gave up on record job/stream/3 after 2 attempts: "
    )
    assert calls.delivered == [3]


def test_delays_double_and_are_capped() -> None:
    slept: list[float] = []
    calls = Calls()
    spec = WebhookSpec(
        "http://127.0.0.1:9/x", timeout_s=1.0, max_attempts=5, backoff_s=0.01, max_backoff_s=0.03
    )
    webhook = WebhookSender(spec, calls.failures.append, calls.delivered.append, sleep=slept.append)
    webhook.submit(0, {}, "k")
    assert webhook.drain(5.0) == 0
    assert slept == [0.01, 0.02, 0.03, 0.03]


def test_payload_that_is_not_json_is_given_up_in_its_turn(receiver: Receiver) -> None:
    calls = Calls()
    webhook = sender(receiver, calls)
    webhook.submit(0, {"peak": float("nan")}, "bad")
    webhook.submit(1, {"peak": 0.5}, "good")
    assert webhook.drain(5.0) == 0
    assert receiver.delivered_keys() == ["good"]
    assert len(calls.failures) == 1 and "record bad: payload is not JSON" in calls.failures[0]
    assert calls.delivered == [0, 1]


def test_failing_callbacks_do_not_stop_delivery(receiver: Receiver) -> None:
    def explode(_: object) -> None:
        raise RuntimeError("callback bug")

    receiver.status = 400
    webhook = WebhookSender(WebhookSpec(receiver.url, timeout_s=2.0), explode, explode)
    keys = submit_records(webhook, 3)
    assert webhook.drain(5.0) == 0
    assert [key for key, _ in receiver.attempts] == keys


# --------------------------------------------------------------------------- slow receivers and close


def test_silent_receiver_never_slows_submit(receiver: Receiver) -> None:
    receiver.hang = True
    calls = Calls()
    webhook = sender(receiver, calls, timeout_s=5.0)
    start = time.monotonic()
    submit_records(webhook, 100)
    assert time.monotonic() - start < 0.5
    assert receiver.got_request.wait(5.0)
    assert webhook.pending == 100
    assert webhook.drain(0.05) == 100

    start = time.monotonic()
    assert webhook.close(timeout_s=0.2) == 100  # the request in progress is abandoned, not awaited
    assert time.monotonic() - start < 1.0
    assert len(calls.failures) == 1
    assert "100 alert records were not delivered: the stream ended" in calls.failures[0]
    assert calls.delivered == []
    assert webhook.pending == 0
    assert webhook.close() == 0  # closing twice reports nothing more
    assert len(calls.failures) == 1


def test_full_queue_drops_the_oldest_queued_record(receiver: Receiver) -> None:
    receiver.hang = True
    calls = Calls()
    webhook = sender(receiver, calls, timeout_s=5.0, max_queued=3)
    webhook.submit(0, {}, "k0")
    assert receiver.got_request.wait(5.0)  # k0 is in progress: not queued, never dropped
    for i in range(1, 10):
        webhook.submit(i, {}, f"k{i}")
    assert webhook.pending == 4  # k0 in progress, k7..k9 queued
    assert len(calls.failures) == 6
    assert [m.split("dropped record ")[1].split(":")[0] for m in calls.failures] == [
        f"k{i}" for i in range(1, 7)
    ]
    assert webhook.close() == 4
    assert "4 alert records were not delivered" in calls.failures[-1]
    assert "(first k0, last k9)" in calls.failures[-1]
    assert calls.delivered == []


def test_submit_after_close_is_reported(receiver: Receiver) -> None:
    calls = Calls()
    webhook = sender(receiver, calls)
    assert webhook.close() == 0
    webhook.submit(0, {}, "late")
    assert receiver.attempts == []
    assert len(calls.failures) == 1 and "late" in calls.failures[0]


def test_close_drains_a_working_receiver(receiver: Receiver) -> None:
    calls = Calls()
    webhook = sender(receiver, calls)
    keys = submit_records(webhook, 20)
    assert webhook.close(timeout_s=5.0) == 0
    assert receiver.delivered_keys() == keys
    assert calls.delivered == list(range(20))
    assert calls.failures == []
