"""One decoder actor per stream: decode and sample with PyAV, send frames to the SAN pool, hand the
answers to the stream's writer in frame order.

Decoding runs in a thread that fills a bounded queue: for files the queue blocks (backpressure, nothing is
lost), for live sources it drops the oldest frame (counted) so a slow pool never makes a camera fall
behind real time.

Recovery: every attempt starts with `writer.begin()`, which answers the first uncommitted frame, and
decoding restarts there. If the writer or a replica dies mid-attempt (Ray restarts both), the attempt is
abandoned and a new one starts from the committed position; if this actor dies, Ray restarts it and
re-runs `run()`, which does the same. Output stays exactly-once because only committed parts count and the
writer drops replayed rows at or below the committed frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    WorkerCrashedError,
)
from ray.serve.exceptions import RayServeException

from actors.messages import SegmentRequest
from actors.writer import WriterRestarted
from pipeline.decode import (
    DecodeError,
    Gap,
    LiveSource,
    ReconnectPolicy,
    Sampler,
    SourceOptions,
    VideoDecoder,
)
from pipeline.decode.queues import FrameQueue, QueueClosed
from pipeline.frames import Frame, FrameAreas
from pipeline.jobs.spec import StreamSpec
from pipeline.jobs.state import JobStore

log = logging.getLogger(__name__)
# Failures of the machinery rather than of the stream: a crashed writer or replica (restarted by Ray or
# Serve), a lost object, a replica that is restarting. The attempt restarts from the committed frame.
RECOVERABLE: tuple[type[BaseException], ...] = (
    RayActorError,
    ActorUnavailableError,
    ObjectLostError,
    WorkerCrashedError,
    NodeDiedError,
    RayServeException,
    WriterRestarted,
)
BATCH_LOG = 256  # replica batches remembered per stream, for diagnostics and tests (bounded memory)


@dataclass(frozen=True)
class DecoderSettings:
    """Knobs of the per-stream loop.

    Attributes:
        max_in_flight: frames sent to the pool and not yet answered; enough to fill batches across replicas.
        queue_size: decoded frames waiting to be sent.
        flush_frames: answered frames handed to the writer per call.
        open_timeout_s, read_timeout_s: network source timeouts.
        poll_s: how often cancellation is checked and heartbeats are written.
        max_recoveries: attempts restarted after a writer or replica failure before the stream fails.
        live_max_attempts: reconnection attempts in a row without a frame before a live stream fails
            (None: keep trying until cancelled).
    """

    max_in_flight: int = 16
    queue_size: int = 32
    flush_frames: int = 32
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    poll_s: float = 0.5
    max_recoveries: int = 20
    live_max_attempts: int | None = None


@dataclass
class StreamOutcome:
    stream_id: str
    status: str
    frames_analysed: int = 0
    error_kind: str | None = None
    error: str | None = None
    dropped_frames: int = 0
    recoveries: int = 0
    node_id: str = ""
    replica_nodes: set[str] = field(default_factory=set)
    mixed_batches: int = 0
    batches: collections.deque[tuple[str, int, int, tuple[str, ...]]] = field(
        default_factory=lambda: collections.deque(maxlen=BATCH_LOG)
    )


class AttemptFailed(Exception):
    """The writer or the pool failed under this attempt; the stream restarts from its committed frame."""


def sampler_for(stream: StreamSpec) -> Sampler:
    if stream.sampling.every is not None:
        return Sampler(every=stream.sampling.every)
    return Sampler(fps=stream.sampling.fps or 1.0)


def actor_name(job_id: str, stream_id: str, role: str) -> str:
    """Named actors let operators (and fault-injection tests) find a stream's actors."""
    return f"{job_id}:{stream_id}:{role}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class StreamDecoder:
    """Runs one stream from its committed position to the end (or cancellation, or a decode error)."""

    def __init__(
        self,
        job_id: str,
        stream: StreamSpec,
        redis_url: str,
        pool: Any,
        writer: Any,
        settings: DecoderSettings,
        return_labels: bool = False,
    ) -> None:
        self.job_id = job_id
        self.stream = stream
        self.store = JobStore.from_url(redis_url)
        self.pool = pool
        self.writer = writer
        self.settings = settings
        self.return_labels = return_labels
        self.vocabulary = tuple(stream.vocabulary)

    def pid(self) -> int:
        return os.getpid()

    async def run(self) -> StreamOutcome:
        job, sid = self.job_id, self.stream.id
        outcome = StreamOutcome(sid, "completed", node_id=ray.get_runtime_context().get_node_id())
        while True:
            try:
                await self._attempt(outcome)
                break
            except Exception as error:
                if not isinstance(error, AttemptFailed):
                    outcome.status, outcome.error_kind = "failed", type(error).__name__
                    outcome.error = f"{type(error).__name__}: {error}"
                    self.store.record_error(job, sid, outcome.error_kind, outcome.error)
                    break
                failure = error
                outcome.recoveries += 1
                cause = failure.__cause__ or failure
                message = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                if outcome.recoveries > self.settings.max_recoveries:
                    outcome.status, outcome.error_kind, outcome.error = (
                        "failed",
                        type(cause).__name__,
                        message,
                    )
                    self.store.record_error(
                        job,
                        sid,
                        outcome.error_kind,
                        f"gave up after {outcome.recoveries - 1} recoveries: {message}",
                    )
                    break
                log.warning("stream %s: attempt failed (%s); resuming from the committed frame", sid, message)
                self.store.record_error(job, sid, "recovered", message)
                await asyncio.sleep(min(0.2 * outcome.recoveries, 2.0))
        # The final stream status is set by the driver, which may still retry the stream (failure policy).
        return outcome

    def _produce(
        self,
        frames: FrameQueue[Frame],
        start: int,
        failure: list[BaseException],
        counts: dict[str, int],
        stop: threading.Event,
        gaps: list[Gap],
    ) -> None:
        """Decoder thread: fill `frames` from the source; any error is handed to the consumer, which owns
        the stream's state."""
        try:
            for frame in self._frames(start, stop, gaps, counts):
                if stop.is_set():
                    break
                frames.put(frame)
        except QueueClosed:
            pass
        except BaseException as error:
            failure.append(error)
        finally:
            frames.close()

    def _frames(
        self, start: int, stop: threading.Event, gaps: list[Gap], counts: dict[str, int]
    ) -> Iterator[Frame]:
        """Sampled frames from the committed position on; `counts["decoded"]` follows the source frames
        decoded so far (sampled or not).

        Files resume at `start` by frame index. A live source reconnects on its own (capped back-off,
        stall watchdog) and reports outages as gaps; its frame indices count frames as received and are
        continued here from the committed position."""
        options = SourceOptions(
            open_timeout=self.settings.open_timeout_s, read_timeout=self.settings.read_timeout_s
        )
        sampler = sampler_for(self.stream)
        if not self.stream.live:
            with VideoDecoder(
                self.stream.source, self.stream.id, sampler, start_frame_index=start, options=options
            ) as decoder:
                for frame in decoder:
                    counts["decoded"] = decoder.stats.frames_decoded
                    yield frame
                counts["decoded"] = decoder.stats.frames_decoded
            return
        with LiveSource(
            self.stream.source,
            self.stream.id,
            sampler,
            options=options,
            reconnect=ReconnectPolicy(max_attempts=self.settings.live_max_attempts),
            stall_timeout=self.settings.read_timeout_s,
            on_gap=gaps.append,
            stop=stop,
        ) as source:
            for frame in source:
                counts["decoded"] = start + source.stats.frames_decoded
                yield dataclasses.replace(frame, frame_index=frame.frame_index + start)

    async def _call(self, awaitable: Any) -> Any:
        """Await a writer or pool call; a dead or unreachable actor fails the attempt, not the stream.
        Any other error (a bug, a full disk) fails the stream."""
        try:
            return await awaitable
        except RECOVERABLE as error:
            raise AttemptFailed(str(error)) from error

    async def _attempt(self, outcome: StreamOutcome) -> None:
        job, sid = self.job_id, self.stream.id
        begun = await self._call(self.writer.begin.remote())
        start, epoch = begun.next_frame, begun.epoch
        stop = threading.Event()
        frames: FrameQueue[Frame] = FrameQueue(
            self.settings.queue_size, "drop_oldest" if self.stream.live else "block"
        )
        failure: list[BaseException] = []
        counts = {"decoded": start}
        reported = {
            "decoded": int(self.store.stream_counter(job, sid, "decoded")),
            "analysed": 0,
            "dropped": 0,
        }
        gaps: list[Gap] = []
        producer = threading.Thread(
            target=self._produce, args=(frames, start, failure, counts, stop, gaps), daemon=True
        )
        producer.start()
        in_flight: collections.deque[tuple[Frame, Any]] = collections.deque()
        answered: list[FrameAreas] = []
        wall_times: list[float] = []
        last_poll = 0.0
        exhausted = False
        try:
            while not exhausted or in_flight:
                now = time.monotonic()
                if now - last_poll >= self.settings.poll_s:
                    last_poll = now
                    self.store.heartbeat(job, f"decoder:{sid}")
                    self._report(counts, reported, frames.dropped)
                    if outcome.status not in ("cancelled", "interrupted") and (
                        reason := self.store.stop_requested(job)
                    ):
                        outcome.status = reason
                        stop.set()
                        frames.cancel()
                if not exhausted and len(in_flight) < self.settings.max_in_flight:
                    try:
                        frame = await asyncio.to_thread(frames.get, self.settings.poll_s)
                    except QueueClosed:
                        exhausted = True
                        continue
                    except queue.Empty:
                        continue
                    request = _request(frame, self.vocabulary, self.return_labels)
                    in_flight.append((frame, self.pool.segment.remote(request)))
                    continue
                frame, response = in_flight.popleft()
                reply = await self._call(response)
                answered.append(reply.areas)
                wall_times.append(frame.wall_time)
                outcome.batches.append(
                    (reply.replica, reply.batch_number, reply.batch_size, reply.batch_streams)
                )
                outcome.replica_nodes.add(reply.node_id)
                outcome.mixed_batches += len(set(reply.batch_streams)) > 1
                outcome.frames_analysed += 1
                self.store.incr(job, sid, "analysed")
                if len(answered) >= self.settings.flush_frames:
                    await self._call(self.writer.append.remote(answered, wall_times, epoch))
                    answered, wall_times = [], []
                if gaps:
                    recorded, gaps[:] = list(gaps), []
                    await self._call(self.writer.add_gaps.remote([g.row(job) for g in recorded], epoch))
            producer.join(timeout=5)
            if gaps:
                await self._call(self.writer.add_gaps.remote([g.row(job) for g in gaps], epoch))
            await self._call(self.writer.append.remote(answered, wall_times, epoch))
            await self._call(self.writer.close.remote(epoch))
        finally:
            stop.set()
            frames.cancel()
            for _, response in in_flight:
                with contextlib.suppress(Exception):
                    response.cancel()
            self._report(counts, reported, frames.dropped)
        outcome.dropped_frames += frames.dropped
        if failure and outcome.status not in ("cancelled", "interrupted"):
            error = failure[0]
            outcome.status = "failed"
            outcome.error_kind = type(error).__name__
            outcome.error = (
                str(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
            )
            self.store.record_error(job, sid, outcome.error_kind, outcome.error)

    def _report(self, counts: dict[str, int], reported: dict[str, int], dropped: int) -> None:
        """Push counter increments to the store. `decoded` is kept as an absolute position (frames of the
        source decoded so far), so a replayed attempt does not count frames twice."""
        with contextlib.suppress(Exception):
            if dropped > reported["dropped"]:
                self.store.incr(self.job_id, self.stream.id, "dropped", dropped - reported["dropped"])
                reported["dropped"] = dropped
            if counts["decoded"] > reported["decoded"]:
                self.store.incr(
                    self.job_id, self.stream.id, "decoded", counts["decoded"] - reported["decoded"]
                )
                reported["decoded"] = counts["decoded"]


def _request(frame: Frame, vocabulary: tuple[str, ...], return_labels: bool) -> SegmentRequest:
    return SegmentRequest(
        stream_id=frame.stream_id,
        frame_index=frame.frame_index,
        pts_seconds=frame.pts_seconds,
        wall_time=frame.wall_time,
        vocabulary=vocabulary,
        image=ray.put(frame.image),
        return_labels=return_labels,
    )
