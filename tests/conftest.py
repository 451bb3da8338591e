"""Suite-wide hygiene: no test may leave a redis-server running behind it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def _stop_redis_servers(root: Path) -> None:
    """SIGTERM (redis saves and exits) every embedded server whose data dir is under `root`; a test that
    restarted or attached to a job's server leaves it to us."""
    for pid_file in root.rglob("redis/redis.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)


@pytest.fixture(autouse=True)
def no_leftover_redis(tmp_path: Path) -> Iterator[None]:
    yield
    _stop_redis_servers(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def no_leftover_redis_in_session_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    _stop_redis_servers(tmp_path_factory.getbasetemp())
