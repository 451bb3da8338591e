"""One driver per job: a lease in Redis, with a fencing token that only grows.

Two drivers running one job would start two sets of actors on the same streams. The writer epochs keep
the committed output exactly-once even then, but the two would fight over every stream and over the
job's status, so a driver takes the job's lease before it touches anything and holds it to the end.

* Acquiring is one Lua script: it succeeds only while the lease is free, and takes a token from an
  `INCR` counter, so every holder has a larger token than every holder before it. The token is stored on
  the job hash (`lease_token`) so that other code can fence on it (refuse a write from a smaller token).
* The key expires on Redis' own clock (`PX`), so the drivers' clocks never matter. The holder renews it
  every few seconds from a daemon thread, because the driver's main thread blocks for seconds at a time
  while Ray and Serve start. A renewal that finds another holder (or finds the key expired and taken)
  marks the lease lost, and the driver must stop without recording anything.
* A killed driver leaves its lease behind until it expires. When the holder ran on this host and its
  process is gone (pid dead, or reused by another process), the lease is broken at once, by a
  compare-and-swap on the exact value observed: a driver that took the lease in between is never broken.

Keys: `<prefix>:job:<job>:lease` (value `"<token> <holder>"`) and `<prefix>:job:<job>:lease:tokens`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from pipeline.jobs.ids import check_id

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 15.0
DEFAULT_RENEW_EVERY_S = 3.0
LEASE_TOKEN_FIELD = "lease_token"

# KEYS: lease, token counter. ARGV: holder, ttl ms, the value to replace ('' = only a free lease).
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then return {0, current} end
local token = redis.call('INCR', KEYS[2])
local value = token .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, value}
"""

# KEYS: lease, token counter. ARGV: our value, ttl ms, our token.
# An expired lease that nobody took since (the counter still says our token) is taken back: no other
# driver can have run the job in between, so holding on is safe and a slow renewal costs nothing.
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if (not current) and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

# KEYS: lease. ARGV: our value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, job hash. ARGV: our value, our token, field.
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
return 1
"""


class LeaseHeldError(RuntimeError):
    """Another driver holds the job's lease; the message names it and what to do."""

    def __init__(self, job_id: str, info: LeaseInfo) -> None:
        self.job_id = job_id
        self.info = info
        expires = f", expires in {info.ttl_s:.0f} s unless renewed" if info.ttl_s is not None else ""
        super().__init__(
            f"job {job_id} is already being run by {info.holder.describe()} (lease token {info.token}"
            f"{expires}); only one driver may run a job. Wait for it to finish, stop it (Ctrl-C there, or "
            f"`sanstream cancel {job_id}`), or, if that driver is gone, retry once its lease has expired"
        )


class LeaseLostError(RuntimeError):
    """The lease was taken over (or could not be renewed in time); this driver must stop at once."""


def _process_started(pid: int) -> str:
    """The process' start time (clock ticks since boot, from /proc), '' when unknown: with the pid it
    names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""  # field 22 of the file; fields[0] is field 3


def _pid_namespace() -> str:
    """This process' pid namespace (the inode in /proc/self/ns/pid), '' when unknown."""
    try:
        link = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return "".join(ch for ch in link if ch.isdigit())


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: host name, pid, process start time (to tell a reused pid apart) and pid
    namespace (containers sharing a host name, e.g. with host networking, do not share pids)."""

    host: str
    pid: int
    started: str = ""
    pid_namespace: str = ""

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), _process_started(os.getpid()), _pid_namespace())

    @classmethod
    def parse(cls, text: str) -> Holder:
        host, _, rest = text.partition(":")
        pid, _, rest = rest.partition(":")
        started, _, pid_namespace = rest.partition(":")
        return cls(host, int(pid) if pid.isdigit() else -1, started, pid_namespace)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}:{self.pid_namespace}"

    def describe(self) -> str:
        return f"the driver with pid {self.pid} on host {self.host}"

    def is_dead_here(self) -> bool:
        """True only when the holder ran on this host and its process is gone (or the pid now belongs to
        another process). A holder elsewhere is never known dead: its lease has to expire."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # a process of another user: it exists
        started = _process_started(self.pid)
        return bool(self.started and started and started != self.started)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored: its holder, token and remaining time (None: no expiry set)."""

    holder: Holder
    token: int
    ttl_s: float | None
    value: str

    @classmethod
    def parse(cls, value: str, ttl_ms: int | None = None) -> LeaseInfo:
        token, _, holder = value.partition(" ")
        ttl = ttl_ms / 1000 if ttl_ms is not None and ttl_ms >= 0 else None
        return cls(Holder.parse(holder), int(token) if token.isdigit() else -1, ttl, value)


def driver_gone(lease: Mapping[str, Any]) -> bool:
    """Whether the holder of a lease, as `sanstream status --json` shows it (host, pid, started,
    pid_namespace), ran on this host and its process is gone: a killed driver's lease outlives it by up to
    the TTL, and until then only this tells a user that the job waits for `sanstream resume`."""
    pid = lease.get("pid")
    holder = Holder(
        str(lease.get("host", "")),
        pid if isinstance(pid, int) else -1,
        str(lease.get("started", "")),
        str(lease.get("pid_namespace", "")),
    )
    return holder.is_dead_here()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lease_key(job_id: str, prefix: str = "sanstream") -> str:
    return f"{prefix}:job:{check_id(job_id, 'job_id')}:lease"


def lease_info(client: redis.Redis, job_id: str, prefix: str = "sanstream") -> LeaseInfo | None:
    """The job's current lease, or None when no driver holds it (never taken, released or expired)."""
    key = lease_key(job_id, prefix)
    pipe = client.pipeline(transaction=True)
    pipe.get(key)
    pipe.pttl(key)
    value, ttl_ms = pipe.execute()
    if value is None:
        return None
    return LeaseInfo.parse(_text(value), int(ttl_ms))


@dataclass
class JobLease:
    """The lease on one job for this driver. `acquire()`, then `start_renewing()`; `release()` at the end
    (also a context manager). `lost` is set when a renewal finds the lease gone to someone else."""

    client: redis.Redis
    job_id: str
    prefix: str = "sanstream"
    holder: Holder = field(default_factory=Holder.this_process)
    ttl_s: float = DEFAULT_TTL_S
    renew_every_s: float = DEFAULT_RENEW_EVERY_S
    token: int | None = None
    value: str | None = None
    lost: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.key = lease_key(self.job_id, self.prefix)
        self.tokens_key = f"{self.key}:tokens"
        self.job_key = f"{self.prefix}:job:{self.job_id}"
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._publish = self.client.register_script(_PUBLISH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_url(cls, url: str, job_id: str, **kwargs: Any) -> JobLease:
        """A lease on its own client with short timeouts: a renewal must never wait on the minute-long
        retries the job store rides out Redis restarts with."""
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
        return cls(client, job_id, **kwargs)

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def acquire(self) -> int:
        """Take the lease and return its token; raises LeaseHeldError naming the holder when another
        driver holds it. A holder on this host whose process is gone is broken at once."""
        ok, current = self._acquire(
            keys=[self.key, self.tokens_key], args=[str(self.holder), self.ttl_ms, ""]
        )
        current = _text(current)
        if not ok:
            observed = LeaseInfo.parse(current)
            if observed.holder.is_dead_here():
                log.warning(
                    "job %s: taking over the lease of %s, whose process is gone", self.job_id, current
                )
                ok, current = self._acquire(
                    keys=[self.key, self.tokens_key], args=[str(self.holder), self.ttl_ms, current]
                )
                current = _text(current)
            if not ok:
                raise LeaseHeldError(
                    self.job_id, lease_info(self.client, self.job_id, self.prefix) or observed
                )
        self.value = current
        self.token = LeaseInfo.parse(self.value).token
        self.lost.clear()
        return self.token

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) when it belongs to someone else now."""
        if self.value is None:
            raise LeaseLostError(f"the lease of job {self.job_id} was never acquired")
        code = self._renew(keys=[self.key, self.tokens_key], args=[self.value, self.ttl_ms, self.token])
        if code == 2:
            log.warning("job %s: lease had expired; nobody took it, so it was taken back", self.job_id)
        if not code:
            self.lost.set()
        return bool(code)

    def publish(self) -> bool:
        """Store the token on the job hash (`lease_token`) while the lease is still ours; False when the
        job hash does not exist or the lease was lost."""
        code = self._publish(
            keys=[self.key, self.job_key], args=[self.value or "", self.token or 0, LEASE_TOKEN_FIELD]
        )
        if code == 0:
            self.lost.set()
        return bool(code == 1)

    def start_renewing(self) -> None:
        """Renew every `renew_every_s` from a daemon thread until `release()`. Redis errors are retried:
        while Redis is unreachable nobody else can take the lease either, and once it answers again the
        renewal tells whether the lease is still ours."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                if not self.renew():
                    log.error("job %s: lease lost to another driver", self.job_id)
                    return
            except redis.RedisError as error:
                log.warning("job %s: lease renewal failed (%s); retrying", self.job_id, error)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (never someone else's)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.renew_every_s + 6)
        self._thread = None
        if self.value is not None:
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[self.key], args=[self.value])
        self.value = None

    def close(self) -> None:
        self.release()
        self.client.close()

    def __enter__(self) -> JobLease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
