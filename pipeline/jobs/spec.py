"""The YAML job spec: what to analyse, with which model, written where.

Everything is validated before anything starts (no model load, no Redis, no decoder): a typo found
after an hour of GPU time is the failure this module exists to prevent. All problems are collected and
reported together, each under its field path (`streams[1].sampling.fps: must be > 0`).

Sources are restricted to plain file paths and http/https/rtsp/rtsps URLs because the decoder hands
them to FFmpeg, whose other protocols (`concat:`, `subfile:`, `pipe:`, `fd:` ...) reach arbitrary
local files and descriptors. Relative file paths are made absolute against the spec file's directory, which
also stops FFmpeg from ever seeing a relative name that starts with `proto:`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml

from pipeline.alerts import AlertRule, parse_alerts
from pipeline.jobs.checks import Checker, describe, join_path, show
from pipeline.jobs.decoding import DecodingSpec, parse_decoding
from pipeline.jobs.ids import id_problem, unique_stream_ids
from pipeline.regions import RegionSpec, parse_regions
from pipeline.webhook import WebhookSpec, parse_webhook

MAX_CLASSES = 1000
# Longest time an analysed frame waits before it is committed to Parquet (top-level `flush_interval_s`).
DEFAULT_FLUSH_INTERVAL_S = 10.0
URL_SCHEMES = ("http", "https", "rtsp", "rtsps")
LIVE_SCHEMES = ("rtsp", "rtsps")
DEVICES_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")

# Ray Serve's autoscaling_config fields we pass through, with (kind, lower bound, bound inclusive).
_AUTOSCALING: dict[str, tuple[type, float, bool]] = {
    "min_replicas": (int, 0, True),
    "max_replicas": (int, 1, True),
    "initial_replicas": (int, 0, True),
    "target_ongoing_requests": (float, 0, False),
    "upscale_delay_s": (float, 0, True),
    "downscale_delay_s": (float, 0, True),
    "metrics_interval_s": (float, 0, False),
    "look_back_period_s": (float, 0, False),
    "upscaling_factor": (float, 0, False),
    "downscaling_factor": (float, 0, False),
}


class JobSpecError(ValueError):
    """The job spec is invalid; `problems` lists (field path, message) pairs, all reported at once.
    `heading` introduces several problems (subclasses report problems that are not the spec's text)."""

    heading = "invalid job spec"

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in problems]
        where = f" {source}" if source else ""
        if len(lines) == 1:
            text = f"{self.heading}{where}: {lines[0]}" if source else lines[0]
        else:
            text = f"{self.heading}{where}, {len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(text)


@dataclass(frozen=True)
class ModelSpec:
    """Which SAN variant to load and where to run it; `weights` defaults to the model's released weights."""

    name: str = "san_vit_b_16"
    weights: str = ""
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not self.weights:
            object.__setattr__(self, "weights", self.name)


@dataclass(frozen=True)
class SamplingSpec:
    """Which decoded frames to analyse: `fps` frames per second of source time, or every `every`-th frame."""

    fps: float | None = 1.0
    every: int | None = None


@dataclass(frozen=True)
class FailurePolicy:
    """How often a failing stream is reopened before it is marked failed (the job carries on)."""

    retries: int = 0


@dataclass(frozen=True)
class StreamSpec:
    """One video source and the classes to measure in it.

    Attributes:
        source: absolute file path, or an http/https/rtsp/rtsps URL.
        vocabulary: one entry per class; an entry may list synonyms as "car, automobile".
        live: True for sources that arrive in real time (defaults to True for rtsp/rtsps).
        realtime: files only: read at the file's own frame rate, as a camera would deliver it, to rehearse
            a live deployment or load-test one; still replayed exactly after a crash, never dropping frames.
        regions: named polygons of the frame whose class areas are measured too (`region_areas`).
        alerts: rules on a class's share of a region or of the whole frame (`events`).
    """

    id: str
    source: str
    vocabulary: list[str]
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    live: bool = False
    failure_policy: FailurePolicy = field(default_factory=FailurePolicy)
    realtime: bool = False
    regions: tuple[RegionSpec, ...] = ()
    alerts: tuple[AlertRule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The job-spec form of the stream (regions and alerts as the spec spells them)."""
        data = _without_none(dataclasses.asdict(self))
        data["regions"] = [region.to_dict() for region in self.regions]
        data["alerts"] = [rule.to_dict() for rule in self.alerts]
        return data

    @property
    def synonyms(self) -> list[list[str]]:
        """Each class's names, the first being the class name stored in the output."""
        return [[s.strip() for s in entry.split(",")] for entry in self.vocabulary]

    @property
    def class_names(self) -> list[str]:
        return [names[0] for names in self.synonyms]

    @property
    def is_file(self) -> bool:
        return _SCHEME_RE.match(self.source) is None


@dataclass(frozen=True)
class ServeSpec:
    """Model-serving layout; `num_replicas="auto"` or an `autoscaling` mapping lets Ray Serve scale."""

    num_replicas: int | Literal["auto"] = 1
    autoscaling: dict[str, float] | None = None
    batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    num_gpus_per_replica: float | None = None


@dataclass(frozen=True)
class JobSpec:
    """A whole job. `job_id` None means "generate one when the job is created".

    `flush_interval_s` bounds how long an analysed frame waits before it is committed to Parquet,
    whatever the frame rate: how stale a live dashboard can be, and how much a crash can cost a live
    stream (a live source cannot replay what was lost). `decoding` groups streams into decoder actors.
    `webhook` receives every stream's alert records as JSON POSTs.
    """

    job_id: str | None
    model: ModelSpec
    output: str
    streams: list[StreamSpec]
    serve: ServeSpec = field(default_factory=ServeSpec)
    store_labels: bool = False
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    decoding: DecodingSpec = field(default_factory=DecodingSpec)
    webhook: WebhookSpec | None = None

    def stream(self, stream_id: str) -> StreamSpec:
        for s in self.streams:
            if s.id == stream_id:
                return s
        raise KeyError(f"no stream {stream_id!r} in job spec; streams: {[s.id for s in self.streams]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, as stored with the job's state. Unset (None) fields are left out,
        so `parse_job_spec(spec.to_dict())` gives the same spec back (a resumed job re-reads it)."""
        data = _without_none(dataclasses.asdict(self))
        data["streams"] = [stream.to_dict() for stream in self.streams]
        if self.webhook is not None:
            data["webhook"] = self.webhook.to_dict()
        return data


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _parse_model(c: Checker, value: Any, path: str) -> ModelSpec:
    if isinstance(value, str):
        value = {"name": value}
    raw = c.mapping(value, path, ("name", "weights", "device", "dtype"))
    if raw is None:
        return ModelSpec()
    name = ModelSpec.name
    if "name" in raw and (text := c.string(raw["name"], join_path(path, "name"))) is not None:
        if (problem := id_problem(text)) is not None:
            c.error(join_path(path, "name"), problem)
        name = text
    weights = ""
    if "weights" in raw and (text := c.string(raw["weights"], join_path(path, "weights"))) is not None:
        looks_like_path = "/" in text or text.startswith(("~", ".")) or text.endswith(_WEIGHT_SUFFIXES)
        weights = c.local_path(text, join_path(path, "weights")) if looks_like_path and text != name else text
    device = str(raw.get("device", "auto"))
    if not DEVICES_RE.fullmatch(device):
        c.error(join_path(path, "device"), f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    dtype = str(raw.get("dtype", "auto"))
    if dtype not in DTYPES:
        c.error(join_path(path, "dtype"), f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return ModelSpec(name=name, weights=weights, device=device, dtype=dtype)


def _parse_source(c: Checker, value: Any, path: str) -> tuple[str, str | None]:
    """(normalised source, URL scheme or None for a file); ('', None) when invalid."""
    text = c.string(value, path)
    if text is None:
        return "", None
    if _CONTROL_RE.search(text):
        c.error(path, "contains control characters")
        return "", None
    match = _SCHEME_RE.match(text)
    if match is None:
        return c.local_path(text, path), None
    scheme = match.group(1).lower()
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: "rtsp://[::1/live"
        c.error(path, f"{text!r} is not a valid URL ({exc})")
        return "", None
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            c.error(path, f"file URL {text!r} must be file:///absolute/path")
            return "", None
        return c.local_path(unquote(parts.path), path), None
    if scheme not in URL_SCHEMES:
        c.error(
            path,
            f"scheme {scheme + ':'!r} is not allowed; use a file path or a {'/'.join(URL_SCHEMES)} URL "
            f"(for a local file whose name contains ':', write ./{text})",
        )
        return "", None
    if not parts.hostname:
        c.error(path, f"URL {text!r} has no host")
        return "", None
    return text, scheme


def _parse_vocabulary(c: Checker, value: Any, path: str) -> list[str]:
    if isinstance(value, str):
        entries: list[Any] = [[part] for part in value.split(",")]  # a comma string: one class per item
    elif isinstance(value, list):
        entries = [item.split(",") if isinstance(item, str) else item for item in value]
    else:
        c.error(path, f"must be a list of class names or a comma-separated string, got {describe(value)}")
        return []
    if not entries or (len(entries) == 1 and _blank(entries[0])):
        c.error(path, "must list at least one class")
        return []
    if len(entries) > MAX_CLASSES:
        c.error(path, f"has {len(entries)} classes; at most {MAX_CLASSES} are allowed")
        return []
    vocabulary: list[str] = []
    seen: dict[str, int] = {}
    for i, names in enumerate(entries):
        item_path = f"{path}[{i}]"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            c.error(item_path, f"must be a string, got {describe(names)}")
            continue
        cleaned = [n.strip() for n in names]
        if not cleaned or not all(cleaned):  # `[]` as an entry names no class at all
            c.error(item_path, "class names must be non-empty (check for stray or doubled commas)")
            continue
        for name in cleaned:
            key = name.casefold()
            if key in seen:
                c.error(item_path, f"{name!r} duplicates a name of {path}[{seen[key]}] (case-insensitive)")
            seen.setdefault(key, i)
        vocabulary.append(", ".join(cleaned))
    return vocabulary


def _blank(names: Any) -> bool:
    """Whether a vocabulary entry names nothing: `""`, `" "` or `[]`. Anything else, including entries
    that are not strings (reported per item), counts as an attempt at a class."""
    return isinstance(names, list) and all(isinstance(n, str) and not n.strip() for n in names)


def _parse_sampling(c: Checker, value: Any, path: str) -> SamplingSpec:
    raw = c.mapping(value, path, ("fps", "every"))
    if not raw:
        return SamplingSpec()
    if "fps" in raw and "every" in raw:
        c.error(path, "give either fps or every, not both")
        return SamplingSpec()
    if "every" in raw:
        return SamplingSpec(fps=None, every=c.integer(raw["every"], join_path(path, "every"), 1) or 1)
    if "fps" in raw:
        fps = c.number(raw["fps"], join_path(path, "fps"), 0.0, inclusive=False)
        return SamplingSpec(fps=fps if fps is not None else 1.0)
    return SamplingSpec()


def _parse_stream(c: Checker, value: Any, path: str) -> tuple[StreamSpec, str | None] | None:
    keys = (
        "id",
        "source",
        "vocabulary",
        "sampling",
        "live",
        "failure_policy",
        "realtime",
        "regions",
        "alerts",
    )
    raw = c.mapping(value, path, keys)
    if raw is None:
        return None
    for required in ("source", "vocabulary"):
        if required not in raw:
            c.error(join_path(path, required), "is required")
    stream_id = raw.get("id")
    if stream_id is not None and (problem := id_problem(stream_id)) is not None:
        c.error(join_path(path, "id"), problem)
        stream_id = None
    source, scheme = (
        _parse_source(c, raw["source"], join_path(path, "source")) if "source" in raw else ("", None)
    )
    vocabulary = (
        _parse_vocabulary(c, raw["vocabulary"], join_path(path, "vocabulary")) if "vocabulary" in raw else []
    )
    sampling = _parse_sampling(c, raw.get("sampling"), join_path(path, "sampling"))
    live = scheme in LIVE_SCHEMES
    if raw.get("live") is not None:
        live = bool(c.boolean(raw["live"], join_path(path, "live")))
    policy_raw = c.mapping(raw.get("failure_policy"), join_path(path, "failure_policy"), ("retries",))
    retries = 0
    if policy_raw and "retries" in policy_raw:
        retries = c.integer(policy_raw["retries"], join_path(path, "failure_policy.retries"), 0) or 0
    realtime = False
    if raw.get("realtime") is not None:
        realtime = bool(c.boolean(raw["realtime"], join_path(path, "realtime")))
    if realtime and scheme is not None:
        message = "only for files; network and live sources already arrive in real time"
        c.error(join_path(path, "realtime"), message)
    regions = parse_regions(c, raw.get("regions"), join_path(path, "regions"))
    class_names = [entry.split(",")[0].strip() for entry in vocabulary] if vocabulary else None
    alerts = parse_alerts(
        c, raw.get("alerts"), join_path(path, "alerts"), [r.name for r in regions], class_names
    )
    spec = StreamSpec(
        id=stream_id or "",
        source=source,
        vocabulary=vocabulary,
        sampling=sampling,
        live=live,
        failure_policy=FailurePolicy(retries=retries),
        realtime=realtime,
        regions=regions,
        alerts=alerts,
    )
    return spec, scheme


def _id_seed(source: str, scheme: str | None) -> str:
    """What a stream without `id` is named after: the file name, else the URL's last path part, else host."""
    if scheme is None:
        return source
    parts = urlsplit(source)
    return parts.path.rstrip("/") or (parts.hostname or "").replace(".", "-")


def _parse_streams(c: Checker, value: Any) -> list[StreamSpec]:
    if not isinstance(value, list) or not value:
        c.error("streams", f"must be a non-empty list of streams, got {describe(value)}")
        return []
    parsed = [(i, p) for i, item in enumerate(value) if (p := _parse_stream(c, item, f"streams[{i}]"))]
    first_use: dict[str, int] = {}
    for i, (spec, _) in parsed:
        if spec.id:
            key = spec.id.lower()  # directory names: case-insensitive file systems would merge them
            if key in first_use:
                c.error(f"streams[{i}].id", f"{spec.id!r} duplicates streams[{first_use[key]}].id")
            first_use.setdefault(key, i)
    unnamed = [(i, spec, scheme) for i, (spec, scheme) in parsed if not spec.id]
    names = [_id_seed(s.source, scheme) for _, s, scheme in unnamed]
    derived = iter(unique_stream_ids(names, taken=first_use))
    streams = []
    for _, (spec, _) in parsed:
        streams.append(spec if spec.id else dataclasses.replace(spec, id=next(derived)))
    return streams


def _parse_serve(c: Checker, value: Any) -> ServeSpec:
    path = "serve"
    keys = ("num_replicas", "autoscaling", "batch_size", "batch_wait_timeout_s", "num_gpus_per_replica")
    raw = c.mapping(value, path, keys)
    if not raw:
        return ServeSpec()
    replicas: int | Literal["auto"] = 1
    if "num_replicas" in raw:
        given = raw["num_replicas"]
        replicas = "auto" if given == "auto" else c.integer(given, "serve.num_replicas", 1) or 1
    autoscaling: dict[str, float] | None = None
    if raw.get("autoscaling") is not None:
        auto = c.mapping(raw["autoscaling"], "serve.autoscaling", tuple(_AUTOSCALING)) or {}
        autoscaling = {}
        for key, given in auto.items():
            if key in _AUTOSCALING:
                kind, lower, inclusive = _AUTOSCALING[key]
                at = f"serve.autoscaling.{key}"
                parsed = (
                    c.integer(given, at, int(lower)) if kind is int else c.number(given, at, lower, inclusive)
                )
                if parsed is not None:
                    autoscaling[key] = parsed
        low, high = autoscaling.get("min_replicas"), autoscaling.get("max_replicas")
        if low is not None and high is not None and low > high:
            c.error("serve.autoscaling", f"min_replicas ({show(low)}) is above max_replicas ({show(high)})")
        if isinstance(raw.get("num_replicas"), int) and not isinstance(raw.get("num_replicas"), bool):
            c.error(
                "serve.autoscaling",
                "cannot be combined with a fixed serve.num_replicas; use 'auto' or drop it",
            )
        replicas = "auto"
    batch_size = c.integer(raw.get("batch_size", 8), "serve.batch_size", 1) or 8
    timeout = c.number(
        raw.get("batch_wait_timeout_s", 0.05), "serve.batch_wait_timeout_s", 0.0, inclusive=True
    )
    gpus = None
    if raw.get("num_gpus_per_replica") is not None:
        gpus = c.number(raw["num_gpus_per_replica"], "serve.num_gpus_per_replica", 0.0, inclusive=True)
    return ServeSpec(
        num_replicas=replicas,
        autoscaling=autoscaling,
        batch_size=batch_size,
        batch_wait_timeout_s=timeout if timeout is not None else 0.05,
        num_gpus_per_replica=gpus,
    )


def parse_job_spec(data: Any, base_dir: str | Path | None = None, source: str | None = None) -> JobSpec:
    """Validate a job spec given as plain data (e.g. parsed YAML); relative paths resolve against `base_dir`.

    `base_dir` defaults to the current directory; `source` only names the spec in error messages.
    """
    c = Checker(Path(os.path.abspath(base_dir)) if base_dir is not None else Path.cwd())
    keys = (
        "job_id",
        "model",
        "output",
        "streams",
        "serve",
        "store_labels",
        "flush_interval_s",
        "decoding",
        "webhook",
    )
    raw = c.mapping(data, "", keys)
    if raw is None or not raw:
        if raw is not None:
            c.error("", "the job spec is empty; it needs at least `output` and `streams`")
        raise JobSpecError(c.problems, source)
    job_id = raw.get("job_id")
    if job_id is not None and (problem := id_problem(job_id)) is not None:
        c.error("job_id", problem)
    model = _parse_model(c, raw.get("model"), "model")
    output = ""
    if "output" not in raw:
        c.error("output", "is required (the directory that receives the Parquet tables)")
    elif (text := c.string(raw["output"], "output")) is not None:
        if "://" in text:
            c.error("output", f"must be a directory path, got URL {text!r}")
        else:
            output = c.local_path(text, "output")
    streams = _parse_streams(c, raw.get("streams"))
    serve = _parse_serve(c, raw.get("serve"))
    store_labels = False
    if "store_labels" in raw:
        store_labels = bool(c.boolean(raw["store_labels"], "store_labels"))
    flush_interval_s = DEFAULT_FLUSH_INTERVAL_S
    if "flush_interval_s" in raw:
        flush_interval_s = c.number(raw["flush_interval_s"], "flush_interval_s", 0.0, inclusive=False) or 0.0
    decoding = parse_decoding(c, raw.get("decoding"))
    webhook = parse_webhook(c, raw.get("webhook"))
    if c.problems:
        raise JobSpecError(c.problems, source)
    return JobSpec(job_id, model, output, streams, serve, store_labels, flush_interval_s, decoding, webhook)


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate a YAML job spec; relative paths inside it resolve against the file's directory."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobSpecError([("", f"cannot read job spec {file}: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise JobSpecError([("", f"job spec {file} is not UTF-8 text: {exc}")]) from exc
    # PyYAML raises ValueError, not YAMLError, for scalars it matches but cannot build (`2024-02-30`,
    # `!!float abc`), and RecursionError for very deep nesting; all are the spec's fault, not ours.
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise JobSpecError([("", f"not valid YAML: {exc}")], str(file)) from exc
    return parse_job_spec(data, base_dir=file.absolute().parent, source=str(file))
