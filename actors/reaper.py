"""A small watcher process that cleans up after a job's driver, however the driver ends (SIGKILL included).

A driver that is killed cannot stop what it started. Ray kills its GCS and raylet with the driver (parent
death signal), but the workers and the raylet's agents notice only later: the agents try for about a
minute to report to the GCS that is already gone. And the embedded `redis-server` runs on until a later
command adopts it. So a driver that starts a local Ray or an embedded Redis also starts this watcher (in a
session of its own, so a Ctrl-C or a killed process group does not take it along) and holds a pipe to it.
When the pipe closes (the driver exited or died), the watcher

* stops every process of the driver's local Ray session: processes of this user that run Ray's binaries
  or our Python and name the session folder in their command line or hold a file open in it;
* shuts the output folder's embedded Redis down if nobody uses it any more (`EmbeddedRedis.stop_if_unused`:
  a live job or `status` sharing the folder keeps it), and exits.

It never imports Ray (the driver tells it the session folder), so it starts in a fraction of a second.
Run as `python -m actors.reaper --parent PID`; the driver writes `session DIR` and `redis DIR` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import psutil

#: How long Ray's processes get to exit on SIGTERM before they are killed.
TERM_GRACE_S = 3.0
#: How long a driver that ends normally waits for the watcher to finish its cleanup.
FINISH_TIMEOUT_S = 20.0


class Reaper:
    """The driver's end: started on first use, told what to clean up, closed by `finish()` (or by the
    driver's death)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def _pipe(self) -> IO[bytes]:
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "actors.reaper", "--parent", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[1],  # `actors` importable whatever the cwd
            )
        assert self._process.stdin is not None
        return self._process.stdin

    def _tell(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a watcher that is gone cannot help; the job goes on
            pipe = self._pipe()
            pipe.write(f"{line}\n".encode())
            pipe.flush()

    def watch_redis(self, out_dir: str | Path) -> None:
        """Shut the embedded Redis of `out_dir` down once the driver is gone, unless someone uses it."""
        self._tell(f"redis {Path(out_dir).absolute()}")

    def watch_ray_session(self) -> None:
        """Stop the processes of the local Ray this driver just started (`ray.init`), once it is gone."""
        import ray  # only called right after ray.init: already imported

        node = getattr(ray._private.worker, "_global_node", None)
        session = node.get_session_dir_path() if node is not None else None
        if session:
            self._tell(f"session {session}")

    def finish(self, timeout_s: float = FINISH_TIMEOUT_S) -> None:
        """The driver is done: let the watcher clean up now and wait for it, so that nothing of the job
        is left running when the command returns."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ray_binaries() -> tuple[str, ...]:
    """Where the programs of Ray's own processes live: Ray's package folder and this Python."""
    spec = importlib.util.find_spec("ray")
    folders = [os.path.realpath(f) for f in (spec.submodule_search_locations or [])] if spec else []
    return (*folders, os.path.realpath(sys.executable))


def session_processes(session: str, spare: set[int]) -> list[psutil.Process]:
    """This user's processes of the Ray session in folder `session`, except the pids in `spare`.

    A process belongs to it when it runs Ray's binaries or our Python (so an editor or `tail -f` on the
    session's logs is never touched) and names the session folder on its command line (GCS, raylet,
    dashboard, log monitor) or holds a file open in it (workers and agents, which rename themselves)."""
    binaries = _ray_binaries()
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["pid", "uids", "exe", "cmdline"]):
        try:
            info = proc.info
            if info["pid"] in spare or info["uids"] is None or info["uids"].real != uid:
                continue
            exe = os.path.realpath(info["exe"] or "")
            if not exe or not any(exe == b or exe.startswith(b + os.sep) for b in binaries):
                continue
            if session in " ".join(info["cmdline"] or ()) or any(
                f.path.startswith(session + os.sep) for f in proc.open_files()
            ):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def stop_session(session: str, spare: set[int]) -> int:
    """SIGTERM the session's processes, SIGKILL those still there after `TERM_GRACE_S`; returns how many."""
    victims = session_processes(session, spare)
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=TERM_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=TERM_GRACE_S)
    return len(victims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.reaper")
    parser.add_argument("--parent", type=int, required=True, help="the driver's pid (never stopped)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe closing ends the watch
    sessions: list[str] = []
    redis_dirs: list[str] = []
    for raw in sys.stdin.buffer:  # blocks until the driver closes the pipe or dies
        kind, _, value = raw.decode(errors="replace").rstrip("\n").partition(" ")
        if kind == "session" and value:
            sessions.append(value.rstrip(os.sep))
        elif kind == "redis" and value:
            redis_dirs.append(value)
    spare = {os.getpid(), args.parent}
    for session in sessions:
        stop_session(session, spare)
    if redis_dirs:
        from pipeline.jobs.redis_server import EmbeddedRedis

        for folder in redis_dirs:
            with contextlib.suppress(Exception):  # best effort: the next command adopts what is left
                EmbeddedRedis(folder).stop_if_unused()
    return 0


if __name__ == "__main__":
    sys.exit(main())
