"""How the CLI writes numbers that appear in more than one command, so they read the same everywhere."""

from __future__ import annotations


def percent(fraction: float) -> str:
    """A share of the frame (0-1) as a percentage with one decimal: `42.5%`, `100.0%`, `0.0%`.

    One decimal is what `run`'s end-of-job summary prints; `query` and `segment` use it too, so
    the same job never shows `100.0%` in one place and `100.00%` in another.
    """
    return f"{fraction:.1%}"
