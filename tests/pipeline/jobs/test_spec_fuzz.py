"""Fuzzing the job-spec parser: whatever a user (or an attacker) submits, the answer is a valid `JobSpec`
or a `JobSpecError` listing the problems, never a crash with a stack trace.

Three shapes of input: arbitrary YAML-like data, specs that are mostly valid with hostile values in some
fields (stream ids, sources with every FFmpeg protocol, numbers at their limits), and YAML text. A spec
that parses must be safe to act on: ids usable as directory and key names, sources the decoder accepts.
Derandomized, so CI sees the same inputs every run.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

from pipeline.decode.source import DEFAULT_ALLOWED_PROTOCOLS, source_scheme
from pipeline.jobs.ids import id_problem
from pipeline.jobs.spec import JobSpec, JobSpecError, load_job_spec, parse_job_spec

FUZZ = settings(
    max_examples=600,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BASE_DIR = "/specs"

# --------------------------------------------------------------------------------------------- values

HOSTILE_TEXT = [
    "",
    " ",
    ".",
    "..",
    "../x",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "~",
    "~root/x",
    "~no-such-user-xyz/x",
    "__HIVE_DEFAULT_PARTITION__",
    "_x",
    ".hidden",
    "-",
    "a=b",
    "a:b",
    "x" * 128,
    "x" * 129,
    "y" * 10_000,
    "cam\x00",
    "cam\n",
    "\u202ecam",
    "kamera-ü",
    "🎥",
    "ＣＡＭ",
    "None",
    "null",
    "NaN",
]
SCHEMES = [
    "http",
    "https",
    "HTTP",
    "rtsp",
    "rtsps",
    "file",
    "FILE",
    "concat",
    "subfile",
    "data",
    "pipe",
    "fd",
    "ftp",
    "tcp",
    "udp",
    "async",
    "cache",
    "crypto",
    "hls",
    "gopher",
    "s3",
    "c",
    "javascript",
]
SOURCE_TAILS = [
    "//host/v.mp4",
    "///abs/v.mp4",
    "//localhost/abs/v.mp4",
    "//remote/abs/v.mp4",
    "/x|/etc/passwd",
    "//[::1]:554/live",
    "//[::1/live",
    "//user:pw@cam:99999/live",
    "//",
    "",
    "0",
    "video/mp4;base64,AAAA",
    "relative.mp4",
    "//h/%00x",
    "//h/a b?token=secret#frag",
]

texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
sources = st.one_of(
    texts,
    st.builds(lambda s, t: f"{s}:{t}", st.sampled_from(SCHEMES), st.sampled_from(SOURCE_TAILS) | texts),
    st.sampled_from(["subfile,,start,0,end,9,,:/etc/passwd", "./concat:a.mp4", "videos/a.mp4", "/abs/a.mp4"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**400, -(10**400)]),
    st.floats(),  # NaN and +-inf included
    texts,
    st.dates(),
)
# Anything YAML can produce: nested lists and mappings with non-string keys too.
yaml_like = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(texts, st.integers(), st.booleans(), st.none()), inner, max_size=4)
    ),
    max_leaves=20,
)


numbers = st.one_of(st.integers(), st.floats(), st.sampled_from([0, 0.0, -0.0, 1e-300, 10**400]))
vocabularies = st.one_of(
    st.lists(st.one_of(texts, st.sampled_from(["sky", "car, automobile", "Sky", " , "])), max_size=5),
    texts,
    st.lists(st.lists(texts, max_size=2), max_size=3),
    st.lists(yaml_like, max_size=3),
)

# Partly valid specs: a valid spec, then up to three fields (or whole sections) replaced by hostile
# values, so each problem is met both alone and in company, and a good share of specs still parse.
good_ids = st.from_regex(r"[A-Za-z0-9-][A-Za-z0-9._-]{0,30}", fullmatch=True)
good_names = st.from_regex(r"[a-z]{1,8}( [a-z]{1,8})?", fullmatch=True)
good_vocabularies = st.lists(good_names, min_size=1, max_size=5, unique_by=str.casefold)
good_streams = st.fixed_dictionaries(
    {
        "source": st.sampled_from(
            ["videos/a.mp4", "/abs/b.mkv", "./concat:c.mp4", "file:///d.mp4", "https://host/e.m3u8",
             "rtsp://user:pw@10.0.0.5:554/live", "RTSPS://cam/x", "~/f.mp4"]
        ),
        "vocabulary": good_vocabularies | good_vocabularies.map(", ".join),
    },
    optional={
        "id": good_ids,
        "sampling": st.one_of(
            st.fixed_dictionaries({"fps": st.floats(0.01, 100)}),
            st.fixed_dictionaries({"every": st.integers(1, 100)}),
        ),
        "live": st.booleans(),
        "failure_policy": st.fixed_dictionaries({"retries": st.integers(0, 5)}),
    },
)  # fmt: skip
good_specs = st.fixed_dictionaries(
    {
        "output": st.sampled_from(["out", "/abs/out", "~/out", "./a/../b"]),
        "streams": st.lists(
            good_streams, min_size=1, max_size=3, unique_by=lambda s: s.get("id", "").lower()
        ),
    },
    optional={
        "job_id": good_ids,
        "model": st.one_of(
            st.just("san_vit_b_16"),
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.just("san_vit_large_14"),
                    "weights": st.sampled_from(["./w.pth", "~/w.safetensors", "hub-name"]),
                    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]),
                    "dtype": st.sampled_from(["auto", "float16", "bfloat16"]),
                },
            ),
        ),
        "serve": st.fixed_dictionaries(
            {},
            optional={
                "num_replicas": st.integers(1, 8) | st.just("auto"),
                "batch_size": st.integers(1, 64),
                "batch_wait_timeout_s": st.floats(0, 1),
                "num_gpus_per_replica": st.floats(0, 1),
            },
        ),
        "store_labels": st.booleans(),
    },
)
FIELDS = [
    "job_id", "output", "model", "model.name", "model.weights", "model.device", "model.dtype",
    "streams", "streams.0", "streams.0.id", "streams.1.id", "streams.0.source", "streams.1.source",
    "streams.0.vocabulary", "streams.0.vocabulary.0", "streams.0.sampling", "streams.0.sampling.fps",
    "streams.0.sampling.every", "streams.0.live", "streams.0.failure_policy",
    "streams.0.failure_policy.retries",
    "serve", "serve.num_replicas", "serve.autoscaling", "serve.autoscaling.min_replicas",
    "serve.autoscaling.max_replicas", "serve.batch_size", "serve.batch_wait_timeout_s",
    "serve.num_gpus_per_replica", "store_labels", "extra", "streams.0.extra",
]  # fmt: skip
hostile_values = st.one_of(
    yaml_like, texts, sources, numbers, vocabularies, st.sampled_from(["auto", [], {}])
)


def corrupt(spec: dict[str, Any], edits: list[tuple[str, Any]]) -> dict[str, Any]:
    """`spec` with each dotted field path set to its value; missing mappings on the way are created, and a
    path through a scalar or past the end of a list is skipped."""
    for path, value in edits:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            if isinstance(node, dict):
                node = node.setdefault(key, {})
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                break
        else:
            if isinstance(node, dict):
                node[last] = value
            elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
                node[int(last)] = value
    return spec


specs = st.builds(
    corrupt, good_specs, st.lists(st.tuples(st.sampled_from(FIELDS), hostile_values), max_size=3)
)


# --------------------------------------------------------------------------------------------- checks


def check_outcome(data: Any) -> None:
    """parse_job_spec returns a safe JobSpec or raises JobSpecError; anything else fails the test."""
    try:
        spec = parse_job_spec(data, base_dir=BASE_DIR)
    except JobSpecError as exc:
        assert exc.problems, "a JobSpecError must say what is wrong"
        assert all(isinstance(path, str) and isinstance(msg, str) for path, msg in exc.problems)
        str(exc)
        return
    check_valid(spec)


def check_valid(spec: JobSpec) -> None:
    assert isinstance(spec, JobSpec)
    assert spec.job_id is None or id_problem(spec.job_id) is None
    assert os.path.isabs(spec.output)
    assert spec.streams
    ids = [s.id for s in spec.streams]
    assert all(id_problem(i) is None for i in ids), ids
    assert len({i.lower() for i in ids}) == len(ids), f"stream ids collide: {ids}"
    for stream in spec.streams:
        # The decoder's own reading of the source, so the spec cannot hand it a protocol it refuses.
        assert source_scheme(stream.source) in DEFAULT_ALLOWED_PROTOCOLS, stream.source
        if stream.is_file:
            assert os.path.isabs(stream.source) and source_scheme(stream.source) == "file"
        assert stream.vocabulary and all(isinstance(v, str) and v.strip() for v in stream.vocabulary)
        sampling = stream.sampling
        assert (sampling.fps is None) != (sampling.every is None)
        assert sampling.fps is None or (math.isfinite(sampling.fps) and sampling.fps > 0)
        assert sampling.every is None or sampling.every >= 1
        assert stream.failure_policy.retries >= 0
    assert spec.serve.batch_size >= 1
    assert math.isfinite(spec.serve.batch_wait_timeout_s) and spec.serve.batch_wait_timeout_s >= 0


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.timeout(120)
@FUZZ
@given(data=yaml_like)
def test_arbitrary_data(data: Any) -> None:
    check_outcome(data)


@pytest.mark.timeout(120)
@FUZZ
@given(data=specs)
def test_partly_valid_specs(data: Any) -> None:
    check_outcome(data)


@pytest.mark.timeout(120)
@FUZZ
@given(
    stream_id=st.one_of(st.none(), texts),
    source=sources,
    vocabulary=vocabularies,
)
def test_hostile_stream_fields(stream_id: str | None, source: str, vocabulary: Any) -> None:
    stream: dict[str, Any] = {"source": source, "vocabulary": vocabulary}
    if stream_id is not None:
        stream["id"] = stream_id
    check_outcome({"output": "out", "streams": [stream, {"source": "other.mp4", "vocabulary": ["sky"]}]})


# Text that YAML turns into surprises: impossible dates, explicit tags, anchors, deep nesting.
yaml_snippets = st.sampled_from(
    [
        "2024-02-30",
        "2024-01-01 25:00:00",
        "!!float abc",
        "!!int 0x",
        "!!binary ab",
        "!!python/object:os.system ls",
        "&a [*a]",
        "[" * 200,
        "{" * 200,
        "1e400",
        "99999999999999999999999",
        "9" * 5000,  # PyYAML's int() refuses over 4300 digits (ValueError)
        "[" * 1000 + "]" * 1000,  # RecursionError inside PyYAML
        "{a: " * 50 + "1" + "}" * 50,
        ".nan",
        "-.inf",
        "~",
        "'\\x00'",
        '"\\x00"',
        "yes",
        "0o17",
    ]
)
STREAM = "{{source: a.mp4, vocabulary: [sky]}}"
YAML_TEMPLATES = {
    "job_id": "job_id: {}\noutput: out\nstreams: [" + STREAM + "]\n",
    "output": "output: {}\nstreams: [" + STREAM + "]\n",
    "streams[0].id": "output: out\nstreams: [{{id: {}, source: a.mp4, vocabulary: [sky]}}]\n",
    "streams[0].source": "output: out\nstreams: [{{source: {}, vocabulary: [sky]}}]\n",
    "streams[0].sampling.fps": (
        "output: out\nstreams: [{{source: a.mp4, vocabulary: [sky], sampling: {{fps: {}}}}}]\n"
    ),
    "streams[0].vocabulary": "output: out\nstreams: [{{source: a.mp4, vocabulary: {}}}]\n",
    "serve.batch_size": "output: out\nstreams: [" + STREAM + "]\nserve: {{batch_size: {}}}\n",
}


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=200)
@given(field=st.sampled_from(sorted(YAML_TEMPLATES)), value=yaml_snippets | st.text(max_size=30))
def test_yaml_text(tmp_path_factory: pytest.TempPathFactory, field: str, value: str) -> None:
    """load_job_spec on YAML text: a value YAML itself cannot construct is a spec error too."""
    path = tmp_path_factory.getbasetemp() / "fuzz-spec.yaml"
    path.write_text(YAML_TEMPLATES[field].format(value), encoding="utf-8")
    try:
        spec = load_job_spec(path)
    except JobSpecError as exc:
        assert exc.problems
        return
    check_valid(spec)


def test_fuzzing_reaches_valid_specs() -> None:
    """The partly-valid strategy does produce specs that parse, so the checks on them are not vacuous."""

    def parses(data: Any) -> bool:
        try:
            parse_job_spec(data, base_dir=BASE_DIR)
        except JobSpecError:
            return False
        return True

    quick = settings(
        max_examples=2000, derandomize=True, database=None, phases=[Phase.generate]
    )  # no shrinking
    found = find(specs, parses, settings=quick)
    check_valid(parse_job_spec(found, base_dir=BASE_DIR))
