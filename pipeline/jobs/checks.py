"""Field-path validation of plain data (parsed YAML): every problem is collected, none stops the parse.

Reporting all problems at once, each under the path a user can find in their file
(`streams[1].sampling.fps`), saves the edit-run-fail loop one typo at a time.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Checker:
    """Collects problems while parsing so one run reports all of them."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping with keys {', '.join(allowed)}, got {describe(value)}")
            return None
        for key in value:
            if key not in allowed:
                name = key if isinstance(key, str) else show(key)
                hint = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                tip = f"did you mean {hint[0]!r}?" if hint else f"allowed keys: {', '.join(allowed)}"
                self.error(join_path(path, name), f"unknown key {show(key)}; {tip}")
        return dict(value)

    def bounded_list(self, value: Any, path: str, what: str, limit: int) -> list[Any] | None:
        """`value` as a list of at most `limit` entries (None or absent: empty); None after recording why
        it is not one. `what` names the entries in the messages ("regions", "alert rules")."""
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self.error(path, f"must be a list of {what}, got {describe(value)}")
            return None
        if len(value) > limit:
            self.error(path, f"has {len(value)} {what}; at most {limit} are allowed")
            return None
        return list(value)

    def distinct_name(self, seen: dict[str, int], name: str, path: str, index: int) -> bool:
        """Whether entry `index` of the list at `path` has a name no earlier entry has (compared without
        case: "Lane" and "lane" would be one name to anyone reading the tables); `seen` maps the names so
        far to their entries and is updated. A duplicate is recorded naming the first entry."""
        key = name.casefold()
        if key in seen:
            self.error(f"{path}[{index}].name", f"{name!r} duplicates {path}[{seen[key]}].name")
            return False
        seen[key] = index
        return True

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.error(
                path,
                "must be a non-empty string" + ("" if isinstance(value, str) else f", got {describe(value)}"),
            )
            return None
        return value.strip()

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, got {describe(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, got {describe(value)}")
            return None
        if value < minimum:
            self.error(path, f"must be >= {minimum}, got {show(value)}")
            return None
        return value

    def number(self, value: Any, path: str, lower: float, inclusive: bool) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"must be a number, got {describe(value)}")
            return None
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range, which YAML happily produces from digits
            self.error(path, f"must be a finite number, got {show(value)}")
            return None
        if not math.isfinite(number) or number < lower or (number == lower and not inclusive):
            self.error(path, f"must be {'>=' if inclusive else '>'} {lower:g}, got {show(value)}")
            return None
        return number

    def local_path(self, text: str, path: str = "") -> str:
        """Absolute form of a path relative to the spec's directory; symlinks are kept as the user wrote them.

        Records a problem under `path` (and returns "") for control characters (a NUL cannot be in a path
        at all) and for a `~user` that names no user on this machine.
        """
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
            self.error(path, f"{show(text)} contains control characters")
            return ""
        try:
            expanded = Path(text).expanduser()
        except (RuntimeError, ValueError):  # no such user; or a name pwd cannot look up (surrogates)
            self.error(
                path, f"cannot expand {show(text.split('/', 1)[0])}: no such user's home directory here"
            )
            return ""
        return os.path.abspath(expanded if expanded.is_absolute() else self.base_dir / expanded)


def show(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters, for messages. Never raises: an int of over 4300 digits is
    too long for Python to print (ValueError), and a deeply nested value too deep to repr."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{value.bit_length()}-bit integer>" if isinstance(value, int) else "<unprintable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {show(value, 80)}"[:80]


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
