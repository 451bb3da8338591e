"""Where a job's streams run: a few decoder actors, each carrying many streams, spread over the nodes
that have CPUs (and the custom resources or labels the spec asks for), and one writer per job per node,
next to the decoders it serves so parts are written on the node that decoded them. On the service, jobs
use its warm actors instead (`actors.fleet`), unless their `decoding` section asks for something of their
own.

How many decoders, and how many streams each, comes from the job spec's `decoding` section
(`pipeline.jobs.decoding.decoder_layout`); streams are dealt round-robin so every decoder carries a
similar load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.decoder_host import DecoderHost, decoder_actor_name, writer_actor_name
from actors.fleet import WarmFleet
from actors.stream_config import JobContext
from actors.writer import WriterHost
from pipeline.jobs.decoding import AUTO_STREAMS_PER_DECODER, DecodingSpec, decoder_layout
from pipeline.jobs.spec import JobSpec
from pipeline.jobs.stream_spec import StreamSpec


@dataclass(frozen=True)
class Placement:
    """Custom Ray resources each kind of actor requires, to decide which nodes run what (e.g. decoders on
    CPU nodes near the cameras, replicas on GPU nodes). Empty means anywhere. Added to the job spec's
    `decoding.resources`."""

    decoders: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, float] = field(default_factory=dict)


class StreamCarriers:
    """The actors a job's streams run on, and which decoder and writer carry each stream. Streams added
    while the job runs (through the service) go to the least loaded decoder, or a new one when every
    decoder carries its `streams_per_decoder` already.

    With a `fleet` (the service's warm actors) streams are carried there, and only `own_actors` (none)
    are the job's to kill when it ends."""

    def __init__(
        self,
        spec: JobSpec,
        job: JobContext,
        redis_url: str,
        pool: Any,
        placement: Placement,
        fleet: WarmFleet | None = None,
    ) -> None:
        self.spec, self.job, self.redis_url, self.pool = spec, job, redis_url, pool
        self.fleet = fleet
        self.per_decoder = spec.decoding.streams_per_decoder or AUTO_STREAMS_PER_DECODER
        options: dict[str, Any] = {
            "resources": {**spec.decoding.resources, **placement.decoders},
            "scheduling_strategy": "SPREAD",
        }
        if spec.decoding.node_labels:
            options["label_selector"] = dict(spec.decoding.node_labels)
        self.options = options
        self.decoders: list[tuple[Any, str, str]] = []  # (actor, name, node id)
        self.load: list[int] = []  # streams assigned per decoder
        self.writers: dict[str, Any] = {}  # node id -> writer
        self.hosts: dict[str, int] = {}  # stream id -> decoder index
        #: stream id -> (decoder, writer) actors and their names, for streams on the fleet
        self.fleet_carriers: dict[str, tuple[Any, Any]] = {}
        #: stream id -> (decoder actor name, writer actor name)
        self.names: dict[str, tuple[str, str]] = {}
        #: actors started for this job alone, killed when it ends
        self.own_actors: list[Any] = []

    def add_decoders(self, count: int) -> None:
        """Start `count` decoders (in parallel) and a writer on each node they landed on."""
        job_id = self.job.job_id
        first = len(self.decoders)
        new = [
            DecoderHost.options(name=decoder_actor_name(job_id, first + i), **self.options).remote(
                self.redis_url, self.pool
            )
            for i in range(count)
        ]
        self.own_actors += new
        nodes = ray.get([host.node_id.remote() for host in new])
        for i, (host, node) in enumerate(zip(new, nodes, strict=True)):
            self.decoders.append((host, decoder_actor_name(job_id, first + i), node))
            self.load.append(0)
            if node not in self.writers:
                # Soft affinity: a writer whose node died restarts elsewhere rather than not at all.
                self.writers[node] = WriterHost.options(
                    name=writer_actor_name(job_id, node),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
                ).remote(self.redis_url)
                self.own_actors.append(self.writers[node])

    def assign(self, stream: StreamSpec) -> tuple[str, str]:
        """Give `stream` a decoder (the least loaded; a new one when all are full) and that node's writer;
        returns their actor names."""
        if stream.id in self.names:
            return self.names[stream.id]
        if self.fleet is not None:
            host, writer, host_name, writer_name = self.fleet.assign(self.job.job_id, stream.id)
            self.fleet_carriers[stream.id] = (host, writer)
            self.names[stream.id] = (host_name, writer_name)
            return self.names[stream.id]
        if not self.decoders or min(self.load) >= self.per_decoder:
            self.add_decoders(1)
        index = min(range(len(self.load)), key=self.load.__getitem__)
        self.hosts[stream.id] = index
        self.load[index] += 1
        _, name, node = self.decoders[index]
        self.names[stream.id] = (name, writer_actor_name(self.job.job_id, node))
        return self.names[stream.id]

    def carriers(self, stream_id: str) -> tuple[Any, Any]:
        """The (decoder, writer) actors carrying a stream already assigned."""
        if stream_id in self.fleet_carriers:
            return self.fleet_carriers[stream_id]
        host, _, node = self.decoders[self.hosts[stream_id]]
        return host, self.writers[node]

    def start(self, stream: StreamSpec) -> Any:
        """Start (or retry) `stream` on its decoder; the reference resolves to its `StreamOutcome`."""
        host, writer = self.carriers(stream.id)
        return host.run.remote(self.job, stream, writer)

    def release(self) -> None:
        """The job ended: kill its own actors; the fleet's forget it (they carry other jobs' streams)."""
        for actor in self.own_actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self.fleet is not None:
            self.fleet.release(self.job.job_id)


def uses_fleet(spec: JobSpec, placement: Placement) -> bool:
    """A job runs on the service's warm actors unless it asks where or how its streams are decoded."""
    return spec.decoding == DecodingSpec() and not placement.decoders


def _node_cpus() -> list[float]:
    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")]


def place_streams(
    spec: JobSpec,
    job: JobContext,
    streams: list[StreamSpec],
    redis_url: str,
    pool: Any,
    placement: Placement,
    fleet: WarmFleet | None = None,
) -> StreamCarriers:
    """Create the decoders and writers for `streams` (or take the `fleet`'s, where the job may use them)
    and assign each stream to one of each, dealt round-robin so every decoder carries a similar load."""
    if fleet is not None and not uses_fleet(spec, placement):
        fleet = None
    carriers = StreamCarriers(spec, job, redis_url, pool, placement, fleet)
    if fleet is not None:
        for stream in streams:
            carriers.assign(stream)
        return carriers
    count, per_decoder = decoder_layout(len(streams), spec.decoding, _node_cpus())
    if count == 0:
        return carriers
    carriers.add_decoders(count)
    carriers.per_decoder = max(carriers.per_decoder, per_decoder)
    for stream in streams:
        carriers.assign(stream)
    return carriers
