"""The connection side of a live source: one supervisor thread that connects, watches and reconnects,
and one reader thread per connection that decodes and hands every frame over.

`LiveSource` (in `live.py`) is what callers iterate; it owns the timeline, sampling and gap state in the
iterating thread. Everything that talks to the network lives here, behind the `Handoff`, so the two
sides share nothing else:

* Connect and read timeouts come from `SourceOptions` (PyAV's interrupt callback plus FFmpeg socket
  timeouts). On top, the supervisor watches every connection: connected but no decoded frame for
  `stall_timeout` (packets that never decode, a trickle of bytes, or silence) aborts it, even when the
  read timeout is longer or FFmpeg is blocked inside one call.
* Aborting FFmpeg from another thread goes through PyAV's interrupt callback (see `interrupt.py`). If
  that hook cannot be installed, a reader that does not return within `abandon_after` is abandoned
  instead: it owns its container and closes it when its own timeout fires, and nothing it produces
  afterwards is used.
* Reconnection follows a `ReconnectPolicy` (capped exponential backoff with jitter, optionally a
  limit on consecutive failed attempts); every attempt is logged, and every connection that ends is
  handed over as an `Ended` event (a `GaveUp` when the policy's limit is reached).

Threads: the reader is the only thread that touches its connection's container. It hands *every* decoded
frame over and never blocks: a live socket must be drained or the server drops us, so when the consumer
falls behind the oldest waiting frame is dropped and counted (`LiveStats.frames_dropped`).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from dataclasses import dataclass

from pipeline.decode.decoder import DecodeStats, _decoded_frames
from pipeline.decode.errors import DecodeError, SourceUnreachable, redact
from pipeline.decode.handoff import Connection, Decoded, Ended, GaveUp, Handoff
from pipeline.decode.interrupt import FFmpegInterrupter
from pipeline.decode.outages import ReconnectPolicy
from pipeline.decode.source import SourceOptions, open_source

log = logging.getLogger(__name__)

# Frame duration assumed when a stream declares no frame rate, as in decoder.py.
_FALLBACK_FRAME_SECONDS = 1 / 30
# How often the supervisor re-checks its deadlines when nothing wakes it.
_POLL_SECONDS = 0.1


@dataclass(slots=True)
class LiveStats(DecodeStats):
    """`DecodeStats` for all connections together, plus what happened to the connections.

    `frames_decoded` counts frames received (the next `frame_index`), `frames_dropped` those dropped
    because the consumer fell behind (they still have an index; they were never sampled).

    Attributes:
        attempts: connection attempts made.
        connects: attempts that opened the source.
        losses: connections that ended or failed after delivering at least one frame.
        stalls: connections aborted by the watchdog for delivering no frame within the stall timeout.
        abandoned_readers: reader threads that did not return after being aborted (should stay 0; see
            the module docstring).
        gaps: gaps reported.
    """

    frames_dropped: int = 0
    attempts: int = 0
    connects: int = 0
    losses: int = 0
    stalls: int = 0
    abandoned_readers: int = 0
    gaps: int = 0


def short_error(error: BaseException) -> str:
    if isinstance(error, DecodeError):
        return f"{error.what} ({error.reason})" if error.reason else error.what
    return f"{type(error).__name__}: {error}"


class LiveSupervisor:
    """The supervisor and reader threads of a `LiveSource`, which subclasses it.

    The state below is set by `LiveSource.__init__`; `_conn` is the connection being made or read, and
    `_cancel_handoff` (defined by `LiveSource`, which owns the gap state) wakes the iterating thread for
    good once the source is stopped.
    """

    source: str
    stream_id: str
    options: SourceOptions
    stall_timeout: float
    reconnect: ReconnectPolicy
    stats: LiveStats
    _interrupter: FFmpegInterrupter | None
    _stop: threading.Event
    _stop_at_end: bool
    _abandon_after: float
    _rng: random.Random
    _handoff: Handoff
    _index: itertools.count[int]
    _conn: Connection | None

    def _cancel_handoff(self) -> None:
        raise NotImplementedError

    # -- supervisor thread --------------------------------------------------------------------------

    def _supervise_forever(self) -> None:
        retry = 0  # the number of the next retry: 1 after a lost connection, +1 per failed attempt
        failed = 0  # consecutive attempts that delivered no frame, for max_attempts
        try:
            for conn_id in itertools.count():
                if self._stop.is_set():
                    return
                conn = Connection(conn_id, time.time())
                self._conn = conn
                self.stats.attempts += 1
                if conn_id == 0:
                    log.info("%s [%s]: connecting", redact(self.source), self.stream_id)
                else:
                    log.info("%s [%s]: reconnecting (retry %d)", redact(self.source), self.stream_id, retry)
                reader = threading.Thread(
                    target=self._read, args=(conn,), name=f"live-{self.stream_id}-{conn_id}", daemon=True
                )
                reader.start()
                self._watch(conn)
                if self._stop.is_set():
                    return
                if conn.ended_cleanly and conn.frames and self._stop_at_end:
                    log.info("%s [%s]: end of stream", redact(self.source), self.stream_id)
                    self._handoff.close()
                    return
                reason = self._reason(conn)
                self._handoff.put_event(Ended(conn.id, conn.started_wall, reason))
                if conn.frames:
                    self.stats.losses += 1
                    retry, failed = 1, 0
                else:
                    retry, failed = retry + 1, failed + 1
                limit = self.reconnect.max_attempts
                if limit is not None and failed >= limit:
                    error = (
                        conn.error
                        if isinstance(conn.error, DecodeError)
                        else SourceUnreachable(self.source, reason)
                    )
                    log.error(
                        "%s [%s]: giving up after %d attempts without a frame: %s",
                        redact(self.source),
                        self.stream_id,
                        failed,
                        reason,
                    )
                    self._handoff.put_event(GaveUp(error))
                    self._handoff.close()
                    return
                delay = self.reconnect.delay(retry, self._rng)
                log.warning(
                    "%s [%s]: %s; reconnecting in %.2f s", redact(self.source), self.stream_id, reason, delay
                )
                if self._stop.wait(delay):
                    return
        except BaseException as error:  # a bug here must surface in the iterating thread, not vanish
            log.exception("%s [%s]: live source supervisor failed", redact(self.source), self.stream_id)
            self._handoff.put_event(GaveUp(error))
            self._handoff.close()
        finally:
            if self._stop.is_set():
                self._cancel_handoff()

    def _watch(self, conn: Connection) -> None:
        """Wait for the reader of `conn` to finish, aborting it on stall, on close, or past its open
        deadline, and abandoning it if it does not return after an abort."""
        open_deadline = self.options.open_timeout + 1.0  # PyAV's own open timeout should fire first
        while True:
            if conn.done.is_set():
                return
            now = time.monotonic()
            if self._stop.is_set():
                self._abort(conn, "closed")
            elif conn.phase == "connecting" and now - conn.phase_since > open_deadline:
                self._abort(conn, f"connect timed out: no answer within {self.options.open_timeout:g} s")
            elif conn.phase == "reading" and now - conn.progress > self.stall_timeout:
                newly = self._abort(conn, f"stalled: no frames for {self.stall_timeout:g} s")
                self.stats.stalls += int(newly)
            if conn.aborted_at is not None and now - conn.aborted_at > self._abandon_after:
                with conn.lock:
                    if conn.finished:
                        return
                    conn.abandoned = True
                self.stats.abandoned_readers += 1
                log.error(
                    "%s [%s]: reader did not return %.1f s after being aborted (%s); abandoning it",
                    redact(self.source),
                    self.stream_id,
                    self._abandon_after,
                    conn.abort_reason,
                )
                return
            conn.done.wait(_POLL_SECONDS)

    def _abort(self, conn: Connection, reason: str) -> bool:
        """Ask `conn`'s reader to stop and interrupt its FFmpeg call; False if it was already asked."""
        with conn.lock:
            if conn.abort_reason is not None or conn.finished:
                return False
            conn.abort_reason = reason
            conn.aborted_at = time.monotonic()
            if self._interrupter is not None and conn.ident is not None:
                self._interrupter.abort(conn.ident)
        if reason != "closed":
            log.warning("%s [%s]: %s; aborting the connection", redact(self.source), self.stream_id, reason)
        return True

    def _reason(self, conn: Connection) -> str:
        if conn.abort_reason is not None:
            return conn.abort_reason
        if not conn.opened:
            return f"connect failed: {short_error(conn.error) if conn.error else 'unknown error'}"
        if conn.error is not None:
            return f"connection lost: {short_error(conn.error)}"
        return "connection lost: end of stream"

    # -- reader threads -----------------------------------------------------------------------------

    def _read(self, conn: Connection) -> None:
        """Open the source and hand every decoded frame over until the stream ends, fails or is aborted."""
        with conn.lock:
            conn.ident = threading.get_ident()
            aborted = conn.abort_reason is not None
        try:
            if aborted:
                return
            try:
                opened = open_source(self.source, self.options)
            except DecodeError as error:
                conn.error = error
                return
            try:
                conn.opened = True
                self.stats.connects += 1
                log.info("%s [%s]: connected", redact(self.source), self.stream_id)
                stream = opened.stream
                rate = stream.guessed_rate or stream.average_rate
                frame_seconds = float(1 / rate) if rate else _FALLBACK_FRAME_SECONDS
                conn.progress = time.monotonic()
                conn.phase, conn.phase_since = "reading", conn.progress
                for vframe in _decoded_frames(opened, self.stats):
                    arrival = time.time()
                    conn.progress = time.monotonic()
                    if conn.abort_reason is not None or conn.abandoned:
                        return
                    time_base = vframe.time_base or stream.time_base
                    raw = None if vframe.pts is None or time_base is None else float(vframe.pts * time_base)
                    conn.frames += 1
                    self.stats.frames_decoded += 1
                    item = Decoded(
                        conn.id, conn.started_wall, next(self._index), raw, vframe, arrival, frame_seconds
                    )
                    self.stats.frames_dropped += self._handoff.put_frame(item)
                # An aborted read can also end the loop quietly (the demuxer gives up after repeated
                # interrupted reads), which is not the source ending.
                conn.ended_cleanly = conn.abort_reason is None
            except DecodeError as error:
                conn.error = error
            finally:
                opened.close()
        except Exception as error:  # anything unexpected ends this connection, not the source
            log.warning("%s [%s]: reader failed", redact(self.source), self.stream_id, exc_info=True)
            conn.error = error
        finally:
            with conn.lock:
                conn.finished = True
                conn.phase = "done"
                if self._interrupter is not None:
                    self._interrupter.clear(threading.get_ident())
            conn.done.set()


__all__ = ["LiveStats", "LiveSupervisor", "short_error"]
