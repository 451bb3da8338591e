"""Exceptions a user can act on when a video source cannot be decoded.

Every error names the input it is about, because a cluster job decodes many streams at once and an error
that only says "invalid data" cannot be traced back to the camera or file that caused it. Credentials and
query strings (signed URLs) are redacted from messages, since messages end up in logs and dashboards;
`.source` keeps the original string for code that needs it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(source: str) -> str:
    """Return `source` safe to print: no password in the userinfo and no query string values.

    Signed URLs (S3, CDN tokens) carry their secret in the query, and RTSP cameras commonly embed
    `user:password@` in the URL, so both are masked rather than trusting users to keep logs private.
    """
    if "://" not in source:
        return source
    try:
        parts = urlsplit(source)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = "<redacted>" if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        # A URL too malformed to split may still hold a secret; hide everything after the scheme.
        return source.split("://", 1)[0] + "://<unparseable>"


class DecodeError(Exception):
    """Base of every decode failure; catch this to handle any source problem in one place.

    Attributes:
        source: the source string exactly as the caller gave it (unredacted).
        reason: the underlying detail (FFmpeg's message, a timeout value), or None.
    """

    #: What went wrong, in words a user understands; subclasses override.
    what = "could not be decoded"
    #: What the user can do about it; subclasses override.
    hint = ""

    def __init__(self, source: str, reason: str | None = None) -> None:
        self.source = source
        self.reason = reason
        message = f"{redact(source)}: {self.what}"
        if reason:
            message += f" ({reason})"
        if self.hint:
            message += f". {self.hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str | None]]:
        # Ray ships exceptions between processes by pickling; the default Exception pickling would
        # call cls(message) and lose `.source`, so rebuild from the constructor arguments instead.
        return (type(self), (self.source, self.reason))


class SourceNotFound(DecodeError):
    """The file (or HTTP resource) does not exist."""

    what = "no such file"
    hint = "Check the path (relative paths resolve against the worker's working directory) or the URL"


class NotAVideo(DecodeError):
    """The source opened, or was read, but holds no decodable video stream."""

    what = "not a readable video"
    hint = (
        "The file may be empty, truncated before its index, audio-only, or not a media file; "
        "check it with `ffprobe` or re-encode it"
    )


class SourceUnreachable(DecodeError):
    """A network source could not be connected to (or did not answer) within the open timeout."""

    what = "could not connect"
    hint = "Check that the host is up and reachable from the workers, or raise the open timeout"


class SourceStalled(DecodeError):
    """A network source was connected but delivered no frame within the read timeout."""

    what = "stopped delivering data"
    hint = "The camera or server stalled or the connection dropped; reconnect, or raise the read timeout"


class ProtocolNotAllowed(DecodeError):
    """The source's scheme is not in the protocol allowlist.

    Refused before anything is opened: FFmpeg protocols such as `concat:`, `subfile:` or `data:` can read
    arbitrary local files or smuggle data, which a job spec submitted by someone else must not be able to do.
    """

    what = "protocol not allowed"
    hint = "Use a plain file path or an http(s)/rtsp(s) URL, or add the scheme to the allowlist"
