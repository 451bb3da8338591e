"""The service's deployment files: `configs/serve.yaml` and the RayService's `serveConfigV2` are configs that
`serve deploy` accepts (Ray Serve's own schema), and their application builder makes the service's
application from their `args`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from actors.segmentation import BATCHES_QUEUED_PER_REPLICA, deployment_options
from actors.service.app import POOL_NAME, ServiceConfig, build_app, pool_options
from pipeline.jobs.spec import parse_job_spec

ROOT = Path(__file__).resolve().parents[2]


def serve_configs() -> dict[str, dict]:
    rayservice = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    return {
        "configs/serve.yaml": yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text()),
        "deploy/kuberay-rayservice.yaml": yaml.safe_load(rayservice["spec"]["serveConfigV2"]),
    }


@pytest.mark.parametrize("name", sorted(serve_configs()))
def test_serve_deploy_accepts_the_config_and_its_builder_makes_the_service(name: str) -> None:
    config = serve_configs()[name]
    schema = ServeDeploySchema.model_validate(config)
    [app] = schema.applications
    assert app.import_path == "actors.service.app:build_app"
    application = build_app({**app.args, "redis_url": "redis://127.0.0.1:1/0", "token": "t"})
    ingress = application._bound_deployment
    pool = ingress.init_args[0]._bound_deployment  # the ingress is bound to the pool
    assert (ingress.name, pool.name) == ("ServiceApi", POOL_NAME)
    model, _weights, device, dtype, batch_size, wait, redis_url = pool.init_args
    assert redis_url == "redis://127.0.0.1:1/0"
    assert (model, device, dtype) == (app.args["model"], "auto", "auto")
    assert (batch_size, wait) == (app.args["batch_size"], app.args["batch_wait_timeout_s"])
    assert pool.ray_actor_options["num_gpus"] == app.args["num_gpus_per_replica"]
    assert ingress.init_args[2] == app.args["out"] and ingress.init_args[4] == "t"
    defaults = ServiceConfig(redis_url="r", out="o")
    assert ingress.init_args[5] == {
        "decoders": app.args.get("decoders", defaults.decoders),
        "streams_per_decoder": app.args.get("streams_per_decoder", defaults.streams_per_decoder),
    }


def test_the_builder_names_what_is_missing_or_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="redis_url"):
        build_app({"model": "san_tiny_test"})
    with pytest.raises(ValueError, match=r"unknown service setting.*modle"):
        build_app({"redis_url": "redis://x", "modle": "san_tiny_test"})


def test_pool_options_follow_gpus_and_autoscaling() -> None:
    base = ServiceConfig(redis_url="redis://x", out="/tmp/out", batch_size=16)
    cpu = pool_options(base, gpus_available=False)
    assert cpu["ray_actor_options"]["num_gpus"] == 0 and cpu["ray_actor_options"]["num_cpus"] == 1
    assert cpu["num_replicas"] == 1 and cpu["max_ongoing_requests"] == 8 * 16
    gpu = pool_options(ServiceConfig(redis_url="r", out="o", autoscaling={"max_replicas": 3}), True)
    assert gpu["ray_actor_options"]["num_gpus"] == 1 and gpu["ray_actor_options"]["num_cpus"] == 0
    assert gpu["autoscaling_config"] == {"max_replicas": 3} and "num_replicas" not in gpu


def test_a_jobs_own_pool_and_the_services_pool_follow_the_same_rules() -> None:
    job = parse_job_spec(
        {
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": "/tmp/out",
            "streams": [{"id": "cam", "source": "/x.mp4", "vocabulary": ["a"]}],
            "serve": {"batch_size": 16, "num_replicas": 2},
        }
    )
    service = ServiceConfig(redis_url="redis://x", out="/tmp/out", batch_size=16, num_replicas=2)
    assert deployment_options(job, False) == pool_options(service, False)
    assert deployment_options(job, True)["ray_actor_options"]["num_gpus"] == 1
    auto = parse_job_spec({**job.to_dict(), "serve": {"batch_size": 4, "num_replicas": "auto"}})
    scaled = deployment_options(auto, False)
    assert (
        scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
        and "num_replicas" not in scaled
    )
    # Several batches wait at each replica, so it never idles while routers notice free slots.
    assert scaled["max_ongoing_requests"] == max(BATCHES_QUEUED_PER_REPLICA * 4, 16)


def test_the_warm_decoders_are_a_service_setting_checked_up_front() -> None:
    config = ServiceConfig(redis_url="redis://x", out="/tmp/out", decoders=3, streams_per_decoder=8)
    ingress = build_app({"redis_url": "redis://x", "decoders": 3, "streams_per_decoder": 8})._bound_deployment
    assert ingress.init_args[5] == {"decoders": config.decoders, "streams_per_decoder": 8}
    for bad in ({"decoders": 0}, {"streams_per_decoder": -1}, {"decoders": "two"}):
        with pytest.raises(ValueError, match=f"service setting {next(iter(bad))} must be a whole number"):
            build_app({"redis_url": "redis://x", **bad})


def test_compile_and_max_padding_reach_the_replicas_and_are_checked_up_front() -> None:
    app = build_app({"redis_url": "redis://x", "compile": "default", "max_padding": 0.25})
    pool = app._bound_deployment.init_args[0]._bound_deployment
    assert (pool.init_kwargs["compile_mode"], pool.init_kwargs["max_padding"]) == ("default", 0.25)
    plain = build_app({"redis_url": "redis://x"})._bound_deployment.init_args[0]._bound_deployment
    assert (plain.init_kwargs["compile_mode"], plain.init_kwargs["max_padding"]) == (None, None)
    with pytest.raises(ValueError, match="service setting compile must be one of"):
        build_app({"redis_url": "redis://x", "compile": "fast"})
    for bad in (-1, "half", True):
        with pytest.raises(ValueError, match="service setting max_padding must be a number >= 0"):
            build_app({"redis_url": "redis://x", "max_padding": bad})
