"""Model presets as data: one JSON per SAN variant in `pipeline/san/presets/`, read into typed dataclasses.

Keeping shapes in data (as open_clip does) means a new preset is a file, not code, and the same numbers are
shared by the builder, the checkpoint checker and the benchmarks. The JSON files are package data, read
through `importlib.resources`, so an installed wheel finds them wherever it lives (`configs/models` in the
repository is a link to the same folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

#: The preset folder inside the installed package (a plain directory for a wheel or an editable install).
PRESETS: Traversable = files("pipeline.san").joinpath("presets")


class UnknownModelError(ValueError):
    """Raised when a model name has no preset; the message lists the known names."""


@dataclass(frozen=True)
class ClipVisualConfig:
    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int
    output_dim: int

    @property
    def native_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ClipTextConfig:
    width: int
    layers: int
    heads: int
    context_length: int
    vocab_size: int
    embed_dim: int


@dataclass(frozen=True)
class SideAdapterConfig:
    width: int
    depth: int
    heads: int
    patch_size: int
    mlp_ratio: int
    image_size: int
    num_queries: int

    @property
    def native_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class DecoderConfig:
    embed_channels: int
    mlp_channels: int
    mlp_layers: int
    attn_bias_layers: int


@dataclass(frozen=True)
class WeightsSource:
    """Where a released checkpoint lives and what its bytes must hash to."""

    hub_repo: str
    filename: str
    sha256: str
    size_bytes: int

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.hub_repo}/resolve/main/{self.filename}"


@dataclass(frozen=True)
class SANConfig:
    """Every number that fixes a SAN variant's architecture (see `pipeline/san/presets/*.json`).

    `fusion_map` maps a CLIP feature index (0 = after `ln_pre`, k = after CLIP block k-1) to the side-adapter
    index where it is added (0 = before the first side block, i = after side block i-1).
    """

    name: str
    clip_visual: ClipVisualConfig
    clip_text: ClipTextConfig
    clip_resolution: float
    feature_last_layer: int
    fusion_map: dict[int, int]
    side_adapter: SideAdapterConfig
    decoder: DecoderConfig
    num_train_classes: int
    size_divisibility: int
    tokenizer: str
    weights: WeightsSource | None
    description: str = ""

    @property
    def num_deep_layers(self) -> int:
        return self.clip_visual.layers - self.feature_last_layer

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SANConfig:
        weights = data.get("weights")
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            clip_visual=ClipVisualConfig(**data["clip_visual"]),
            clip_text=ClipTextConfig(**data["clip_text"]),
            clip_resolution=float(data["clip_resolution"]),
            feature_last_layer=int(data["feature_last_layer"]),
            fusion_map={int(k): int(v) for k, v in data["fusion_map"].items()},
            side_adapter=SideAdapterConfig(**data["side_adapter"]),
            decoder=DecoderConfig(**data["decoder"]),
            num_train_classes=int(data["num_train_classes"]),
            size_divisibility=int(data["size_divisibility"]),
            tokenizer=data["tokenizer"],
            weights=WeightsSource(**weights) if weights else None,
        )


def available_models() -> list[str]:
    """Names of the packaged presets, sorted."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in PRESETS.iterdir()
        if entry.name.endswith(".json") and entry.is_file()
    )


def get_config(name_or_path: str | Path) -> SANConfig:
    """Load a preset by name (`san_vit_b_16`) or from a JSON file path."""
    path = Path(name_or_path)
    source: Traversable = path if path.suffix == ".json" else PRESETS.joinpath(f"{name_or_path}.json")
    if not source.is_file():
        raise UnknownModelError(
            f"unknown model {str(name_or_path)!r}: known models are {', '.join(available_models())} "
            f"(presets live in {PRESETS})"
        )
    return SANConfig.from_dict(json.loads(source.read_text(encoding="utf-8")))
