"""The CLI's rich consoles: colour and cursor codes only on a terminal, whatever rich would guess.

Output piped into a file, `less` or a CI log must read as plain text. Rich already looks at the stream,
but also takes FORCE_COLOR, TTY_COMPATIBLE and a Jupyter guess into account; here the rule is stated
once: a terminal gets colour (unless NO_COLOR is set, https://no-color.org), anything else gets none,
and FORCE_COLOR is the one way to ask for colour in a pipe. Off a terminal rich's width is $COLUMNS, or 80.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that emits ANSI codes only when that stream is a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    no_color = bool(os.environ.get("NO_COLOR"))
    if os.environ.get("FORCE_COLOR"):  # an explicit request for colour, e.g. a CI log that renders it
        return Console(stderr=stderr, no_color=no_color)
    terminal = is_terminal(stream)
    return Console(
        stderr=stderr,
        force_terminal=terminal,
        color_system="auto" if terminal and not no_color else None,
        no_color=no_color,
    )


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
