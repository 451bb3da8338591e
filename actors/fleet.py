"""The service's warm decoders and writers, shared by every job it runs.

A job run by a driver starts its own decoder and writer processes, which costs seconds before its first
frame (a Python interpreter, Ray, PyAV, a Serve handle that has to find the pool). A service runs jobs all
day, so it keeps those processes warm instead: a few decoders, each carrying streams of any job, and a
writer on every node they run on. A stream goes to the least loaded decoder; when every decoder carries
`streams_per_decoder` streams, one more is started and kept.

The fleet belongs to the job manager (`actors.service.manager`), which creates it: if the manager dies,
Ray ends the fleet's actors with it and the restarted manager starts a new fleet, then continues its jobs.
A job whose `decoding` section asks for something particular (resources, node labels, its own layout)
still gets actors of its own (`actors.placement`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.decoder_host import SERVICE_PREFIX, DecoderHost, decoder_actor_name, writer_actor_name
from actors.writer import WriterHost
from pipeline.jobs.decoding import AUTO_STREAMS_PER_DECODER


class WarmFleet:
    """Warm decoders (and a writer per node they landed on) for the streams of every job; thread-safe, as
    the manager runs each job in its own thread.

    Args:
        redis_url: the service's job store.
        pool: handle of the service's SAN pool.
        decoders: decoders started up front (more are added when all are full).
        streams_per_decoder: most streams one decoder carries before another is started.
    """

    def __init__(
        self,
        redis_url: str,
        pool: Any,
        decoders: int = 1,
        streams_per_decoder: int = AUTO_STREAMS_PER_DECODER,
    ) -> None:
        self.redis_url, self.pool = redis_url, pool
        self.per_decoder = streams_per_decoder
        self._lock = threading.Lock()
        self.decoders: list[tuple[Any, str, str]] = []  # (actor, name, node id)
        self.load: list[int] = []  # streams assigned per decoder, of every job
        self.writers: dict[str, Any] = {}  # node id -> writer
        #: (job id, stream id) -> decoder index
        self.assigned: dict[tuple[str, str], int] = {}
        with self._lock:
            self._add_decoders(decoders)

    def _add_decoders(self, count: int) -> None:
        first = len(self.decoders)
        names = [decoder_actor_name(SERVICE_PREFIX, first + i) for i in range(count)]
        new = [
            _named(DecoderHost, name, scheduling_strategy="SPREAD").remote(self.redis_url, self.pool)
            for name in names
        ]
        nodes = ray.get([host.node_id.remote() for host in new])
        started = []
        for host, name, node in zip(new, names, nodes, strict=True):
            self.decoders.append((host, name, node))
            self.load.append(0)
            if node not in self.writers:
                self.writers[node] = _named(
                    WriterHost,
                    writer_actor_name(SERVICE_PREFIX, node),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True),
                ).remote(self.redis_url)
                started.append(self.writers[node])
        ray.get([writer.pid.remote() for writer in started])  # warm means running, not scheduled

    def assign(self, job_id: str, stream_id: str) -> tuple[Any, Any, str, str]:
        """The decoder and writer (actors, then names) that carry `stream_id` of `job_id`: the one it was
        given before, else the least loaded decoder (a new one when all are full) and its node's writer."""
        with self._lock:
            key = (job_id, stream_id)
            if key not in self.assigned:
                if not self.decoders or min(self.load) >= self.per_decoder:
                    self._add_decoders(1)
                index = min(range(len(self.load)), key=self.load.__getitem__)
                self.assigned[key] = index
                self.load[index] += 1
            host, name, node = self.decoders[self.assigned[key]]
            return host, self.writers[node], name, writer_actor_name(SERVICE_PREFIX, node)

    def release(self, job_id: str) -> None:
        """The job ended: its streams no longer count as load, and the decoders and writers forget it."""
        with self._lock:
            used: set[int] = set()
            for key in [key for key in self.assigned if key[0] == job_id]:
                index = self.assigned.pop(key)
                self.load[index] -= 1
                used.add(index)
            hosts = [self.decoders[index][0] for index in used]
            writers = list(self.writers.values())
        for actor in hosts + writers:
            with contextlib.suppress(Exception):
                actor.forget_job.remote(job_id)

    def actors(self) -> list[Any]:
        with self._lock:
            return [host for host, _, _ in self.decoders] + list(self.writers.values())


def _named(actor_class: Any, name: str, **options: Any) -> Any:
    """`actor_class` options under `name`; a leftover of an earlier fleet under that name (its manager is
    gone and Ray has not reaped it yet) is killed first, so the new fleet does not fail to start."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(name))
    return actor_class.options(name=name, **options)
