"""Benchmark the long-lived service (`sanstream serve`): how fast a job starts on a warm service, and what a
4-stream job on the shared replica pool achieves next to the bare `Segmenter` loop on the same frames.

* start latency: on a warm service (started, one untimed job run), --jobs one-stream jobs one after the
  other; for each, the time from POST /jobs to its 201 answer, and to the first analysed frame (GET
  /jobs/{id} polled every --poll-ms for any `streams.*.analysed >= 1`). Medians, and every value.
* four streams: one job of --streams files, every frame, one vocabulary per stream, on the warm service:
  frames / (POST /jobs -> job `completed`, polled every 0.1 s); and the bare loop in this process on the
  same frames: per stream `decode_frames` then `Segmenter.segment` in batches of the replica's batch size,
  with torch at ONE thread, what a replica gets (it reserves num_cpus=1, so Ray sets OMP_NUM_THREADS=1).
  The bare loop runs before the service starts, so no Ray process competes with it.

Prints one JSON document on stdout (progress on stderr); the service's own log goes to a temporary folder
(kept with --keep). Needs Ray Serve (the service), psutil, and the repository's tests/support helpers.

    python bench/service.py                       # tiny model, CPU, about two minutes on a small machine
    python bench/service.py --size 360x640 --seconds 10 --model san_vit_b_16 --weights san_vit_b_16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as `python bench/service.py`, this folder is first on sys.path and its `pipeline.py` would shadow
# the project package: take the folder off, and put the repository root on (for `tests.support`).
_HERE = os.path.realpath(os.path.dirname(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:] = [_ROOT, *(entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.decode import Sampler, decode_frames  # noqa: E402
from pipeline.sample_video import write_sample_video  # noqa: E402
from pipeline.san import Segmenter, available_models, load_checkpoint  # noqa: E402
from tests.support.service import Service  # noqa: E402

# What a replica of the service runs with on a CPU-only machine: num_cpus=1 -> OMP_NUM_THREADS=1.
REPLICA_THREADS = 1
VOCABULARIES = [
    ["person", "car", "road", "building", "tree", "sky"],
    ["water", "boat", "bridge", "grass", "sand"],
    ["vegetation", "bare soil", "road", "roof", "water", "vehicle", "shadow", "field"],
    ["person", "bicycle", "motorcycle", "bus", "truck", "traffic light", "sidewalk"],
]


def log(message: str) -> None:
    print(f"[bench/service] {message}", file=sys.stderr, flush=True)


def vocabulary(index: int) -> list[str]:
    base = VOCABULARIES[index % len(VOCABULARIES)]
    return list(base) if index < len(VOCABULARIES) else [*base, f"landmark {index}"]


def cpu_description() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "all": [round(v, 4) for v in values],
    }


def stream_spec(stream_id: str, video: Path, vocab: list[str]) -> dict[str, Any]:
    return {"id": stream_id, "source": str(video), "vocabulary": vocab, "sampling": {"every": 1}}


# ------------------------------------------------------------------------------------------------- bare


def bare_loop(model: torch.nn.Module, videos: list[Path], batch_size: int) -> dict[str, Any]:
    """Decode each stream's frames, then segment them in batches with its vocabulary; a fresh Segmenter so
    text classifiers are built inside the timing, as in a fresh replica; the model load is outside it."""
    segmenter = Segmenter(model, device="cpu", dtype=torch.float32)
    frames = 0
    start = time.perf_counter()
    for index, video in enumerate(videos):
        vocab = vocabulary(index)
        images = [frame.image for frame in decode_frames(video, f"s{index}", Sampler(every=1))]
        for first in range(0, len(images), batch_size):
            chunk = images[first : first + batch_size]
            segmenter.segment(chunk, [vocab] * len(chunk), return_labels=False)
        frames += len(images)
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": round(seconds, 3), "fps": frames / seconds}


# ---------------------------------------------------------------------------------------------- service


#: Milestones of a job's start, as GET /jobs/{id} shows them: a stream `running` (placed on a decoder),
#: a frame decoded, a frame analysed.
MILESTONES = {
    "stream_running": lambda s: s.get("status") not in (None, "pending"),
    "first_decoded": lambda s: int(s.get("decoded") or 0) >= 1,
    "first_analysed": lambda s: int(s.get("analysed") or 0) >= 1,
}
FINAL = ("completed", "failed", "cancelled")


def follow(service: Service, job_id: str, began: float, poll_s: float, until_end: bool) -> dict[str, Any]:
    """Poll GET /jobs/{id} every `poll_s`: seconds from `began` (perf_counter) to each milestone (the first
    poll that shows it in any stream), until the first frame is analysed or, with `until_end`, the job
    ends (`end`, with the final `snapshot`)."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 600
    while True:
        answer = service.get(f"/jobs/{job_id}")
        now = time.perf_counter()
        if answer.status != 200:
            raise RuntimeError(f"GET /jobs/{job_id} answered {answer.status}: {answer.text}")
        streams = answer.json.get("streams", {}).values()
        for name, reached in MILESTONES.items():
            if name not in seen and any(reached(s) for s in streams):
                seen[name] = now - began
        if answer.json["status"] in FINAL:
            if answer.json["status"] != "completed" or "first_analysed" not in seen:
                raise RuntimeError(f"job {job_id} ended {answer.json['status']}: {answer.json.get('errors')}")
            seen.update(end=now - began, snapshot=answer.json)
            return seen
        if "first_analysed" in seen and not until_end:
            return seen
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not end in 600 s")
        time.sleep(poll_s)


def start_latency(service: Service, video: Path, jobs: int, poll_s: float) -> dict[str, Any]:
    times: dict[str, list[float]] = {"submit_to_201": [], **{f"submit_to_{m}": [] for m in MILESTONES}}
    for index in range(jobs):
        job_id = f"latency-{index}"
        spec = {"job_id": job_id, "streams": [stream_spec("cam", video, vocabulary(0))]}
        began = time.perf_counter()
        answer = service.post("/jobs", spec)
        times["submit_to_201"].append(time.perf_counter() - began)
        if answer.status != 201:
            raise RuntimeError(f"POST /jobs answered {answer.status}: {answer.text}")
        seen = follow(service, job_id, began, poll_s, until_end=False)
        for milestone in MILESTONES:
            times[f"submit_to_{milestone}"].append(seen[milestone])
        status = service.wait(job_id, timeout_s=300)["status"]
        log(
            f"job {job_id}: 201 after {times['submit_to_201'][-1]:.3f} s, stream running after "
            f"{seen['stream_running']:.2f} s, first frame decoded after {seen['first_decoded']:.2f} s, "
            f"analysed after {seen['first_analysed']:.2f} s ({status})"
        )
    return {"jobs": jobs, "poll_ms": round(poll_s * 1000), **{k: summary(v) for k, v in times.items()}}


def four_streams(service: Service, videos: list[Path], name: str) -> dict[str, Any]:
    spec = {
        "job_id": name,
        "streams": [stream_spec(f"s{i}", video, vocabulary(i)) for i, video in enumerate(videos)],
    }
    began = time.perf_counter()
    answer = service.post("/jobs", spec)
    if answer.status != 201:
        raise RuntimeError(f"POST /jobs answered {answer.status}: {answer.text}")
    seen = follow(service, name, began, 0.1, until_end=True)
    frames = sum(int(s["written"]) for s in seen["snapshot"]["streams"].values())
    return {
        "frames": frames,
        "seconds": round(seen["end"], 3),
        "fps": frames / seen["end"],
        "first_analysed_s": round(seen["first_analysed"], 3),
        # From the first analysed frame to the job's end: the pool's rate once frames flow.
        "fps_after_first_analysed": frames / (seen["end"] - seen["first_analysed"]),
    }


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="san_tiny_test")
    parser.add_argument("--weights", default="random", help="'random' (speed does not depend on values)")
    parser.add_argument("--size", default="96x128", help="video frame HxW (even, >= 32)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each video of the 4-stream job")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the sample videos")
    parser.add_argument("--streams", type=int, default=4, help="streams (files) of the throughput job")
    parser.add_argument("--jobs", type=int, default=5, help="jobs timed for the start latency")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="GET /jobs/{id} polling period")
    parser.add_argument("--batch-size", type=int, default=8, help="replica batch size = bare batch size")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the 4-stream job (median taken)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (videos, output, log)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    started = time.perf_counter()

    report: dict[str, Any] = {
        "benchmark": "service",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_description(), "gpu": None},
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "model": args.model,
        "weights": args.weights,
        "device": "cpu",
        "video": {"size": [height, width], "seconds": args.seconds, "fps": args.fps, "sampling": "every 1"},
        "batch_size": args.batch_size,
        "notes": [
            "warm service: `sanstream serve` started (not timed) and one untimed job run first, so the "
            "replica holds the model and the first vocabulary's text classifier; every job still starts "
            "its own decoder and writer actors, which is part of its start latency.",
            "start_latency_s: submit_to_201 is POST /jobs until its 201 (the job is registered: lease, "
            "job state); submit_to_first_analysed is POST /jobs until GET /jobs/{id} first shows "
            "analysed >= 1, polled every poll_ms (so it overstates by up to one period); the milestones on "
            "the way: a stream `running` (placed on its decoder actor) and its first frame decoded. "
            "One-stream jobs of the latency video, one after the other, each run to its end before the next.",
            "four_streams: service_fps = frames / (POST /jobs -> status completed, polled every 0.1 s): "
            "job start, decoding, the replica, and the final commit of every stream. bare_fps = the same "
            "frames through decode_frames + Segmenter.segment in batches of batch_size in this process, "
            f"torch.set_num_threads({REPLICA_THREADS}) as in a replica (num_cpus=1 -> OMP_NUM_THREADS=1), "
            "before the service started. ratio = service_fps / bare_fps. *_after_first_analysed: frames / "
            "(job end - first analysed frame), the rate once frames flow, without the job's start.",
        ],
    }
    stdout = sys.stdout
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        folder = Path(tempfile.mkdtemp(prefix="sanstream-bench-service-"))
        if not args.keep:
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        videos = []
        for index in range(args.streams):
            path = folder / "videos" / f"stream{index}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            videos.append(write_sample_video(path, seconds=args.seconds, fps=args.fps, size=(height, width)))
        latency_video = write_sample_video(
            folder / "videos" / "latency.mp4", seconds=1, fps=args.fps, size=(height, width)
        )

        torch.set_num_threads(REPLICA_THREADS)
        report["bare_torch_threads"] = torch.get_num_threads()
        is_file = args.weights not in available_models() and args.weights != "random"
        model = load_checkpoint(args.weights, model=None if is_file else args.model)
        # One throwaway forward (allocator, kernels) outside the timing, with a vocabulary not used after.
        warm_image = np.zeros((height, width, 3), dtype=np.uint8)
        Segmenter(model, device="cpu").segment([warm_image], [["warm-up"]], return_labels=False)
        bare = bare_loop(model, videos, args.batch_size)
        log(
            f"bare loop: {bare['frames']} frames, {bare['fps']:.2f} frames/s at {REPLICA_THREADS} torch thread"
        )
        del model

        service = Service(
            folder / "out",
            log=folder / "serve.log",
            model=args.model,
            weights=args.weights,
            args=["--batch-size", str(args.batch_size)],
        )
        began = time.perf_counter()
        service.start()
        stack.callback(service.close)
        report["service_start_s"] = round(time.perf_counter() - began, 2)
        log(f"service ready in {report['service_start_s']} s; warm-up job")
        warm = four_streams(service, videos[:1], "warm-up")
        report["warmup_job_s"] = warm["seconds"]

        report["start_latency_s"] = start_latency(service, latency_video, args.jobs, args.poll_ms / 1000)
        runs = [four_streams(service, videos, f"four-streams-{i}") for i in range(args.repeats)]
        for run in runs:
            log(
                f"{args.streams}-stream job: {run['frames']} frames in {run['seconds']} s, {run['fps']:.2f} frames/s"
            )
        service_fps = statistics.median(run["fps"] for run in runs)
        flowing_fps = statistics.median(run["fps_after_first_analysed"] for run in runs)
        report["four_streams"] = {
            "streams": args.streams,
            "frames": runs[0]["frames"],
            "service_fps": round(service_fps, 3),
            "bare_fps": round(bare["fps"], 3),
            "ratio": round(service_fps / bare["fps"], 3),
            "service_fps_after_first_analysed": round(flowing_fps, 3),
            "ratio_after_first_analysed": round(flowing_fps / bare["fps"], 3),
            "service_runs": runs,
            "bare": bare,
        }
        report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["benchmark_seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(report, indent=2)
    print(text, file=stdout, flush=True)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
