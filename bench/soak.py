"""Soak test: many long streams through the real Ray pipeline as ONE job, watching whether memory stays flat.

It runs --streams generated sample videos of --minutes each (sampled at --fps frames per second of video, 1
by default: 16 x 10 min = 9,600 frames) with `run_job` on a local Ray it starts itself, and while the job
runs a sampler thread records every --sample-every seconds:

* the RSS of this driver;
* the summed RSS, USS (private memory) and count of the Ray worker processes (Serve replica and controller,
  stream decoders and writers, idle workers), also per role, and of Ray's core processes (raylet, which
  holds the plasma object store, and GCS), Ray's other helpers (agents, log monitor) and the embedded Redis,
  all found by walking this driver's process tree with psutil;
* the object store's bytes in use and object count (the raylet's `FormatGlobalMemoryInfo`, the call behind
  `ray memory --stats-only`);
* frames decoded, analysed and written so far, from the job's state in Redis (`JobStore.snapshot`);
* the CPU cores this process tree kept busy since the previous sample, the whole machine's, and the load
  average, to tell a slowdown of the pipeline from other work on the machine.

The report is one JSON document (stdout, and --out): frames, wall time, frames/s, the time series, each
process's first/last/peak memory, and a flatness summary: after a warm-up (the first --warmup-fraction of the
expected frames written), the run is cut into four equal time quarters and, for each series, the peak in each
quarter and the ratio last-quarter peak / first-quarter peak are given. It reports; it never asserts.

    python bench/soak.py                                     # 16 streams x 10 min, tiny model, CPU
    python bench/soak.py --minutes 2 --out /tmp/soak.json    # a shorter look
    python bench/soak.py --model san_vit_b_16 --weights san_vit_b_16 --device cuda --size 360x640

Videos are written once to --videos-dir (default: a fixed folder under the system temp dir) and reused by
later runs with the same length, frame rate and size. The job's output goes to a temp dir that is removed
at the end (--keep-output keeps it). Ray is started with address="local", so a Ray cluster someone else runs
on this machine is never joined, and only what this script started is shut down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as `python bench/soak.py`, this file's folder is on sys.path and bench/pipeline.py would shadow the
# `pipeline` package (here and, through the driver's sys.path, in Ray's workers): take the folder off first.
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

import psutil  # noqa: E402

from pipeline.sample_video import write_sample_video  # noqa: E402

MB = 2**20
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]
# Ray worker processes name themselves "ray::<Actor>" (or "ray::IDLE"); the first match wins.
WORKER_ROLES = (
    ("ray::ServeReplica", "replica"),
    ("ray::DecoderHost", "decoder"),
    ("ray::WriterHost", "writer"),
    ("ray::ServeController", "serve_controller"),
)
SYSTEM_WORKERS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # "ray::" titles that are not workers
# Series summarised per quarter: key in a sample -> description.
SERIES = {
    "driver_rss_mb": "driver RSS",
    "workers_rss_mb": "Ray workers, summed RSS",
    "workers_uss_mb": "Ray workers, summed USS",
    "replica_rss_mb": "Serve replica(s), summed RSS",
    "decoder_rss_mb": "decoders, summed RSS",
    "writer_rss_mb": "writers, summed RSS",
    "ray_core_rss_mb": "raylet (incl. plasma) + GCS, summed RSS",
    "ray_helpers_rss_mb": "Ray agents/monitors, summed RSS",
    "redis_rss_mb": "embedded Redis RSS",
    "total_rss_mb": "driver + all its descendants, summed RSS",
    "total_uss_mb": "driver + all its descendants, summed USS",
    "object_store_used_mb": "object store in use",
}


def log(message: str) -> None:
    print(f"[bench/soak] {message}", file=sys.stderr, flush=True)


def cpu_description() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def role_of(proc: psutil.Process) -> str:
    """What a descendant of the driver is: a Ray worker role, Ray core, another Ray helper, or Redis."""
    cmdline = proc.cmdline()
    text = " ".join(cmdline) or proc.name()
    if text.startswith(SYSTEM_WORKERS):
        return "ray_helper"
    for prefix, role in WORKER_ROLES:
        if text.startswith(prefix):
            return role
    if text.startswith("ray::"):
        return "other_worker"  # ray::IDLE, Serve's proxy, ...
    executable = os.path.basename(cmdline[0]) if cmdline else proc.name()
    if executable in ("raylet", "gcs_server"):
        return executable
    if "redis-server" in text:
        return "redis"
    return "ray_helper"  # dashboard, log monitor, autoscaler monitor, client server ...


GROUP_OF = {
    "replica": "workers",
    "decoder": "workers",
    "writer": "workers",
    "serve_controller": "workers",
    "other_worker": "workers",
    "raylet": "ray_core",
    "gcs_server": "ray_core",
    "ray_helper": "ray_helpers",
    "redis": "redis",
}


# ----------------------------------------------------------------------------------------------- videos


def make_videos(
    folder: Path, count: int, minutes: float, fps: float, size: tuple[int, int]
) -> tuple[list[Path], float]:
    """`count` copies of one sample video (written once, then reused); returns the paths and the seconds
    spent writing. Copies, not links, so every stream reads its own file."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{minutes:g}min-{fps:g}fps-{size[0]}x{size[1]}"
    began = time.perf_counter()
    master = folder / f"{stem}.mp4"
    if not master.exists():
        temp = folder / f".{stem}.{uuid.uuid4().hex[:6]}.mp4"
        write_sample_video(temp, seconds=minutes * 60, fps=fps, size=size)
        temp.replace(master)
    videos = []
    for index in range(count):
        path = folder / f"{stem}-s{index:02d}.mp4"
        if not path.exists() or path.stat().st_size != master.stat().st_size:
            temp = folder / f".{path.name}.{uuid.uuid4().hex[:6]}"
            shutil.copyfile(master, temp)
            temp.replace(path)
        videos.append(path)
    return videos, time.perf_counter() - began


# ------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Polls the driver's process tree, the object store and the job's counters every `interval_s`."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.me = psutil.Process()
        self.stop_event = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.processes: dict[int, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.job_id: str | None = None
        self.store: Any = None
        self.t0 = time.monotonic()
        self.cpu_seen: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self.last_t: float | None = None
        self.thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def on_started(self, job_id: str, redis_url: str) -> None:
        from pipeline.jobs.state import JobStore

        self.job_id = job_id
        self.store = JobStore.from_url(redis_url, retry_for_s=2.0)

    def start(self) -> None:
        psutil.cpu_percent(interval=None)  # sets the baseline of the machine's CPU figure
        self.t0 = time.monotonic()
        self.sample()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.sample()

    def _counters(self) -> dict[str, int | None]:
        counters: dict[str, int | None] = {"decoded": None, "analysed": None, "written": None}
        if self.store is None or self.job_id is None:
            return counters
        try:
            streams = self.store.snapshot(self.job_id)["streams"].values()
        except Exception as error:  # the job store may be gone at the very end
            self.errors["snapshot"] = f"{type(error).__name__}: {error}"
            return counters
        for name in counters:
            counters[name] = sum(int(info.get(name) or 0) for info in streams)
        return counters

    def _object_store(self) -> tuple[float | None, int | None]:
        try:
            import ray
            from ray._private.internal_api import get_memory_info_reply

            if not ray.is_initialized():
                return None, None
            reply = get_memory_info_reply(ray._private.state.state, timeout_seconds=5)
            stats = reply.store_stats
            return stats.object_store_bytes_used / MB, int(stats.num_local_objects)
        except Exception as error:
            self.errors["object_store"] = f"{type(error).__name__}: {error}"
            return None, None

    def sample(self) -> None:
        t = round(time.monotonic() - self.t0, 2)
        row: dict[str, Any] = {"t": t}
        row.update(self._counters())
        groups = {
            g: {"count": 0, "rss": 0.0, "uss": 0.0} for g in ("workers", "ray_core", "ray_helpers", "redis")
        }
        roles: dict[str, dict[str, float]] = {}
        cpu_used = 0.0  # CPU seconds this process tree used since the previous sample
        with contextlib.suppress(psutil.Error):
            driver = self.me.memory_full_info()
            row["driver_rss_mb"] = round(driver.rss / MB, 1)
            row["driver_uss_mb"] = round(driver.uss / MB, 1)
            cpu = sum(self.me.cpu_times()[:2])
            cpu_used += cpu - self.cpu_seen.get(self.me.pid, cpu)
            self.cpu_seen[self.me.pid] = cpu
        for proc in self.me.children(recursive=True):
            try:
                with proc.oneshot():
                    role = role_of(proc)
                    info = proc.memory_full_info()
                    cpu = sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
            cpu_used += cpu - self.cpu_seen.get(proc.pid, 0.0 if self.last_t is not None else cpu)
            self.cpu_seen[proc.pid] = cpu
            rss, uss = info.rss / MB, info.uss / MB
            entry = self.processes.get(proc.pid)
            if entry is None:
                entry = self.processes[proc.pid] = {
                    "pid": proc.pid,
                    "role": role,
                    "first_t": t,
                    "first_rss_mb": rss,
                    "first_uss_mb": uss,
                    "peak_rss_mb": rss,
                    "peak_uss_mb": uss,
                }
            elif role != "other_worker":
                entry["role"] = role  # an idle worker that became an actor keeps the actor's role
            entry.update(last_t=t, last_rss_mb=rss, last_uss_mb=uss)
            entry.setdefault("series", []).append((t, rss, uss))
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], rss)
            entry["peak_uss_mb"] = max(entry["peak_uss_mb"], uss)
            group = groups[GROUP_OF[role]]
            group["count"] += 1
            group["rss"] += rss
            group["uss"] += uss
            by_role = roles.setdefault(role, {"count": 0, "rss": 0.0, "uss": 0.0})
            by_role["count"] += 1
            by_role["rss"] += rss
            by_role["uss"] += uss
        for name, group in groups.items():
            row[f"{name}_count"] = group["count"]
            row[f"{name}_rss_mb"] = round(group["rss"], 1)
            row[f"{name}_uss_mb"] = round(group["uss"], 1)
        for role in ("replica", "decoder", "writer", "serve_controller", "other_worker"):
            row[f"{role}_count"] = int(roles.get(role, {}).get("count", 0))
            row[f"{role}_rss_mb"] = round(roles.get(role, {}).get("rss", 0.0), 1)
            row[f"{role}_uss_mb"] = round(roles.get(role, {}).get("uss", 0.0), 1)
        row["total_rss_mb"] = round(row.get("driver_rss_mb", 0.0) + sum(g["rss"] for g in groups.values()), 1)
        row["total_uss_mb"] = round(row.get("driver_uss_mb", 0.0) + sum(g["uss"] for g in groups.values()), 1)
        used, objects = self._object_store()
        row["object_store_used_mb"] = round(used, 2) if used is not None else None
        row["object_store_objects"] = objects
        # Who else uses the machine: this tree's busy cores against the whole machine's.
        elapsed = t - self.last_t if self.last_t is not None else 0.0
        row["tree_cpu_cores"] = round(cpu_used / elapsed, 2) if elapsed > 0 else None
        machine = psutil.cpu_percent(interval=None)  # since the previous call
        row["machine_cpu_cores"] = round(machine / 100 * (os.cpu_count() or 1), 2) if elapsed > 0 else None
        row["loadavg_1m"] = round(os.getloadavg()[0], 2)
        self.last_t = t
        self.samples.append(row)


# ------------------------------------------------------------------------------------------- analysis


def quarters(samples: list[dict[str, Any]], start: float, end: float) -> list[list[dict[str, Any]]]:
    """Samples of [start, end] in four equal time slices (a sample on a boundary goes to the later one)."""
    span = max(end - start, 1e-9)
    slices: list[list[dict[str, Any]]] = [[], [], [], []]
    for row in samples:
        if start <= row["t"] <= end:
            slices[min(int(4 * (row["t"] - start) / span), 3)].append(row)
    return slices


def flatness(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    parts = quarters(samples, start, end)
    summary: dict[str, Any] = {
        "window_s": [round(start, 1), round(end, 1)],
        "samples_per_quarter": [len(p) for p in parts],
        "series": {},
    }
    for key, label in SERIES.items():
        peaks = []
        for part in parts:
            values = [row[key] for row in part if row.get(key) is not None]
            peaks.append(round(max(values), 1) if values else None)
        first, last = peaks[0], peaks[-1]
        summary["series"][key] = {
            "label": label,
            "quarter_peaks_mb": peaks,
            "last_over_first": round(last / first, 3) if first and last is not None else None,
            "last_minus_first_mb": round(last - first, 1) if first is not None and last is not None else None,
        }
    # Throughput per quarter, from the `written` counter (advances at each writer commit).
    rates = []
    for part in parts:
        points = [(row["t"], row["written"]) for row in part if row.get("written") is not None]
        if len(points) >= 2 and points[-1][0] > points[0][0]:
            rates.append(round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 2))
        else:
            rates.append(None)
    summary["frames_written_per_s_by_quarter"] = rates
    return summary


def per_process(processes: dict[int, dict[str, Any]], warm: float, end: float) -> list[dict[str, Any]]:
    """Each process seen: memory at first sight, once the warm-up is over (warm_*), at the end of the window
    (end_*), at its last sample (last_*) and at its peak; sorted by USS growth over the window, largest
    first."""
    rows = []
    for entry in processes.values():
        series = entry["series"]
        after = [point for point in series if warm <= point[0] <= end] or series[-1:]
        row = {k: round(v, 1) if isinstance(v, float) else v for k, v in entry.items() if k != "series"}
        row["warm_t"] = after[0][0]
        row["warm_rss_mb"] = round(after[0][1], 1)
        row["warm_uss_mb"] = round(after[0][2], 1)
        row["end_t"] = after[-1][0]
        row["end_rss_mb"] = round(after[-1][1], 1)
        row["end_uss_mb"] = round(after[-1][2], 1)
        row["growth_rss_after_warmup_mb"] = round(after[-1][1] - after[0][1], 1)
        row["growth_uss_after_warmup_mb"] = round(after[-1][2] - after[0][2], 1)
        row["uss_slope_mb_per_min"] = _slope([(t, uss) for t, _, uss in after])
        rows.append(row)
    return sorted(rows, key=lambda r: -r["growth_uss_after_warmup_mb"])


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var, 3)


def growth_rate(samples: list[dict[str, Any]], key: str, start: float, end: float) -> float | None:
    """Least-squares slope of the series `key` over [start, end], in MB per minute."""
    return _slope([(r["t"], r[key]) for r in samples if start <= r["t"] <= end and r.get(key) is not None])


# ------------------------------------------------------------------------------------------------- main


def job_spec(args: argparse.Namespace, out: Path, videos: list[Path]) -> Any:
    from pipeline.jobs.spec import parse_job_spec

    return parse_job_spec(
        {
            "job_id": f"soak-{uuid.uuid4().hex[:8]}",
            "model": {"name": args.model, "weights": args.weights, "device": args.device},
            "output": str(out),
            "streams": [
                {
                    "id": f"s{index:02d}",
                    "source": str(video),
                    "vocabulary": VOCABULARIES[index % len(VOCABULARIES)],
                    "sampling": {"fps": args.fps},
                }
                for index, video in enumerate(videos)
            ],
            "serve": {
                "batch_size": args.batch_size,
                "batch_wait_timeout_s": args.batch_wait_timeout,
                "num_replicas": args.replicas,
            },
        }
    )


def leftover_children(me: psutil.Process, wait_s: float) -> list[dict[str, Any]]:
    """Descendants still alive `wait_s` after shutdown; any found are processes this run started, so they
    are terminated (by pid) and reported."""
    deadline = time.monotonic() + wait_s
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.5)
        children = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    left = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            left.append({"pid": child.pid, "cmdline": " ".join(child.cmdline())[:200]})
            child.terminate()
    if children:
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
    return left


def output_rows(out: Path) -> dict[str, int]:
    """Rows per table in the job's Parquet output (every analysed frame should be in `frames` once)."""
    import pyarrow.parquet as pq

    rows = {}
    for table in ("frames", "class_areas"):
        parts = sorted((out / table).rglob("*.parquet"))
        rows[table] = sum(pq.ParquetFile(part).metadata.num_rows for part in parts)
    return rows


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, repeated at the top of the report."""
    series = report["flatness"]["series"]
    keys = (
        "driver_rss_mb",
        "workers_rss_mb",
        "workers_uss_mb",
        "ray_core_rss_mb",
        "redis_rss_mb",
        "total_uss_mb",
    )
    return {
        "status": report["status"],
        "frames": report["frames"],
        "rows_in_frames_table": report.get("rows_in_output", {}).get("frames"),
        "run_job_s": report["run_job_s"],
        "frames_per_s": report["frames_per_s"],
        "frames_written_per_s_after_warmup": report["frames_written_per_s_after_warmup"],
        "warmup_ends_s": report["warmup_ends_s"],
        "quarter_peaks_mb": {key: series[key]["quarter_peaks_mb"] for key in keys},
        "last_over_first": {key: series[key]["last_over_first"] for key in keys},
        "growth_mb_per_min_after_warmup": {
            key: report["growth_mb_per_min_after_warmup"][key] for key in keys
        },
        "largest_process_growth": [
            {
                key: row[key]
                for key in (
                    "pid",
                    "role",
                    "warm_uss_mb",
                    "end_uss_mb",
                    "growth_uss_after_warmup_mb",
                    "uss_slope_mb_per_min",
                )
            }
            for row in report["processes"][:3]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each stream's video")
    parser.add_argument("--fps", type=float, default=1.0, help="frames analysed per second of video")
    parser.add_argument("--video-fps", type=float, default=10.0, help="frame rate of the generated videos")
    parser.add_argument("--size", default="96x128", help="video frame HxW (even, >= 32)")
    parser.add_argument(
        "--videos-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sanstream-soak-videos",
        help="where videos are written once and reused",
    )
    parser.add_argument("--model", default="san_tiny_test")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (as the job spec's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-timeout", type=float, default=0.05)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--commit-interval", type=float, default=10.0, help="writer commit interval (s)")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="ray.init(num_cpus=...)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="sampling period (s)")
    parser.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="the flatness window starts once this share of the expected frames is written",
    )
    parser.add_argument("--keep-output", action="store_true", help="keep the job's output directory")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))

    report: dict[str, Any] = {
        "benchmark": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": cpu_description(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "config": {
            "streams": args.streams,
            "minutes_per_stream": args.minutes,
            "sample_fps": args.fps,
            "video_fps": args.video_fps,
            "size": [height, width],
            "model": args.model,
            "weights": args.weights,
            "device": args.device,
            "batch_size": args.batch_size,
            "replicas": args.replicas,
            "commit_interval_s": args.commit_interval,
            "ray_num_cpus": args.num_cpus,
            "sample_every_s": args.sample_every,
            "warmup_fraction": args.warmup_fraction,
        },
    }
    stdout = sys.stdout
    started = time.perf_counter()
    me = psutil.Process()
    with contextlib.ExitStack() as stack:
        # Ray prints forwarded worker and raylet logs on stdout; keep stdout for the JSON alone.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        videos, video_s = make_videos(
            args.videos_dir, args.streams, args.minutes, args.video_fps, (height, width)
        )
        report["videos"] = {"dir": str(args.videos_dir), "prepare_s": round(video_s, 2)}
        log(f"{len(videos)} videos of {args.minutes:g} min ready in {video_s:.1f} s under {args.videos_dir}")

        import ray
        import torch
        from ray import serve

        from actors.job import run_job
        from actors.stream_config import DecoderSettings
        from pipeline.preflight import expected_frames

        report["versions"] = {"ray": ray.__version__, "torch": torch.__version__}
        report["machine"]["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        workdir = Path(tempfile.mkdtemp(prefix="sanstream-soak-"))
        if not args.keep_output:
            stack.callback(shutil.rmtree, workdir, True)
        spec = job_spec(args, workdir / "out", videos)
        expected = sum(expected_frames(s) or 0 for s in spec.streams)
        report["expected_frames"] = expected

        # address="local": always a fresh Ray of our own, never one that another user started here.
        began = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            namespace="sanstream",
            include_dashboard=False,
            logging_level="WARNING",
        )
        report["ray_init_s"] = round(time.perf_counter() - began, 2)
        try:
            sampler = Sampler(args.sample_every)
            sampler.start()
            log(
                f"job of {len(spec.streams)} streams, {expected} frames expected; sampling every {args.sample_every:g} s"
            )
            progress = threading.Thread(target=_progress, args=(sampler, expected), daemon=True)
            progress.start()
            began = time.perf_counter()
            try:
                outcome = run_job(
                    spec,
                    settings=DecoderSettings(),
                    show_progress=False,
                    on_started=sampler.on_started,
                    commit_interval_s=args.commit_interval,
                )
            finally:
                job_s = time.perf_counter() - began
                job_end = time.monotonic() - sampler.t0
                sampler.store = None  # the job's Redis is stopped by now
                sampler.stop()
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
        report["leftover_processes_after_shutdown"] = leftover_children(me, wait_s=20)
        report["rows_in_output"] = output_rows(workdir / "out")

    frames = sum(s.frames_analysed for s in outcome.streams.values())
    samples = sampler.samples
    written_target = args.warmup_fraction * expected
    counted = [r for r in samples if r.get("written") is not None]
    final_written = max((r["written"] for r in counted), default=None)
    warm = next((r["t"] for r in counted if r["written"] >= written_target), samples[0]["t"])
    # The window ends when the last frame is committed (or at the last sample taken while the job's Redis
    # answered): after that the job only tears down (actors are killed, the replica undeployed), which
    # would read as memory going down.
    done = next((r["t"] for r in counted if r["written"] >= frames), counted[-1]["t"] if counted else job_end)
    written_at_warm = next((r["written"] for r in counted if r["t"] == warm), 0)
    steady_rate = (final_written - written_at_warm) / (done - warm) if counted and done > warm else None
    report.update(
        {
            "status": outcome.status,
            "streams_completed": sum(s.status == "completed" for s in outcome.streams.values()),
            "frames": frames,
            "frames_written_last_sample": final_written,
            "run_job_s": round(job_s, 1),
            "frames_per_s": round(frames / job_s, 2) if job_s > 0 else None,
            "recoveries": sum(s.recoveries for s in outcome.streams.values()),
            "warmup_ends_s": warm,
            "all_written_s": done,
            "job_ends_s": round(job_end, 2),
            "frames_written_per_s_after_warmup": round(steady_rate, 2) if steady_rate is not None else None,
            "flatness": flatness(samples, warm, done),
            "growth_mb_per_min_after_warmup": {key: growth_rate(samples, key, warm, done) for key in SERIES},
            "processes": per_process(sampler.processes, warm, done),
            "sampler_errors": sampler.errors,
            "samples": samples,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "benchmark_s": round(time.perf_counter() - started, 1),
        }
    )
    report = {"summary": summary(report), **report}
    failed = {sid: s.error for sid, s in outcome.streams.items() if s.status != "completed"}
    if failed:
        report["failed_streams"] = failed
    report["notes"] = [
        "RSS counts shared pages (torch libraries, the plasma store's shared memory) in every process that maps "
        "them; USS is each process's private memory, so summed USS does not double-count.",
        "flatness: the window runs from warmup_ends_s (first sample with warmup_fraction of the expected frames "
        "written) to all_written_s (first sample with every frame committed; teardown follows), cut into 4 equal time quarters; last_over_first = peak in the last "
        "quarter / peak in the first. growth_mb_per_min_after_warmup is the least-squares slope over the same "
        "window. Processes that start or exit inside the window move the summed series (see processes).",
        "frames_per_s = frames analysed / whole run_job time (Redis start, Serve deploy and undeploy included); "
        "frames_written_per_s_after_warmup and flatness.frames_written_per_s_by_quarter come from the job's "
        "`written` counter, which advances at each writer commit (every commit_interval_s).",
    ]
    text = json.dumps(report, indent=2)
    print(text, file=stdout, flush=True)
    if args.out:
        args.out.write_text(text)


def _progress(sampler: Sampler, expected: int) -> None:
    """One line on stderr a minute, from the latest sample."""
    while not sampler.stop_event.wait(60):
        if sampler.samples:
            row = sampler.samples[-1]
            log(
                f"t={row['t']:.0f}s written {row.get('written')}/{expected} driver {row.get('driver_rss_mb')} MB "
                f"workers {row['workers_count']} procs {row['workers_rss_mb']} MB RSS / {row['workers_uss_mb']} MB "
                f"USS, raylet+gcs {row['ray_core_rss_mb']} MB, object store {row['object_store_used_mb']} MB"
            )


if __name__ == "__main__":
    main()
