"""A real RTSP server for tests: GStreamer's gst-rtsp-server, run by Debian's python3 in its own process
group, so tests can kill it mid-stream (like a camera losing power) and start it again on the same port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

GST_HELPER = Path(__file__).with_name("gst_rtsp_server.py")
DEBIAN_PYTHON = "/usr/bin/python3"
GST_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer:
    """gst_rtsp_server.py in its own process group; `kill()` is abrupt (SIGKILL), like a crash."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # Output goes to a file, not a pipe nobody reads, which would block a chatty server when full.
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 15.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [DEBIAN_PYTHON, str(GST_HELPER), str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the port accepts once the server is attached
            if self.proc.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                raise RuntimeError(f"RTSP server exited with {self.proc.returncode}: {output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"RTSP server did not listen on port {self.port} within {timeout:g} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def running_rtsp_server(log_path: Path) -> Iterator[RtspServer]:
    """A started server (skipping the test when GStreamer's RTSP server is not installed)."""
    if not os.path.exists(DEBIAN_PYTHON):
        pytest.skip(f"no {DEBIAN_PYTHON} to run the GStreamer RTSP server (apt-get install {GST_PACKAGES})")
    check = subprocess.run(
        [DEBIAN_PYTHON, str(GST_HELPER), "--check"], capture_output=True, text=True, timeout=30, check=False
    )
    if check.returncode != 0:
        pytest.skip(
            f"GStreamer RTSP server unavailable ({check.stdout.strip()}); apt-get install {GST_PACKAGES}"
        )
    server = RtspServer(log_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
