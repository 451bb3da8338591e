"""Loading the official parity fixtures (`tests/data/parity/`) and rebuilding their `sanref-v2` weights.

The fixtures hold what the official SAN computes for two images when every weight follows a closed-form
rule; rebuilding the same weights here lets any implementation be compared with the official outputs
without downloading a checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "data" / "parity"
CASES = ("open_512x512_upscale", "open_720x1280_video")


@functools.cache
def manifest() -> dict[str, Any]:
    return json.loads((DATA / "manifest.json").read_text())


def case_meta(name: str) -> dict[str, Any]:
    return next(case for case in manifest()["cases"] if case["name"] == name)


@functools.cache
def case_arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / f"{name}.npz") as archive:
        return {key: archive[key] for key in archive.files}


@functools.cache
def key_rows() -> list[dict[str, Any]]:
    keys = json.loads((DATA / "keys.json").read_text())
    return [dict(zip(keys["columns"], row, strict=True)) for row in keys["keys"]]


def sanref_v2_tensor(
    shape: tuple[int, ...], sorted_index: int, rule: str, amp: float | None, key: str
) -> np.ndarray:
    """One tensor of the deterministic `sanref-v2` weights (rule in tests/data/parity/README.md)."""
    count = int(np.prod(shape)) if shape else 1
    if rule == "keep":
        if key == "ov_classifier.attn_mask":
            mask = np.zeros(shape, np.float32)
            mask[np.triu_indices(shape[0], 1)] = -np.inf
            return mask
        weight = np.ones(count, np.float32)
        weight[-1] = 0.1
        return weight
    if rule == "const":
        return np.full(shape, math.log(100.0)).astype(np.float32)
    j = np.arange(count, dtype=np.int64)
    phase = 0.7 * j.astype(np.float64) + 1.3 * sorted_index + 0.1 + 0.01 * ((j * j) % 1009).astype(np.float64)
    values = amp * np.sin(phase) if rule == "sin" else 1.0 + amp * np.sin(phase)
    return values.astype(np.float32).reshape(shape)


@functools.cache
def sanref_v2_numpy() -> dict[str, np.ndarray]:
    return {
        row["key"]: sanref_v2_tensor(
            tuple(row["shape"]), row["sorted_index"], row["rule"], row["amp"], row["key"]
        )
        for row in key_rows()
    }


def sanref_v2_state() -> dict[str, torch.Tensor]:
    """The 442 official-layout tensors (fresh torch copies, safe to load into a model)."""
    return {key: torch.from_numpy(value.copy()) for key, value in sanref_v2_numpy().items()}
