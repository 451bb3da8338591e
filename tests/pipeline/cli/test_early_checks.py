"""What `run`, `resume` and `serve` refuse before anything starts, as a user sees it.

Each mistake (unknown model, CUDA on a machine without it, a missing or non-video file, `--fps 0`,
`--every 0`, an empty `--vocab`, a Ray address where nothing listens, a finished job) must end with exit
code 2 and one clear message, no traceback, in well under 2 s once the program is loaded, and without
Ray: it is never imported, no Ray session folder appears, no output folder is created and no Redis is
left running. The cases run in one `python` process (imports paid once; the time of each case is measured
after them), and one more case runs exactly as typed, `sanstream run ...`, imports included.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pipeline.jobs.redis_server import EmbeddedRedis
from pipeline.jobs.spec import parse_job_spec
from pipeline.jobs.state import JobStore
from pipeline.sample_video import write_sample_video

REPO = Path(__file__).resolve().parents[3]
TINY = ["--model", "san_tiny_test", "--weights", "random"]

# The runner: load everything the checks use, then run each case through the CLI's `main`, timing it.
RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, time
    import av, torch  # what the checks use, loaded before the clock starts
    import pipeline.cli.checks, pipeline.preflight, pipeline.san
    from pipeline.cli.main import main

    cases = json.loads(open(sys.argv[1]).read())
    results = {}
    for name, case in cases.items():
        os.environ.pop("RAY_ADDRESS", None)
        os.environ.update(case.get("env", {}))
        out, err = io.StringIO(), io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case["argv"])
            except SystemExit as error:  # argparse
                code = error.code
            except BaseException as error:  # reported below as a traceback would be
                code, err = -1, io.StringIO(f"Traceback (uncaught): {type(error).__name__}: {error}")
        results[name] = {
            "code": code, "out": out.getvalue(), "err": err.getvalue(), "seconds": time.monotonic() - started
        }
    results["ray imported"] = "ray" in sys.modules
    open(sys.argv[2], "w").write(json.dumps(results))
    """
)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cuda_request() -> tuple[str, str]:
    """A device this machine cannot give, and the words that say so."""
    import torch

    if torch.cuda.is_available():
        return "cuda:99", "CUDA device(s)"
    return "cuda", "no usable CUDA device"


def stored_job(out: Path, job_id: str, source: Path, status: str) -> None:
    """A job in OUT's job store, as a driver would have left it (the server is stopped again)."""
    spec = parse_job_spec(
        {
            "job_id": job_id,
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(out),
            "streams": [{"id": "cam", "source": str(source), "vocabulary": ["road"]}],
        }
    )
    with EmbeddedRedis(out) as server:
        store = JobStore(server.client(decode_responses=True))
        store.create_job(job_id, spec.to_dict(), ["cam"])
        store.set_status(job_id, "running")
        if status != "running":
            store.set_stream_status(job_id, "cam", "running")
            store.set_stream_status(job_id, "cam", status)
            store.set_status(job_id, status)


def environment(folder: Path) -> dict[str, str]:
    """The CLI's environment: Ray's temporary folder in the test's (a session there means Ray started)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "REDIS_URL")}
    return env | {"RAY_TMPDIR": str(folder), "COLUMNS": "400", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("early")
    clip = write_sample_video(folder / "clip.mp4", seconds=1, fps=5, size=(48, 64))
    notes = folder / "notes.mp4"
    notes.write_text("this is not a video")
    jobs = folder / "jobs"
    stored_job(jobs, "left", folder / "gone.mp4", "running")  # its file was deleted since
    stored_job(jobs, "done", clip, "completed")
    config = folder / "job.yaml"
    config.write_text(
        json.dumps({"output": str(folder / "out"), "streams": [{"source": str(clip), "vocabulary": ["x"]}]})
    )
    return {
        "folder": folder,
        "clip": str(clip),
        "notes": str(notes),
        "missing": str(folder / "missing.mp4"),
        "out": str(folder / "out"),
        "jobs": str(jobs),
        "config": str(config),
        "port": closed_port(),
        "ray_tmp": folder / "ray-tmp",
    }


def cases(s: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """name: (case for the runner, words its error must contain)."""
    clip, out, port = s["clip"], s["out"], s["port"]
    device, no_cuda = cuda_request()
    refused = f"no Ray cluster at 127.0.0.1:{port} (connection refused); leave out --address to run locally"
    run = ["run", clip, "--vocab", "road", "--out", out]
    return {
        "unknown model": (
            {"argv": [*run, "--model", "nosuch", "--weights", "random"]},
            ["--model: unknown model 'nosuch'", "known models: san_tiny_test"],
        ),
        "no CUDA": ({"argv": [*run, *TINY, "--device", device]}, ["--device", no_cuda]),
        "missing file": (
            {"argv": ["run", s["missing"], "--vocab", "road", "--out", out, *TINY]},
            ["streams[0].source", s["missing"], "no such file"],
        ),
        "not a video": (
            {"argv": ["run", s["notes"], "--vocab", "road", "--out", out, *TINY]},
            ["streams[0].source", s["notes"], "not a readable video"],
        ),
        "--fps 0": ({"argv": [*run, "--fps", "0"]}, ["--fps must be > 0", "got 0"]),
        "--every 0": ({"argv": [*run, "--every", "0"]}, ["--every must be >= 1", "got 0"]),
        "empty --vocab": (
            {"argv": ["run", clip, "--vocab", " , ", "--out", out]},
            ["--vocab is empty: give at least one class name, e.g. --vocab water,road"],
        ),
        "no cluster at --address": (
            {"argv": [*run, *TINY, "--address", f"127.0.0.1:{port}"]},
            [refused],
        ),
        "no cluster at $RAY_ADDRESS": (
            {"argv": [*run, *TINY], "env": {"RAY_ADDRESS": f"ray://127.0.0.1:{port}"}},
            [
                f"no Ray cluster at ray://127.0.0.1:{port} (connection refused; the address is $RAY_ADDRESS's)",
                "unset RAY_ADDRESS to run locally",
            ],
        ),
        "everything at once": (
            {
                "argv": [
                    "run",
                    s["missing"],
                    s["notes"],
                    "--vocab",
                    "road",
                    "--out",
                    out,
                    "--model",
                    "nosuch",
                    "--weights",
                    "random",
                    "--address",
                    f"127.0.0.1:{port}",
                ]
            },
            ["cannot start the job, 4 problems", "unknown model", "no such file", "not a readable", refused],
        ),
        "--fps with --config": (
            {"argv": ["run", "--config", s["config"], "--fps", "2"]},
            ["--fps and --every apply to SOURCE... only"],
        ),
        "serve: unknown model": (
            {"argv": ["serve", "--model", "nosuch", "--out", out]},
            ["--model: unknown model 'nosuch'"],
        ),
        "serve: no CUDA": (
            {"argv": ["serve", *TINY, "--device", device, "--out", out]},
            ["--device", no_cuda],
        ),
        "serve: no warm decoder": (
            {"argv": ["serve", *TINY, "--decoders", "0", "--out", out]},
            ["--decoders", "must be at least 1"],
        ),
        "serve: no cluster": (
            {"argv": ["serve", *TINY, "--address", f"127.0.0.1:{port}", "--out", out]},
            [refused],
        ),
        "serve: unknown compile mode": (
            {"argv": ["serve", *TINY, "--compile", "fastest", "--out", out]},
            ["--compile", "invalid choice: 'fastest'", "reduce-overhead"],
        ),
        "serve: negative padding": (
            {"argv": ["serve", *TINY, "--max-padding", "-1", "--out", out]},
            ["--max-padding", "must be a number >= 0"],
        ),
        "resume: its file is gone": (
            {"argv": ["resume", "left", "--out", s["jobs"]]},
            ["streams[0].source", "gone.mp4", "no such file"],
        ),
        "resume: no cluster": (
            {"argv": ["resume", "left", "--out", s["jobs"], "--address", f"127.0.0.1:{port}"]},
            ["2 problems", "no such file", refused],
        ),
        "resume: finished job": (
            {"argv": ["resume", "done", "--out", s["jobs"]]},
            ["job done already completed"],
        ),
        "resume: unknown job": (
            {"argv": ["resume", "nope", "--out", s["jobs"]]},
            ["no job 'nope'", "done", "left"],
        ),
    }


@pytest.fixture(scope="module")
def results(setup: dict[str, Any]) -> dict[str, Any]:
    folder = setup["folder"]
    (folder / "cases.json").write_text(json.dumps({name: case for name, (case, _) in cases(setup).items()}))
    (folder / "runner.py").write_text(RUNNER)
    done = subprocess.run(
        [sys.executable, str(folder / "runner.py"), str(folder / "cases.json"), str(folder / "results.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=environment(setup["ray_tmp"]),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize(
    "name",
    [
        "unknown model",
        "no CUDA",
        "missing file",
        "not a video",
        "--fps 0",
        "--every 0",
        "empty --vocab",
        "no cluster at --address",
        "no cluster at $RAY_ADDRESS",
        "everything at once",
        "--fps with --config",
        "serve: unknown model",
        "serve: no CUDA",
        "serve: no cluster",
        "serve: unknown compile mode",
        "serve: negative padding",
        "resume: its file is gone",
        "resume: no cluster",
        "resume: finished job",
        "resume: unknown job",
    ],
)
def test_refused_at_once_with_exit_code_2(name: str, setup: dict[str, Any], results: dict[str, Any]) -> None:
    result, words = results[name], cases(setup)[name][1]
    shown = result["out"] + result["err"]
    assert result["code"] == 2, shown
    assert "Traceback" not in shown
    for word in words:
        assert word in result["err"], f"{word!r} not in: {result['err']}"
    assert result["seconds"] < 2.0, f"{name}: {result['seconds']:.1f} s after imports"


def test_nothing_was_started_or_left_behind(setup: dict[str, Any], results: dict[str, Any]) -> None:
    assert results["ray imported"] is False
    assert not setup["ray_tmp"].exists(), "a Ray session was created"
    assert not Path(setup["out"]).exists(), "a refused job created its output folder"
    servers = [p for p in psutil.process_iter(["name"]) if "redis-server" in (p.info["name"] or "")]
    ours = [p.pid for p in servers if _cwd(p).startswith(str(setup["folder"]))]
    assert not ours, "resume left the job's Redis running"


def _cwd(process: psutil.Process) -> str:
    try:
        return process.cwd()
    except psutil.Error:
        return ""


def test_the_command_as_typed(setup: dict[str, Any], tmp_path: Path) -> None:
    """`sanstream run` with four mistakes: all named at once, exit code 2, no traceback, no Ray; the time
    includes loading the program (PyTorch among it), which a loaded CI machine stretches."""
    port, ray_tmp = setup["port"], tmp_path / "ray-tmp"
    command = [sys.executable, "-m", "pipeline.cli.main", "run", setup["missing"], setup["notes"]]
    command += ["--vocab", "road", "--model", "nosuch", "--weights", "random"]
    command += ["--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "out")]
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO, env=environment(ray_tmp)
    )
    took = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "sanstream run: cannot start the job, 4 problems:"
    assert (
        lines[1]
        == "  --model: unknown model 'nosuch'; known models: san_tiny_test, san_vit_b_16, san_vit_large_14"
    )
    assert lines[2].startswith(f"  streams[0].source: {setup['missing']}: no such file")
    assert lines[3].startswith(f"  streams[1].source: {setup['notes']}: not a readable video")
    assert (
        lines[4]
        == f"  no Ray cluster at 127.0.0.1:{port} (connection refused); leave out --address to run locally"
    )
    assert not ray_tmp.exists() and not (tmp_path / "out").exists()
    assert took < 20, f"{took:.1f} s"
