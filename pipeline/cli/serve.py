"""`sanstream serve`: the long-lived service. One warm SAN pool for every job, an HTTP API to submit jobs,
add and remove streams and change vocabularies while they run, and a job manager inside the cluster.

Everything that can be checked is checked before Ray starts (weights resolvable, output folder writable,
a token when listening beyond loopback). SIGINT/SIGTERM stop the service cleanly: running jobs are
interrupted (each stream commits what it analysed) and the next `sanstream serve` on the same job store
continues them exactly once. Ray is imported only here, lazily, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from pipeline.cli.common import DEFAULT_OUT
from pipeline.compile_modes import COMPILE_MODES
from pipeline.dtypes import HELP as DTYPE_HELP
from pipeline.dtypes import METAVAR as DTYPE_METAVAR
from pipeline.dtypes import dtype_argument
from pipeline.jobs.spec import DEVICES_RE

TOKEN_ENV = "SANSTREAM_TOKEN"


class ServeError(ValueError):
    """Bad input to `sanstream serve` (reported with exit code 2, no traceback)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the long-lived service: one warm model pool and an HTTP API for every job"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--model", default="san_vit_b_16", help="model preset (default: %(default)s)")
    parser.add_argument("--weights", default="", help="checkpoint file or preset name (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        default="auto",
        type=dtype_argument,
        metavar=DTYPE_METAVAR,
        help=f"{DTYPE_HELP} (default: %(default)s)",
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="run the replicas' network through torch.compile in this mode (default: eager)",
    )
    parser.add_argument(
        "--max-padding",
        type=_padding,
        default=None,
        help="extra area a frame may be computed on to share a forward with frames of other sizes "
        "(default: 0 on CPU, 0.5 on CUDA)",
    )
    parser.add_argument("--replicas", type=int, default=1, help="SAN replicas in the pool (default: 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per forward (default: 8)")
    parser.add_argument(
        "--decoders", type=int, default=1, help="decoder processes kept warm for every job (default: 1)"
    )
    parser.add_argument(
        "--streams-per-decoder",
        type=int,
        default=32,
        help="streams a warm decoder carries before another starts (default: 32)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder of jobs that name none (default: %(default)s)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's and Serve's own logs (by default they stay in Ray's log folder)",
    )
    parser.set_defaults(handler=run)


def _padding(text: str) -> float:
    """`type=` for --max-padding: a finite number >= 0, or argparse's usage error (exit code 2)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number >= 0 (0.5: half the frame's area again), got {text!r}"
        )
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> str | None:
    """Validate before anything starts; returns the bearer token the service requires (None on loopback
    without $SANSTREAM_TOKEN)."""
    if not 0 < args.port < 65536:
        raise ServeError(f"--port must be 1-65535, got {args.port}")
    if args.replicas < 1 or args.batch_size < 1 or args.decoders < 1 or args.streams_per_decoder < 1:
        raise ServeError("--replicas, --batch-size, --decoders and --streams-per-decoder must be at least 1")
    if not DEVICES_RE.fullmatch(args.device):
        raise ServeError(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    from pipeline.jobs.spec import ModelSpec  # the model stack: only when serving
    from pipeline.preflight import (
        address_problems,
        check_output_dir,
        check_weights,
        model_problems,
        runs_locally,
    )

    model = ModelSpec(name=args.model, device=args.device)
    problems = [*model_problems(model, runs_locally(args.address)), *address_problems(args.address)]
    if problems:  # before Ray starts: a typo must not cost a minute of Ray and Serve coming up
        flags = {"model.name": "--model", "model.device": "--device"}
        raise ServeError("; ".join(f"{flags[f]}: {m}" if f in flags else m for f, m in problems))
    check_output_dir(Path(args.out))
    check_weights(args.weights or args.model, args.model)
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not _is_loopback(args.host):
        token = secrets.token_urlsafe(24)
        print(f"listening beyond loopback: requests need 'Authorization: Bearer {token}' (set {TOKEN_ENV})")
    return token


def run(args: argparse.Namespace) -> int:
    token = check_args(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return serve_until(args, token, stop)


def serve_until(args: argparse.Namespace, token: str | None, stop: threading.Event) -> int:
    import ray
    from ray import serve

    from actors.ray_logging import init_ray
    from actors.service.app import APP_NAME, ServiceConfig, service_app
    from actors.service.manager import MANAGER_NAME
    from pipeline.jobs.redis_server import check_persistence, resolve_redis

    out = Path(args.out).absolute()
    redis_url, embedded = resolve_redis(out)
    try:
        if embedded is None:
            warning = check_persistence(redis_url)
            if warning:
                print(warning)
        init_ray(
            verbose=getattr(args, "verbose", False),
            address=args.address or os.environ.get("RAY_ADDRESS") or "local",
            namespace="sanstream",
            include_dashboard=False,
        )
        for signum in (signal.SIGINT, signal.SIGTERM):  # ray.init replaced SIGTERM's handler
            signal.signal(signum, lambda *_: stop.set())
        try:
            serve.start(
                http_options={"host": args.host, "port": args.port},
                logging_config={"log_level": "WARNING", "enable_access_log": False},
            )
            config = ServiceConfig(
                redis_url=redis_url,
                out=str(out),
                model=args.model,
                weights=args.weights,
                device=args.device,
                dtype=args.dtype,
                num_replicas=args.replicas,
                batch_size=args.batch_size,
                token=token,
                decoders=args.decoders,
                streams_per_decoder=args.streams_per_decoder,
                compile=args.compile,
                max_padding=args.max_padding,
            )
            gpus = ray.cluster_resources().get("GPU", 0) > 0
            serve.run(service_app(config, gpus), name=APP_NAME, route_prefix="/")
            print(f"sanstream service ready at http://{_shown(args.host)}:{args.port} (jobs write to {out})")
            print("stop with Ctrl-C: running jobs are interrupted and continue at the next start", flush=True)
            stop.wait()
            print("stopping: interrupting running jobs (each stream commits what it analysed)", flush=True)
            _interrupt_jobs(ray, MANAGER_NAME)
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _interrupt_jobs(ray: Any, manager_name: str) -> None:
    try:
        manager = ray.get_actor(manager_name)
    except ValueError:
        return
    left = ray.get(manager.interrupt_all.remote())
    if left:
        print(f"jobs still stopping when the service ended: {', '.join(left)}")


def _shown(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::") else host
