"""The YAML job spec: what to analyse, with which model, written where.

Everything is validated before anything starts (no model load, no Redis, no decoder): a typo found
after an hour of GPU time is the failure this module exists to prevent. All problems are collected and
reported together, each under its field path (`streams[1].sampling.fps: must be > 0`).

This module reads the whole job (model, output, serving, decoding, webhook) and loads the YAML file;
each stream's source, vocabulary and sampling are `pipeline.jobs.stream_spec`'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.compile_modes import compile_mode_problem
from pipeline.jobs.checks import Checker, join_path, show
from pipeline.jobs.decoding import DecodingSpec, parse_decoding
from pipeline.jobs.ids import id_problem
from pipeline.jobs.stream_spec import StreamSpec, parse_streams, without_none
from pipeline.webhook import WebhookSpec, parse_webhook

# Longest time an analysed frame waits before it is committed to Parquet (top-level `flush_interval_s`).
DEFAULT_FLUSH_INTERVAL_S = 10.0
DEVICES_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = ("auto", "float32", "float16", "bfloat16")
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
    """Which SAN variant to load and where to run it; `weights` defaults to the model's released weights.

    `compile` (a torch.compile mode, `pipeline.compile_modes`) and `max_padding` (how much extra area a frame
    may be computed on to share a forward with other sizes, `pipeline.san.buckets`) tune the replicas; None
    keeps the device's defaults (eager; no sharing on CPU)."""

    name: str = "san_vit_b_16"
    weights: str = ""
    device: str = "auto"
    dtype: str = "auto"
    compile: str | None = None
    max_padding: float | None = None

    def __post_init__(self) -> None:
        if not self.weights:
            object.__setattr__(self, "weights", self.name)


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
        data = without_none(dataclasses.asdict(self))
        data["streams"] = [stream.to_dict() for stream in self.streams]
        if self.webhook is not None:
            data["webhook"] = self.webhook.to_dict()
        return data


def _parse_model(c: Checker, value: Any, path: str) -> ModelSpec:
    if isinstance(value, str):
        value = {"name": value}
    raw = c.mapping(value, path, ("name", "weights", "device", "dtype", "compile", "max_padding"))
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
    compile_mode = raw.get("compile")
    if (problem := compile_mode_problem(compile_mode)) is not None:
        c.error(join_path(path, "compile"), problem)
    max_padding = None
    if raw.get("max_padding") is not None:
        max_padding = c.number(raw["max_padding"], join_path(path, "max_padding"), 0.0, inclusive=True)
    return ModelSpec(
        name=name, weights=weights, device=device, dtype=dtype, compile=compile_mode, max_padding=max_padding
    )


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
    streams = parse_streams(c, raw.get("streams"))
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
