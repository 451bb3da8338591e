"""The service as one Ray Serve application: the SAN replica pool (weights loaded once per replica, text
embeddings cached per vocabulary, shared by every job) and the HTTP ingress that owns the job manager.

`build_app` is the application builder that `serve run`/`serve deploy` (and KubeRay's RayService) call
with the `args` of `configs/serve.yaml`; `sanstream serve` calls it too, so both start the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve import Application

from actors.segmentation import SegmentationReplica, replica_options
from actors.service.api import ServiceApi
from pipeline.compile_modes import compile_mode_problem
from pipeline.jobs.decoding import AUTO_STREAMS_PER_DECODER

APP_NAME = "sanstream"
POOL_NAME = "SegmentationReplica"


@dataclass(frozen=True)
class ServiceConfig:
    """What the service runs: its model pool and where jobs write by default.

    Attributes:
        redis_url: the job store (must persist; `sanstream serve` starts one under `out` when unset).
        out: output folder of jobs that do not name one.
        token: bearer token every request must carry (None: no check, for loopback only).
        autoscaling: Ray Serve autoscaling config for the pool; None keeps `num_replicas`.
        decoders: decoder processes kept warm for every job from the start (`actors.fleet`).
        streams_per_decoder: most streams a warm decoder carries before another one is started.
        compile: the replicas' torch.compile mode (`pipeline.compile_modes`); None: eager.
        max_padding: extra area a frame may be computed on to share a forward with other sizes
            (`pipeline.san.buckets`); None: the device's default.
    """

    redis_url: str
    out: str
    model: str = "san_vit_b_16"
    weights: str = ""
    device: str = "auto"
    dtype: str = "auto"
    num_replicas: int = 1
    autoscaling: dict[str, Any] | None = None
    batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    num_gpus_per_replica: float | None = None
    token: str | None = None
    replica_resources: dict[str, float] = field(default_factory=dict)
    decoders: int = 1
    streams_per_decoder: int = AUTO_STREAMS_PER_DECODER
    compile: str | None = None
    max_padding: float | None = None

    def __post_init__(self) -> None:
        if (problem := compile_mode_problem(self.compile)) is not None:
            raise ValueError(f"service setting compile {problem}")
        if self.max_padding is not None and (
            isinstance(self.max_padding, bool)
            or not isinstance(self.max_padding, int | float)
            or not self.max_padding >= 0
        ):
            raise ValueError(f"service setting max_padding must be a number >= 0, got {self.max_padding!r}")
        for name in ("decoders", "streams_per_decoder", "num_replicas", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"service setting {name} must be a whole number >= 1, got {value!r}")

    @property
    def model_spec(self) -> dict[str, str]:
        return {
            "name": self.model,
            "weights": self.weights or self.model,
            "device": self.device,
            "dtype": self.dtype,
        }


def pool_options(config: ServiceConfig, gpus_available: bool) -> dict[str, Any]:
    """Serve options of the service's pool, the same rules as a job's own pool (`replica_options`)."""
    return replica_options(
        config.batch_size,
        config.num_gpus_per_replica,
        gpus_available,
        dict(config.replica_resources),
        config.num_replicas,
        config.autoscaling,
    )


def service_app(config: ServiceConfig, gpus_available: bool = False) -> Application:
    pool = serve.deployment(SegmentationReplica, name=POOL_NAME).options(
        **pool_options(config, gpus_available)
    )
    model = config.model_spec
    bound_pool = pool.bind(
        model["name"],
        model["weights"],
        model["device"],
        model["dtype"],
        config.batch_size,
        config.batch_wait_timeout_s,
        config.redis_url,  # replicas record their batch figures for /metrics
        compile_mode=config.compile,
        max_padding=config.max_padding,
    )
    fleet = {"decoders": config.decoders, "streams_per_decoder": config.streams_per_decoder}
    return ServiceApi.bind(bound_pool, config.redis_url, config.out, model, config.token, fleet)


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run actors.service.app:build_app` and `serve deploy configs/serve.yaml`:
    `args` are `ServiceConfig` fields; `redis_url` and `token` default to $REDIS_URL and
    $SANSTREAM_TOKEN."""
    values = dict(args)
    values.setdefault("redis_url", os.environ.get("REDIS_URL", ""))
    values.setdefault("token", os.environ.get("SANSTREAM_TOKEN") or None)
    if not values["redis_url"]:
        raise ValueError("the service needs redis_url (or $REDIS_URL): a Redis that persists job state")
    values.setdefault("out", os.environ.get("SANSTREAM_OUT", "out"))
    unknown = sorted(set(values) - set(ServiceConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown service setting(s): {', '.join(unknown)}")
    return service_app(ServiceConfig(**values))
