"""Video decoding for the frame path: source -> sampled, upright RGB `Frame`s, with no Ray inside.

Modules: `source` opens inputs safely (allowlist, timeouts), `sampling` picks frames, `decoder` yields
them, `seek` resumes a file at a frame by seeking, `live` keeps a live network stream going across outages
(gap records; `supervisor` reconnects and runs the stall watchdog, with `outages`, `handoff` and
`interrupt`), `orientation` applies rotation metadata, `queues` buffers them between threads, `pacing`
releases a file's frames at its own frame rate (`realtime: true`), `probe` describes a source up front,
and `errors` holds the exceptions users act on.
"""

from pipeline.decode.decoder import DecodeStats, VideoDecoder, decode_frames, iter_frames
from pipeline.decode.errors import (
    DecodeError,
    NotAVideo,
    ProtocolNotAllowed,
    SourceNotFound,
    SourceStalled,
    SourceUnreachable,
)
from pipeline.decode.live import Gap, LiveSource, LiveTimeline, ReconnectPolicy, ResumePoint
from pipeline.decode.pacing import paced
from pipeline.decode.probe import VideoInfo, probe
from pipeline.decode.queues import FrameQueue, QueueClosed, QueuePolicy, frame_queue
from pipeline.decode.sampling import FrameSelector, Sampler
from pipeline.decode.source import (
    DEFAULT_ALLOWED_PROTOCOLS,
    OpenedSource,
    SourceOptions,
    open_source,
    source_scheme,
)
from pipeline.decode.supervisor import LiveStats

__all__ = [
    "DEFAULT_ALLOWED_PROTOCOLS",
    "DecodeError",
    "DecodeStats",
    "FrameQueue",
    "FrameSelector",
    "Gap",
    "LiveSource",
    "LiveStats",
    "LiveTimeline",
    "NotAVideo",
    "OpenedSource",
    "ProtocolNotAllowed",
    "QueueClosed",
    "QueuePolicy",
    "ReconnectPolicy",
    "ResumePoint",
    "Sampler",
    "SourceNotFound",
    "SourceOptions",
    "SourceStalled",
    "SourceUnreachable",
    "VideoDecoder",
    "VideoInfo",
    "decode_frames",
    "frame_queue",
    "iter_frames",
    "open_source",
    "paced",
    "probe",
    "source_scheme",
]
