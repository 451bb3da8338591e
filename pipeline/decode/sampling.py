"""Which decoded frames are worth segmenting.

Segmentation is far more expensive than decoding, so a job analyses a subset of frames. Two rules:

* `fps`: slots at k / fps seconds on the source's own PTS timeline, measured from the first frame's PTS;
  the first frame whose PTS reaches a slot is selected. Using PTS (not frame counts) keeps the sampled
  rate right for variable-frame-rate phone videos and for streams that drop frames.
* `every`: every Nth decoded frame (`frame_index % every == 0`), for when a fixed share of frames is
  wanted regardless of timing.

Timeline discontinuities (fps mode), defined so that a bad timestamp costs at most a couple of extra
samples and can never stall a stream or flood the segmenter:

* Forward gap or jump of any size: the frame that crosses the slot is selected once and the slots it
  jumped over are skipped (the next slot is the first one after that frame), so a 1-hour PTS jump yields
  one frame, not 3600.
* Backward jump (PTS lower than the previous frame's, e.g. an MPEG-TS 33-bit wrap, a camera restart, or
  concatenated segments): the timeline is re-anchored at that frame, which becomes slot 0 and is selected.
  Without this a wrapped live stream would wait hours for its PTS to catch up with the next slot.
* Small forward jitter needs no rule: slots are never more than 1/fps ahead of the last selected frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# PTS x time base is exact, but the float slot times k / fps are not; without a tolerance a frame at
# exactly 1.0 s could miss the 1 s slot because 3 * (1/3) == 0.9999999999999999 elsewhere in the math.
_EPSILON_SECONDS = 1e-6


@dataclass(frozen=True, slots=True)
class Sampler:
    """Describes which frames to analyse; immutable so one instance can be shared by many streams.

    Give exactly one of `fps` or `every`; with neither, 1 frame per second is sampled.

    Attributes:
        fps: frames per second of source time to select (> 0, finite).
        every: select every Nth decoded frame (>= 1).
    """

    fps: float | None = None
    every: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.every is not None:
            raise ValueError("Sampler takes either fps or every, not both")
        if self.fps is None and self.every is None:
            object.__setattr__(self, "fps", 1.0)
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"Sampler fps must be a positive finite number, got {self.fps!r}")
        if self.every is not None and (
            isinstance(self.every, bool) or int(self.every) != self.every or self.every < 1
        ):
            raise ValueError(f"Sampler every must be an integer >= 1, got {self.every!r}")

    def selector(self) -> FrameSelector:
        """Return fresh per-stream selection state; the Sampler itself stays stateless."""
        return FrameSelector(self)


class FrameSelector:
    """Stateful application of a `Sampler` to one stream; feed it every decoded frame, in order.

    It must see every frame (not only those a resumed stream yields) so that a resumed stream selects
    exactly the frames a full decode would.
    """

    __slots__ = ("_every", "_fps", "_last_pts", "_next_slot", "_origin")

    def __init__(self, sampler: Sampler) -> None:
        self._every = sampler.every
        self._fps = sampler.fps
        self._origin: float | None = None  # PTS of slot 0
        self._next_slot = 0  # index k of the next slot, at origin + k / fps
        self._last_pts: float | None = None

    def select(self, frame_index: int, pts_seconds: float) -> bool:
        """Whether the frame at `frame_index` (0-based, every decoded frame) with this PTS is sampled."""
        if self._every is not None:
            return frame_index % self._every == 0
        assert self._fps is not None
        fps = self._fps
        backwards = self._last_pts is not None and pts_seconds < self._last_pts - _EPSILON_SECONDS
        self._last_pts = pts_seconds
        if self._origin is None or backwards:
            self._origin = pts_seconds
            self._next_slot = 1
            return True
        elapsed = pts_seconds - self._origin
        if elapsed + _EPSILON_SECONDS < self._next_slot / fps:
            return False
        # Skip every slot this frame has already passed so a gap yields one frame, not a burst.
        # max() guards against float rounding putting floor() one slot short, which would select twice.
        self._next_slot = max(self._next_slot + 1, math.floor((elapsed + _EPSILON_SECONDS) * fps) + 1)
        return True
