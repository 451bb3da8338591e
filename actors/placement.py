"""Where a job's streams run: a few decoder actors, each carrying many streams, spread over the nodes
that have CPUs (and the custom resources or labels the spec asks for), and one writer per job per node,
next to the decoders it serves so parts are written on the node that decoded them.

How many decoders, and how many streams each, comes from the job spec's `decoding` section
(`pipeline.jobs.decoding.decoder_layout`); streams are dealt round-robin so every decoder carries a
similar load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.decoder_host import DecoderHost, decoder_actor_name, writer_actor_name
from actors.stream_config import DecoderSettings
from actors.writer import JobWriter
from pipeline.jobs.decoding import decoder_layout
from pipeline.jobs.spec import JobSpec, StreamSpec


@dataclass(frozen=True)
class Placement:
    """Custom Ray resources each kind of actor requires, to decide which nodes run what (e.g. decoders on
    CPU nodes near the cameras, replicas on GPU nodes). Empty means anywhere. Added to the job spec's
    `decoding.resources`."""

    decoders: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, float] = field(default_factory=dict)


@dataclass
class StreamCarriers:
    """The actors a job's streams run on: which decoder and writer carry each stream."""

    hosts: dict[str, Any] = field(default_factory=dict)
    writers: dict[str, Any] = field(default_factory=dict)
    #: stream id -> (decoder actor name, writer actor name)
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    actors: list[Any] = field(default_factory=list)

    def start(self, stream: StreamSpec) -> Any:
        """Start (or retry) `stream` on its decoder; the reference resolves to its `StreamOutcome`."""
        return self.hosts[stream.id].run.remote(stream, self.writers[stream.id])


def _node_cpus() -> list[float]:
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]


def place_streams(
    spec: JobSpec,
    job_id: str,
    streams: list[StreamSpec],
    redis_url: str,
    pool: Any,
    settings: DecoderSettings,
    placement: Placement,
    commit_interval_s: float,
) -> StreamCarriers:
    """Create the decoders and writers for `streams` and assign each stream to one of each."""
    carriers = StreamCarriers()
    count, _ = decoder_layout(len(streams), spec.decoding, _node_cpus())
    if count == 0:
        return carriers
    resources = {**spec.decoding.resources, **placement.decoders}
    options: dict[str, Any] = {"resources": resources, "scheduling_strategy": "SPREAD"}
    if spec.decoding.node_labels:
        options["label_selector"] = dict(spec.decoding.node_labels)
    hosts = [
        DecoderHost.options(name=decoder_actor_name(job_id, i), **options).remote(
            job_id, redis_url, pool, settings, spec.store_labels
        )
        for i in range(count)
    ]
    carriers.actors += hosts
    nodes = ray.get([host.node_id.remote() for host in hosts])
    writers: dict[str, Any] = {}
    for node in dict.fromkeys(nodes):
        # Soft affinity: a writer whose node died restarts elsewhere rather than not at all.
        writers[node] = JobWriter.options(
            name=writer_actor_name(job_id, node),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
        ).remote(str(spec.output), job_id, redis_url, commit_interval_s)
        carriers.actors.append(writers[node])
    for i, stream in enumerate(streams):
        index = i % count
        node = nodes[index]
        carriers.hosts[stream.id] = hosts[index]
        carriers.writers[stream.id] = writers[node]
        carriers.names[stream.id] = (decoder_actor_name(job_id, index), writer_actor_name(job_id, node))
    return carriers
