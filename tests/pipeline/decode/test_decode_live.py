"""`LiveSource` against real servers on 127.0.0.1: reconnection, gaps, stall watchdog, prompt close.

Servers, all started and stopped by the tests and listening on 127.0.0.1 only:

* RTSP: GStreamer's gst-rtsp-server through `gst_rtsp_server.py`, run with Debian's /usr/bin/python3
  in its own process group so it can be killed mid-stream and restarted on the same port.
* HTTP: `LiveTsServer` below streams an MPEG-TS file at real-time pace, either from the start on every
  connection (a server that restarted) or from the current position of a clock that keeps running across
  restarts (an encoder with absolute timestamps); it can also go quiet mid-stream while still sending
  bytes (TS null packets), which FFmpeg's socket timeouts cannot detect.
* HLS: `HlsServer` serves a sliding live playlist over segments written by FFmpeg's HLS muxer.
* Raw TCP servers that accept and say nothing, or answer once and then stall.

Tests that need time pass short timeouts and backoff delays so the module stays well under 90 s.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pytest

from pipeline.decode import DecodeError, ProtocolNotAllowed, Sampler, SourceOptions, SourceUnreachable
from pipeline.decode.live import Gap, LiveSource, LiveTimeline, ReconnectPolicy, ResumePoint
from pipeline.frames import Frame
from pipeline.storage.schema import GAPS
from tests.support.rtsp import RtspServer, free_port, running_rtsp_server

RATE = 10  # frames per second of every test stream
FAST = SourceOptions(open_timeout=3.0, read_timeout=3.0, probe_seconds=0.5)
QUICK_RETRY = ReconnectPolicy(initial_delay=0.1, factor=2.0, max_delay=0.5, jitter=0.0)


# ------------------------------------------------------------------------------------------------------
# Media
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TsFile:
    """An MPEG-TS file and where each video packet starts, for pacing and for joining mid-stream."""

    data: bytes
    positions: list[int]  # byte offset of each video packet, in file order
    dts: list[float]  # its decode time in seconds
    keyframes: list[int]  # indexes into positions of keyframe packets
    pts: frozenset[float]  # every frame's PTS in ms-rounded seconds, to recognise the source's own clock


def pattern(i: int) -> np.ndarray:
    """Frame i of a 64x48 test picture: a bright bar that moves 4 px per frame over a ramp."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 3
    bar = (i * 4) % 60
    img[:, bar : bar + 4] = 255
    return img


def _encode(container: Any, frames: int) -> None:
    stream = container.add_stream("libx264", rate=RATE)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.gop_size = RATE  # a keyframe every second, so a mid-stream join decodes within 1 s
    stream.options = {"tune": "zerolatency"}  # no B-frames: packets arrive in presentation order
    for i in range(frames):
        for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


@pytest.fixture(scope="module")
def ts_file(tmp_path_factory: pytest.TempPathFactory) -> TsFile:
    """60 s of 10 fps H.264 in MPEG-TS (about 0.3 s to encode)."""
    path = tmp_path_factory.mktemp("live") / "live.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        _encode(out, 60 * RATE)
    positions, dts, keyframes, pts = [], [], [], set()
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            if packet.size == 0 or packet.pos is None or packet.dts is None:
                continue
            if packet.is_keyframe:
                keyframes.append(len(positions))
            positions.append(packet.pos)
            dts.append(float(packet.dts * packet.time_base))
            assert packet.pts is not None
            pts.add(round(float(packet.pts * packet.time_base), 3))
    return TsFile(path.read_bytes(), positions, dts, keyframes, frozenset(pts))


@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of video as ~0.5 s HLS segments, written by FFmpeg's HLS muxer (a VOD playlist that
    `HlsServer` turns into a live one)."""
    out_dir = tmp_path_factory.mktemp("hls")
    options = {
        "hls_time": "0.5",
        "hls_list_size": "0",
        "hls_playlist_type": "vod",
        "hls_segment_filename": str(out_dir / "seg%03d.ts"),
    }
    with av.open(str(out_dir / "vod.m3u8"), "w", format="hls", options=options) as out:
        _encode(out, 30 * RATE)
    return out_dir


# ------------------------------------------------------------------------------------------------------
# HTTP servers that can be stopped and restarted on the same port
# ------------------------------------------------------------------------------------------------------


class RestartableHttpServer:
    """A threaded HTTP server on 127.0.0.1 whose `stop()` cuts every open connection, like a crash.

    Subclasses implement `handle(handler)`; long responses must return promptly once `self.stopping`
    is set.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                with outer._lock:
                    outer.connections += 1
                    outer._open.add(self.connection)
                try:
                    outer.handle(self)
                except OSError:
                    pass  # the client went away or stop() cut the connection
                finally:
                    with outer._lock:
                        outer._open.discard(self.connection)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.stopping = threading.Event()
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError


class LiveTsServer(RestartableHttpServer):
    """Streams `ts` over HTTP at real-time pace, with no Content-Length, like an encoder's HTTP output.

    Args:
        absolute: if True, every connection joins at the current position of a clock that started with
            the first `start()` and keeps running across restarts (timestamps continue, as from a live
            encoder); if False, every connection streams from the start of the file (a restarted server).
        stall_after: for the first `stall_connections` connections, after this many seconds of video the
            server keeps the connection open and sends only MPEG-TS null packets, 20 a second: bytes keep
            arriving, so no socket timeout fires, but there are no frames.
    """

    LEAD = 0.1  # send each packet this long before its time, as a real server's buffering would

    def __init__(
        self,
        ts: TsFile,
        *,
        absolute: bool = False,
        stall_after: float | None = None,
        stall_connections: int = 0,
    ) -> None:
        super().__init__()
        self.ts = ts
        self.absolute = absolute
        self.stall_after = stall_after
        self.stall_connections = stall_connections
        self.epoch: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def start(self) -> None:
        if self.epoch is None:
            self.epoch = time.monotonic()
        super().start()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path != "/live.ts":
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp2t")
        handler.end_headers()
        ts, out, stopping = self.ts, handler.wfile, self.stopping
        stall = self.stall_after if self.connections <= self.stall_connections else None
        dts0 = ts.dts[0]
        if self.absolute:
            assert self.epoch is not None
            clock0 = self.epoch
            due_now = time.monotonic() - clock0 + dts0
            first = ts.keyframes[max(0, bisect.bisect_right([ts.dts[k] for k in ts.keyframes], due_now) - 1)]
            out.write(ts.data[: ts.positions[0]])  # PAT/PMT, so a mid-stream join can start at once
        else:
            clock0 = time.monotonic()
            first = 0
        for i in range(first, len(ts.positions)):
            if stall is not None and ts.dts[i] - ts.dts[first] >= stall:
                null_packet = b"\x47\x1f\xff\x10" + b"\xff" * 184
                while not stopping.wait(0.05):
                    out.write(null_packet)
                    out.flush()
                return
            if stopping.wait(max(0.0, clock0 + ts.dts[i] - dts0 - self.LEAD - time.monotonic())):
                return
            end = ts.positions[i + 1] if i + 1 < len(ts.positions) else len(ts.data)
            out.write(ts.data[ts.positions[i] : end])
            out.flush()


class HlsServer(RestartableHttpServer):
    """A live HLS server: the playlist is a sliding window over the VOD segments in `directory`, as if
    a segment became available every segment duration since the first `start()`."""

    WINDOW = 6

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        text = (directory / "vod.m3u8").read_text()
        self.segments = re.findall(r"#EXTINF:([\d.]+),\s*\n(\S+)", text)
        self.epoch: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.m3u8"

    def start(self) -> None:
        if self.epoch is None:
            self.epoch = time.monotonic()
        super().start()

    def playlist(self) -> str:
        assert self.epoch is not None
        elapsed = time.monotonic() - self.epoch
        ends, total = [], 0.0
        for duration, _ in self.segments:
            total += float(duration)
            ends.append(total)
        # Three segments are there from the start, then one more whenever one more has "happened".
        available = max(3, bisect.bisect_right(ends, elapsed + ends[2]))
        first = max(0, available - self.WINDOW)
        target = max(1, round(max(float(d) for d, _ in self.segments)))
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}"]
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first}")
        for duration, name in self.segments[first:available]:
            lines += [f"#EXTINF:{duration},", name]
        return "\n".join(lines) + "\n"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/")
        if name == "live.m3u8":
            body, kind = self.playlist().encode(), "application/vnd.apple.mpegurl"
        elif re.fullmatch(r"seg\d+\.ts", name) and (self.directory / name).exists():
            body, kind = (self.directory / name).read_bytes(), "video/mp2t"
        else:
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


Servers = list[RestartableHttpServer]


@pytest.fixture
def http_servers() -> Iterator[Servers]:
    servers: Servers = []
    yield servers
    for server in servers:
        server.stop()


# ------------------------------------------------------------------------------------------------------
# Raw TCP servers that misbehave
# ------------------------------------------------------------------------------------------------------

TcpHandler = Callable[[socket.socket, threading.Event], None]


class TcpServer:
    """Accepts connections on 127.0.0.1 and runs `handler(conn, stop)` for each; records when each
    connection was closed by the client (`client_closed`), to prove a cancelled open really let go."""

    def __init__(self, handler: TcpHandler) -> None:
        self.stop = threading.Event()
        self.connections = 0
        self.client_closed: list[float] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
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
        with conn, contextlib.suppress(OSError):
            self._handler(conn, self.stop)
            # Wait for the client to hang up (recv returns b"" or fails) and note when.
            conn.settimeout(0.05)
            while not self.stop.is_set():
                try:
                    if not conn.recv(4096):
                        break
                except TimeoutError:
                    continue
            self.client_closed.append(time.monotonic())

    def close(self) -> None:
        self.stop.set()
        self._accept_thread.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def tcp_server() -> Iterator[Callable[[TcpHandler], TcpServer]]:
    servers: list[TcpServer] = []

    def start(handler: TcpHandler) -> TcpServer:
        servers.append(TcpServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def say_nothing(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and never answer (a blackholed service); returns at once so `_serve` watches for hang-up."""


def answer_then_stall(conn: socket.socket, stop: threading.Event) -> None:
    """Answer the first request (HTTP 200 with no body yet, or RTSP 200 to OPTIONS), then go quiet."""
    conn.settimeout(5)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    if request.startswith(b"GET"):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
    else:
        cseq = re.search(rb"CSeq:\s*(\d+)", request)
        conn.sendall(
            b"RTSP/1.0 200 OK\r\nCSeq: " + (cseq.group(1) if cseq else b"1") + b"\r\n"
            b"Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n"
        )


# ------------------------------------------------------------------------------------------------------
# The RTSP server
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    with running_rtsp_server(tmp_path / "rtsp-server.log") as server:
        yield server


# ------------------------------------------------------------------------------------------------------
# Driving a source
# ------------------------------------------------------------------------------------------------------


def consume(
    source: LiveSource,
    on_frame: Callable[[list[Frame]], bool],
    timeout: float,
) -> list[Frame]:
    """Iterate `source` until `on_frame(frames)` returns True, closing it after `timeout` seconds at the
    latest (a hung source then fails the test's assertions instead of hanging the suite)."""
    frames: list[Frame] = []
    timer = threading.Timer(timeout, source.close)
    timer.daemon = True
    timer.start()
    try:
        for frame in source:
            frames.append(frame)
            if on_frame(frames):
                break
    finally:
        timer.cancel()
        source.close()
    return frames


@dataclass
class Outage:
    """When a test cut its server and brought it back (time.time())."""

    stopped: float = 0.0
    restarted: float = 0.0


def cut_and_restore(stop: Callable[[], None], start: Callable[[], None], outage: Outage, down: float) -> None:
    outage.stopped = time.time()
    stop()

    def restore() -> None:
        start()
        outage.restarted = time.time()

    timer = threading.Timer(down, restore)
    timer.daemon = True
    timer.start()


def assert_one_reconnect(frames: list[Frame], gaps: list[Gap], outage: Outage, reason: str) -> Gap:
    """The checks every reconnect test shares; returns the gap."""
    assert outage.restarted, "the server was never restarted"
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert gap.reason.startswith(reason), gap.reason
    # The gap starts at the last frame before the cut and ends at the first frame after the restart.
    assert -0.5 < gap.start_wall - outage.stopped < 0.5, (gap, outage)
    assert 0 < gap.end_wall - outage.restarted < 4.0, (gap, outage)
    before = [f for f in frames if f.wall_time <= gap.start_wall]
    after = [f for f in frames if f.wall_time >= gap.end_wall]
    assert before and after
    assert before[-1].pts_seconds == pytest.approx(gap.start_pts)
    assert after[0].pts_seconds == pytest.approx(gap.end_pts)
    assert len(after) >= 5
    # One timeline across the reconnection: PTS and frame_index strictly increase, and the PTS gap
    # accounts for the time the server was down (it cannot be longer than the wall-clock gap).
    pts = [f.pts_seconds for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    indexes = [f.frame_index for f in frames]
    assert all(b > a for a, b in itertools.pairwise(indexes)), indexes
    down = outage.restarted - outage.stopped
    assert down - 0.6 < gap.end_pts - gap.start_pts < gap.wall_seconds + 0.6, (gap, down)
    return gap


# ------------------------------------------------------------------------------------------------------
# Reconnection through real servers
# ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_rtsp_server_restart_records_gap_and_resumes(rtsp_server: RtspServer) -> None:
    gaps: list[Gap] = []
    outage = Outage()
    source = LiveSource(
        rtsp_server.url, "cam", Sampler(every=1), options=FAST, reconnect=QUICK_RETRY, on_gap=gaps.append
    )

    def on_frame(frames: list[Frame]) -> bool:
        if not outage.stopped and len(frames) >= 20:
            cut_and_restore(rtsp_server.kill, rtsp_server.start, outage, down=2.0)
        return len(gaps) > 0 and frames[-1].wall_time > gaps[0].end_wall + 1.0

    frames = consume(source, on_frame, timeout=30)
    gap = assert_one_reconnect(frames, gaps, outage, "connection lost")
    # RTSP restarts its timestamps at 0 on every session; the timeline continued instead.
    assert gap.end_pts > gap.start_pts
    assert source.stats.connects >= 2 and source.stats.losses == 1
    assert list(source.gaps) == gaps


@pytest.mark.timeout(60)
@pytest.mark.parametrize("absolute", [False, True], ids=["restarted-at-0", "absolute-clock"])
def test_http_server_restart_records_gap_and_resumes(
    http_servers: Servers, ts_file: TsFile, absolute: bool
) -> None:
    server = LiveTsServer(ts_file, absolute=absolute)
    http_servers.append(server)
    server.start()
    gaps: list[Gap] = []
    outage = Outage()
    source = LiveSource(
        server.url, "cam", Sampler(every=1), options=FAST, reconnect=QUICK_RETRY, on_gap=gaps.append
    )

    def on_frame(frames: list[Frame]) -> bool:
        if not outage.stopped and len(frames) >= 20:
            cut_and_restore(server.stop, server.start, outage, down=2.0)
        return len(gaps) > 0 and frames[-1].wall_time > gaps[0].end_wall + 1.0

    frames = consume(source, on_frame, timeout=30)
    gap = assert_one_reconnect(frames, gaps, outage, "connection lost: ")
    after = [f for f in frames if f.wall_time >= gap.end_wall]
    on_source_clock = [round(f.pts_seconds, 3) in ts_file.pts for f in after]
    if absolute:
        # The server's clock kept running: the frames after the gap keep the source's own timestamps.
        assert all(on_source_clock), [f.pts_seconds for f in after]
    else:
        # The restarted server started its timestamps again from the file's first PTS, behind where the
        # stream had got to; the timeline did not follow it back but continued past the gap.
        assert min(ts_file.pts) < gap.start_pts < gap.end_pts == after[0].pts_seconds
    assert source.stats.frames_dropped == 0


@pytest.mark.timeout(60)
def test_hls_live_playlist_reconnects(http_servers: Servers, hls_dir: Path) -> None:
    server = HlsServer(hls_dir)
    http_servers.append(server)
    server.start()
    gaps: list[Gap] = []
    outage = Outage()
    # HLS arrives a segment at a time and FFmpeg re-reads the playlist every target duration (1 s here),
    # so a stall timeout must span a couple of playlist reloads, and the hand-off must hold the burst of
    # three segments a connection starts with.
    source = LiveSource(
        server.url,
        "cam",
        Sampler(fps=5),
        options=FAST,
        reconnect=QUICK_RETRY,
        stall_timeout=2.5,
        on_gap=gaps.append,
        buffer_frames=128,
    )

    def on_frame(frames: list[Frame]) -> bool:
        if not outage.stopped and frames[-1].wall_time - frames[0].wall_time >= 2.0:
            cut_and_restore(server.stop, server.start, outage, down=3.5)
        return bool(outage.restarted) and len(gaps) > 0 and frames[-1].wall_time > gaps[-1].end_wall + 1.0

    frames = consume(source, on_frame, timeout=40)
    assert outage.restarted and gaps, (outage, gaps)
    pts = [f.pts_seconds for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    gap = gaps[0]
    assert gap.reason.startswith(("stalled", "connection lost")), gap.reason
    assert gap.end_wall > outage.restarted
    # Sampling at 5 fps on the PTS timeline: consecutive samples about 0.2 s apart, except at the gap.
    steps = [b - a for a, b in itertools.pairwise(pts) if b <= gap.start_pts]
    assert source.stats.frames_dropped == 0
    assert steps and all(0.15 < s < 0.25 for s in steps), steps


@pytest.mark.timeout(60)
def test_stream_that_sends_bytes_but_no_frames_is_aborted_by_the_watchdog(
    http_servers: Servers, ts_file: TsFile
) -> None:
    # The first connection turns into TS null packets after 2 s: data keeps coming, so neither the
    # socket timeout nor PyAV's read timeout (30 s here) would ever fire. Only the watchdog can.
    server = LiveTsServer(ts_file, stall_after=2.0, stall_connections=1)
    http_servers.append(server)
    server.start()
    gaps: list[Gap] = []
    options = SourceOptions(open_timeout=3.0, read_timeout=30.0, probe_seconds=0.5)
    source = LiveSource(
        server.url,
        "cam",
        Sampler(every=1),
        options=options,
        reconnect=QUICK_RETRY,
        stall_timeout=1.5,
        on_gap=gaps.append,
    )
    frames = consume(
        source, lambda frames: len(gaps) > 0 and frames[-1].wall_time > gaps[0].end_wall + 0.5, 20
    )
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert gap.reason.startswith("stalled: no frames for 1.5 s"), gap.reason
    # Detected 1.5 s after the last frame (plus the watchdog's polling), not after the 30 s read timeout.
    assert server.connections >= 2
    assert source.stats.stalls == 1 and source.stats.abandoned_readers == 0
    assert gap.wall_seconds < 1.5 + 0.3 + 3.0  # stall + polling + reconnect and probe
    assert [f for f in frames if f.wall_time > gap.end_wall]


@pytest.mark.timeout(30)
def test_slow_consumer_loses_oldest_frames_not_the_connection(http_servers: Servers, ts_file: TsFile) -> None:
    # A consumer that takes 0.6 s per frame on a 10 fps stream: the reader must keep draining the socket
    # (dropping the oldest waiting frames, which keep their indexes) and the watchdog must not mistake
    # the consumer's slowness for a stall.
    server = LiveTsServer(ts_file)
    http_servers.append(server)
    server.start()
    source = LiveSource(
        server.url,
        "cam",
        Sampler(every=1),
        options=FAST,
        stall_timeout=0.5,
        buffer_frames=2,
    )

    def slow(frames: list[Frame]) -> bool:
        time.sleep(0.6)
        return len(frames) >= 5

    frames = consume(source, slow, timeout=20)
    assert len(frames) == 5
    assert source.stats.frames_dropped > 5
    assert source.stats.stalls == 0 and source.stats.attempts == 1 and list(source.gaps) == []
    indexes = [f.frame_index for f in frames]
    assert indexes[-1] - indexes[0] > len(frames)  # dropped frames still took their place in the count


def test_stop_event_set_before_starting_ends_iteration_at_once() -> None:
    stop = threading.Event()
    stop.set()
    source = LiveSource(f"rtsp://127.0.0.1:{free_port()}/cam", "cam", stop=stop)
    started = time.monotonic()
    assert list(source) == []
    assert time.monotonic() - started < 0.5
    assert source.stats.attempts == 0


# ------------------------------------------------------------------------------------------------------
# Servers that accept but never deliver
# ------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["rtsp", "http"])
@pytest.mark.parametrize("behaviour", [say_nothing, answer_then_stall], ids=["silent", "answers-then-stalls"])
def test_server_that_never_delivers_is_detected_within_the_timeout(
    tcp_server: Callable[[TcpHandler], TcpServer], scheme: str, behaviour: TcpHandler
) -> None:
    server = tcp_server(behaviour)
    source = LiveSource(
        f"{scheme}://127.0.0.1:{server.port}/cam",
        "cam",
        options=SourceOptions(open_timeout=1.0, read_timeout=1.0),
        reconnect=ReconnectPolicy(initial_delay=0.05, max_attempts=2, jitter=0.0),
    )
    started = time.monotonic()
    with pytest.raises(DecodeError) as info:
        next(source)
    elapsed = time.monotonic() - started
    # Two attempts of 1 s each plus one 0.05 s backoff; anything near 4 s would mean a timeout did not fire.
    assert 1.9 < elapsed < 4.0, elapsed
    assert server.connections == 2
    assert f"127.0.0.1:{server.port}" in str(info.value)
    assert source.stats.attempts == 2 and source.stats.frames_decoded == 0
    assert list(source.gaps) == []  # the stream never had a timeline, so there is nothing to place a gap on


@pytest.mark.timeout(30)
def test_refused_connections_give_up_after_max_attempts() -> None:
    port = free_port()
    policy = ReconnectPolicy(initial_delay=0.05, factor=2.0, max_delay=0.1, jitter=0.0, max_attempts=4)
    source = LiveSource(f"http://127.0.0.1:{port}/x.ts", "cam", options=FAST, reconnect=policy)
    started = time.monotonic()
    with pytest.raises(SourceUnreachable):
        next(source)
    assert time.monotonic() - started < 2.0  # 0.05 + 0.1 + 0.1 of backoff
    assert source.stats.attempts == 4
    with pytest.raises(StopIteration):
        next(source)


# ------------------------------------------------------------------------------------------------------
# close() from every state
# ------------------------------------------------------------------------------------------------------


def iterate_in_thread(source: LiveSource) -> tuple[threading.Thread, list[Frame], list[BaseException]]:
    frames: list[Frame] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            frames.extend(source)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, frames, errors


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def close_and_time(
    source: LiveSource, thread: threading.Thread, stop: threading.Event | None = None
) -> float:
    """Close `source` (by `close()`, or by setting `stop` when given) and return how long until the
    iterating thread ended, asserting that `close()` itself returned within about a second."""
    started = time.monotonic()
    if stop is None:
        source.close()
        assert time.monotonic() - started < 1.2
    else:
        stop.set()
    thread.join(3)
    assert not thread.is_alive()
    return time.monotonic() - started


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_close_while_connecting_to_a_blackhole(
    tcp_server: Callable[[TcpHandler], TcpServer], scheme: str
) -> None:
    server = tcp_server(say_nothing)
    # Timeouts far longer than the test: only close() can end the open.
    source = LiveSource(
        f"{scheme}://127.0.0.1:{server.port}/cam",
        "cam",
        options=SourceOptions(open_timeout=60.0, read_timeout=60.0),
    )
    thread, frames, errors = iterate_in_thread(source)
    wait_for(lambda: server.connections == 1, 5)
    time.sleep(0.3)
    closed_at = time.monotonic()
    assert close_and_time(source, thread) < 1.0
    assert frames == [] and errors == []
    # FFmpeg really let go of the socket (the open was interrupted, not abandoned to run on).
    wait_for(lambda: len(server.client_closed) == 1, 2)
    assert server.client_closed[0] - closed_at < 1.0
    assert source.stats.abandoned_readers == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["close", "stop-event"])
def test_close_while_waiting_to_reconnect(how: str) -> None:
    port = free_port()
    stop = threading.Event()
    source = LiveSource(
        f"rtsp://127.0.0.1:{port}/cam",
        "cam",
        options=FAST,
        reconnect=ReconnectPolicy(initial_delay=60.0, max_delay=60.0),
        stop=stop,
    )
    thread, _, errors = iterate_in_thread(source)
    wait_for(lambda: source.stats.attempts == 1 and not source.connected, 5)
    time.sleep(0.3)  # now sleeping in a 60 s backoff
    assert close_and_time(source, thread, stop if how == "stop-event" else None) < 1.0
    assert errors == []
    assert source.stats.attempts == 1


@pytest.mark.timeout(30)
def test_close_while_reading(http_servers: Servers, ts_file: TsFile) -> None:
    server = LiveTsServer(ts_file)
    http_servers.append(server)
    server.start()
    gaps: list[Gap] = []
    source = LiveSource(
        server.url,
        "cam",
        Sampler(every=1),
        options=SourceOptions(open_timeout=60.0, read_timeout=60.0, probe_seconds=0.5),
        on_gap=gaps.append,
    )
    thread, frames, errors = iterate_in_thread(source)
    wait_for(lambda: len(frames) >= 5, 10)
    assert close_and_time(source, thread) < 1.0
    assert errors == [] and gaps == []  # a clean stop is not an outage
    assert source.stats.abandoned_readers == 0
    assert source.closed


@pytest.mark.timeout(30)
def test_close_during_an_outage_reports_the_open_gap(http_servers: Servers, ts_file: TsFile) -> None:
    server = LiveTsServer(ts_file)
    http_servers.append(server)
    server.start()
    gaps: list[Gap] = []
    source = LiveSource(
        server.url, "cam", Sampler(every=1), options=FAST, reconnect=QUICK_RETRY, on_gap=gaps.append
    )
    thread, frames, errors = iterate_in_thread(source)
    wait_for(lambda: len(frames) >= 5, 10)
    server.stop()
    stopped = time.time()
    wait_for(lambda: source.stats.attempts >= 3, 5)  # reconnecting, refused
    close_and_time(source, thread)
    assert errors == []
    assert len(gaps) == 1
    gap = gaps[0]
    assert "not recovered before the source was closed" in gap.reason
    assert gap.reason.startswith("connection lost")
    assert abs(gap.start_wall - stopped) < 0.5
    assert gap.end_wall >= gap.start_wall and gap.end_pts >= gap.start_pts


# ------------------------------------------------------------------------------------------------------
# Units: policy, timeline rule, records
# ------------------------------------------------------------------------------------------------------


def test_reconnect_policy_backs_off_exponentially_up_to_the_cap() -> None:
    policy = ReconnectPolicy(initial_delay=0.5, factor=2.0, max_delay=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow for a camera that has been off for days
    jittered = ReconnectPolicy(initial_delay=1.0, jitter=0.2)
    rng = random.Random(0)
    delays = [jittered.delay(1, rng) for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays) and max(delays) - min(delays) > 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": -1},
        {"factor": 0.5},
        {"initial_delay": 2, "max_delay": 1},
        {"jitter": 1.5},
        {"max_attempts": 0},
        {"max_delay": float("inf")},
    ],
)
def test_reconnect_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)  # type: ignore[arg-type]


def test_timeline_keeps_the_source_clock_when_it_ran_through_the_outage() -> None:
    timeline = LiveTimeline()
    assert timeline.place(0, 100.0, 50.0, 100.5, 0.1) == 50.0
    assert timeline.place(0, 100.0, 50.1, 100.6, 0.1) == 50.1
    # 10 s outage; the source's clock moved on by about as much: its timestamps are kept.
    assert timeline.place(1, 110.0, 59.9, 110.8, 0.1) == pytest.approx(59.9)
    assert timeline.place(1, 110.0, 60.0, 110.9, 0.1) == pytest.approx(60.0)


def test_timeline_continues_a_source_that_restarted_at_zero_by_the_wall_clock_gap() -> None:
    timeline = LiveTimeline()
    timeline.place(0, 100.0, 0.0, 100.2, 0.1)
    timeline.place(0, 100.0, 5.0, 105.2, 0.1)
    # Lost after the frame at 105.2; the new connection started at 108.2 and restarted at 0.
    first = timeline.place(1, 108.2, 0.0, 109.0, 0.1)
    assert first == pytest.approx(5.0 + 3.0)
    assert timeline.place(1, 108.2, 0.1, 109.1, 0.1) == pytest.approx(8.1)
    # Again, with the previous offset in force: still restarted, still continued.
    assert timeline.place(2, 112.0, 0.0, 112.5, 0.1) == pytest.approx(8.1 + (112.0 - 109.1))


def test_timeline_never_goes_backwards_within_a_connection() -> None:
    timeline = LiveTimeline()
    timeline.place(0, 0.0, 95443.0, 1.0, 0.1)  # just before an MPEG-TS 33-bit wrap
    assert timeline.place(0, 0.0, 0.05, 1.1, 0.1) == pytest.approx(95443.1)
    assert timeline.place(0, 0.0, 0.15, 1.2, 0.1) == pytest.approx(95443.2)


def test_timeline_synthesises_missing_timestamps() -> None:
    timeline = LiveTimeline()
    assert timeline.place(0, 0.0, None, 1.0, 0.1) == 0.0  # RTSP's first frame often has no PTS
    assert timeline.place(0, 0.0, 0.1, 1.0, 0.1) == pytest.approx(0.1)
    assert timeline.place(0, 0.0, None, 1.1, 0.1) == pytest.approx(0.2)
    # A new connection whose first frame has no PTS lands at last + the gap to the connection's start.
    assert timeline.place(1, 3.2, None, 4.0, 0.1) == pytest.approx(0.2 + 2.1)
    assert timeline.place(1, 3.2, 0.1, 4.0, 0.1) == pytest.approx(2.4)


def test_timeline_continued_from_an_earlier_attempt_never_goes_back() -> None:
    # The earlier attempt committed up to PTS 50.0 (arrived at wall 100.0); this one connects at 104.0.
    restarted = LiveTimeline()
    restarted.continue_after(50.0, 100.0)
    assert restarted.place(0, 104.0, 0.0, 104.5, 0.1) == pytest.approx(54.0)  # RTSP restarts at 0
    assert restarted.place(0, 104.0, 0.1, 104.6, 0.1) == pytest.approx(54.1)
    # A source whose clock kept running keeps its own timestamps, as after a reconnection.
    absolute = LiveTimeline()
    absolute.continue_after(50.0, 100.0)
    assert absolute.place(0, 104.0, 54.2, 104.5, 0.1) == pytest.approx(54.2)
    # One that jumped far ahead of the wall clock is placed by the wall clock instead.
    ahead = LiveTimeline()
    ahead.continue_after(50.0, 100.0)
    assert ahead.place(0, 104.0, 5000.0, 104.5, 0.1) == pytest.approx(54.0)
    with pytest.raises(RuntimeError):
        ahead.continue_after(1.0, 1.0)


@pytest.mark.timeout(60)
def test_a_resumed_source_continues_after_the_resume_point_and_reports_the_loss(
    http_servers: Servers, ts_file: TsFile
) -> None:
    """A new attempt after a recovery: its timestamps continue after the last committed frame (the
    server restarts at 0 each connection, like RTSP) and the lost stretch becomes one gap."""
    server = LiveTsServer(ts_file)
    http_servers.append(server)
    server.start()
    committed_at = time.time() - 3.0
    resume = ResumePoint(200.0, committed_at, "recovery: RayActorError: the writer died")
    gaps: list[Gap] = []
    statuses: list[tuple[str, str | None]] = []
    source = LiveSource(
        server.url,
        "cam",
        Sampler(every=1),
        options=FAST,
        reconnect=QUICK_RETRY,
        on_gap=gaps.append,
        resume=resume,
        on_status=lambda status, reason: statuses.append((status, reason)),
    )
    frames = consume(source, lambda frames: len(frames) >= 10, timeout=20)
    assert len(frames) == 10
    pts = [f.pts_seconds for f in frames]
    assert pts[0] > 200.0 + 2.5 and all(b > a for a, b in itertools.pairwise(pts)), pts
    assert [f.frame_index for f in frames] == list(range(10))
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert (gap.start_pts, gap.start_wall) == (200.0, committed_at)
    assert gap.end_pts == pts[0] and gap.end_wall == frames[0].wall_time
    assert gap.reason == "recovery: RayActorError: the writer died"
    assert statuses == [("running", None)]


@pytest.mark.timeout(60)
def test_status_is_reconnecting_until_the_first_frame(http_servers: Servers, ts_file: TsFile) -> None:
    """Connection refused: every failed attempt reports `reconnecting` with its reason, and the first
    frame once the server is up reports `running`."""
    server = LiveTsServer(ts_file)
    http_servers.append(server)
    server.port = free_port()  # nothing listens there yet
    statuses: list[tuple[str, str | None]] = []

    def on_status(status: str, reason: str | None) -> None:
        statuses.append((status, reason))
        if len(statuses) == 3:
            server.start()

    source = LiveSource(
        server.url, "cam", Sampler(every=1), options=FAST, reconnect=QUICK_RETRY, on_status=on_status
    )
    frames = consume(source, lambda frames: len(frames) >= 3, timeout=20)
    assert len(frames) == 3
    failed = [s for s in statuses if s[0] == "reconnecting"]
    assert len(failed) >= 3 and statuses[-1] == ("running", None), statuses
    assert all(reason is not None and reason.startswith("connect failed") for _, reason in failed)
    assert statuses.index(("running", None)) == len(statuses) - 1
    source.close()
    assert statuses[-1] == ("running", None)  # closing is not reported as an outage


def test_gap_rows_fit_the_gaps_table() -> None:
    gap = Gap("cam", 1.0, 4.0, 1000.0, 1003.5, "connection lost: end of stream")
    table = pa.Table.from_pylist([gap.row("job-1")], schema=GAPS)
    assert table.column("reason").to_pylist() == ["connection lost: end of stream"]
    assert gap.wall_seconds == 3.5


def test_only_allowed_network_schemes_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(ProtocolNotAllowed):
        LiveSource("concat:a.ts|b.ts", "cam")
    with pytest.raises(ValueError, match="network streams"):
        LiveSource(str(tmp_path / "x.mp4"), "cam")
    with pytest.raises(ValueError, match="stall_timeout"):
        LiveSource("rtsp://127.0.0.1:1/x", "cam", stall_timeout=0)
