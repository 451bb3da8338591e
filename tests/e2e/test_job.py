"""A real job through real Ray, Serve, Redis, PyAV and Parquet: two streams with different vocabularies,
and one bad stream that must not stop them."""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from actors.job import JobOutcome, run_job
from actors.stream_config import DecoderSettings
from pipeline.cli.main import main as cli
from pipeline.decode import Sampler, decode_frames
from pipeline.jobs.spec import JobSpec, parse_job_spec
from pipeline.sample_video import write_sample_video
from pipeline.san import Segmenter, load_checkpoint

STREET = ["sky", "road", "car, automobile", "person"]
WIDE_SIZE = (720, 1280)
RIVER = ["water", "grass", "bridge"]


def job_spec(out: Path, videos: dict[str, Path], extra_streams: list[dict] | None = None) -> JobSpec:
    return parse_job_spec(
        {
            "job_id": f"e2e-{out.name}",
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(out),
            "streams": [
                {
                    "id": "street",
                    "source": str(videos["street"]),
                    "vocabulary": STREET,
                    "sampling": {"fps": 4},
                },
                {
                    "id": "river",
                    "source": str(videos["river"]),
                    "vocabulary": RIVER,
                    "sampling": {"every": 3},
                },
                *(extra_streams or []),
            ],
            # A batch holds more frames than one stream keeps in flight, and waits long enough for the other
            # stream, so replica batches mix the two streams.
            "serve": {"batch_size": 8, "batch_wait_timeout_s": 1.0},
        }
    )


@functools.cache
def bare_segmenter() -> Segmenter:
    return Segmenter(load_checkpoint("random", model="san_tiny_test"))


@pytest.fixture(scope="module")
def finished(
    local_ray: None, videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[JobOutcome, Path, Path]:
    out = tmp_path_factory.mktemp("job-out")
    not_video = out.parent / "notes.mp4"
    not_video.write_text("this is not a video")
    # Larger than the model's input: its decoder compacts the frames (pipeline.decode.compact).
    wide = write_sample_video(out.parent / "wide.mp4", seconds=0.5, fps=10, size=WIDE_SIZE)
    spec = job_spec(
        out,
        videos,
        [
            {"id": "missing", "source": str(out.parent / "missing.mp4"), "vocabulary": ["x"]},
            {"id": "text", "source": str(not_video), "vocabulary": ["y"]},
            {"id": "wide", "source": str(wide), "vocabulary": RIVER, "sampling": {"every": 3}},
            {  # a region in pixels beyond the frame: known to be wrong only once the frame size is
                "id": "gate",
                "source": str(videos["street"]),
                "vocabulary": ["z"],
                "regions": [{"name": "gate", "polygon": [[0, 0], [5000, 0], [0, 10]], "units": "pixels"}],
            },
        ],
    )
    outcome = run_job(
        spec, settings=DecoderSettings(max_in_flight=4), show_progress=False, commit_interval_s=0.5
    )
    return outcome, out, not_video


def read(out: Path, sql: str) -> list[tuple]:
    return duckdb.sql(sql.format(areas=f"read_parquet('{out}/class_areas/**/*.parquet')")).fetchall()


def test_good_streams_complete_and_bad_ones_fail_with_their_error(
    finished: tuple[JobOutcome, Path, Path],
) -> None:
    outcome, _, not_video = finished
    assert outcome.status == "completed"
    assert {sid: s.status for sid, s in outcome.streams.items()} == {
        "street": "completed",
        "river": "completed",
        "missing": "failed",
        "text": "failed",
        "gate": "failed",
        "wide": "completed",
    }
    gate = outcome.streams["gate"]
    assert (
        gate.error_kind == "RegionError" and "region 'gate': point 1 (5000, 0) is outside the" in gate.error
    )
    assert "no such file" in outcome.streams["missing"].error
    assert (
        outcome.streams["text"].error_kind == "NotAVideo" and str(not_video) in outcome.streams["text"].error
    )


def test_one_row_per_sampled_frame_per_class(
    finished: tuple[JobOutcome, Path, Path], videos: dict[str, Path]
) -> None:
    _, out, _ = finished
    expected = {
        "street": [f.frame_index for f in decode_frames(videos["street"], "street", Sampler(fps=4))],
        "river": [f.frame_index for f in decode_frames(videos["river"], "river", Sampler(every=3))],
    }
    assert expected["street"] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]  # 10 fps sampled at 4 fps
    assert expected["river"] == list(range(0, 24, 3))
    for stream, vocabulary in (("street", STREET), ("river", RIVER)):
        rows = read(
            out,
            f"SELECT frame_index, class_id, class_name FROM {{areas}} WHERE stream_id = '{stream}' ORDER BY frame_index, class_id",
        )
        assert rows == [(f, c, vocabulary[c]) for f in expected[stream] for c in range(len(vocabulary))]
    assert read(out, "SELECT DISTINCT stream_id FROM {areas} ORDER BY 1") == [
        ("river",),
        ("street",),
        ("wide",),
    ]


def test_fractions_sum_to_one_and_time_increases(finished: tuple[JobOutcome, Path, Path]) -> None:
    _, out, _ = finished
    sums = read(
        out,
        "SELECT stream_id, frame_index, sum(fraction), sum(pixels), any_value(pts_seconds) FROM {areas} GROUP BY 1, 2 ORDER BY 1, 2",
    )
    for stream_id, _frame, total, pixels, _pts in sums:
        assert total == pytest.approx(1.0, abs=1e-12)
        assert (
            pixels == {"street": 96 * 128, "river": 64 * 96, "wide": WIDE_SIZE[0] * WIDE_SIZE[1]}[stream_id]
        )
    for stream in ("street", "river"):
        pts = [row[4] for row in sums if row[0] == stream]
        assert all(b > a for a, b in itertools.pairwise(pts))
    assert read(out, "SELECT min(pts_seconds), max(pts_seconds) FROM {areas} WHERE stream_id = 'street'") == [
        (0.0, 2.8)
    ]


def test_each_frame_gets_its_own_vocabulary_answer(
    finished: tuple[JobOutcome, Path, Path], videos: dict[str, Path]
) -> None:
    """Pixel counts written by the pipeline equal the bare Segmenter's on the same frames and vocabulary
    (on the full frames: `wide`'s were compacted to the model's input size by its decoder)."""
    _, out, _ = finished
    for stream, vocabulary, sampler in (
        ("street", STREET, Sampler(fps=4)),
        ("river", RIVER, Sampler(every=3)),
        ("wide", RIVER, Sampler(every=3)),
    ):
        source = videos[stream] if stream in videos else out.parent / "wide.mp4"
        frames = list(decode_frames(source, stream, sampler))
        direct = bare_segmenter().segment(
            [f.image for f in frames], [vocabulary] * len(frames), return_labels=False
        )
        rows = read(
            out,
            f"SELECT frame_index, list(pixels ORDER BY class_id) FROM {{areas}} WHERE stream_id = '{stream}' GROUP BY 1 ORDER BY 1",
        )
        assert [r[0] for r in rows] == [f.frame_index for f in frames]
        for (_, written), result in zip(rows, direct, strict=True):
            np.testing.assert_array_equal(np.array(written), result.areas)


def test_frames_of_both_streams_share_replica_batches(finished: tuple[JobOutcome, Path, Path]) -> None:
    outcome, _, _ = finished
    mixed = {b for s in outcome.streams.values() for b in s.batches if {"street", "river"} <= set(b[3])}
    assert mixed, "no replica batch held frames of both streams"


def test_status_json_after_the_run_exited(
    finished: tuple[JobOutcome, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    outcome, out, _ = finished
    assert cli(["status", outcome.job_id, "--out", str(out), "--json"]) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["status"] == "completed"
    streams = snapshot["streams"]
    assert streams["street"]["status"] == "completed" and streams["street"]["analysed"] == 12
    assert streams["street"]["written"] == 12 and streams["street"]["last_written_frame"] == 28
    assert streams["river"]["analysed"] == 8 and streams["river"]["written"] == 8
    assert streams["street"]["decoded"] == 30 and streams["river"]["decoded"] == 24
    assert streams["missing"]["status"] == "failed" and streams["missing"]["errors"]
    assert any(e["stream_id"] == "text" and e["kind"] == "NotAVideo" for e in snapshot["errors"])


def test_frames_and_vocabulary_tables(finished: tuple[JobOutcome, Path, Path]) -> None:
    _, out, _ = finished
    frames = duckdb.sql(
        f"SELECT stream_id, count(*), min(width), min(height), min(latency_seconds) FROM read_parquet('{out}/frames/**/*.parquet') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert frames[0][:4] == ("river", 8, 96, 64) and frames[1][:4] == ("street", 12, 128, 96)
    assert frames[2][:4] == ("wide", 2, WIDE_SIZE[1], WIDE_SIZE[0])  # the original size, not the model's
    assert all(row[4] > 0 for row in frames)
    vocab = duckdb.sql(
        f"SELECT stream_id, list(class_name ORDER BY class_id) FROM read_parquet('{out}/vocabularies/**/*.parquet') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert dict(vocab) == {
        "gate": ["z"],
        "missing": ["x"],
        "river": RIVER,
        "street": STREET,
        "text": ["y"],
        "wide": RIVER,
    }


def test_stream_errors_are_queryable_in_parquet(finished: tuple[JobOutcome, Path, Path]) -> None:
    _, out, _ = finished
    rows = duckdb.sql(
        f"SELECT stream_id, kind, message FROM read_parquet('{out}/errors/**/*.parquet') ORDER BY 1"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [
        ("gate", "RegionError"),
        ("missing", "SourceNotFound"),
        ("text", "NotAVideo"),
    ]
    assert "128x96 frame" in rows[0][2] and "missing.mp4" in rows[1][2]
