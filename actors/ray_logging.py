"""Ray's and Serve's own logs go to Ray's log folder, not to the terminal of whoever runs `sanstream`.

Someone running a job wants its progress and its summary. Left to itself Ray also prints, on the driver's
terminal: its token-auth warning and "Started a local Ray instance" (the `ray` logger), Serve's INFO lines
("Connecting to existing Serve app", "Application ... is ready": the `ray.serve` logger, which has a
handler of its own), every actor's stdout and stderr relayed by the log monitor ("(ServeReplica pid=...)",
worker C++ lines from core_worker), and raylet error messages ("(raylet) Task ... failed"), the last two
with colour codes even into a pipe. All of that is already in the session's log folder
(`/tmp/ray/session_*/logs`) except the driver's own Python log records, which go to
`sanstream-driver.log` there. `verbose=True` leaves Ray as it is by default, for debugging.

What works with Ray 2.60 (each tried): `log_to_driver=False` stops the relayed worker output; the raylet
error messages are printed by a separate listener thread regardless of it, and only the module flag
`ray._private.worker._worker_logs_enabled` (the one `ray.util.rpdb` uses) stops them; `ray.init`'s
`logging_config` would add a stderr handler to the root logger, so it is not used; `configure_logging=False`
leaves the `ray` logger without handlers, and Python's last-resort handler then prints its warnings anyway,
so the driver's terminal handlers are swapped for a file handler instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any

DRIVER_LOG = "sanstream-driver.log"
#: Loggers whose terminal handlers are replaced. `ray.serve` does not propagate to `ray` and configures its
#: own stderr handler when `ray.serve` is first imported, so it is listed on its own.
LOGGERS = ("ray", "ray.serve")


class DeferredFileHandler(logging.Handler):
    """Holds the driver's Ray records until the session's log folder exists (`ray.init` creates it, and
    the token-auth warning comes before that), then appends them and every later record to a file there.
    Records still held when `ray.init` fails are shown on stderr: they say why Ray did not start."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pending: list[logging.LogRecord] = []
        self.target: logging.Handler | None = None
        self.replaced: dict[str, list[logging.Handler]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.handle(record)
        else:
            self.pending.append(record)

    def open(self, path: Path) -> None:
        """Write to `path` from now on, starting with the records held so far."""
        path.parent.mkdir(parents=True, exist_ok=True)
        target = logging.FileHandler(path, encoding="utf-8")
        target.setFormatter(self.formatter or logging.Formatter(_FORMAT))
        previous, self.target = self.target, target
        if previous is not None:
            previous.close()
        for record in self.pending:
            target.handle(record)
        self.pending.clear()

    def replay(self, stream: Any) -> None:
        """Print the held records on `stream` (Ray failed to start: they are all the user will get)."""
        formatter = self.formatter or logging.Formatter(_FORMAT)
        for record in self.pending:
            print(formatter.format(record), file=stream)
        self.pending.clear()

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
        super().close()


_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"
_installed: DeferredFileHandler | None = None


def init_ray(*, verbose: bool = False, **options: Any) -> Any:
    """`ray.init(**options)` with Ray's own output kept off the terminal unless `verbose`.

    Returns what `ray.init` returns. The driver's Ray and Serve records go to `sanstream-driver.log` in the
    session's log folder (see `driver_log_path`); if Ray fails to start, the records held so far are
    printed on stderr before the error propagates.
    """
    import ray
    import ray.serve  # configures the `ray.serve` logger on import: it must come before `_capture`

    _relay_worker_output(verbose)
    if verbose:
        _release()
        if not sys.stdout.isatty():  # Ray colours the "(Actor pid=...)" prefixes even into a pipe
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        return ray.init(log_to_driver=True, logging_level="INFO", **options)
    handler = _capture()
    try:
        context = ray.init(log_to_driver=False, logging_level="INFO", **options)
    except Exception:
        handler.replay(sys.stderr)
        raise
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session:
        with contextlib.suppress(OSError):  # an unwritable folder must not stop the job
            handler.open(Path(session) / "logs" / DRIVER_LOG)
    return context


def driver_log_path() -> Path | None:
    """The file the driver's Ray records go to in quiet mode (None: not quiet, or not opened)."""
    if _installed is None or not isinstance(_installed.target, logging.FileHandler):
        return None
    return Path(_installed.target.baseFilename)


def _capture() -> DeferredFileHandler:
    """Replace the terminal handlers of Ray's driver loggers with one `DeferredFileHandler` (once per
    process: a second job in the same process reuses it, writing into its own session's folder)."""
    global _installed
    handler = _installed or DeferredFileHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        terminal = [h for h in logger.handlers if _is_terminal_handler(h)]
        for old in terminal:
            logger.removeHandler(old)
        handler.replaced.setdefault(name, []).extend(terminal)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False  # else the root logger (or Python's last resort) prints them again
    _installed = handler
    return handler


def _release() -> None:
    """Undo `_capture` (a verbose session after a quiet one in the same process)."""
    global _installed
    if _installed is None:
        return
    for name, handlers in _installed.replaced.items():
        logger = logging.getLogger(name)
        logger.removeHandler(_installed)
        for old in handlers:
            logger.addHandler(old)
    _installed.close()
    _installed = None


def _is_terminal_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the process's stdout/stderr: Ray's `PlainRayHandler`, Serve's stream
    handler. Files and in-memory captures (pytest's `caplog`) are left where they are."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    return not isinstance(getattr(handler, "stream", None), io.StringIO)


def _relay_worker_output(enabled: bool) -> None:
    """Whether the driver prints raylet error messages (and worker output) at all: a private flag, so a
    Ray without it keeps printing them rather than failing."""
    with contextlib.suppress(ImportError):
        from ray._private import worker

        if hasattr(worker, "_worker_logs_enabled"):
            worker._worker_logs_enabled = enabled
