"""Job and stream identifiers.

Ids of both kinds end up in directory names (`OUT/<table>/<job_id>/<stream_id>/`) and in Redis key names
(`sanstream:job:<job_id>:stream:<stream_id>`), so one rule keeps both safe: a short run of
`[A-Za-z0-9._-]` that does not start with `.` or `_`, and is not a reserved partition value.

* No `/`, `\\`, `:` or `=`: an id can neither escape the output directory, nor collide with a key
  separator, nor be mistaken for (or nest) a hive `key=value` partition.
* Not `__HIVE_DEFAULT_PARTITION__`: Hive-style readers (pyarrow, DuckDB and Polars alike) read that
  partition value back as NULL, so the stream's rows would silently lose their `stream_id`.
* No leading `.` or `_` (which also rules out `.`, `..` and the `__...__` family of reserved values):
  used as a bare file or directory name, as exports and per-stream files do, such a name is hidden (`.`)
  or skipped as metadata (`_`, like `_SUCCESS`) by Hadoop-style readers and pyarrow's dataset
  discovery. Ids derived from file names (`stream_id_from_name`) never start with either.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import PurePosixPath

MAX_ID_LENGTH = 128
#: Partition values that hive-partitioned readers decode as NULL rather than as the string.
RESERVED_IDS = frozenset({"__HIVE_DEFAULT_PARTITION__"})
_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_BAD_RUN_RE = re.compile(r"[^A-Za-z0-9._-]+")


def id_problem(value: object) -> str | None:
    """Why `value` is not a usable id, or None when it is; callers prefix the field path."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if value in {".", ".."}:
        return f"{value!r} is reserved (it names a directory, not a stream)"
    if "/" in value or "\\" in value:
        return f"{value!r} contains a path separator; use only letters, digits, '.', '_' and '-'"
    if not _ID_RE.fullmatch(value):
        return f"{value!r} contains characters outside [A-Za-z0-9._-]"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
    if value in RESERVED_IDS:
        return f"{value!r} is reserved (Parquet readers turn that partition value into NULL)"
    if value[0] in "._":
        return f"{value!r} starts with {value[0]!r}; ids must start with a letter, digit or '-'"
    return None


def check_id(value: object, what: str = "id") -> str:
    """Return `value` when it is a valid id, else raise ValueError naming `what`."""
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    assert isinstance(value, str)
    return value


def new_job_id(now: datetime | None = None) -> str:
    """A job id that sorts by creation time (UTC) and stays unique when jobs start in the same second."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"job-{stamp}-{secrets.token_hex(3)}"


def stream_id_from_name(name: str) -> str:
    """A valid stream id derived from a file name or URL path: the stem, with unusable runs turned into '-'.

    Only the last path component counts, so `clips/2024/cam 1.mp4` becomes `cam-1`.
    """
    base = PurePosixPath(name.replace("\\", "/").rstrip("/")).name
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    cleaned = _BAD_RUN_RE.sub("-", stem).strip(".-_")
    return cleaned[:MAX_ID_LENGTH] or "stream"


def unique_stream_ids(names: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """Stream ids for `names` in order, de-duplicated with `-2`, `-3`, ... and never reusing `taken`.

    Comparison is case-insensitive because the ids become directory names and some file systems
    (macOS, Windows shares) would fold `Cam` and `cam` into one directory.
    """
    used = {t.lower() for t in taken}
    result: list[str] = []
    for name in names:
        base = stream_id_from_name(name)
        candidate, n = base, 1
        while candidate.lower() in used:
            n += 1
            suffix = f"-{n}"
            candidate = base[: MAX_ID_LENGTH - len(suffix)] + suffix
        used.add(candidate.lower())
        result.append(candidate)
    return result
