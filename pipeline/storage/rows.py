"""Turn frame-path records into Arrow tables that match `schema` exactly.

Columns are built as whole numpy/Arrow arrays: at 1000 classes and dozens of frames per second a
per-row dict would cost more than the segmentation's own bookkeeping. Constant string columns are
produced with `take` on a one-element array rather than Python lists of repeated strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.frames import FrameAreas
from pipeline.storage.schema import CLASS_AREAS, FRAMES, REGION_AREAS, VOCABULARIES, table_spec


def _repeat(value: str, n: int) -> pa.Array:
    return pc.take(pa.array([value], pa.string()), pa.array(np.zeros(n, dtype=np.int32)))


def class_area_rows(areas: FrameAreas, vocabulary: Sequence[str], job_id: str) -> pa.Table:
    """One `class_areas` row per vocabulary class for one frame, zero-pixel classes included.

    Zeros are kept so that "class absent" is a row with fraction 0 rather than a missing row, which
    makes means over time correct without knowing the frame count.
    """
    return class_area_table([areas], vocabulary, job_id)


def class_area_table(
    areas: Sequence[FrameAreas], vocabulary: Sequence[str] | Mapping[int, Sequence[str]], job_id: str
) -> pa.Table:
    """`class_areas` rows for several frames of one stream, frame-major.

    `vocabulary` is the stream's class names, or its vocabularies by version when frames were analysed
    with different ones (a vocabulary changed while the stream ran): each frame's `vocabulary_version`
    picks its names.
    """
    if not isinstance(vocabulary, Mapping):
        return _one_version_table(areas, vocabulary, job_id)
    if not areas:
        return CLASS_AREAS.empty_table()
    runs: list[pa.Table] = []
    start = 0
    for end in range(1, len(areas) + 1):
        if end == len(areas) or areas[end].vocabulary_version != areas[start].vocabulary_version:
            version = areas[start].vocabulary_version
            if version not in vocabulary:
                raise ValueError(
                    f"stream {areas[start].stream_id!r} frame {areas[start].frame_index}: vocabulary version "
                    f"{version} is unknown here (known: {sorted(vocabulary)})"
                )
            runs.append(_one_version_table(areas[start:end], vocabulary[version], job_id))
            start = end
    return pa.concat_tables(runs)


def _one_version_table(areas: Sequence[FrameAreas], vocabulary: Sequence[str], job_id: str) -> pa.Table:
    n_classes = len(vocabulary)
    if n_classes == 0:
        raise ValueError("vocabulary is empty; a stream needs at least one class")
    if not areas:
        return CLASS_AREAS.empty_table()
    stream_id = areas[0].stream_id
    pixels = np.empty((len(areas), n_classes), dtype=np.int64)
    frame_area = np.empty(len(areas), dtype=np.int64)
    for i, item in enumerate(areas):
        if item.stream_id != stream_id:
            raise ValueError(f"frames of streams {stream_id!r} and {item.stream_id!r} mixed in one batch")
        counts = np.asarray(item.pixels)
        if counts.shape != (n_classes,):
            raise ValueError(
                f"stream {stream_id!r} frame {item.frame_index}: pixels has shape {counts.shape}, "
                f"expected ({n_classes},) for a {n_classes}-class vocabulary"
            )
        if item.height <= 0 or item.width <= 0:
            raise ValueError(
                f"stream {stream_id!r} frame {item.frame_index}: empty frame {item.width}x{item.height}"
            )
        pixels[i] = counts
        frame_area[i] = item.height * item.width

    n_rows = pixels.size
    frame_index = np.fromiter((a.frame_index for a in areas), dtype=np.int64, count=len(areas))
    pts = np.fromiter((a.pts_seconds for a in areas), dtype=np.float64, count=len(areas))
    class_ids = np.tile(np.arange(n_classes, dtype=np.int32), len(areas))
    fraction = (pixels / frame_area[:, None]).reshape(-1)
    columns = [
        _repeat(job_id, n_rows),
        _repeat(stream_id, n_rows),
        pa.array(np.repeat(frame_index, n_classes)),
        pa.array(np.repeat(pts, n_classes)),
        pa.array(class_ids),
        pc.take(pa.array(list(vocabulary), pa.string()), pa.array(class_ids)),
        pa.array(pixels.reshape(-1)),
        pa.array(fraction),
        pa.array(
            np.repeat(
                np.fromiter((a.vocabulary_version for a in areas), dtype=np.int32, count=len(areas)),
                n_classes,
            )
        ),
    ]
    return pa.Table.from_arrays(columns, schema=CLASS_AREAS)


def region_area_table(
    areas: Sequence[FrameAreas], vocabularies: Mapping[int, Sequence[str]], job_id: str
) -> pa.Table:
    """`region_areas` rows for frames of one stream: per frame, region (in the spec's order) and class,
    zeros included; `fraction` is of the region's pixels. Frames without regions give no rows."""
    tables = [_frame_region_table(item, vocabularies, job_id) for item in areas if item.region_names]
    return pa.concat_tables(tables) if tables else REGION_AREAS.empty_table()


def _frame_region_table(item: FrameAreas, vocabularies: Mapping[int, Sequence[str]], job_id: str) -> pa.Table:
    names = vocabularies.get(item.vocabulary_version)
    if names is None:
        raise ValueError(
            f"stream {item.stream_id!r} frame {item.frame_index}: vocabulary version {item.vocabulary_version} "
            f"is unknown here (known: {sorted(vocabularies)})"
        )
    pixels = np.asarray(item.region_pixels, dtype=np.int64)
    n_regions, n_classes = len(item.region_names), len(names)
    if pixels.shape != (n_regions, n_classes):
        raise ValueError(
            f"stream {item.stream_id!r} frame {item.frame_index}: region pixels have shape {pixels.shape}, "
            f"expected ({n_regions}, {n_classes}) for {n_regions} regions and {n_classes} classes"
        )
    totals = pixels.sum(axis=1, keepdims=True)
    fraction = np.divide(pixels, totals, out=np.zeros(pixels.shape), where=totals > 0)
    n_rows = pixels.size
    class_ids = np.tile(np.arange(n_classes, dtype=np.int32), n_regions)
    region_index = np.repeat(np.arange(n_regions, dtype=np.int32), n_classes)
    columns = [
        _repeat(job_id, n_rows),
        _repeat(item.stream_id, n_rows),
        pa.array(np.full(n_rows, item.frame_index, dtype=np.int64)),
        pa.array(np.full(n_rows, item.pts_seconds, dtype=np.float64)),
        pc.take(pa.array(list(item.region_names), pa.string()), pa.array(region_index)),
        pa.array(class_ids),
        pc.take(pa.array(list(names), pa.string()), pa.array(class_ids)),
        pa.array(pixels.reshape(-1)),
        pa.array(fraction.reshape(-1)),
        pa.array(np.full(n_rows, item.vocabulary_version, dtype=np.int32)),
    ]
    return pa.Table.from_arrays(columns, schema=REGION_AREAS)


def frame_rows(areas: Sequence[FrameAreas], wall_times: Sequence[float], job_id: str) -> pa.Table:
    """`frames` rows: one per analysed frame, `wall_time` being the frame's arrival (`Frame.wall_time`).

    `FrameAreas` does not carry the arrival time, so the caller passes it alongside.
    """
    if len(wall_times) != len(areas):
        raise ValueError(f"{len(areas)} frames but {len(wall_times)} wall times")
    n = len(areas)
    stream_ids = {a.stream_id for a in areas}
    if len(stream_ids) > 1:
        raise ValueError(f"frames of several streams mixed in one batch: {sorted(stream_ids)}")
    stream_id = next(iter(stream_ids), "")
    columns = [
        _repeat(job_id, n),
        _repeat(stream_id, n),
        pa.array(np.fromiter((a.frame_index for a in areas), dtype=np.int64, count=n)),
        pa.array(np.fromiter((a.pts_seconds for a in areas), dtype=np.float64, count=n)),
        pa.array(np.asarray(wall_times, dtype=np.float64)),
        pa.array(np.fromiter((a.width for a in areas), dtype=np.int32, count=n)),
        pa.array(np.fromiter((a.height for a in areas), dtype=np.int32, count=n)),
        pa.array(np.fromiter((a.latency_seconds for a in areas), dtype=np.float64, count=n)),
    ]
    return pa.Table.from_arrays(columns, schema=FRAMES)


def vocabulary_rows(job_id: str, stream_id: str, vocabulary: Sequence[str], version: int = 1) -> pa.Table:
    """`vocabularies` rows, so `class_id` in `class_areas` can be joined back to names per stream and
    vocabulary version."""
    n = len(vocabulary)
    columns = [
        _repeat(job_id, n),
        _repeat(stream_id, n),
        pa.array(np.arange(n, dtype=np.int32)),
        pa.array(list(vocabulary), pa.string()),
        pa.array(np.full(n, version, dtype=np.int32)),
    ]
    return pa.Table.from_arrays(columns, schema=VOCABULARIES)


def records_table(table: str, records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows for the low-volume tables (`errors`, `gaps`, `events`) from plain mappings, checked against the schema.

    These tables see a handful of rows per stream, so clarity beats columnar building here.
    """
    schema = table_spec(table).schema
    for i, record in enumerate(records):
        extra = set(record) - set(schema.names)
        missing = set(schema.names) - set(record)
        if extra or missing:
            raise ValueError(
                f"{table} record {i}: missing {sorted(missing)} / unexpected {sorted(extra)} columns"
            )
    return pa.Table.from_pylist(list(records), schema=schema)
