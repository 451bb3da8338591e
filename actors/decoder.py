"""One decoder actor per stream: decode and sample with PyAV, send frames to the SAN pool, hand the
answers to the stream's writer in frame order.

Decoding runs in a thread that fills a bounded queue: for files the queue blocks (backpressure, nothing is
lost), for live sources it drops the oldest frame (counted) so a slow pool never makes a camera fall
behind real time. The actor resumes from the writer's first uncommitted frame, which makes a restarted
stream pick up exactly where its committed output ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.decode import DecodeError, Sampler, SourceOptions, VideoDecoder
from pipeline.decode.queues import FrameQueue, QueueClosed
from pipeline.frames import Frame, FrameAreas
from pipeline.jobs.spec import StreamSpec
from pipeline.jobs.state import JobStore


@dataclass(frozen=True)
class DecoderSettings:
    """Knobs of the per-stream loop.

    Attributes:
        max_in_flight: frames sent to the pool and not yet answered; enough to fill batches across replicas.
        queue_size: decoded frames waiting to be sent.
        flush_frames: answered frames handed to the writer per call.
        open_timeout_s, read_timeout_s: network source timeouts.
        poll_s: how often cancellation is checked and heartbeats are written.
    """

    max_in_flight: int = 16
    queue_size: int = 32
    flush_frames: int = 32
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    poll_s: float = 0.5


@dataclass
class StreamOutcome:
    stream_id: str
    status: str
    frames_analysed: int = 0
    error_kind: str | None = None
    error: str | None = None
    dropped_frames: int = 0
    node_id: str = ""
    replica_nodes: set[str] = field(default_factory=set)
    batches: list[tuple[str, int, int, tuple[str, ...]]] = field(default_factory=list)


def sampler_for(stream: StreamSpec) -> Sampler:
    if stream.sampling.every is not None:
        return Sampler(every=stream.sampling.every)
    return Sampler(fps=stream.sampling.fps or 1.0)


@ray.remote(num_cpus=0, max_restarts=0)
class StreamDecoder:
    """Runs one stream from its resume point to the end (or cancellation, or a decode error)."""

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
        self.stop = threading.Event()

    def _produce(
        self, frames: FrameQueue[Frame], start: int, failure: list[BaseException], counts: dict[str, int]
    ) -> None:
        options = SourceOptions(
            open_timeout=self.settings.open_timeout_s, read_timeout=self.settings.read_timeout_s
        )
        try:
            with VideoDecoder(
                self.stream.source,
                self.stream.id,
                sampler_for(self.stream),
                start_frame_index=start,
                options=options,
            ) as decoder:
                for frame in decoder:
                    counts["decoded"] = decoder.stats.frames_decoded
                    if self.stop.is_set():
                        break
                    frames.put(frame)
                counts["decoded"] = decoder.stats.frames_decoded
                counts["corrupt_packets"] = decoder.stats.corrupt_packets
        except QueueClosed:
            pass
        except BaseException as error:  # reported by the consumer, which owns the stream's state
            failure.append(error)
        finally:
            frames.close()

    async def run(self) -> StreamOutcome:
        job, sid = self.job_id, self.stream.id
        self.store.set_stream_status(job, sid, "running")
        start = await self.writer.resume_frame.remote()
        frames: FrameQueue[Frame] = FrameQueue(
            self.settings.queue_size, "drop_oldest" if self.stream.live else "block"
        )
        failure: list[BaseException] = []
        counts = {"decoded": 0, "corrupt_packets": 0}
        producer = threading.Thread(target=self._produce, args=(frames, start, failure, counts), daemon=True)
        producer.start()
        outcome = StreamOutcome(sid, "completed", node_id=ray.get_runtime_context().get_node_id())
        in_flight: collections.deque[tuple[Frame, Any]] = collections.deque()
        answered: list[FrameAreas] = []
        wall_times: list[float] = []
        reported = {"decoded": 0, "analysed": 0}
        last_poll = 0.0
        exhausted = False
        try:
            while not exhausted or in_flight:
                now = time.monotonic()
                if now - last_poll >= self.settings.poll_s:
                    last_poll = now
                    self.store.heartbeat(job, f"decoder:{sid}")
                    self._report(counts, reported, frames.dropped)
                    if self.store.cancel_requested(job):
                        outcome.status = "cancelled"
                        self.stop.set()
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
                reply = await response
                answered.append(reply.areas)
                wall_times.append(frame.wall_time)
                outcome.batches.append(
                    (reply.replica, reply.batch_number, reply.batch_size, reply.batch_streams)
                )
                outcome.replica_nodes.add(reply.node_id)
                reported["analysed"] += 1
                self.store.incr(job, sid, "analysed")
                if len(answered) >= self.settings.flush_frames:
                    await self.writer.append.remote(answered, wall_times)
                    answered, wall_times = [], []
            producer.join(timeout=5)
            await self.writer.append.remote(answered, wall_times)
            await self.writer.close.remote()
        finally:
            self.stop.set()
            frames.cancel()
            self._report(counts, reported, frames.dropped)
        outcome.frames_analysed = reported["analysed"]
        outcome.dropped_frames = frames.dropped
        if failure and outcome.status != "cancelled":
            error = failure[0]
            outcome.status = "failed"
            outcome.error_kind = type(error).__name__
            outcome.error = (
                str(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error}"
            )
            self.store.record_error(job, sid, outcome.error_kind, outcome.error)
        self.store.set_stream_status(job, sid, outcome.status)
        return outcome

    def _report(self, counts: dict[str, int], reported: dict[str, int], dropped: int = 0) -> None:
        if dropped > reported.get("dropped", 0):
            with contextlib.suppress(Exception):
                self.store.incr(self.job_id, self.stream.id, "dropped", dropped - reported.get("dropped", 0))
                reported["dropped"] = dropped
        decoded = counts["decoded"]
        if decoded > reported["decoded"]:
            with contextlib.suppress(Exception):
                self.store.incr(self.job_id, self.stream.id, "decoded", decoded - reported["decoded"])
                reported["decoded"] = decoded


def _request(frame: Frame, vocabulary: tuple[str, ...], return_labels: bool) -> Any:
    from actors.segmentation import SegmentRequest

    return SegmentRequest(
        stream_id=frame.stream_id,
        frame_index=frame.frame_index,
        pts_seconds=frame.pts_seconds,
        wall_time=frame.wall_time,
        vocabulary=vocabulary,
        image=ray.put(frame.image),
        return_labels=return_labels,
    )
