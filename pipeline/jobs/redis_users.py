"""Who uses an embedded redis-server: one shared `flock` per user on `OUT/redis/.users`.

The server of an output folder belongs to whoever uses it, not to whoever happened to start it: a killed
driver cannot stop the server it started, so the last user to leave has to. A lock, not a list of pids,
records the users, because the kernel drops the lock of a process that dies (SIGKILL included): nothing
stale is ever left to clean up, and a pid reused by another program can never pass for a user.

Every decision (attach and join; leave and maybe shut down) is taken under the exclusive `.lock`, so a
server is never shut down between another process attaching to it and joining as its user. The locks are
`flock`s on separate opens of the file, so two handles in one process count as two users.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class ServerUsers:
    """The users of the server whose data lives in `folder` (`OUT/redis`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None  # holds the shared lock while this handle is a user

    def __del__(self) -> None:
        # Dropped without leaving (a handle nobody stopped): no longer a user. Never raise from here,
        # also not while the interpreter shuts down.
        with contextlib.suppress(Exception):
            self.leave()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise starting, attaching, joining and shutting down across processes."""
        with open(self.folder / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _open(self) -> int:
        return os.open(self.folder / ".users", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def joined(self) -> bool:
        return self._fd is not None

    def join(self) -> None:
        """Count this handle as a user (call inside `exclusive()`)."""
        if self._fd is not None:
            return
        fd = self._open()
        try:
            # Only `others()` takes the lock exclusively, and only inside `exclusive()`, which the caller
            # holds: this never waits.
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def leave(self) -> None:
        """Stop counting as a user (closing the descriptor drops the lock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def others(self) -> bool:
        """Whether any other handle, in any process (this one included), is a user now. Call inside
        `exclusive()`; a handle that is itself a user counts as another one, so `leave()` first."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
