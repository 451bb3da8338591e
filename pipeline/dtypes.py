"""Names of compute precisions: one canonical spelling, the short forms accepted everywhere.

The job spec (and so the service's API and `sanstream status --json`) spells dtypes as torch does
(`bfloat16`); benchmarks and habit say `bf16`. Every command accepts both and prints the canonical
form, so a name typed once works on `run`, `serve`, `segment` and `demo` alike. No torch import here:
the CLI parses arguments before deciding whether to load the model stack.
"""

from __future__ import annotations

import argparse

#: Canonical names, in the order help lists them ("auto": bfloat16 on CUDA, else float32).
CANONICAL = ("auto", "float32", "bfloat16", "float16")
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: What `--dtype` help shows.
METAVAR = "{" + ",".join(CANONICAL) + "}"
HELP = "compute precision; fp32, bf16 and fp16 are accepted too"


def canonical_dtype(name: str) -> str:
    """`name` in its canonical spelling; ValueError naming the accepted ones otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in CANONICAL:
        accepted = ", ".join((*CANONICAL, *ALIASES))
        raise ValueError(f"unknown dtype {name!r}; use one of {accepted}")
    return key


def dtype_argument(name: str) -> str:
    """`type=` for an argparse `--dtype`: the canonical name, or argparse's own usage error."""
    try:
        return canonical_dtype(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def torch_dtype(name: str, device_type: str = "cpu") -> object:
    """The torch dtype for `name` (any spelling); `auto` is bfloat16 on CUDA, float32 elsewhere."""
    import torch

    canonical = canonical_dtype(name)
    if canonical == "auto":
        canonical = "bfloat16" if device_type == "cuda" else "float32"
    return getattr(torch, canonical)
