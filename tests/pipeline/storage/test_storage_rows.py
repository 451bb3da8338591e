from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.storage.rows import (
    class_area_rows,
    class_area_table,
    frame_rows,
    records_table,
    vocabulary_rows,
)
from pipeline.storage.schema import CLASS_AREAS, ERRORS, FRAMES, GAPS, VOCABULARIES

VOCAB = ["sky", "car", "person", "tree"]


def test_one_row_per_class_including_zeros(make_areas):
    rows = class_area_rows(make_areas("cam", 7, [60, 0, 40, 0]), VOCAB, "job-1")
    assert rows.schema.equals(CLASS_AREAS)
    assert rows.num_rows == len(VOCAB)
    assert rows["class_id"].to_pylist() == [0, 1, 2, 3]
    assert rows["class_name"].to_pylist() == VOCAB
    assert rows["pixels"].to_pylist() == [60, 0, 40, 0]
    assert rows["fraction"].to_pylist() == [0.6, 0.0, 0.4, 0.0]
    assert set(rows["job_id"].to_pylist()) == {"job-1"}
    assert set(rows["stream_id"].to_pylist()) == {"cam"}
    assert rows.schema.field("stream_id").type == pa.string()  # plain, not dictionary-encoded
    assert set(rows["frame_index"].to_pylist()) == {7}
    assert set(rows["pts_seconds"].to_pylist()) == {3.5}


def test_fractions_sum_to_one_when_pixels_cover_the_frame(make_areas):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(20):
        cuts = np.sort(rng.integers(0, 48 * 64, size=len(VOCAB) - 1))
        pixels = np.diff(np.concatenate([[0], cuts, [48 * 64]]))
        frames.append(make_areas("cam", i, pixels, height=48, width=64))
    table = class_area_table(frames, VOCAB, "job-1")
    assert table.num_rows == 20 * len(VOCAB)
    sums = table.group_by("frame_index").aggregate([("fraction", "sum")])["fraction_sum"].to_numpy()
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)
    assert table["frame_index"].to_pylist() == [i for i in range(20) for _ in VOCAB]


def test_pixel_count_must_match_vocabulary(make_areas):
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        class_area_rows(make_areas("cam", 0, [1, 2, 3]), VOCAB, "job-1")


def test_one_batch_holds_one_stream(make_areas):
    with pytest.raises(ValueError, match="mixed"):
        class_area_table([make_areas("a", 0, [1, 1, 1, 97]), make_areas("b", 0, [1, 1, 1, 97])], VOCAB, "j")


def test_frames_and_vocabulary_rows_match_their_schemas(make_areas):
    areas = [make_areas("cam", i, [25, 25, 25, 25]) for i in range(3)]
    frames = frame_rows(areas, [100.0, 100.5, 101.0], "job-1")
    assert frames.schema.equals(FRAMES)
    assert frames["wall_time"].to_pylist() == [100.0, 100.5, 101.0]
    assert frames["width"].to_pylist() == [10, 10, 10]
    vocab = vocabulary_rows("job-1", "cam", VOCAB)
    assert vocab.schema.equals(VOCABULARIES)
    assert vocab["class_id"].to_pylist() == [0, 1, 2, 3]
    for table in (frames, vocab):
        assert table.schema.field("stream_id").type == pa.string()
        assert table["stream_id"].to_pylist() == ["cam"] * table.num_rows


def test_records_table_checks_columns():
    record = {"job_id": "j", "stream_id": "cam", "time": 1.0, "kind": "decode", "message": "eof"}
    table = records_table("errors", [record])
    assert table.schema.equals(ERRORS)
    assert table["stream_id"].type == pa.string()
    gaps = records_table(
        "gaps",
        [{"job_id": "j", "stream_id": "007", "start_pts": 1.0, "end_pts": 2.0, "start_wall": 3.0,
          "end_wall": 4.0, "reason": "reconnect"}],
    )  # fmt: skip
    assert gaps.schema.equals(GAPS) and gaps["stream_id"].to_pylist() == ["007"]
    with pytest.raises(ValueError, match="missing"):
        records_table("errors", [{"job_id": "j"}])
    assert isinstance(records_table("gaps", []), pa.Table)
