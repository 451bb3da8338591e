"""The driver's Ray and Serve log records go to a file, not the terminal, without starting Ray: the
handlers are swapped on the real `ray` and `ray.serve` loggers as `init_ray` does before `ray.init`."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray.serve  # noqa: F401  (configures the `ray.serve` logger with its own stderr handler, as in a driver)

from actors import ray_logging


@pytest.fixture
def captured() -> Iterator[ray_logging.DeferredFileHandler]:
    before = {name: set(logging.getLogger(name).handlers) for name in ray_logging.LOGGERS}
    handler = ray_logging._capture()
    try:
        yield handler
    finally:
        ray_logging._release()
        assert {name: set(logging.getLogger(name).handlers) for name in ray_logging.LOGGERS} == before


def test_records_before_the_session_exists_are_held_then_written(
    captured: ray_logging.DeferredFileHandler, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
        "Token authentication is enabled for this Ray cluster."
    )
    logging.getLogger("ray.serve").info('Connecting to existing Serve app in namespace "serve".')
    assert [r.getMessage()[:10] for r in captured.pending] == ["Token auth", "Connecting"]
    log = tmp_path / "session" / "logs" / ray_logging.DRIVER_LOG
    captured.open(log)
    logging.getLogger("ray.serve").info("Application 'x' is ready.")
    assert ray_logging.driver_log_path() == log
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert "WARNING" in lines[0] and "Token authentication" in lines[0]
    assert "Connecting to existing Serve app" in lines[1] and "is ready" in lines[2]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing reached the terminal


def test_held_records_are_shown_when_ray_fails_to_start(captured: ray_logging.DeferredFileHandler) -> None:
    logging.getLogger("ray").error("Failed to start the raylet")
    stream = io.StringIO()
    captured.replay(stream)
    assert "ERROR" in stream.getvalue() and "Failed to start the raylet" in stream.getvalue()
    assert captured.pending == []


def test_capturing_twice_keeps_one_handler(captured: ray_logging.DeferredFileHandler) -> None:
    again = ray_logging._capture()
    assert again is captured
    for name in ray_logging.LOGGERS:
        handlers = logging.getLogger(name).handlers
        assert handlers.count(captured) == 1
        assert not any(ray_logging._is_terminal_handler(h) for h in handlers)
