"""Open a video source with PyAV, safely and with timeouts that actually fire.

Three things here are easy to get wrong and expensive when wrong at cluster scale:

* Protocols. FFmpeg accepts far more than files and URLs (`concat:`, `subfile:`, `data:`, `pipe:`,
  `fd:` ...), some of which read arbitrary local files. The scheme is checked against an allowlist
  *before* FFmpeg sees the string, and FFmpeg's own `protocol_whitelist` is set too, so a playlist or
  nested URL inside an allowed source cannot reach a protocol the allowlist refused.
* Timeouts. Without them one dead camera blocks a decode worker forever. PyAV's `timeout=(open, read)`
  arms FFmpeg's interrupt callback; the protocol-level socket timeouts (`timeout`/`rw_timeout`, in
  microseconds) are set as well because some blocking calls in the RTSP demuxer do not poll it.
* Error messages. FFmpeg says "Invalid data found when processing input"; users need to know which input
  and what to do, so failures are mapped to the types in `errors.py`.
"""

from __future__ import annotations

import os
import string
import time
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
from av.container import InputContainer
from av.video.stream import VideoStream

from pipeline.decode.errors import (
    DecodeError,
    NotAVideo,
    ProtocolNotAllowed,
    SourceNotFound,
    SourceStalled,
    SourceUnreachable,
)

DEFAULT_ALLOWED_PROTOCOLS: frozenset[str] = frozenset({"file", "http", "https", "rtsp", "rtsps"})
NETWORK_SCHEMES: frozenset[str] = frozenset({"http", "https", "rtsp", "rtsps"})

# The FFmpeg protocols each user-facing scheme needs underneath it. `crypto` is for AES-encrypted HLS
# segments; RTSP pulls media over RTP/UDP (or interleaved TCP) and SRTP when the camera asks for it.
_PROTOCOLS_UNDER: dict[str, tuple[str, ...]] = {
    "file": ("file",),
    "http": ("http", "tcp", "crypto"),
    "https": ("https", "tls", "tcp", "crypto"),
    "rtsp": ("rtsp", "rtp", "srtp", "udp", "tcp"),
    "rtsps": ("rtsps", "rtp", "srtp", "udp", "tcp", "tls"),
}

# FFmpeg's URL_SCHEME_CHARS: a prefix made of these followed by ':' is taken as a protocol name.
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+-.")

# FFmpeg 5 (libavformat 59) renamed the RTSP socket timeout from `stimeout` to `timeout`; before that,
# `timeout` meant "listen for an incoming connection" and would turn a client into a server.
_RTSP_TIMEOUT_OPTION = "timeout" if av.library_versions["libavformat"][0] >= 59 else "stimeout"


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How to open a source; defaults suit both files and cameras.

    Attributes:
        open_timeout: seconds to connect and read stream headers (network sources only).
        read_timeout: seconds without a packet before a network source counts as stalled.
        allowed_protocols: schemes a source may use; anything else raises `ProtocolNotAllowed`.
        rtsp_transport: "tcp" by default because RTP over UDP loses packets (and frames) through NAT and
            busy networks, which shows up as smeared, corrupt frames.
        threads: decoder threads; 0 lets FFmpeg use one per core, which oversubscribes a node that runs
            many decoders, so cluster deployments should set a small number.
        probe_seconds: how much of the stream FFmpeg may read to work out its parameters before the first
            frame is handed out (`analyzeduration`); None keeps FFmpeg's default (up to 5 s). Opening a
            live stream waits that long in real time, so a live source that reconnects can shorten every
            outage by setting 0.5-1 s; too short can miss the stream's frame rate or a late keyframe.
    """

    open_timeout: float = 10.0
    read_timeout: float = 10.0
    allowed_protocols: frozenset[str] = DEFAULT_ALLOWED_PROTOCOLS
    rtsp_transport: str = "tcp"
    threads: int = 0
    probe_seconds: float | None = None


def source_scheme(source: str) -> str:
    """The protocol FFmpeg would use for `source`, lower-cased; "file" for a plain path.

    Mirrors FFmpeg's own parsing (`url_find_protocol`) so that the allowlist judges exactly what FFmpeg
    would open: `subfile,,start,0,end,9,,:x` is `subfile`, and `concat:a|b` is `concat`.
    """
    if source.startswith("subfile,") and ":" in source[len("subfile,") :]:
        return "subfile"
    n = 0
    while n < len(source) and source[n] in _SCHEME_CHARS:
        n += 1
    if 0 < n < len(source) and source[n] == ":":
        return source[:n].lower()
    return "file"


def is_network_source(source: str) -> bool:
    """Whether `source` is read over the network (and so needs timeouts)."""
    return source_scheme(source) in NETWORK_SCHEMES


def check_protocol(source: str, allowed: frozenset[str] = DEFAULT_ALLOWED_PROTOCOLS) -> str:
    """Return the scheme of `source`, raising `ProtocolNotAllowed` when it is not in `allowed`."""
    scheme = source_scheme(source)
    if scheme not in allowed:
        allowed_text = ", ".join(sorted(allowed))
        raise ProtocolNotAllowed(source, f"scheme {scheme!r}; allowed: {allowed_text}")
    return scheme


def local_path(source: str) -> Path:
    """The filesystem path of a file source (`/x.mp4`, `x.mp4`, `file:x.mp4` or `file:///x.mp4`).

    Raises:
        SourceNotFound: for `file://host/...` naming another machine, which a decoder cannot read.
    """
    path = source
    if path[:5].lower() == "file:":
        path = path[5:]
        if path.startswith("//"):
            host, _, rest = path[2:].partition("/")
            if host not in ("", "localhost"):
                raise SourceNotFound(source, f"file URL names remote host {host!r}")
            path = "/" + rest
    return Path(path)


@dataclass(slots=True)
class OpenedSource:
    """An open container and the video stream chosen from it.

    Attributes:
        source: the source string as the caller gave it (used in error messages).
        scheme: its protocol ("file", "http", ...).
        container: the PyAV input container; close it with `close()`.
        stream: the first real video stream (cover art is skipped).
        options: the options it was opened with, kept for the read timeout in error messages.
    """

    source: str
    scheme: str
    container: InputContainer
    stream: VideoStream
    options: SourceOptions

    @property
    def is_network(self) -> bool:
        return self.scheme in NETWORK_SCHEMES

    @property
    def is_live(self) -> bool:
        """Whether frames arrive in real time: RTSP, or a network stream with no known duration (live
        HLS, MPEG-TS over HTTP). Live sources should use the `drop_oldest` queue policy."""
        if self.scheme in ("rtsp", "rtsps"):
            return True
        return self.is_network and self.container.duration is None

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> OpenedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _protocol_whitelist(scheme: str, allowed: frozenset[str]) -> str:
    """FFmpeg's `protocol_whitelist` for a source of this scheme.

    A local file may only read local files. A network source may follow redirects and playlists to the
    other allowed network schemes, but never to `file`, so a remote HLS playlist cannot read local disk.
    """
    if scheme == "file":
        return "file"
    names: set[str] = set()
    for s in allowed & NETWORK_SCHEMES | {scheme}:
        names.update(_PROTOCOLS_UNDER.get(s, (s,)))
    return ",".join(sorted(names))


def _container_options(scheme: str, options: SourceOptions) -> dict[str, str]:
    opts = {"protocol_whitelist": _protocol_whitelist(scheme, options.allowed_protocols)}
    if options.probe_seconds is not None:
        opts["analyzeduration"] = str(max(1, int(options.probe_seconds * 1_000_000)))
    read_us = str(max(1, int(options.read_timeout * 1_000_000)))
    if scheme in ("rtsp", "rtsps"):
        opts["rtsp_transport"] = options.rtsp_transport
        opts[_RTSP_TIMEOUT_OPTION] = read_us
    elif scheme in NETWORK_SCHEMES:
        opts["rw_timeout"] = read_us
    return opts


def open_source(source: str | os.PathLike[str], options: SourceOptions | None = None) -> OpenedSource:
    """Open `source` (a path or URL) and select its first video stream, with threaded decoding enabled.

    Raises:
        ProtocolNotAllowed, SourceNotFound, NotAVideo, SourceUnreachable, or DecodeError for anything
        else FFmpeg refuses (permissions, unsupported features); the message names the source.
    """
    source = os.fspath(source)
    options = options or SourceOptions()
    scheme = check_protocol(source, options.allowed_protocols)
    network = scheme in NETWORK_SCHEMES
    if scheme == "file":
        path = local_path(source)
        if not path.exists():
            raise SourceNotFound(source)
        if path.is_dir():
            raise NotAVideo(source, "it is a directory")
        # `file:` + absolute path so that a file name containing ':' is never parsed as a protocol.
        url = "file:" + str(path.absolute())
        timeout: tuple[float, float] | None = None
    else:
        url = source
        timeout = (options.open_timeout, options.read_timeout)

    started = time.monotonic()
    try:
        container = av.open(
            url,
            mode="r",
            container_options=_container_options(scheme, options),
            timeout=timeout,
            # Tags are not ours to validate: a title in Latin-1 (common) or a damaged tag must not make
            # PyAV's strict UTF-8 decoding raise UnicodeDecodeError out of av.open and lose the video.
            metadata_errors="replace",
        )
    except (av.error.FFmpegError, OSError) as exc:
        raise map_open_error(source, exc, network, time.monotonic() - started, options) from exc

    try:
        stream = _pick_video_stream(source, container)
    except BaseException:
        container.close()
        raise
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = options.threads
    return OpenedSource(source, scheme, container, stream, options)


def _pick_video_stream(source: str, container: InputContainer) -> VideoStream:
    """The first video stream that is real video: cover art in music files is a one-frame 'video'."""
    candidates = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not candidates:
        # Name cover art as such: "it contains audio, video" would contradict "no video stream".
        kinds = sorted(
            {
                "cover art" if s.disposition & av.stream.Disposition.attached_pic else s.type
                for s in container.streams
            }
        ) or ["no streams"]
        raise NotAVideo(source, "no video stream; it contains " + ", ".join(kinds))
    # PyAV gives a stream it has no decoder for no codec context, and with it no codec name to report
    # (`stream.codec` does not exist; touching it raised AttributeError). Such a stream is usually a
    # damaged header (codec id 'unknown') rather than an exotic codec, so fall back to the next one.
    decodable = [s for s in candidates if s.codec_context is not None]
    if not decodable:
        raise NotAVideo(
            source, "no decoder for its video codec (a damaged header, or a codec this FFmpeg build lacks)"
        )
    stream = decodable[0]
    for other in container.streams:
        if other.index != stream.index:
            # Let the demuxer drop other streams' packets early instead of handing them to Python.
            other.discard = av.stream.Discard.all
    return stream


def _strerror(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def map_open_error(
    source: str, exc: BaseException, network: bool, elapsed: float, options: SourceOptions
) -> DecodeError:
    """Translate an exception raised by `av.open` into the decode error a user can act on."""
    reason = _strerror(exc)
    if isinstance(exc, av.error.HTTPNotFoundError) or (not network and isinstance(exc, FileNotFoundError)):
        return SourceNotFound(source, reason)
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return ProtocolNotAllowed(source, "this FFmpeg build does not support the protocol")
    if network:
        # The interrupt callback surfaces as ExitError, but some demuxers (RTSP) report the interrupted
        # read as invalid data; the elapsed time tells those apart from a genuinely non-video answer.
        timed_out = isinstance(exc, av.error.ExitError | TimeoutError) or (
            elapsed >= 0.9 * options.open_timeout
        )
        if timed_out:
            return SourceUnreachable(source, f"no answer within {options.open_timeout:g} s")
        if isinstance(exc, av.error.InvalidDataError):
            return NotAVideo(source, reason)
        return SourceUnreachable(source, reason)
    if isinstance(exc, av.error.InvalidDataError | av.error.EOFError):
        return NotAVideo(source, reason)
    if isinstance(exc, IsADirectoryError):
        return NotAVideo(source, "it is a directory")
    return DecodeError(source, reason)


def map_read_error(opened: OpenedSource, exc: BaseException) -> DecodeError | None:
    """The error to raise for a failure while reading packets, or None when it is worth resyncing.

    Network timeouts and dropped connections end the stream with an actionable error; anything else
    (corrupt or truncated data) is left to the caller to skip and count.
    """
    if not opened.is_network:
        return None
    if isinstance(exc, av.error.ExitError | TimeoutError):
        return SourceStalled(opened.source, f"no data for {opened.options.read_timeout:g} s")
    if isinstance(exc, OSError):
        return SourceStalled(opened.source, _strerror(exc))
    return None
