"""What a decoder's stream loop is configured with and what it reports: kept apart from the loop itself
(`actors.decoder`) so the driver and tests can build settings and read outcomes without the loop's
machinery."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pipeline.jobs.spec import DEFAULT_FLUSH_INTERVAL_S
from pipeline.webhook import WebhookSpec

BATCH_LOG = 256  # replica batches remembered per stream, for diagnostics and tests (bounded memory)


@dataclass(frozen=True)
class DecoderSettings:
    """Knobs of the per-stream loop.

    Attributes:
        max_in_flight: frames sent to the pool and not yet answered; enough to fill batches across replicas.
        queue_size: decoded frames waiting to be sent.
        flush_frames: answered frames handed to the writer per call.
        flush_interval_s: longest time an answered frame waits before it is committed (the job spec's
            `flush_interval_s`), whatever the frame rate.
        error_interval_s: least time between two recorded connection errors of a live source that
            keeps failing to connect; the ones in between are counted in the next record.
        open_timeout_s, read_timeout_s: network source timeouts.
        poll_s: how often cancellation is checked and heartbeats are written.
        max_recoveries: attempts restarted after a writer or replica failure before the stream fails.
        live_max_attempts: reconnection attempts in a row without a frame before a live stream fails
            (None: keep trying until cancelled).
        compact_frames: resize frames to the model's input size before sending them to the pool
            (`pipeline.decode.compact`): a fifth of the bytes of a 1080p frame, same class areas.
    """

    max_in_flight: int = 16
    queue_size: int = 8
    flush_frames: int = 32
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    error_interval_s: float = 30.0
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    poll_s: float = 0.5
    max_recoveries: int = 20
    live_max_attempts: int | None = None
    compact_frames: bool = True


@dataclass(frozen=True)
class JobContext:
    """What the streams of one job share, passed with every stream to whichever actors carry it: a
    decoder or writer may carry streams of many jobs at once (the service keeps them warm for every job),
    so nothing job-specific is fixed when the actor starts.

    Attributes:
        output: the job's output folder (its writer's parts go there).
        commit_interval_s: how often a writer commits each stream's parts (see `StreamSink`).
        return_labels: replicas also send label maps (the spec's `store_labels`).
        webhook: where the streams' alert records are also POSTed (the spec's `webhook`).
    """

    job_id: str
    output: str
    settings: DecoderSettings = field(default_factory=DecoderSettings)
    commit_interval_s: float = 10.0
    return_labels: bool = False
    webhook: WebhookSpec | None = None


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
