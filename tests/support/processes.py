"""Processes a test started through a CLI driver: what the driver started (its local Ray, workers, agents,
the embedded redis-server), and whether any of it still runs, so a test can check that nothing of ours
outlives its job."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

ProcessKey = tuple[int, float]


def descendants(pid: int) -> dict[ProcessKey, str]:
    """Every process below `pid` now, by (pid, start time) (a pid alone could be reused later): its name."""
    found: dict[ProcessKey, str] = {}
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            found[(child.pid, child.create_time())] = child.name()
        except psutil.NoSuchProcess:
            continue
    return found


def alive(processes: Iterable[ProcessKey]) -> list[str]:
    """Those of `processes` that still run (zombies do not: they only wait to be reaped), described."""
    running = []
    for pid, started in processes:
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{pid} {process.name()} {' '.join(process.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            continue
    return running


def redis_servers_under(folder: Path) -> list[int]:
    """Running redis-servers whose data directory (their working directory) is under `folder`."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (process.info["name"] or "") and process.cwd().startswith(str(folder)):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_gone(processes: Iterable[ProcessKey], folder: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(processes) or redis_servers_under(folder):
        assert time.monotonic() < deadline, (
            f"still running: {alive(processes)}; redis-servers under {folder}: {redis_servers_under(folder)}"
        )
        time.sleep(0.2)


def follow(driver: subprocess.Popen[str]) -> tuple[str, dict[ProcessKey, str]]:
    """Wait for `driver` to exit, noting every process it started meanwhile; its output."""
    seen: dict[ProcessKey, str] = {}
    while driver.poll() is None:
        seen |= descendants(driver.pid)
        time.sleep(0.3)
    output = driver.stdout.read() if driver.stdout else ""
    return output, seen
