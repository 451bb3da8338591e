"""The watcher a driver leaves behind (`actors.reaper`): when the driver dies, SIGKILL included, it stops
the processes of the driver's Ray session and the output folder's Redis nobody uses any more, and spares
everything else (a `tail -f` on the session's logs, a server a live job still uses)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from pipeline.jobs.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]


def python_holding(path: Path) -> subprocess.Popen[bytes]:
    """Our Python with a file open under `path` (as Ray's workers and agents hold their logs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    script = "import sys, time; f = open(sys.argv[1], 'a'); print('up', flush=True); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    return process


def gone(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_killed_drivers_session_and_unused_redis_are_stopped(tmp_path: Path) -> None:
    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"
    worker = python_holding(session / "logs" / "worker-1.out")
    named = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"--session-dir={session}"]
    )
    reader = subprocess.Popen(  # not Ray's: a user's `tail -f` on the session's logs is spared
        ["tail", "-f", str(session / "logs" / "worker-1.out")], stdout=subprocess.DEVNULL
    )
    out = tmp_path / "out"
    driver_script = (  # starts its output folder's Redis and the watcher, as `run_job` does
        "import sys, time\n"
        "from actors.reaper import Reaper\n"
        "from pipeline.jobs.redis_server import EmbeddedRedis\n"
        "server = EmbeddedRedis(sys.argv[2]).start()\n"
        "reaper = Reaper()\n"
        "reaper.watch_redis(sys.argv[2])\n"
        "reaper._tell('session ' + sys.argv[1])\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", driver_script, str(session), str(out)], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert driver.stdout is not None
        redis_pid = int(driver.stdout.readline())
        driver.kill()
        driver.wait()
        assert gone(worker, 15) and gone(named, 15)
        deadline = time.monotonic() + 15
        while psutil.pid_exists(redis_pid) and psutil.Process(redis_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the unused redis-server was left running"
            time.sleep(0.1)
        assert reader.poll() is None, "a process that only reads the session's logs was stopped"
    finally:
        for process in (worker, named, reader, driver):
            process.kill()
            process.wait()


def test_a_server_someone_uses_is_left_running(tmp_path: Path) -> None:
    from actors.reaper import Reaper

    with EmbeddedRedis(tmp_path) as server:
        reaper = Reaper()
        reaper.watch_redis(tmp_path)
        reaper.finish()  # the driver ended normally: cleanup now, and wait for it
        assert server.client().ping()
