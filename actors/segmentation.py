"""The pool of SAN replicas: a Ray Serve deployment whose dynamic batching merges frames from different
streams, each with its own vocabulary, into one forward pass.

Frames arrive as object references inside a small request (Serve refuses top-level ObjectRefs, and nested
ones are not resolved for us), so the pixels go from the decoder's object store to the replica without
being re-serialised through the router. A replica answers with per-class pixel counts computed on its
device at the frame's own resolution, per class for the whole frame and for each of the stream's regions
(their masks rasterised once per stream and frame size, and cached here); label maps only when the job asks
for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from actors.messages import SegmentReply, SegmentRequest
from actors.service.metrics import ReplicaRecorder, oldest_wait_seconds
from pipeline.frames import FrameAreas
from pipeline.jobs.spec import JobSpec
from pipeline.regions import RegionMasks
from pipeline.san import Segmenter, available_models, load_checkpoint

# The job spec spells dtypes out (float32, ...); the CLI uses the short forms. Both are accepted here.
DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


#: Batches a replica holds at once: while one computes, the next fetches its frames from the object store
#: (and is formed by Serve), so the device never waits for a fetch between batches.
CONCURRENT_BATCHES = 2
#: Of those, how many compute at once, by whether the replica has a GPU: on CUDA two batches overlap one's
#: copies and post-processing with the other's forward pass; on CPU they would only split the cores.
COMPUTING_BATCHES = {True: 2, False: 1}
#: Streams x frame sizes whose region masks a replica keeps (a mask is one byte per pixel per region).
REGION_MASKS_CACHED = 64


class SegmentationReplica:
    """Holds one `Segmenter`; `segment` is batched by Serve across all streams of a job."""

    def __init__(
        self,
        model: str,
        weights: str,
        device: str,
        dtype: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        redis_url: str | None = None,
        compile_mode: str | None = None,
        max_padding: float | None = None,
    ) -> None:
        target = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        # A checkpoint file says which model it is (its shapes); names and random weights need the preset.
        is_file = weights not in available_models() and weights != "random"
        san = load_checkpoint(weights, model=None if is_file else model)
        self.segmenter = Segmenter(
            san,
            device=target,
            dtype=resolve_dtype(dtype, target),
            compile_mode=compile_mode,
            max_padding=max_padding,
        )
        self.segment.set_max_batch_size(max_batch_size)
        self.segment.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.name = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()
        self._batches = itertools.count()
        # Region masks of the streams this replica serves, per frame size (see `pipeline.regions`).
        self._region_masks = RegionMasks(max_entries=REGION_MASKS_CACHED)
        # Batch figures for `/metrics` (Redis, when the job store is given) and Ray's metrics.
        self._recorder = ReplicaRecorder(self.name, redis_url)
        # Batches computing at once (see CONCURRENT_BATCHES); the others fetch their frames meanwhile.
        self._computing = asyncio.Semaphore(COMPUTING_BATCHES[target.type == "cuda"])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=CONCURRENT_BATCHES)
    async def segment(self, requests: list[SegmentRequest]) -> list[SegmentReply]:
        # Monitoring: returns at once; the queue depth and the Redis write follow in the background.
        self._recorder.batch(len(requests), oldest_wait_seconds(r.wall_time for r in requests))
        images: list[np.ndarray] = await asyncio.gather(*(request.image for request in requests))
        want_labels = any(request.return_labels for request in requests)
        sizes = [
            r.original_size or (image.shape[0], image.shape[1])
            for r, image in zip(requests, images, strict=True)
        ]
        regions = [
            self._region_masks.stacked(r.regions, width, height) if r.regions else None
            for r, (height, width) in zip(requests, sizes, strict=True)
        ]
        # The forward pass runs in a worker thread so the event loop keeps queueing the next batch.
        async with self._computing:
            results = await asyncio.to_thread(
                self.segmenter.segment,
                images,
                [r.vocabulary for r in requests],
                return_labels=want_labels,
                regions=regions if any(m is not None for m in regions) else None,
                original_sizes=[r.original_size for r in requests],
            )
        done = time.time()
        number = next(self._batches)
        streams = tuple(r.stream_id for r in requests)
        replies = []
        for request, (height, width), result in zip(requests, sizes, results, strict=True):
            labels = None
            if request.return_labels and result.labels is not None:
                labels = result.labels.astype(np.uint8 if len(request.vocabulary) <= 255 else np.uint16)
            areas = FrameAreas(
                stream_id=request.stream_id,
                frame_index=request.frame_index,
                pts_seconds=request.pts_seconds,
                height=height,
                width=width,
                pixels=result.areas,
                latency_seconds=done - request.wall_time,
                labels=labels,
                vocabulary_version=request.vocabulary_version,
                region_names=tuple(region.name for region in request.regions),
                region_pixels=result.region_areas,
            )
            replies.append(SegmentReply(areas, self.name, self.node_id, number, len(requests), streams))
        return replies


#: Requests a replica holds at once, in batches: enough that the next batches are already waiting at the
#: replica when one finishes. At two batches a replica idled about a third of the time, waiting for the
#: routers in the decoders to notice free slots (bench/service.py: 0.75 of the bare loop's frames/s, 0.95
#: at eight); each stream still keeps at most `max_in_flight` frames in flight.
BATCHES_QUEUED_PER_REPLICA = 8


def replica_options(
    batch_size: int,
    num_gpus: float | None,
    gpus_available: bool,
    resources: dict[str, float],
    num_replicas: int,
    autoscaling: dict[str, Any] | None,
) -> dict[str, Any]:
    """Serve options of a SAN pool (a job's own or the service's): a GPU per replica when the cluster has
    GPUs (unless `num_gpus` says), `BATCHES_QUEUED_PER_REPLICA` batches of requests per replica, replicas
    or autoscaling, and no access log (one line per frame would flood the console and Ray's log files)."""
    if num_gpus is None:
        num_gpus = 1 if gpus_available else 0
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": 0 if num_gpus else 1, "resources": resources},
        "max_ongoing_requests": max(BATCHES_QUEUED_PER_REPLICA * batch_size, 16),
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
    }
    if autoscaling:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = num_replicas
    return options


def deployment_options(
    spec: JobSpec, gpus_available: bool, resources: dict[str, float] | None = None
) -> dict[str, Any]:
    """Serve options from the job's `serve` section (`num_replicas: auto` autoscales from 1 to 4)."""
    serve_spec = spec.serve
    auto = serve_spec.num_replicas == "auto"
    return replica_options(
        serve_spec.batch_size,
        serve_spec.num_gpus_per_replica,
        gpus_available,
        dict(resources or {}),
        1 if auto else int(serve_spec.num_replicas),
        serve_spec.autoscaling or ({"min_replicas": 1, "max_replicas": 4} if auto else None),
    )


def app_name(job_id: str) -> str:
    return f"sanstream-{job_id}"


def deploy(
    spec: JobSpec, job_id: str, resources: dict[str, float] | None = None
) -> serve.handle.DeploymentHandle:
    """Start (or reuse) Serve without an HTTP proxy and run this job's replica pool.

    `resources` are custom Ray resources each replica requires (to pin replicas to GPU nodes, say)."""
    serve.start(
        proxy_location="Disabled", logging_config={"log_level": "WARNING", "enable_access_log": False}
    )
    gpus_available = ray.cluster_resources().get("GPU", 0) > 0
    deployment = serve.deployment(SegmentationReplica, name="SegmentationReplica").options(
        **deployment_options(spec, gpus_available, resources)
    )
    weights = spec.model.weights or spec.model.name
    app = deployment.bind(
        spec.model.name,
        weights,
        spec.model.device,
        spec.model.dtype,
        spec.serve.batch_size,
        spec.serve.batch_wait_timeout_s,
        compile_mode=spec.model.compile,
        max_padding=spec.model.max_padding,
    )
    return serve.run(app, name=app_name(job_id), route_prefix=None)


def undeploy(job_id: str) -> None:
    # Serve may already be gone (cluster shutting down): then there is nothing left to delete.
    with contextlib.suppress(Exception):
        serve.delete(app_name(job_id), _blocking=False)
