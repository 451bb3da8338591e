from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from pipeline.jobs.spec import JobSpecError, load_job_spec, parse_job_spec

CONFIGS = Path(__file__).absolute().parents[3] / "configs" / "jobs"

BASE = {
    "output": "out",
    "streams": [
        {"id": "cam-a", "source": "videos/a.mp4", "vocabulary": ["sky", "car"]},
        {"id": "cam-b", "source": "rtsp://10.0.0.5/live", "vocabulary": ["sky", "road"]},
    ],
}


def spec_with(path: str, value):
    """BASE with `value` set at a dotted/indexed path such as `streams[1].sampling.fps`."""
    data = copy.deepcopy(BASE)
    node = data
    parts = path.replace("[", ".").replace("]", "").split(".")
    for key in parts[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value
    return data


def error_of(data) -> str:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(data, base_dir="/specs")
    return str(info.value)


def test_defaults_and_resolution():
    spec = parse_job_spec(BASE, base_dir="/specs")
    assert spec.job_id is None
    assert spec.output == "/specs/out"
    assert (spec.model.name, spec.model.weights, spec.model.device, spec.model.dtype) == (
        "san_vit_b_16",
        "san_vit_b_16",
        "auto",
        "auto",
    )
    a, b = spec.streams
    assert a.source == "/specs/videos/a.mp4" and a.is_file and not a.live
    assert b.source == "rtsp://10.0.0.5/live" and not b.is_file and b.live
    assert (a.sampling.fps, a.sampling.every, a.failure_policy.retries) == (1.0, None, 0)
    assert (spec.serve.num_replicas, spec.serve.batch_size, spec.serve.batch_wait_timeout_s) == (1, 8, 0.05)
    assert spec.serve.num_gpus_per_replica is None and spec.store_labels is False
    assert spec.flush_interval_s == 10.0
    json.dumps(spec.to_dict())


def test_comma_string_vocabulary_and_list_synonyms():
    spec = parse_job_spec(spec_with("streams[0].vocabulary", " sky, car ,tree "), base_dir="/specs")
    assert spec.streams[0].vocabulary == ["sky", "car", "tree"]
    spec = parse_job_spec(spec_with("streams[0].vocabulary", ["sky", "car,automobile"]), base_dir="/specs")
    assert spec.streams[0].vocabulary == ["sky", "car, automobile"]
    assert spec.streams[0].class_names == ["sky", "car"]
    assert spec.streams[0].synonyms == [["sky"], ["car", "automobile"]]


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("streams[1].id", "a/b", "streams[1].id", "path separator"),
        ("streams[1].id", "..", "streams[1].id", "reserved"),
        ("streams[1].id", ".", "streams[1].id", "reserved"),
        ("streams[1].id", "", "streams[1].id", "empty"),
        ("streams[1].id", "__HIVE_DEFAULT_PARTITION__", "streams[1].id", "NULL"),
        ("streams[1].id", "_cam", "streams[1].id", "starts with '_'"),
        ("streams[1].id", ".cam", "streams[1].id", "starts with '.'"),
        ("streams[1].id", "CAM-A", "streams[1].id", "duplicates streams[0].id"),
        ("streams[0].vocabulary", [], "streams[0].vocabulary", "at least one class"),
        ("streams[0].vocabulary", "", "streams[0].vocabulary", "at least one class"),
        ("streams[0].vocabulary", ["sky", " SKY "], "streams[0].vocabulary[1]", "duplicates"),
        ("streams[0].vocabulary", ["car", "auto, Car"], "streams[0].vocabulary[1]", "duplicates"),
        ("streams[0].vocabulary", ["sky", ""], "streams[0].vocabulary[1]", "non-empty"),
        ("streams[0].vocabulary", [f"c{i}" for i in range(1001)], "streams[0].vocabulary", "at most 1000"),
        ("streams[0].vocabulary", ["sky", 3], "streams[0].vocabulary[1]", "must be a string"),
        ("streams[1].sampling", {"fps": 2, "every": 3}, "streams[1].sampling", "not both"),
        ("streams[1].sampling.fps", 0, "streams[1].sampling.fps", "must be > 0"),
        ("streams[1].sampling.fps", -1.5, "streams[1].sampling.fps", "must be > 0"),
        ("streams[1].sampling.fps", "fast", "streams[1].sampling.fps", "must be a number"),
        ("streams[1].sampling.every", 0, "streams[1].sampling.every", ">= 1"),
        ("streams[0].source", "ftp://host/a.mp4", "streams[0].source", "'ftp:' is not allowed"),
        ("streams[0].source", "concat:a.mp4|b.mp4", "streams[0].source", "'concat:' is not allowed"),
        ("streams[0].source", "pipe:0", "streams[0].source", "not allowed"),
        ("streams[0].source", "http:///nohost", "streams[0].source", "no host"),
        ("streams[0].source", "", "streams[0].source", "non-empty"),
        ("streams[0].vocabluary", ["x"], "streams[0].vocabluary", "did you mean 'vocabulary'"),
        ("outptu", "x", "outptu", "did you mean 'output'"),
        ("serve.batch_sise", 4, "serve.batch_sise", "did you mean 'batch_size'"),
        ("streams[0].failure_policy.retries", -1, "streams[0].failure_policy.retries", ">= 0"),
        ("streams[0].live", "yes", "streams[0].live", "true or false"),
        ("serve.num_replicas", 0, "serve.num_replicas", ">= 1"),
        ("serve.batch_wait_timeout_s", -1, "serve.batch_wait_timeout_s", ">= 0"),
        ("serve.autoscaling", {"min_replicas": 3, "max_replicas": 2}, "serve.autoscaling", "above"),
        (
            "serve.autoscaling",
            {"max_replica": 2},
            "serve.autoscaling.max_replica",
            "did you mean 'max_replicas'",
        ),
        ("model.dtype", "int8", "model.dtype", "must be one of"),
        ("model.compile", "fastest", "model.compile", "must be one of default, reduce-overhead"),
        ("model.max_padding", -0.5, "model.max_padding", "must be >= 0"),
        ("model.max_padding", "half", "model.max_padding", "must be a number"),
        ("model.device", "tpu", "model.device", "auto, cpu, cuda"),
        ("job_id", "a:b", "job_id", "outside"),
        ("output", "s3://bucket/x", "output", "directory path"),
        ("streams", [], "streams", "non-empty list"),
        ("flush_interval_s", 0, "flush_interval_s", "must be > 0"),
        ("flush_interval_s", -2.5, "flush_interval_s", "must be > 0"),
        ("flush_interval_s", "10s", "flush_interval_s", "must be a number"),
        ("flush_interval_s", True, "flush_interval_s", "must be a number"),
        ("flush_intervals", 5, "flush_intervals", "did you mean 'flush_interval_s'"),
    ],
)
def test_invalid_fields_are_named(path, value, field, message):
    text = error_of(spec_with(path, value))
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{field}:")), text)
    assert line.strip().startswith(f"{field}:"), text
    assert message in line, text


def test_missing_required_fields():
    text = error_of({"streams": [{"id": "x"}]})
    for field in ("output", "streams[0].source", "streams[0].vocabulary"):
        assert f"{field}: is required" in text


def test_all_problems_are_reported_together():
    data = spec_with("streams[1].sampling.fps", 0)
    data["streams"][0]["id"] = "../x"
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(data, base_dir="/specs")
    assert [p for p, _ in info.value.problems] == ["streams[0].id", "streams[1].sampling.fps"]


def test_missing_ids_are_derived_and_deduplicated():
    data = {
        "output": "/o",
        "streams": [
            {"source": "a/cam.mp4", "vocabulary": "x"},
            {"source": "b/cam.mp4", "vocabulary": "x"},
            {"id": "live", "source": "rtsp://h/x", "vocabulary": "x"},
            {"source": "rtsp://10.0.0.9/live", "vocabulary": "x"},
            {"source": "https://cams.example.org/", "vocabulary": "x"},
        ],
    }
    ids = [s.id for s in parse_job_spec(data).streams]
    assert ids == ["cam", "cam-2", "live", "live-2", "cams-example-org"]


def test_file_url_and_colon_paths():
    spec = parse_job_spec(spec_with("streams[0].source", "file:///data/a.mp4"), base_dir="/specs")
    assert spec.streams[0].source == "/data/a.mp4"
    spec = parse_job_spec(spec_with("streams[0].source", "./concat:a.mp4"), base_dir="/specs")
    assert spec.streams[0].source == "/specs/concat:a.mp4"


def test_autoscaling_implies_auto_replicas_and_conflicts_with_a_fixed_count():
    spec = parse_job_spec(spec_with("serve.autoscaling", {"min_replicas": 1, "max_replicas": 3}))
    assert spec.serve.num_replicas == "auto" and spec.serve.autoscaling == {
        "min_replicas": 1,
        "max_replicas": 3,
    }
    data = spec_with("serve.autoscaling", {"max_replicas": 3})
    data["serve"]["num_replicas"] = 2
    assert "serve.autoscaling: cannot be combined" in error_of(data)


def test_example_specs_parse():
    drone = load_job_spec(CONFIGS / "drone_survey.yaml")
    assert drone.job_id == "drone-survey-2024-06"
    [flight] = drone.streams
    assert flight.source == os.path.abspath(CONFIGS / "../../data/drone/flight_01.mp4")
    assert flight.sampling.fps == 2.0 and flight.failure_policy.retries == 1
    assert flight.class_names[:2] == ["water", "tree"]
    assert drone.output == os.path.abspath(CONFIGS / "../../sanstream-out/drone_survey")

    cams = load_job_spec(CONFIGS / "two_cameras.yaml")
    assert [s.id for s in cams.streams] == ["north-gate", "south-gate"]
    assert all(s.live and s.sampling.every == 5 for s in cams.streams)
    assert cams.streams[0].vocabulary == ["person", "car", "bicycle", "road", "sidewalk"]
    assert cams.streams[1].class_names == ["person", "car", "bicycle", "road", "sidewalk"]
    assert cams.serve.num_replicas == "auto" and cams.serve.autoscaling["max_replicas"] == 4

    regions = load_job_spec(CONFIGS / "sample_regions.yaml")
    [sample] = regions.streams
    assert [r.name for r in sample.regions] == ["road", "riverbank"]
    assert sample.alerts[0].region == "road" and sample.alerts[0].class_name == "car"
    assert parse_job_spec(regions.to_dict()) == regions


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(JobSpecError, match="cannot read job spec"):
        load_job_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [\n")
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_job_spec(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n")
    with pytest.raises(JobSpecError, match=r"list.yaml.*must be a mapping"):
        load_job_spec(listy)
    relative = tmp_path / "rel.yaml"
    relative.write_text("output: out\nstreams:\n  - source: v.mp4\n    vocabulary: sky\n")
    spec = load_job_spec(relative)
    assert spec.output == str(tmp_path / "out")
    assert spec.streams[0].source == str(tmp_path / "v.mp4") and spec.streams[0].id == "v"


def test_symlinked_paths_are_kept_as_written(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    spec = parse_job_spec(spec_with("output", "link/out"), base_dir=tmp_path)
    assert spec.output == str(tmp_path / "link" / "out")


def test_to_dict_round_trips_through_the_parser() -> None:
    """A resumed job re-reads its spec from the job store, so the stored form must parse to the same spec."""
    from pipeline.jobs.spec import parse_job_spec

    spec = parse_job_spec(
        {
            "output": "/tmp/out",
            "streams": [
                {
                    "id": "a",
                    "source": "/tmp/a.mp4",
                    "vocabulary": ["x", "car, automobile"],
                    "sampling": {"every": 2},
                },
                {
                    "id": "b",
                    "source": "rtsp://127.0.0.1/cam",
                    "vocabulary": "p,q",
                    "failure_policy": {"retries": 3},
                },
            ],
            "serve": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}},
            "flush_interval_s": 2.5,
        }
    )
    assert spec.flush_interval_s == 2.5
    assert spec.to_dict()["flush_interval_s"] == 2.5
    assert parse_job_spec(spec.to_dict()) == spec


def test_flush_interval_accepts_any_positive_number() -> None:
    """Sub-second intervals are legitimate (a dashboard that must be current); integers are numbers."""
    assert parse_job_spec(spec_with("flush_interval_s", 0.25), base_dir="/specs").flush_interval_s == 0.25
    assert parse_job_spec(spec_with("flush_interval_s", 60), base_dir="/specs").flush_interval_s == 60.0


# Inputs the fuzz tests (test_spec_fuzz.py) found crashing the parser with a non-JobSpecError; pinned here
# so each stays a named, reported problem.
@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("streams[0].vocabulary", [5], "streams[0].vocabulary[0]", "must be a string"),  # was TypeError
        ("streams[0].vocabulary", [None], "streams[0].vocabulary[0]", "must be a string"),  # TypeError
        ("streams[0].vocabulary", [{"a": 1}], "streams[0].vocabulary[0]", "must be a string"),  # KeyError
        ("streams[0].vocabulary", [[]], "streams[0].vocabulary", "at least one class"),  # IndexError
        ("streams[0].vocabulary", [[], []], "streams[0].vocabulary[0]", "non-empty"),  # accepted "" classes
        ("streams[1].sampling.fps", 10**400, "streams[1].sampling.fps", "finite number"),  # OverflowError
        ("serve.batch_wait_timeout_s", -(10**400), "serve.batch_wait_timeout_s", "finite number"),
        ("output", "~no-such-user-xyz/out", "output", "cannot expand '~no-such-user-xyz'"),  # RuntimeError
        ("model.weights", "~no-such-user-xyz/w.pt", "model.weights", "cannot expand"),  # RuntimeError
        ("output", "~\x00", "output", "control characters"),  # ValueError: embedded null byte
        ("streams[0].source", "rtsp://[::1/live", "streams[0].source", "not a valid URL"),  # ValueError
        ("streams[0].source", "~no-such-user-xyz/a.mp4", "streams[0].source", "cannot expand"),
    ],
)
def test_hostile_values_are_spec_errors(path, value, field, message):
    text = error_of(spec_with(path, value))
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{field}:")), text)
    assert line.strip().startswith(f"{field}:"), text
    assert message in line, text


def test_huge_int_key_is_reported_not_printed():
    data = spec_with("streams[0].vocabulary", ["sky"])
    data["streams"][0][10**5000] = 1  # str() of this int raises ValueError (over 4300 digits)
    assert "unknown key <16610-bit integer>" in error_of(data)


@pytest.mark.parametrize(
    "text",
    [
        "job_id: 2024-02-30\n",  # PyYAML: ValueError, day is out of range for month
        "output: !!float abc\n",  # ValueError from float()
        "output: " + "9" * 5000 + "\n",  # ValueError: int over 4300 digits
        "output: " + "[" * 1000 + "]" * 1000 + "\n",  # RecursionError
    ],
)
def test_yaml_that_cannot_be_constructed_is_a_spec_error(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    with pytest.raises(JobSpecError, match="not valid YAML"):
        load_job_spec(spec)


def test_spec_file_that_is_not_utf8_is_a_spec_error(tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(b"output: caf\xe9\n")
    with pytest.raises(JobSpecError, match="not UTF-8"):
        load_job_spec(spec)


# ------------------------------------------------------------------------------- decoding, realtime


def test_decoding_defaults_to_auto_everywhere():
    from pipeline.jobs.decoding import DecodingSpec

    assert parse_job_spec(BASE, base_dir="/specs").decoding == DecodingSpec()
    spec = parse_job_spec(spec_with("decoding", None), base_dir="/specs")
    assert spec.decoding == DecodingSpec(None, None, {}, {})


def test_decoding_section_is_parsed():
    decoding = {
        "streams_per_decoder": 16,
        "decoders_per_node": 2,
        "resources": {"edge": 1, "camera_uplink": 0.5},
        "node_labels": {"zone": "north", "ray.io/availability-zone": "eu-1a"},
    }
    spec = parse_job_spec(spec_with("decoding", decoding), base_dir="/specs").decoding
    assert (spec.streams_per_decoder, spec.decoders_per_node) == (16, 2)
    assert spec.resources == {"edge": 1.0, "camera_uplink": 0.5}
    assert spec.node_labels == {"zone": "north", "ray.io/availability-zone": "eu-1a"}
    auto = {"streams_per_decoder": "auto", "decoders_per_node": "auto"}
    spec = parse_job_spec(spec_with("decoding", auto), base_dir="/specs").decoding
    assert (spec.streams_per_decoder, spec.decoders_per_node) == (None, None)


def test_decoding_round_trips_through_to_dict():
    """auto is stored as an absent field (to_dict drops None) and must come back as auto."""
    for decoding in (
        {"streams_per_decoder": "auto", "decoders_per_node": 3, "resources": {"edge": 2}},
        {"streams_per_decoder": 8, "node_labels": {"zone": "south"}},
        {},
    ):
        spec = parse_job_spec(spec_with("decoding", decoding), base_dir="/specs")
        stored = json.loads(json.dumps(spec.to_dict()))
        assert parse_job_spec(stored) == spec
    stored = parse_job_spec(spec_with("decoding", {"decoders_per_node": "auto"})).to_dict()
    assert stored["decoding"] == {"resources": {}, "node_labels": {}}


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (
            "decoding.streams_per_decoder",
            0,
            "decoding.streams_per_decoder",
            "must be an integer >= 1 or auto, got 0",
        ),
        ("decoding.streams_per_decoder", 2.5, "decoding.streams_per_decoder", ">= 1 or auto, got 2.5"),
        ("decoding.streams_per_decoder", True, "decoding.streams_per_decoder", ">= 1 or auto, got True"),
        ("decoding.decoders_per_node", -1, "decoding.decoders_per_node", ">= 1 or auto, got -1"),
        ("decoding.decoders_per_node", "Auto", "decoding.decoders_per_node", "or auto, got 'Auto'"),
        ("decoding.streams_per_decoders", 4, "decoding.streams_per_decoders", "did you mean"),
        ("decoding", [1], "decoding", "must be a mapping"),
        ("decoding.resources", ["edge"], "decoding.resources", "must be a mapping"),
        ("decoding.resources", {"edge": 0}, "decoding.resources.edge", "must be > 0"),
        ("decoding.resources", {"edge": 1e-5}, "decoding.resources.edge", "at least 0.0001"),
        ("decoding.resources", {"edge": "one"}, "decoding.resources.edge", "must be a number"),
        ("decoding.resources", {"edge": float("inf")}, "decoding.resources.edge", "must be > 0"),
        ("decoding.resources", {"": 1}, "decoding.resources.''", "non-empty string"),
        ("decoding.resources", {7: 1}, "decoding.resources.7", "non-empty string"),
        ("decoding.resources", {"CPU": 2}, "decoding.resources.CPU", "built-in Ray resource"),
        ("decoding.resources", {"GPU": 1}, "decoding.resources.GPU", "serve.num_gpus_per_replica"),
        ("decoding.resources", {"memory": 1e9}, "decoding.resources.memory", "ray start --memory"),
        (
            "decoding.resources",
            {"object_store_memory": 1},
            "decoding.resources.object_store_memory",
            "built-in",
        ),
        ("decoding.resources", {"cpu": 1}, "decoding.resources.cpu", "'CPU' is a built-in"),
        ("decoding.resources", {"edge": 1, " edge ": 2}, "decoding.resources.edge", "given twice"),
        ("decoding.node_labels", "zone=north", "decoding.node_labels", "must be a mapping"),
        ("decoding.node_labels", {"zone": 1}, "decoding.node_labels.zone", "must be a string"),
        ("decoding.node_labels", {" ": "x"}, "decoding.node_labels.' '", "non-empty string"),
        ("streams[0].realtime", "yes", "streams[0].realtime", "true or false"),
        ("streams[1].realtime", True, "streams[1].realtime", "only for files"),
        ("streams[0].real_time", True, "streams[0].real_time", "did you mean 'realtime'"),
    ],
)
def test_invalid_decoding_and_realtime_are_named(path, value, field, message):
    text = error_of(spec_with(path, value))
    line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{field}:")), text)
    assert line.strip().startswith(f"{field}:"), text
    assert message in line, text


def test_decoding_problems_are_reported_together():
    data = spec_with("decoding", {"streams_per_decoder": 0, "resources": {"GPU": 1, "edge": -1}})
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(data, base_dir="/specs")
    assert [p for p, _ in info.value.problems] == [
        "decoding.streams_per_decoder",
        "decoding.resources.GPU",
        "decoding.resources.edge",
    ]


def test_realtime_is_for_files_only():
    spec = parse_job_spec(spec_with("streams[0].realtime", True), base_dir="/specs")
    assert spec.streams[0].realtime and not spec.streams[0].live
    assert not spec.streams[1].realtime
    assert parse_job_spec(spec.to_dict()) == spec
    for url in ("rtsp://10.0.0.5/live", "http://cams.example.org/a.mp4", "https://h/x.m3u8"):
        data = spec_with("streams[0].realtime", True)
        data["streams"][0]["source"] = url
        assert (
            "streams[0].realtime: only for files; network and live sources already arrive in real time"
            in (error_of(data))
        )
    # `realtime: false` says nothing wrong about a URL (and is what a stored spec carries for one).
    assert not parse_job_spec(spec_with("streams[1].realtime", False)).streams[1].realtime


@pytest.mark.parametrize(
    ("streams", "decoding", "nodes", "layout"),
    [
        (0, {}, [16.0], (0, 0)),
        (1, {}, [16.0], (1, 1)),
        (32, {}, [64.0, 64.0], (1, 32)),  # auto: the fewest actors, however many nodes
        (33, {}, [64.0], (2, 17)),  # shared evenly, not 32 + 1
        (100, {"streams_per_decoder": 10}, [8.0], (10, 10)),
        (5, {"streams_per_decoder": 10, "decoders_per_node": 2}, [8.0, 8.0], (4, 2)),  # spread
        (3, {"decoders_per_node": 2}, [8.0, 8.0], (3, 1)),  # never more actors than streams
        (100, {"streams_per_decoder": 10, "decoders_per_node": 1}, [8.0, 8.0], (10, 10)),
        (7, {"streams_per_decoder": 1}, [], (7, 1)),
        (4, {"decoders_per_node": 2}, [], (1, 4)),  # no nodes known: no spreading
    ],
)
def test_decoder_layout(streams, decoding, nodes, layout):
    from pipeline.jobs.decoding import DecodingSpec, decoder_layout

    assert decoder_layout(streams, DecodingSpec(**decoding), nodes) == layout


def test_node_decoder_slots_default_from_cpus():
    from pipeline.jobs.decoding import DecodingSpec, node_decoder_slots

    auto = DecodingSpec()
    assert [node_decoder_slots(auto, cpus) for cpus in (2, 8, 15.5, 16, 64)] == [1, 1, 1, 2, 8]
    assert node_decoder_slots(DecodingSpec(decoders_per_node=3), 64) == 3


def test_regions_alerts_and_webhook_in_the_spec():
    data = spec_with("streams[0].regions", [{"name": "lot", "polygon": [[0, 0], [1, 0], [1, 1]]}])
    data["streams"][0]["alerts"] = [
        {"name": "full", "region": "lot", "class": "CAR", "above": 0.8, "for_s": 60}
    ]
    data["webhook"] = {"url": "https://hooks.example.org/sanstream", "max_attempts": 3}
    spec = parse_job_spec(data, base_dir="/specs")
    assert spec.streams[0].alerts[0].class_name == "car"  # as the vocabulary spells it
    assert spec.streams[1].regions == () and spec.streams[1].alerts == ()
    assert spec.webhook is not None and spec.webhook.max_attempts == 3
    assert parse_job_spec(spec.to_dict(), base_dir="/specs") == spec  # what a resumed job re-reads

    data["streams"][0]["alerts"].append({"name": "wet", "class": "water", "above": 0.1, "region": "lots"})
    data["streams"][0]["regions"].append({"name": "LOT", "polygon": [[0, 0], [2, 0], [0, 1]]})
    data["webhook"] = "ftp://hooks.example.org"
    message = error_of(data)
    for expected in (
        "streams[0].alerts[1].class: 'water' is not a class of the stream's vocabulary",
        "streams[0].alerts[1].region: names no region of the stream: 'lots'; did you mean 'lot'?",
        "streams[0].regions[1].polygon[1]: x must be within 0..1",
        "streams[0].regions[1]",
        "webhook",
    ):
        assert expected in message, message


def test_model_tuning_fields_round_trip():
    spec = parse_job_spec(
        spec_with("model", {"name": "san_vit_b_16", "compile": "reduce-overhead", "max_padding": 0.25})
    )
    assert (spec.model.compile, spec.model.max_padding) == ("reduce-overhead", 0.25)
    assert parse_job_spec(spec.to_dict()) == spec
    plain = parse_job_spec(spec_with("model", "san_vit_b_16"))
    assert (plain.model.compile, plain.model.max_padding) == (None, None)
    assert "compile" not in plain.to_dict()["model"]
