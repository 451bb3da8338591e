"""Read a file at its own frame rate, as a camera would deliver it (a stream's `realtime: true`).

A file decodes as fast as the CPU allows, so a job over files says little about how the same job keeps up
with cameras. Pacing the frames by their timestamps rehearses a live deployment, or load-tests one, with
files: the job sees frames arrive at camera speed. The file is still a file: it is replayed exactly after a
crash, the queue behind it still applies back-pressure, and no frame is ever dropped to keep time. Pacing
only holds frames back, so a consumer that falls behind receives the late frames at once until it has
caught up with the schedule (like a camera's buffer draining), not fewer of them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from pipeline.frames import Frame


def paced(
    frames: Iterable[Frame],
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> Iterator[Frame]:
    """`frames`, each yielded no earlier than `start + (frame.pts_seconds - first_pts)`.

    `start` is `clock()` when the first frame is yielded (at once) and `first_pts` that frame's timestamp,
    so a file resumed mid-way is paced from where it resumes. Waiting is `stop.wait(delay)` when `stop` is
    given, so a shutdown is never held up by a long gap: once `stop` is set the iteration ends (before the
    next frame, waiting or not). Without `stop` it is `sleep(delay)` (default `time.sleep`); tests inject
    `clock` and `sleep` to run without waiting.

    A frame whose timestamp goes backwards (a broken or concatenated file restarting its clock) is yielded
    at once and becomes the new reference, so pacing carries on from it instead of racing through every
    frame up to the old timestamps. A frame without a finite timestamp is yielded at once. A jump forward
    is waited out in full, however long, as a camera that went quiet would be: a 10-minute gap in the file
    takes 10 minutes (`stop` still ends it).

    A frame that was held back gets its `wall_time` set to when it is released, its arrival on a camera's
    schedule. The caller owns `frames`: when the iteration ends early it is not closed here.
    """
    wait = sleep if sleep is not None else time.sleep
    start = 0.0
    first_pts: float | None = None
    last_pts = -math.inf
    for frame in frames:
        if stop is not None and stop.is_set():
            return
        pts = frame.pts_seconds
        if not math.isfinite(pts):
            yield frame
            continue
        if first_pts is None or pts < last_pts:
            start, first_pts = clock(), pts
        else:
            delay = start + (pts - first_pts) - clock()
            if delay > 0:
                if stop is None:
                    wait(delay)
                elif stop.wait(delay):
                    return
                # The frame "arrives" now, as a camera's would: its wall time (and so its latency)
                # counts from here, not from when it was decoded ahead of time.
                frame = dataclasses.replace(frame, wall_time=time.time())
        last_pts = pts
        yield frame
