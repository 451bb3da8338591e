"""Memory, fairness and start-up wait by number of concurrent streams in ONE job (issue 9).

For each N in --streams (default 1,16,64) it runs one job of N streams on the tiny model with random
weights (`san_tiny_test`, CPU by default), each stream a generated sample video (--size, --fps, --seconds
long) sampled at --sample-fps frames per second of video and read with `realtime: true` (at the file's own
frame rate, like a camera). While the job runs, a thread samples every --interval seconds the RSS and PSS
of every process of the job: this driver and all its descendants (the local Ray that `run_job` starts:
raylet, GCS, Ray's helpers, the actor and idle workers, the embedded Redis), grouped by process title
(`ray::<Actor>` with the method suffix dropped, `ray::ServeReplica:<deployment>`, `raylet`, `gcs_server`,
`redis-server`, `driver`, `python:<script>` for Ray's Python helpers, `other`).

Per run it reports the peak and the steady-state median of the summed RSS and PSS, the same per process
title, how many Ray worker processes are actors, and, from the job's `frames` Parquet table, the frames
analysed per stream, the fairness (fewest / most frames analysed over the streams), and how long after the
job started (`on_started`) each stream's first frame left its decoder (`first_frame_wait_s`, from the
`wall_time` column) and had its answer (`first_answer_wait_s`, `wall_time + latency_seconds`). The top
level adds `slope_mb_per_stream`: (median at the largest N - median at the smallest N) / (N difference),
for RSS and PSS.

Every N runs in a fresh process of this script (`--one N`, which prints that run's JSON) so that each job
starts its own local Ray and no measurement inherits another's processes, caches or memory. Prints one
JSON document on stdout (progress, and Ray's forwarded logs, on stderr); --out also writes it to a file.

    python bench/streams.py                                   # 1, 16, 64 streams of 60 s (see below)
    python bench/streams.py --streams 1,2 --seconds 10        # a quick look, about 2 minutes
    python bench/streams.py --no-realtime                     # read files as fast as possible

On a 2-core CPU machine the tiny model's single replica answers only a few frames per second (frames are
resized to a short side of 640 before the model), so at the defaults the 64-stream run (768 frames) is
bound by the replica and takes well over 10 minutes, its answers lagging the realtime decoders; lower
--sample-fps to keep it shorter. `first_frame_wait_s` counts from `on_started`, which `run_job` calls
before it starts Ray and deploys the replica pool, so it includes both (about 30 s on an idle 2-core box).

`realtime` is a per-stream job spec key; when this checkout's `parse_job_spec` does not know it yet, the
run falls back to plain file reading and records `"realtime": false`.

RSS counts shared pages (torch's libraries, the object store's shared memory) in every process that maps
them, so summed RSS overstates what the job costs the machine; summed PSS shares each page among the
processes that map it, and is the fairer total.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as `python bench/streams.py`, this file's folder is on sys.path and bench/pipeline.py would shadow the
# `pipeline` package (here and, through the driver's sys.path, in Ray's workers): take the folder off first.
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

import psutil  # noqa: E402

MB = 2**20
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]
# "ray::" titles of Ray's own agents, which are not worker processes.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def log(message: str) -> None:
    print(f"[bench/streams] {message}", file=sys.stderr, flush=True)


def cpu_description() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


# ------------------------------------------------------------------------------------ process titles


def title_of(cmdline: list[str], name: str) -> str:
    """The group a descendant of the driver belongs to, from its title (cmdline[0]).

    Ray names a worker `ray::<Actor>` (`ray::<Actor>.<method>` while a method runs, `ray::IDLE` when it
    holds no actor); Serve replicas are `ray::ServeReplica:<app>:<deployment>` (while they start,
    `ray::SERVE_REPLICA::<app>#<deployment>#<id>:ServeReplica:<app>:<deployment>`), and the app name
    carries the job id, so only the deployment is kept. A worker that has not set its title yet shows as
    `python:default_worker`."""
    first = cmdline[0].split()[0] if cmdline and cmdline[0].strip() else ""
    if first.startswith("ray::"):
        head = first[len("ray::") :]
        if "ServeReplica:" in head:
            return f"ray::ServeReplica:{head.rsplit(':', 1)[-1].split('.', 1)[0]}"
        # A named actor shows `ray::<name>:<Class>` while it starts (names carry the job id): keep the class.
        return f"ray::{head.rsplit(':', 1)[-1].split('.', 1)[0]}"
    executable = os.path.basename(first) if first else name
    if executable.startswith("python") or executable in ("", "python3"):
        # Ray's Python helpers (log monitor, dashboard, autoscaler monitor): name them by their script.
        script = next((arg for arg in cmdline[1:] if arg.endswith(".py")), None)
        if script:
            return f"python:{os.path.basename(script).removesuffix('.py')}"
        return "other"
    if "redis-server" in executable:
        return "redis-server"
    return executable or "other"


def is_actor(title: str) -> bool:
    return title.startswith("ray::") and title != "ray::IDLE" and not title.startswith(RAY_AGENTS)


class ProcessSampler:
    """Samples, every `interval_s`, the RSS and PSS of this process and all its descendants, grouped by
    title (see `title_of`); each sample is kept with its time since `t0`."""

    def __init__(self, interval_s: float, pss: bool) -> None:
        self.interval_s = interval_s
        self.pss = pss
        self.me = psutil.Process()
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.actor_pids: dict[int, str] = {}
        self.titles: dict[int, str] = {}
        self.pss_unavailable = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="process-sampler", daemon=True)

    def start(self) -> None:
        self._sample()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join()

    def _loop(self) -> None:
        next_at = time.monotonic() + self.interval_s
        while not self.stop_event.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval_s
            try:
                self._sample()
            except Exception as error:  # a sampler bug must not hide the job's own result
                log(f"sampler error: {type(error).__name__}: {error}")

    def _sample(self) -> None:
        began = time.monotonic()
        groups: dict[str, dict[str, float]] = defaultdict(
            lambda: {"processes": 0, "rss_mb": 0.0, "pss_mb": 0.0}
        )
        total_rss = total_pss = 0.0
        pss_complete = True
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    if proc.pid == self.me.pid:
                        title = "driver"
                    else:
                        # A process that is starting or exiting may show no cmdline; its 15-character
                        # kernel name (`ray::ServeRepli`) is the fallback, its last full title preferred.
                        cmdline = proc.cmdline()
                        title = self.titles.get(proc.pid, "") if not cmdline else ""
                        title = title or title_of(cmdline, proc.name())
                        self.titles[proc.pid] = title
                    rss = proc.memory_info().rss / MB
                pss = 0.0
                if self.pss:
                    try:
                        pss = proc.memory_full_info().pss / MB
                    except (psutil.AccessDenied, AttributeError):
                        pss_complete = False
            except psutil.Error:
                continue  # gone meanwhile
            group = groups[title]
            group["processes"] += 1
            group["rss_mb"] += rss
            group["pss_mb"] += pss
            total_rss += rss
            total_pss += pss
            if is_actor(title):
                self.actor_pids[proc.pid] = title
        if not pss_complete:
            self.pss_unavailable += 1
        self.samples.append(
            {
                "t": round(began - self.t0, 2),
                "rss_mb": total_rss,
                "pss_mb": total_pss if self.pss and pss_complete else None,
                "groups": dict(groups),
                "actors": sum(int(g["processes"]) for title, g in groups.items() if is_actor(title)),
                "sample_s": time.monotonic() - began,
            }
        )


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _peak(values: list[float]) -> float | None:
    return round(max(values), 1) if values else None


def memory_report(samples: list[dict[str, Any]], windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Peak over every sample; medians over the samples inside the first of `windows` (name -> (start,
    end) in seconds since the sampler began) that holds at least 3 samples, else over all of them."""
    window_name, window = "whole_run", (0.0, samples[-1]["t"] if samples else 0.0)
    steady_used = samples
    for name, (start, end) in windows.items():
        inside = [s for s in samples if start <= s["t"] <= end]
        if len(inside) >= 3:
            window_name, window, steady_used = name, (start, end), inside
            break
    titles = sorted({title for s in samples for title in s["groups"]})
    by_process: dict[str, Any] = {}
    for title in titles:
        rss_all = [s["groups"][title]["rss_mb"] for s in samples if title in s["groups"]]
        rss = [s["groups"][title]["rss_mb"] for s in steady_used if title in s["groups"]]
        pss = [
            s["groups"][title]["pss_mb"]
            for s in steady_used
            if title in s["groups"] and s["pss_mb"] is not None
        ]
        counts = [int(s["groups"][title]["processes"]) for s in samples if title in s["groups"]]
        steady_counts = [int(s["groups"][title]["processes"]) for s in steady_used if title in s["groups"]]
        rss_median = _median(rss)
        count_median = float(statistics.median(steady_counts)) if steady_counts else 0.0
        by_process[title] = {
            "processes_peak": max(counts),
            "processes_median": count_median,
            "rss_mb_peak": _peak(rss_all),
            "rss_mb_median": rss_median,
            "pss_mb_median": _median(pss),
            "rss_mb_median_per_process": round(rss_median / count_median, 1)
            if rss_median is not None and count_median
            else None,
        }
    pss_values = [s["pss_mb"] for s in steady_used if s["pss_mb"] is not None]
    sample_s = [s["sample_s"] for s in samples]
    return {
        "rss_total_mb_peak": _peak([s["rss_mb"] for s in samples]),
        "rss_total_mb_median": _median([s["rss_mb"] for s in steady_used]),
        "pss_total_mb_peak": _peak([s["pss_mb"] for s in samples if s["pss_mb"] is not None]),
        "pss_total_mb_median": _median(pss_values),
        "by_process": dict(sorted(by_process.items(), key=lambda kv: -(kv[1]["rss_mb_median"] or 0))),
        "actor_processes": max((s["actors"] for s in samples), default=0),
        "steady_window": window_name,
        "steady_window_s": [round(window[0], 2), round(window[1], 2)],
        "steady_samples": len(steady_used),
        "samples": len(samples),
        "sample_duration_s_max": round(max(sample_s), 3) if sample_s else None,
    }


# ---------------------------------------------------------------------------------------------- output


def frames_by_stream(out: Path, job_id: str) -> dict[str, list[tuple[float, float]]]:
    """Per stream, from the job's `frames` table: (wall_time, wall_time + latency_seconds) of every row,
    i.e. when the frame left its decoder and when its areas were ready, in the order they were ready."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted((out / "frames" / job_id).rglob("*.parquet"))
    if not parts:
        return {}
    table = pa.concat_tables(
        pq.read_table(p, columns=["stream_id", "wall_time", "latency_seconds"]) for p in parts
    )
    result: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sid, wall, latency in zip(
        table["stream_id"].to_pylist(),
        table["wall_time"].to_pylist(),
        table["latency_seconds"].to_pylist(),
        strict=True,
    ):
        result[sid].append((wall, wall + (latency or 0.0)))
    return {sid: sorted(rows, key=lambda row: row[1]) for sid, rows in result.items()}


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


# ------------------------------------------------------------------------------------------ one run


def make_videos(folder: Path, count: int, seconds: float, fps: float, size: tuple[int, int]) -> list[Path]:
    from pipeline.sample_video import write_sample_video

    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for index in range(count):
        path = folder / f"stream{index}-{seconds:g}s-{fps:g}fps-{size[0]}x{size[1]}.mp4"
        if not path.exists():
            partial = path.with_suffix(".partial.mp4")
            write_sample_video(partial, seconds=seconds, fps=fps, size=size)
            partial.replace(path)  # a run killed mid-write leaves no truncated video to reuse
        videos.append(path)
    return videos


def build_spec(args: argparse.Namespace, out: Path, videos: list[Path], realtime: bool) -> tuple[Any, bool]:
    """The job spec; with `realtime`, tries the per-stream `realtime: true` key and falls back without it
    when this checkout's parser does not know the key. Returns (spec, realtime used)."""
    from pipeline.jobs.spec import JobSpecError, parse_job_spec

    def data(with_realtime: bool) -> dict[str, Any]:
        return {
            "job_id": f"streams-{len(videos)}-{uuid.uuid4().hex[:6]}",
            "model": {"name": args.model, "weights": args.weights, "device": args.device},
            "output": str(out),
            "streams": [
                {
                    "id": f"s{index:02d}",
                    "source": str(video),
                    "vocabulary": VOCABULARIES[index % len(VOCABULARIES)],
                    "sampling": {"fps": args.sample_fps},
                    **({"realtime": True} if with_realtime else {}),
                }
                for index, video in enumerate(videos)
            ],
            "serve": {
                "batch_size": args.batch_size,
                "batch_wait_timeout_s": args.batch_wait_timeout,
                "num_replicas": args.replicas,
            },
        }

    if realtime:
        try:
            return parse_job_spec(data(True)), True
        except JobSpecError as error:
            if not any("realtime" in path for path, _ in error.problems):
                raise
            log(
                f"this checkout's job spec has no `realtime` ({error.problems[0][1]}); reading files as fast as possible"
            )
    return parse_job_spec(data(False)), False


def leftover_children(me: psutil.Process, wait_s: float) -> list[str]:
    """Descendants still alive `wait_s` after the job; this run started them, so they are terminated (by
    pid) and reported."""
    deadline = time.monotonic() + wait_s
    children = me.children(recursive=True)
    while children and time.monotonic() < deadline:
        time.sleep(0.5)
        children = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    left = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            left.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
            child.terminate()
    if children:
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
    return left


def run_one(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One job of `n` streams on a local Ray that `run_job` starts and stops; returns the run's figures."""
    import shutil

    size = parse_size(args.size)
    videos = make_videos(args.videos_dir, n, args.seconds, args.fps, size)
    workdir = Path(tempfile.mkdtemp(prefix=f"sanstream-streams-{n}-"))
    try:
        return _run_one(args, n, videos, workdir)
    finally:
        if not args.keep_output:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_one(args: argparse.Namespace, n: int, videos: list[Path], workdir: Path) -> dict[str, Any]:
    from actors.job import run_job
    from actors.stream_config import DecoderSettings

    out = workdir / "out"
    spec, realtime = build_spec(args, out, videos, not args.no_realtime)
    started: dict[str, Any] = {}

    def on_started(job_id: str, redis_url: str) -> None:
        started.update(job_id=job_id, wall=time.time(), monotonic=time.monotonic())

    sampler = ProcessSampler(args.interval, pss=not args.no_pss)
    log(f"{n} streams: job {spec.job_id}, realtime={realtime}, sampling processes every {args.interval:g} s")
    loadavg_start = os.getloadavg()
    sampler.start()
    began_wall, began = time.time(), time.monotonic()
    try:
        outcome = run_job(spec, settings=DecoderSettings(), show_progress=False, on_started=on_started)
    finally:
        ended = time.monotonic()
        sampler.stop()
    leftovers = leftover_children(psutil.Process(), wait_s=10)

    job_id = started.get("job_id", spec.job_id)
    start_wall = started.get("wall", began_wall)
    start_t = started.get("monotonic", began) - sampler.t0
    frames = frames_by_stream(out, job_id)
    sids = [s.id for s in spec.streams]
    rows = {sid: len(frames.get(sid, [])) for sid in sids}
    analysed = {sid: (outcome.streams[sid].frames_analysed if sid in outcome.streams else 0) for sid in sids}
    waits = [min(wall for wall, _ in frames[sid]) - start_wall for sid in sids if frames.get(sid)]
    answers = [frames[sid][0][1] - start_wall for sid in sids if frames.get(sid)]
    # Steady state: preferably from the moment every stream had its first answer to the moment the first
    # stream had its last one (all streams running at once; start-up and teardown excluded), else while any
    # stream was answered, else from the job's start to its end.
    to_t = start_t - start_wall  # wall clock -> seconds since the sampler began
    firsts = [done[0][1] for done in frames.values() if done]
    lasts = [done[-1][1] for done in frames.values() if done]
    windows: dict[str, tuple[float, float]] = {}
    if firsts:
        windows["all_streams_answered"] = (max(firsts) + to_t, min(lasts) + to_t)
        windows["any_stream_answered"] = (min(firsts) + to_t, max(lasts) + to_t)
    windows["job"] = (start_t, ended - sampler.t0)
    most = max(rows.values(), default=0)
    # Frames each stream had answered by the time the first stream had all of its own: with files of equal
    # length and nothing dropped every stream ends with the same count, so this is where unfairness shows.
    cut = min(lasts) if len(lasts) == len(sids) else None
    by_cut = [sum(1 for _, done in frames.get(sid, []) if done <= cut) for sid in sids] if cut else []
    run: dict[str, Any] = {
        "streams": n,
        "status": outcome.status,
        "realtime": realtime,
        "seconds": round(ended - began, 1),
        "job_start_after_run_job_s": round(start_t - (began - sampler.t0), 2) if started else None,
        **memory_report(sampler.samples, windows),
        "fairness_min_over_max": round(min(rows.values()) / most, 3) if most else None,
        "fairness_at_first_stream_done": round(min(by_cut) / max(by_cut), 3) if by_cut else None,
        "first_frame_wait_s": _spread(waits),
        "first_answer_wait_s": _spread(answers),
        "frames_analysed_total": sum(rows.values()),
        "frames_analysed_per_stream": _spread([float(v) for v in rows.values()]),
        "frames_analysed_outcome_total": sum(analysed.values()),
        "frames_expected_per_stream": int(args.seconds * args.sample_fps),
        "dropped_frames_total": sum(s.dropped_frames for s in outcome.streams.values()),
        "recoveries_total": sum(s.recoveries for s in outcome.streams.values()),
        "streams_not_completed": {
            sid: f"{s.status}: {s.error}" for sid, s in outcome.streams.items() if s.status != "completed"
        },
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "leftover_processes": leftovers,
    }
    run["actor_processes_seen"] = dict(sorted(Counter(sampler.actor_pids.values()).items()))
    if sampler.pss_unavailable:
        run["pss_incomplete_samples"] = sampler.pss_unavailable
    if args.keep_output:
        run["output"] = str(out)
    if args.series:
        run["series"] = [
            {"t": s["t"], "rss_mb": round(s["rss_mb"], 1), "pss_mb": s["pss_mb"] and round(s["pss_mb"], 1)}
            for s in sampler.samples
        ]
    return run


# ------------------------------------------------------------------------------------------------ main


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def child_command(args: argparse.Namespace, n: int) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--one", str(n)]
    for name in (
        "seconds",
        "fps",
        "sample_fps",
        "size",
        "videos_dir",
        "model",
        "weights",
        "device",
        "batch_size",
        "batch_wait_timeout",
        "replicas",
        "interval",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for flag in ("no_realtime", "no_pss", "keep_output", "series"):
        if getattr(args, flag):
            command.append(f"--{flag.replace('_', '-')}")
    return command


def run_child(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """`--one n` in a fresh process (its own session, so a timeout can stop everything it started)."""
    timeout = args.timeout or (600 + args.seconds * 3 + 8 * n)
    began = time.monotonic()
    child = subprocess.Popen(
        child_command(args, n), stdout=subprocess.PIPE, stderr=None, text=True, start_new_session=True
    )
    try:
        stdout, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{n} streams: no result after {timeout:g} s; interrupting it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGINT)  # the job stops cleanly on the first SIGINT
        try:
            stdout, _ = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            stdout, _ = child.communicate()
        return {"streams": n, "error": f"timed out after {timeout:g} s", "exit_code": child.returncode}
    if child.returncode != 0:
        return {"streams": n, "error": f"exit code {child.returncode}", "stdout_tail": stdout[-2000:]}
    try:
        result: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError:
        return {"streams": n, "error": "no JSON on stdout", "stdout_tail": stdout[-2000:]}
    result["process_s"] = round(time.monotonic() - began, 1)
    return result


def slopes(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    ok = [r for r in runs if "error" not in r]
    if len(ok) < 2:
        return {"rss": None, "pss": None}
    low, high = min(ok, key=lambda r: r["streams"]), max(ok, key=lambda r: r["streams"])

    def slope(key: str) -> float | None:
        if low[key] is None or high[key] is None or high["streams"] == low["streams"]:
            return None
        return round((high[key] - low[key]) / (high["streams"] - low["streams"]), 2)

    return {"rss": slope("rss_total_mb_median"), "pss": slope("pss_total_mb_median")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,16,64", help="numbers of concurrent streams, e.g. 1,16,64")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each sample video")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the sample videos")
    parser.add_argument("--sample-fps", type=float, default=0.2, help="frames analysed per second of video")
    parser.add_argument("--size", default="320x240", help="video frame WxH (even, >= 32)")
    parser.add_argument(
        "--videos-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sanstream-streams-videos",
        help="where videos are written once and reused",
    )
    parser.add_argument("--model", default="san_tiny_test")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (as the job spec's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-timeout", type=float, default=0.05)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0, help="process sampling period (s)")
    parser.add_argument("--no-realtime", action="store_true", help="do not ask for `realtime: true`")
    parser.add_argument("--no-pss", action="store_true", help="RSS only (PSS reads smaps_rollup)")
    parser.add_argument("--series", action="store_true", help="include the total RSS/PSS time series")
    parser.add_argument("--keep-output", action="store_true", help="keep each job's output directory")
    parser.add_argument("--timeout", type=float, default=None, help="per-N limit (s); default from --seconds")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    parse_size(args.size)

    stdout = sys.stdout
    if args.one is not None:
        # Ray prints forwarded worker and raylet logs on stdout; keep stdout for the JSON alone.
        with contextlib.redirect_stdout(sys.stderr):
            run = run_one(args, args.one)
        print(json.dumps(run), file=stdout, flush=True)
        return

    counts = [int(n) for n in args.streams.split(",")]
    started = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        # All videos before the first run, so no run shares the CPUs with the encoder.
        began = time.monotonic()
        make_videos(args.videos_dir, max(counts), args.seconds, args.fps, parse_size(args.size))
        log(f"{max(counts)} videos ready in {time.monotonic() - began:.1f} s under {args.videos_dir}")
        runs = []
        for n in counts:
            run = run_child(args, n)
            runs.append(run)
            if "error" in run:
                log(f"{n} streams: {run['error']}")
            else:
                log(
                    f"{n} streams: {run['seconds']} s, RSS median {run['rss_total_mb_median']} MB "
                    f"(peak {run['rss_total_mb_peak']}), PSS median {run['pss_total_mb_median']} MB, "
                    f"{run['frames_analysed_total']} frames, fairness {run['fairness_min_over_max']}"
                )
    report = {
        "benchmark": "streams",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": machine(),
        "config": {
            "seconds": args.seconds,
            "video_fps": args.fps,
            "sample_fps": args.sample_fps,
            "size": args.size,
            "model": args.model,
            "weights": args.weights,
            "device": args.device,
            "batch_size": args.batch_size,
            "replicas": args.replicas,
            "interval_s": args.interval,
            "realtime_requested": not args.no_realtime,
        },
        "runs": runs,
        "slope_mb_per_stream": slopes(runs),
        "benchmark_s": round(time.monotonic() - started, 1),
        "notes": [
            "All processes = this run's driver and all its descendants (Ray's raylet, GCS, helpers and workers, "
            "the embedded Redis), sampled every interval_s; by_process groups them by title. RSS counts shared "
            "pages once per process that maps them; PSS splits them, so its total is the fairer one.",
            "*_median: over the steady window (steady_window_s, seconds since the run's sampler began): "
            "all_streams_answered = from every stream's first answer to the first stream's last answer; when "
            "that holds fewer than 3 samples, any_stream_answered (first answer of any stream to the last "
            "one), then job (on_started to run_job's return), then whole_run. *_peak: over every sample, "
            "start-up and teardown included.",
            "first_frame_wait_s: per stream, first frame's wall_time in the frames table (it left the decoder) "
            "minus the on_started time; first_answer_wait_s adds its latency_seconds (areas ready). "
            "fairness_min_over_max: fewest / most rows in the frames table over the streams (1.0 whenever "
            "every stream completes without dropping frames); fairness_at_first_stream_done: the same ratio "
            "counting only frames answered by the time the first stream had its last answer.",
            "slope_mb_per_stream: (median total at the largest N - at the smallest N) / (N difference).",
        ],
    }
    text = json.dumps(report, indent=2)
    print(text, file=stdout, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
