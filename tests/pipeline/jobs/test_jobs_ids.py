from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from pipeline.jobs.ids import check_id, id_problem, new_job_id, stream_id_from_name, unique_stream_ids


def test_job_ids_sort_by_time_and_are_valid_ids():
    early = new_job_id(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_job_id(datetime(2024, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert re.fullmatch(r"job-20240102-030405-[0-9a-f]{6}", early)
    assert early < late
    assert id_problem(new_job_id()) is None
    assert new_job_id() != new_job_id()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clips/2024/cam 1.mp4", "cam-1"),
        ("/data/drone.survey.MOV", "drone.survey"),
        ("C:\\videos\\front door.mkv", "front-door"),
        ("...", "stream"),
        (".hidden", "hidden"),
        ("ünïcode✓.mp4", "n-code"),
        ("site=north/cam=1.mp4", "cam-1"),  # never a hive `key=value` directory name
    ],
)
def test_stream_id_from_name(name, expected):
    assert stream_id_from_name(name) == expected
    assert id_problem(stream_id_from_name(name)) is None


def test_unique_stream_ids_deduplicate_case_insensitively():
    assert unique_stream_ids(["a/cam.mp4", "b/cam.mp4", "c/CAM.mkv", "x.mp4"], taken=["x"]) == [
        "cam",
        "cam-2",
        "CAM-3",
        "x-2",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "a:b",
        "a=b",
        "x" * 129,
        5,
        "__HIVE_DEFAULT_PARTITION__",  # hive readers turn this partition value into NULL
        "_cam",
        ".cam",
        "__cam__",
    ],
)
def test_bad_ids(bad):
    assert id_problem(bad) is not None
    with pytest.raises(ValueError, match="stream_id"):
        check_id(bad, "stream_id")


def test_reserved_and_hidden_ids_say_why():
    assert "NULL" in id_problem("__HIVE_DEFAULT_PARTITION__")
    assert "starts with '_'" in id_problem("_cam")
    assert "starts with '.'" in id_problem(".cam")
    assert "reserved" in id_problem("..")


@pytest.mark.parametrize("good", ["cam", "cam_1", "cam.1", "-cam", "0", "HIVE_DEFAULT_PARTITION", "x" * 128])
def test_good_ids(good):
    assert id_problem(good) is None
