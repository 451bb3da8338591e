"""Aborting a blocked FFmpeg call from another thread, which PyAV has no API for.

Closing a container that another thread is reading frees memory under its feet (a crash). What PyAV does
have is an interrupt callback that FFmpeg polls (about every 100 ms while it waits on a socket), which
compares `time.monotonic()`, looked up through the `time` global of `av.container.core`, with the call's
deadline. `FFmpegInterrupter` stands in for that global and, for the one reader thread being aborted,
reports a time far past any deadline, so FFmpeg returns AVERROR_EXIT within ~0.1 s. Every other thread
sees the real clock. If a PyAV release changes this internal, the hook is not installed and
`LiveSource` abandons a reader that does not return instead.
"""

from __future__ import annotations

import logging
import threading
import time
import types
from typing import Any

import av
import av.container.core

log = logging.getLogger(__name__)


class FFmpegInterrupter:
    """Replaces the `time` module as seen by `av.container.core`, to abort chosen threads' FFmpeg calls.

    PyAV's interrupt callback returns "abort" when `time.monotonic()` is past the start of the current
    blocking call plus its timeout, and it runs on the thread making that call. For a thread marked
    aborted, `monotonic()` returns a time that grows by 1e9 s at every call, so the call's start (read
    through the same clock) is always far behind the next poll and the deadline has always passed.
    Everything else, and every other thread, gets the real `time` module.
    """

    _STEP = 1e9

    def __init__(self, real: types.ModuleType) -> None:
        self._time = real
        # Thread ident -> how far its clock has been pushed. No lock: this runs inside FFmpeg's callback,
        # single dict operations are atomic under the GIL, an entry is only ever advanced and removed by
        # its own thread, and `LiveSource` never marks a thread that has finished (see `_abort`).
        self._aborted: dict[int, float] = {}

    def monotonic(self) -> float:
        now = self._time.monotonic()
        if not self._aborted:  # the hot path: nothing is being aborted
            return now
        ident = threading.get_ident()
        bump = self._aborted.get(ident)
        if bump is None:
            return now
        bump += self._STEP
        self._aborted[ident] = bump
        return now + bump

    def abort(self, ident: int) -> None:
        self._aborted.setdefault(ident, 0.0)

    def clear(self, ident: int) -> None:
        self._aborted.pop(ident, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)


_INSTALL_LOCK = threading.Lock()
_INTERRUPTER: FFmpegInterrupter | None = None
_INSTALLED = False


def install_interrupter() -> FFmpegInterrupter | None:
    """Install the hook into PyAV once, on the first `LiveSource` (so merely importing the decode package
    changes nothing), or return None and rely on abandoning threads if PyAV's internals changed."""
    global _INTERRUPTER, _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return _INTERRUPTER
        _INSTALLED = True
        core = av.container.core
        current = getattr(core, "time", None)
        if isinstance(current, FFmpegInterrupter):
            _INTERRUPTER = current
        elif current is time:
            _INTERRUPTER = FFmpegInterrupter(time)
            core.time = _INTERRUPTER  # type: ignore[attr-defined]
        else:
            log.warning(
                "PyAV %s: av.container.core no longer reads time.monotonic through a module global; live "
                "sources cannot abort a blocked FFmpeg call and will abandon stuck reader threads instead",
                av.__version__,
            )
        return _INTERRUPTER


__all__ = ["FFmpegInterrupter", "install_interrupter"]
