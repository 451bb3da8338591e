"""Apply a video's display matrix so frames are analysed upright.

Phones record portrait video as landscape pixels plus a display matrix saying "rotate for display".
Segmenting the raw pixels would feed the model sideways scenes, which it segments badly, and would make
label maps disagree with what users see in any player. FFmpeg's decoder attaches the matrix to every frame
as DISPLAYMATRIX side data; this module turns it into array operations.

The mapping reproduces what the `ffmpeg` CLI (and therefore players built on FFmpeg) display, including
mirrored matrices, and was checked against `ffmpeg` for all eight right-angle orientations (see the
tests). Matrices that are not a multiple of 90 degrees are snapped to the nearest right angle rather than
resampled: such files are practically non-existent and resampling would blur every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np


@dataclass(frozen=True, slots=True)
class Orientation:
    """A right-angle display transform: optional transpose, then optional row and column flips.

    This parameterisation maps directly onto cheap numpy views; `rotation` and `mirrored` describe the
    same transform in the words a user expects.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's 3x3 display matrix (9 int32, row-major, 16.16 fixed point for the 2x2 part).

        The matrix maps source (x, y) to display (a*x + c*y, b*x + d*y). When the diagonal dominates,
        display x follows source x (flip columns if a < 0) and display y follows source y (flip rows if
        d < 0); otherwise the axes swap: transpose, then flip rows if b < 0 and columns if c < 0.
        """
        a, b, c, d = int(matrix[0]), int(matrix[1]), int(matrix[3]), int(matrix[4])
        if abs(a) + abs(d) >= abs(b) + abs(c):
            return cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
        return cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0)

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) applied to frames, before any mirroring."""
        return _AS_ROTATION[self][0]

    @property
    def mirrored(self) -> bool:
        """Whether frames are also mirrored left-right after the rotation."""
        return _AS_ROTATION[self][1]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Return `image` (H x W [x C]) as displayed; a contiguous copy when anything changed, because
        downstream code (torch.from_numpy, Arrow) wants contiguous memory, not negative-stride views."""
        if self.is_identity:
            return image
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def _rotation_table() -> dict[Orientation, tuple[int, bool]]:
    """Name each of the 8 orientations as (ccw rotation, mirror) by comparing their effect on a probe
    array, so the naming cannot drift from `apply`."""
    probe = np.arange(6).reshape(2, 3)
    table: dict[Orientation, tuple[int, bool]] = {}
    for transpose in (False, True):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                o = Orientation(transpose, flip_rows, flip_cols)
                got = o.apply(probe)
                for k in range(4):
                    for mirror in (False, True):
                        want = np.rot90(probe, k)
                        want = want[:, ::-1] if mirror else want
                        if want.shape == got.shape and np.array_equal(want, got) and o not in table:
                            table[o] = (90 * k, mirror)
    return table


_AS_ROTATION = _rotation_table()
IDENTITY = Orientation()


def frame_orientation(frame: av.VideoFrame) -> Orientation:
    """The orientation carried by `frame`'s DISPLAYMATRIX side data, or identity when it has none."""
    for side_data in frame.side_data:
        kind = getattr(getattr(side_data, "type", None), "name", None)
        if kind == "DISPLAYMATRIX":
            matrix = np.frombuffer(bytes(side_data), dtype=np.int32)
            if matrix.size >= 9:
                return Orientation.from_display_matrix(matrix.tolist())
    return IDENTITY
