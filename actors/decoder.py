"""One stream's loop inside a decoder actor: decode and sample with PyAV, send frames to the SAN pool,
hand the answers to the job's writer in frame order. `actors.decoder_host.DecoderHost` runs many of these
in one process, each a coroutine on the actor's event loop with its own decoding thread.

Decoding runs in a thread (`actors.stream_frames`) that fills a bounded queue: for files the queue blocks
(backpressure, nothing is lost), for live sources it drops the oldest frame (counted) so a slow pool never
makes a camera fall behind real time. The loop waits on that queue without a thread of its own
(`FrameQueue.get_async`), so a stream whose source hangs holds only its own decoding thread and never
delays the others in the process.

Latency: answers are collected as they complete (`InFlight`), not when the in-flight window is full, and
handed to the writer every `flush_frames` frames or, with `commit=True`, whenever `flush_interval_s` has
passed since the last commit (`CommitClock`), so a 1 fps camera's rows are in Parquet within that
interval rather than after `flush_frames` seconds.

Recovery: every attempt starts with `writer.begin()`, which answers the first uncommitted frame, and
decoding restarts there. If the writer or a replica dies mid-attempt (Ray restarts both), the attempt is
abandoned and a new one starts from the committed position; if the decoder actor dies, Ray restarts it and
re-runs each of its streams' `run()`, which does the same. Output stays exactly-once because only committed
parts count and the writer drops replayed rows at or below the committed frame. A file replays from there
(seeking to the keyframe before it). A live source cannot replay: what the failed attempt analysed but did
not commit is lost, so the new attempt continues the timeline after the last committed frame and records
the loss as a `gaps` row (see `actors.stream_frames`). While a live source cannot connect the stream's
status is `reconnecting`, with its errors recorded at a bounded rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
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

from actors.flow import CommitClock, CommittedFrame, ConnectionStatus, InFlight
from actors.messages import SegmentReply, SegmentRequest
from actors.service.metrics import ray_metrics
from actors.stream_config import JobContext, StreamOutcome
from actors.stream_frames import StreamFrames
from actors.writer import WriterRestarted, WriterStart
from pipeline.decode import DecodeError, Gap
from pipeline.decode.queues import FrameQueue, QueueClosed
from pipeline.frames import Frame, FrameAreas
from pipeline.jobs import stream_changes, stream_metrics
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_spec import StreamSpec
from pipeline.regions import RegionSpec, check_regions
from pipeline.storage.stream_sink import SinkOptions

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


class AttemptFailed(Exception):
    """The writer or the pool failed under this attempt; the stream restarts from its committed frame."""


class StreamRunner(StreamFrames):
    """Runs one stream from its committed position to the end (or cancellation, or a decode error).

    `writer` is a `WriterHost` on this node, shared with other streams (of this job and others); every
    call names the job and the stream.
    """

    def __init__(self, job: JobContext, stream: StreamSpec, store: JobStore, pool: Any, writer: Any) -> None:
        self.job = job
        self.job_id = job_id = job.job_id
        self.stream = stream
        self.store = store
        self.pool = pool
        self.writer = writer
        self.settings = settings = job.settings
        self.return_labels = job.return_labels
        self.vocabulary = tuple(stream.vocabulary)
        self.vocabulary_version = 1
        self.connection = ConnectionStatus(self.store, job_id, stream.id, settings.error_interval_s)
        # What this instance knows across attempts (a restarted actor starts without it): the last frame
        # it saw committed, the first frame it sent since (where a loss starts when nothing was
        # committed yet), why the next attempt follows a loss, and gaps not written yet.
        self._committed: CommittedFrame | None = None
        self._last_handed: CommittedFrame | None = None
        self._first_uncommitted: CommittedFrame | None = None
        self._loss: str | None = None
        self._gaps: list[Gap] = []
        self._region_size: tuple[int, int] | None = None  # the frame size the regions were checked for

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
                    self._loss = f"retry after: {outcome.error}"
                    break
                failure = error
                outcome.recoveries += 1
                cause = failure.__cause__ or failure
                message = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                self._loss = f"recovery: {message}"
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

    async def _call(self, awaitable: Any) -> Any:
        """Await a writer or pool call; a dead or unreachable actor fails the attempt, not the stream.
        Any other error (a bug, a full disk) fails the stream."""
        try:
            return await awaitable
        except RECOVERABLE as error:
            raise AttemptFailed(str(error)) from error

    async def _attempt(self, outcome: StreamOutcome) -> None:
        job, sid = self.job_id, self.stream.id
        begun: WriterStart = await self._call(
            self.writer.begin.remote(
                job,
                sid,
                list(self.stream.vocabulary),
                self.job.output,
                self.job.commit_interval_s,
                SinkOptions(
                    tuple(region.name for region in self.stream.regions), self.stream.alerts, self.job.webhook
                ),
            )
        )
        epoch = begun.epoch
        await self._follow_vocabulary(epoch, new_attempt=True)
        resume = self._resume_point(begun) if self.stream.live else None
        self._loss, self._last_handed = None, None
        if resume is not None:
            # Unwritten outages up to the resume point still count; later ones lie inside its gap.
            self._gaps[:] = [g for g in self._gaps if g.end_pts <= resume.pts]
        stop = threading.Event()
        frames: FrameQueue[Frame] = FrameQueue(
            self.settings.queue_size, "drop_oldest" if self.stream.live else "block"
        )
        failure: list[BaseException] = []
        counts = {"decoded": begun.next_frame}
        reported = {
            "decoded": int(self.store.stream_counter(job, sid, "decoded")),
            "analysed": 0,
            "dropped": 0,
        }
        gaps = self._gaps  # appended to by the producer thread (list.append is atomic)
        producer = threading.Thread(
            target=self._produce, args=(frames, begun, resume, failure, counts, stop, gaps), daemon=True
        )
        producer.start()
        in_flight = InFlight(self.settings.max_in_flight)
        clock = CommitClock(self.settings.flush_frames, self.settings.flush_interval_s)
        answered: list[FrameAreas] = []
        wall_times: list[float] = []
        getter: asyncio.Future[Frame] | None = None
        last_poll = 0.0
        exhausted = False
        try:
            while not exhausted or in_flight:
                now = time.monotonic()
                if now - last_poll >= self.settings.poll_s:
                    last_poll = now
                    self.store.heartbeat(job, f"decoder:{sid}")
                    self._report(counts, reported, frames.dropped)
                    await self._follow_vocabulary(epoch)
                    if outcome.status not in ("cancelled", "interrupted") and (reason := self._stop_reason()):
                        outcome.status = reason
                        stop.set()
                        frames.cancel()
                if getter is None and not exhausted and not in_flight.full:
                    getter = _quiet(asyncio.ensure_future(frames.get_async(self.settings.poll_s)))
                await in_flight.wait(
                    {getter} if getter is not None else set(),
                    clock.wait_s(len(answered), self.settings.poll_s),
                )
                if getter is not None and getter.done():
                    try:
                        frame = getter.result()
                    except QueueClosed:
                        exhausted = True
                    except queue.Empty:
                        pass
                    else:
                        self._check_regions(frame)
                        self._sent(frame)
                        response = self.pool.segment.remote(
                            _request(
                                frame,
                                self.vocabulary,
                                self.vocabulary_version,
                                self.return_labels,
                                self.stream.regions,
                            )
                        )
                        in_flight.add(frame, response, self._call(response))
                    getter = None
                for frame, reply in in_flight.ready():
                    self._answered(outcome, reply)
                    answered.append(reply.areas)
                    wall_times.append(frame.wall_time)
                handover, commit = clock.decide(len(answered))
                if handover:
                    await self._hand_over(answered, wall_times, epoch, commit, clock)
                    answered, wall_times = [], []
                if gaps:
                    await self._write_gaps(gaps, epoch)
            await asyncio.to_thread(producer.join, 5)  # it is ending: the queue was closed
            await self._write_gaps(gaps, epoch)
            await self._hand_over(answered, wall_times, epoch, True, clock)
            # Over for good unless interrupted (a resume continues it) or failed (a retry may).
            ended = not failure and outcome.status in ("completed", "cancelled")
            await self._call(self.writer.close.remote(self.job_id, self.stream.id, epoch, ended))
        finally:
            stop.set()
            frames.cancel()
            in_flight.cancel()
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

    def _stop_reason(self) -> str | None:
        """Why this stream should stop now: its job was cancelled or interrupted, or the stream alone was
        removed from the running job (`cancelled`; its committed output stays)."""
        reason = self.store.stop_requested(self.job_id)
        if reason is None and stream_changes.stream_stop_requested(self.store, self.job_id, self.stream.id):
            return "cancelled"
        return reason

    async def _follow_vocabulary(self, epoch: int, new_attempt: bool = False) -> None:
        """Switch to the stream's newest vocabulary (changed through the service while it runs): its
        names are committed first, then every frame sent from here on is analysed with it. A new attempt
        (whose writer may have restarted) makes sure the writer knows the version in use."""
        version = stream_changes.vocabulary_version(self.store, self.job_id, self.stream.id)
        if version == self.vocabulary_version and not (new_attempt and version > 1):
            return
        names = (
            stream_changes.vocabulary(self.store, self.job_id, self.stream.id, version)
            if version > 1
            else None
        )
        vocabulary = tuple(names) if names is not None else tuple(self.stream.vocabulary)
        await self._call(
            self.writer.add_vocabulary.remote(self.job_id, self.stream.id, version, list(vocabulary), epoch)
        )
        self.vocabulary, self.vocabulary_version = vocabulary, version

    def _check_regions(self, frame: Frame) -> None:
        """Check the stream's regions against each new frame size before a frame of it reaches the pool:
        a region outside the frame (pixel units) or covering no pixel fails this stream alone, with a
        message naming the region, instead of a replica batch shared with other streams."""
        size = frame.size[1], frame.size[0]
        if self.stream.regions and size != self._region_size:
            check_regions(self.stream.regions, *size)
            self._region_size = size

    def _sent(self, frame: Frame) -> None:
        if self._first_uncommitted is None:
            self._first_uncommitted = CommittedFrame(frame.frame_index, frame.pts_seconds, frame.wall_time)

    def _answered(self, outcome: StreamOutcome, reply: SegmentReply) -> None:
        outcome.batches.append((reply.replica, reply.batch_number, reply.batch_size, reply.batch_streams))
        outcome.replica_nodes.add(reply.node_id)
        outcome.mixed_batches += len(set(reply.batch_streams)) > 1
        outcome.frames_analysed += 1
        self.store.incr(self.job_id, self.stream.id, "analysed")
        # Monitoring only (`/metrics`, Ray's metrics): it must never fail the stream.
        latency = reply.areas.latency_seconds
        with contextlib.suppress(Exception):
            stream_metrics.record_latency(self.store, self.job_id, self.stream.id, latency)
        ray_metrics().frame_analysed(self.job_id, self.stream.id, latency)

    async def _hand_over(
        self,
        answered: list[FrameAreas],
        wall_times: list[float],
        epoch: int,
        commit: bool,
        clock: CommitClock,
    ) -> None:
        """Give answered frames to the writer; after a commit, remember the last frame it holds."""
        if not answered and not (commit and clock.handed):
            return
        committed = await self._call(
            self.writer.append.remote(self.job_id, self.stream.id, answered, wall_times, epoch, commit)
        )
        done = commit or committed > 0  # the writer commits everything it holds, or nothing
        clock.handed_over(len(answered), done)
        if answered:
            last = answered[-1]
            self._last_handed = CommittedFrame(last.frame_index, last.pts_seconds, wall_times[-1])
        if done and self._last_handed is not None:
            self._committed, self._first_uncommitted = self._last_handed, None

    async def _write_gaps(self, gaps: list[Gap], epoch: int) -> None:
        """Write the gaps reported so far; they stay listed until the writer has them, so a gap whose
        write failed is written by the next attempt."""
        if not gaps:
            return
        batch = list(gaps)
        await self._call(
            self.writer.add_gaps.remote(
                self.job_id, self.stream.id, [g.row(self.job_id) for g in batch], epoch
            )
        )
        del gaps[: len(batch)]

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


def _quiet(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """`task`, whose error is retrieved even if nobody awaits it (an abandoned attempt's frame getter)."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


def _request(
    frame: Frame,
    vocabulary: tuple[str, ...],
    version: int,
    return_labels: bool,
    regions: tuple[RegionSpec, ...],
) -> SegmentRequest:
    return SegmentRequest(
        stream_id=frame.stream_id,
        frame_index=frame.frame_index,
        pts_seconds=frame.pts_seconds,
        wall_time=frame.wall_time,
        vocabulary=vocabulary,
        image=ray.put(frame.image),
        return_labels=return_labels,
        vocabulary_version=version,
        regions=regions,
        original_size=frame.original_size,
    )
