"""The job spec's `streams`: one video source each, what to measure in it, and how it is checked.

Sources are restricted to plain file paths and http/https/rtsp/rtsps URLs because the decoder hands
them to FFmpeg, whose other protocols (`concat:`, `subfile:`, `pipe:`, `fd:` ...) reach arbitrary
local files and descriptors. Relative file paths are made absolute against the spec file's directory, which
also stops FFmpeg from ever seeing a relative name that starts with `proto:`.

Streams are validated like the rest of the spec (`pipeline.jobs.checks`): every problem is reported under its
field path (`streams[1].sampling.fps: must be > 0`); `pipeline.jobs.spec` reads the whole job.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.alerts import AlertRule, parse_alerts
from pipeline.jobs.checks import Checker, describe, join_path
from pipeline.jobs.ids import id_problem, unique_stream_ids
from pipeline.regions import RegionSpec, parse_regions

MAX_CLASSES = 1000
URL_SCHEMES = ("http", "https", "rtsp", "rtsps")
LIVE_SCHEMES = ("rtsp", "rtsps")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
        data = without_none(dataclasses.asdict(self))
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


def without_none(value: Any) -> Any:
    """Plain data without its unset (None) fields, as a spec spells it (`to_dict` forms)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


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


def parse_streams(c: Checker, value: Any) -> list[StreamSpec]:
    """The `streams` list: each stream checked, duplicate ids reported (case-insensitive), and the
    streams without an `id` named after their source."""
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
