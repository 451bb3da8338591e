"""Network sources against local TCP servers that misbehave: timeouts must fire and map to errors.

Every server listens on 127.0.0.1 only and is shut down by its fixture, so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.decode import (
    DecodeError,
    NotAVideo,
    Sampler,
    SourceNotFound,
    SourceOptions,
    SourceStalled,
    SourceUnreachable,
    VideoDecoder,
    probe,
)

MakeVideo = Callable[..., Path]
Handler = Callable[[socket.socket, threading.Event], None]
ONE_SECOND = SourceOptions(open_timeout=1.0, read_timeout=1.0)


class Server:
    """A TCP server whose per-connection behaviour is a function of the accepted socket.

    Handlers may block until `stop` is set; `close()` sets it and joins every thread.
    """

    def __init__(self, handler: Handler) -> None:
        self.stop = threading.Event()
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._handler = handler
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        # OSError: the client gave up, which is what these tests provoke.
        with conn, contextlib.suppress(OSError):
            self._handler(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self._accept_thread.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


Serve = Callable[[Handler], Server]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[Server] = []

    def start(handler: Handler) -> Server:
        server = Server(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and never say anything."""
    stop.wait(30)


def http_response(status: str, body: bytes, hang_after: bool = False, length: bool = True) -> Handler:
    """Answer one HTTP request with `body`; optionally without Content-Length, and optionally keep the
    connection open afterwards without sending more (a stalled source)."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        _read_request(conn)
        headers = f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n"
        if length:
            headers += f"Content-Length: {len(body)}\r\n"
        conn.sendall(headers.encode() + b"\r\n" + body)
        if hang_after:
            stop.wait(30)

    return handler


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_accepting_but_silent_server_times_out(serve: Serve, scheme: str) -> None:
    server = serve(silent)
    started = time.monotonic()
    with pytest.raises((SourceUnreachable, SourceStalled)) as info:
        VideoDecoder(f"{scheme}://127.0.0.1:{server.port}/x.mp4", "cam", options=ONE_SECOND)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"timeout=1 s took {elapsed:.1f} s"
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert server.connections >= 1


def test_refused_connection_is_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match=re.escape(f"127.0.0.1:{port}")):
        probe(f"http://127.0.0.1:{port}/x.mp4", ONE_SECOND)
    assert time.monotonic() - started < 5


def test_http_404_is_not_found(serve: Serve) -> None:
    server = serve(http_response("404 Not Found", b"no"))
    with pytest.raises(SourceNotFound):
        VideoDecoder(f"http://127.0.0.1:{server.port}/missing.mp4", "cam", options=ONE_SECOND)


def test_http_non_video_is_not_a_video(serve: Serve) -> None:
    server = serve(http_response("200 OK", b"<html>login page</html>" * 20))
    with pytest.raises(NotAVideo):
        VideoDecoder(f"http://127.0.0.1:{server.port}/x.mp4", "cam", options=ONE_SECOND)


def test_http_file_decodes(serve: Serve, make_video: MakeVideo) -> None:
    body = make_video("clip.mkv", n=20).read_bytes()
    server = serve(http_response("200 OK", body))
    with VideoDecoder(
        f"http://127.0.0.1:{server.port}/clip.mkv", "cam", Sampler(every=5), options=ONE_SECOND
    ) as decoder:
        assert [f.frame_index for f in decoder] == [0, 5, 10, 15]


def test_stream_that_stalls_mid_way_raises_stalled(serve: Serve, make_video: MakeVideo) -> None:
    # 20 s of MPEG-TS at 10 fps; half is sent, then the server keeps the connection open and goes quiet
    # (a frozen camera). Sending 10 s lets FFmpeg finish probing (it analyses 5 s) before the stall.
    data = make_video("live.ts", n=200, rate=10, gop=10).read_bytes()
    server = serve(http_response("200 OK", data[: len(data) // 2], hang_after=True, length=False))
    decoder = VideoDecoder(
        f"http://127.0.0.1:{server.port}/live.ts", "cam", Sampler(every=1), options=ONE_SECOND
    )
    assert decoder.opened.is_live  # no length, no duration: treat as live
    frames = []
    started = time.monotonic()
    with pytest.raises(SourceStalled) as info:
        for frame in decoder:
            frames.append(frame)
    assert time.monotonic() - started < 8
    assert 50 <= len(frames) < 200
    assert "1 s" in str(info.value)
    assert isinstance(info.value, DecodeError)
