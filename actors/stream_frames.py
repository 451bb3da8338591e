"""Where one stream's decoding restarts after a failure, and the thread that decodes from there: the
source side of `actors.decoder.StreamRunner`, which subclasses `StreamFrames`.

Kept apart from the runner's loop because this side talks only to the source (PyAV, through
`pipeline.decode`) and to the store's record of committed parts, never to the pool or the writer.

Every attempt decodes from the writer's first uncommitted frame (`WriterStart.next_frame`). A file replays
from there (seeking to the keyframe before it). A live source cannot replay: what the failed attempt
analysed but did not commit is lost, so the new attempt continues the timeline after the last committed
frame and records the loss as a `gaps` row (see `ResumePoint`); it reconnects on its own and reports its
connection state through `ConnectionStatus`.

The decoding thread fills the attempt's bounded `FrameQueue`, paced to the file's own frame rate for a
`realtime` file and compacted when the settings ask for it; any error it meets is handed to the loop,
which owns the stream's state.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

from actors.flow import CommittedFrame, ConnectionStatus
from actors.stream_config import DecoderSettings
from pipeline.decode import (
    Gap,
    LiveSource,
    ReconnectPolicy,
    ResumePoint,
    Sampler,
    SourceOptions,
    VideoDecoder,
)
from pipeline.decode.compact import compact_frame
from pipeline.decode.pacing import paced
from pipeline.decode.queues import FrameQueue, QueueClosed
from pipeline.frames import Frame
from pipeline.jobs.state import JobStore
from pipeline.jobs.stream_spec import StreamSpec
from pipeline.storage.stream_sink import WriterStart


def sampler_for(stream: StreamSpec) -> Sampler:
    if stream.sampling.every is not None:
        return Sampler(every=stream.sampling.every)
    return Sampler(fps=stream.sampling.fps or 1.0)


class StreamFrames:
    """The decoding side of a `StreamRunner`, which subclasses it and sets the state below: the stream
    and its settings, the store, the connection status a live source reports to, and what the runner
    knows of the committed position (see `StreamRunner.__init__`)."""

    job_id: str
    stream: StreamSpec
    store: JobStore
    settings: DecoderSettings
    connection: ConnectionStatus
    _committed: CommittedFrame | None
    _first_uncommitted: CommittedFrame | None
    _loss: str | None

    def _resume_point(self, begun: WriterStart) -> ResumePoint | None:
        """Where a live stream's new attempt continues: after the last committed frame, or after the
        first frame of a loss when nothing was committed yet; None for a fresh stream.

        The wall time of the committed frame is this actor's memory of it, or for a restarted actor (or
        a resumed job) the time its part was recorded, a little later than the frame arrived."""
        reason = self._loss or "restart: frames analysed after the last committed one were not kept"
        if begun.last_pts is None:
            lost = self._first_uncommitted
            return None if lost is None else ResumePoint(lost.pts_seconds, lost.wall_time, reason)
        known = self._committed
        if known is not None and known.frame_index == begun.next_frame - 1:
            wall = known.wall_time
        else:
            records = self.store.committed_parts(self.job_id, self.stream.id, "class_areas")
            times = [float(r["time"]) for r in records if r.get("last_frame") == begun.next_frame - 1]
            wall = max(times, default=time.time())
        return ResumePoint(begun.last_pts, wall, reason)

    def _produce(
        self,
        frames: FrameQueue[Frame],
        begun: WriterStart,
        resume: ResumePoint | None,
        failure: list[BaseException],
        counts: dict[str, int],
        stop: threading.Event,
        gaps: list[Gap],
    ) -> None:
        """Decoder thread: fill `frames` from the source; any error is handed to the consumer, which owns
        the stream's state."""
        try:
            source = self._frames(begun, resume, stop, gaps, counts)
            if self.stream.realtime and not self.stream.live:
                source = paced(source, stop)
            for frame in source:
                if stop.is_set():
                    break
                frames.put(compact_frame(frame) if self.settings.compact_frames else frame)
        except QueueClosed:
            pass
        except BaseException as error:
            failure.append(error)
        finally:
            frames.close()

    def _frames(
        self,
        begun: WriterStart,
        resume: ResumePoint | None,
        stop: threading.Event,
        gaps: list[Gap],
        counts: dict[str, int],
    ) -> Iterator[Frame]:
        """Sampled frames from the committed position on; `counts["decoded"]` follows the source frames
        decoded so far (sampled or not).

        Files resume at `begun.next_frame` by frame index, seeking there when the committed frame's PTS
        confirms the file's index (see `pipeline.decode.seek`). A live source reconnects on its own
        (capped back-off, stall watchdog) and reports outages as gaps; its frame indices count frames as
        received and are continued here from the committed position, its timeline from the committed
        frame (`ResumePoint`)."""
        start = begun.next_frame
        options = SourceOptions(
            open_timeout=self.settings.open_timeout_s, read_timeout=self.settings.read_timeout_s
        )
        sampler = sampler_for(self.stream)
        if not self.stream.live:
            with VideoDecoder(
                self.stream.source,
                self.stream.id,
                sampler,
                start_frame_index=start,
                resume_pts=begun.last_pts if start > 0 else None,
                options=options,
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
            resume=resume,
            on_status=self.connection,
        ) as source:
            for frame in source:
                counts["decoded"] = start + source.stats.frames_decoded
                yield dataclasses.replace(frame, frame_index=frame.frame_index + start)


__all__ = ["StreamFrames", "sampler_for"]
