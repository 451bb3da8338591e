"""The job spec's optional `decoding` section: how many streams share one decoder actor, and where decoders run.

One process per camera does not scale to hundreds of cameras: each Ray actor is a whole Python process
(hundreds of MB, its own FFmpeg and its own object-store traffic) while a decoder thread spends most of its
time waiting on the network, the disk or the model. So decoders multiplex: one actor runs many streams,
each on its own thread (PyAV releases the GIL while it decodes, so those threads do run in parallel).

    decoding:
      streams_per_decoder: 32     # or auto
      decoders_per_node: 2        # or auto
      resources: {edge: 1}        # custom Ray resources each decoder/writer actor requires
      node_labels: {zone: north}  # Ray node labels decoders must run on

`resources` and `node_labels` pin decoding to chosen nodes, e.g. the edge nodes that can reach the cameras.
Validation follows the rest of the spec (`pipeline.jobs.checks`): every problem is reported under its field
path, before anything starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.jobs.checks import Checker, describe, join_path, show

# A decoder thread mostly waits (on I/O and on the model), so one actor keeps this many streams busy
# without its threads competing for the CPU; see `decoder_layout`.
AUTO_STREAMS_PER_DECODER = 32
# CPUs one decoder actor is budgeted on a node when `decoders_per_node` is auto (FFmpeg's own threads,
# colour conversion and the actor's Python overhead for its streams).
CPUS_PER_AUTO_DECODER = 8
AUTO = "auto"

# Ray's built-in resources are requested through their own options, never as custom resources; saying
# how keeps a user from guessing again.
_BUILTIN_RESOURCES = {
    "CPU": "decoder CPU is sized by decoders_per_node",
    "GPU": "decoders run on the CPU; GPUs belong to serve.num_gpus_per_replica",
    "memory": "a node's memory is set with `ray start --memory`, not requested here",
    "object_store_memory": "the object store is sized with `ray start --object-store-memory`",
}
# Ray refuses fractional resource quantities finer than this when the actor is created; say so up front.
_RESOURCE_UNIT = 0.0001
_PIN_HINT = "to pin decoders to nodes, start those nodes with a custom resource (ray start --resources) and name it here"


@dataclass(frozen=True)
class DecodingSpec:
    """How streams are grouped into decoder actors and which nodes those actors may use.

    Attributes:
        streams_per_decoder: most streams one decoder actor runs; None means auto
            (`AUTO_STREAMS_PER_DECODER`).
        decoders_per_node: decoder actors to spread over each node; None means auto (the fewest actors,
            each node taking up to `max(1, cpus // CPUS_PER_AUTO_DECODER)`).
        resources: custom Ray resources each decoder/writer actor requires, e.g. {"edge": 1} to keep
            decoding on the nodes that can reach the cameras.
        node_labels: Ray node labels (`ray start --labels`) a node must carry to run decoders.
    """

    streams_per_decoder: int | None = None
    decoders_per_node: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    node_labels: dict[str, str] = field(default_factory=dict)


def decoder_layout(stream_count: int, spec: DecodingSpec, node_cpus: list[float]) -> tuple[int, int]:
    """(number of decoder actors, streams per decoder) for `stream_count` streams on nodes with `node_cpus`.

    The fewest actors that keep to `streams_per_decoder` (auto: `AUTO_STREAMS_PER_DECODER`): every actor
    is a process with its own memory and start-up cost, and threads in one actor share the work well because
    decoding releases the GIL. An explicit `decoders_per_node` asks for spreading instead, so that many
    actors (per node in `node_cpus`) are started when there are streams enough to give each one; an auto
    `decoders_per_node` never adds actors, it only bounds how many a node takes (`node_decoder_slots`).
    Streams are then shared evenly, so no actor gets more than the returned count. 0 streams -> (0, 0).
    """
    if stream_count <= 0:
        return 0, 0
    per_decoder = spec.streams_per_decoder or AUTO_STREAMS_PER_DECODER
    decoders = min(stream_count, max(math.ceil(stream_count / per_decoder), 1))
    if spec.decoders_per_node is not None:
        decoders = min(stream_count, max(decoders, spec.decoders_per_node * len(node_cpus)))
    return decoders, math.ceil(stream_count / decoders)


def node_decoder_slots(spec: DecodingSpec, cpus: float) -> int:
    """How many decoder actors a node with `cpus` CPUs takes: `decoders_per_node`, or when that is auto
    `max(1, int(cpus) // CPUS_PER_AUTO_DECODER)`, so a small node still decodes and a big one is not
    crowded by one process per few cores."""
    if spec.decoders_per_node is not None:
        return spec.decoders_per_node
    return max(1, int(cpus) // CPUS_PER_AUTO_DECODER)


def parse_decoding(c: Checker, value: Any, path: str = "decoding") -> DecodingSpec:
    """Validate the `decoding` section (None or absent: all defaults), recording problems on `c`."""
    keys = ("streams_per_decoder", "decoders_per_node", "resources", "node_labels")
    raw = c.mapping(value, path, keys)
    if not raw:
        return DecodingSpec()
    return DecodingSpec(
        streams_per_decoder=_count_or_auto(
            c, raw.get("streams_per_decoder"), join_path(path, "streams_per_decoder")
        ),
        decoders_per_node=_count_or_auto(
            c, raw.get("decoders_per_node"), join_path(path, "decoders_per_node")
        ),
        resources=_resources(c, raw.get("resources"), join_path(path, "resources")),
        node_labels=_node_labels(c, raw.get("node_labels"), join_path(path, "node_labels")),
    )


def _count_or_auto(c: Checker, value: Any, path: str) -> int | None:
    """An integer >= 1, or None for "auto" (and for absent/null, which is what `JobSpec.to_dict` leaves)."""
    if value is None or value == AUTO:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        c.error(path, f"must be an integer >= 1 or {AUTO}, got {show(value)}")
        return None
    return value


def _entries(c: Checker, value: Any, path: str, what: str) -> list[tuple[str, Any, str]]:
    """(key, value, field path) of a mapping with non-empty string keys; problems recorded on `c`."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        c.error(path, f"must be a mapping of {what}, got {describe(value)}")
        return []
    entries: list[tuple[str, Any, str]] = []
    seen: set[str] = set()
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            c.error(join_path(path, show(key)), "name must be a non-empty string")
            continue
        name = key.strip()  # as everywhere in the spec: " edge" would be a resource no node has
        if name in seen:
            c.error(join_path(path, name), "is given twice (names are compared without surrounding spaces)")
            continue
        seen.add(name)
        entries.append((name, item, join_path(path, name)))
    return entries


def _resources(c: Checker, value: Any, path: str) -> dict[str, float]:
    resources: dict[str, float] = {}
    for name, amount, at in _entries(c, value, path, "custom resource names to amounts"):
        builtin = next((b for b in _BUILTIN_RESOURCES if b.lower() == name.lower()), None)
        if builtin is not None:
            # A lower-case `cpu` is not Ray's CPU but a custom resource no node has: it would never schedule.
            c.error(
                at,
                f"{builtin!r} is a built-in Ray resource, not a custom one; {_BUILTIN_RESOURCES[builtin]}; {_PIN_HINT}",
            )
            continue
        number = c.number(amount, at, 0.0, inclusive=False)
        if number is not None and number < _RESOURCE_UNIT:
            c.error(
                at, f"must be at least {_RESOURCE_UNIT:g}, Ray's smallest resource unit, got {show(amount)}"
            )
        elif number is not None:
            resources[name] = number
    return resources


def _node_labels(c: Checker, value: Any, path: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name, label, at in _entries(c, value, path, "label names to values"):
        if not isinstance(label, str):
            # YAML reads `zone: 1` or `gpu: true` as a number or a boolean; Ray labels are strings.
            c.error(at, f"must be a string (quote it in YAML), got {describe(label)}")
            continue
        labels[name] = label
    return labels
