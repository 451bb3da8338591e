"""SIGINT/SIGTERM on a job's driver: the first asks for a clean stop, a second stops the driver at once.

A job ends `interrupted` either way (resumable with `sanstream resume`), never `failed`: nothing is wrong
with the job itself.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class JobInterrupted(KeyboardInterrupt):
    """A signal stopped the driver at once: a second SIGINT/SIGTERM, or one before the job was registered.
    A registered job is left `interrupted` (resumable). `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StartupInterrupt(KeyboardInterrupt):
    """Raised by the signal handler while the driver starts: `ray.init` and the Serve deploy block for
    seconds and cannot poll a flag, so the signal unwinds them; `run_job` then leaves the job
    `interrupted`. A KeyboardInterrupt because that is what libraries let through (Ray turns any into a
    plain KeyboardInterrupt, so `run_job` tells the cases apart by `DriverSignals`' state, not by type)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DriverSignals:
    """SIGINT/SIGTERM on the driver. The first signal asks for a clean stop: while the job starts it
    raises `StartupInterrupt`; once the main loop runs (`graceful`) it only records the signal, and the
    loop asks the streams to stop. A second signal raises `JobInterrupted` at once.

    Handlers go in only from the main thread (the only one Python delivers signals to; a driver run from
    another thread leaves signals to its caller) and the previous ones come back on `restore()`."""

    def __init__(self, resume_hint: str) -> None:
        self.signum: int | None = None
        self.graceful = False
        self.forced: int | None = None  # the second signal, once one came
        self.resume_hint = resume_hint
        self._previous: dict[int, Any] = {}
        self._unraisable_hook: Any = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "an interrupt request"

    def install(self) -> None:
        """(Re)install the handlers; called again after `ray.init`, which installs its own SIGTERM one."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)
        if self._unraisable_hook is None:
            self._unraisable_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._unraisable_hook is not None:
            sys.unraisablehook, self._unraisable_hook = self._unraisable_hook, None

    def _unraisable(self, unraisable: Any) -> None:
        """An interrupt raised where Python cannot propagate it (a destructor, a weakref callback) is
        reported as "Exception ignored" with a traceback. It needs no report: the signal is recorded, and
        the main loop acts on it as soon as it runs."""
        if not isinstance(unraisable.exc_value, StartupInterrupt | JobInterrupted):
            self._unraisable_hook(unraisable)

    def forced_exit(self) -> JobInterrupted:
        signum = self.forced or self.signum or signal.SIGINT
        return JobInterrupted(
            f"stopped at once by a second signal ({signal.Signals(signum).name}); the job is left "
            f"interrupted. Continue it with: {self.resume_hint}",
            signum,
        )

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.forced = signum
            raise self.forced_exit()
        self.signum = signum
        if not self.graceful:
            raise StartupInterrupt(signum)
