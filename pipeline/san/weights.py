"""Turning a weights name or file into a loaded `SAN`: released checkpoints, local files, random weights.

A released name ("san_vit_b_16") resolves to `$SANSTREAM_WEIGHTS_DIR/<file>` when present, else to the
Hugging Face hub (`Mendel192/san`) through `huggingface_hub`, which keeps the file in the standard HF cache.
Every released file's sha256 is checked once and remembered. Pickled checkpoints are read with
`torch.load(weights_only=True)`; arbitrary pickled objects are only unpickled when the file's checksum
matches a released file, so a job spec cannot make us execute code from an unknown `.pth`. Converting to
safetensors (`sanstream weights convert`) makes later loads fast and free of pickle entirely.

A file that fits no preset is compared with the closest one, and the error names the missing, unexpected
and differently shaped tensors: "matches no known model" alone would hide a truncated or edited file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from pipeline.san.config import SANConfig, UnknownModelError, WeightsSource, available_models, get_config
from pipeline.san.model import SAN

RANDOM = "random"
DEFAULT_MODEL = "san_vit_b_16"
# Buffers the official files carry that we can rebuild when a file lacks them (e.g. mmseg conversions).
REBUILDABLE_KEYS = ("criterion.empty_weight", "ov_classifier.attn_mask")
# Keys listed per kind of difference in a checkpoint error; the rest are counted ("and N more").
MAX_LISTED = 5


class WeightsError(RuntimeError):
    """Base class for weights the program cannot use; messages say which file and what to do."""


class WeightsNotAvailableError(WeightsError):
    """A released checkpoint is neither on disk nor downloadable (offline, or the hub refused)."""


class CheckpointMismatchError(WeightsError):
    """A checkpoint is corrupt, truncated, or does not have the official SAN keys and shapes."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint needs arbitrary code execution to load and is not a known released file."""


def sha256_file(path: Path, chunk: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _cache_dir() -> Path:
    root = os.environ.get("SANSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sanstream"
    )
    return Path(root)


def _verified_marker(path: Path) -> Path:
    return _cache_dir() / "verified" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest() + ".json")


def verify_sha256(path: Path, expected: str) -> None:
    """Check a file's sha256 once; later calls trust a marker recording its size and mtime."""
    stat = path.stat()
    marker = _verified_marker(path)
    stamp = {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return
        except (OSError, ValueError):
            pass
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointMismatchError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the released "
            "checkpoint; delete it and download it again"
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp))


def _not_available(name: str, source: WeightsSource, reason: str) -> WeightsNotAvailableError:
    target = os.environ.get("SANSTREAM_WEIGHTS_DIR") or str(_cache_dir() / "weights")
    return WeightsNotAvailableError(
        f"cannot get the {name} weights: {reason}.\n"
        f"  Download {source.url} ({source.size_bytes / 1e6:.0f} MB, sha256 {source.sha256})\n"
        f"  on a machine with internet, then either pass its path (--weights /path/to/{source.filename})\n"
        f"  or put it in {target}/ (set SANSTREAM_WEIGHTS_DIR to choose that folder).\n"
        f"  To try the pipeline without weights, use --weights random (meaningless masks)."
    )


def resolve_released(name: str) -> Path:
    """Local path of a released checkpoint, downloading it into the HF cache when needed."""
    config = get_config(name)
    source = config.weights
    if source is None:
        released = ", ".join(n for n in available_models() if get_config(n).weights is not None)
        raise WeightsNotAvailableError(
            f"model {name!r} has no released weights (released: {released}); "
            "use random weights ('random') or a checkpoint file for it"
        )
    local_dir = Path(os.environ.get("SANSTREAM_WEIGHTS_DIR") or _cache_dir() / "weights")
    for candidate in (local_dir / source.filename, local_dir / f"{name}.safetensors"):
        if candidate.is_file():
            if candidate.suffix != ".safetensors":
                verify_sha256(candidate, source.sha256)
            return candidate
    endpoint = (
        os.environ.get("SANSTREAM_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    )
    cached = _cached_download(source)
    if cached is not None:
        verify_sha256(cached, source.sha256)
        return cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise _not_available(
            name, source, "HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache"
        )
    problem = _unreachable(endpoint)
    if problem:
        # Fail in seconds: huggingface_hub would otherwise retry with back-off for most of a minute.
        raise _not_available(name, source, f"{endpoint} is unreachable ({problem})")
    try:
        from huggingface_hub import hf_hub_download

        downloaded = hf_hub_download(repo_id=source.hub_repo, filename=source.filename, endpoint=endpoint)
    except Exception as error:  # huggingface_hub raises many types for offline/denied; all mean "not here"
        raise _not_available(name, source, f"download from the Hugging Face hub failed ({error})") from error
    path = Path(downloaded)
    verify_sha256(path, source.sha256)
    return path


def _cached_download(source: WeightsSource) -> Path | None:
    """The file if an earlier download left it in the Hugging Face cache (works offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id=source.hub_repo, filename=source.filename)
    except Exception:  # an unreadable cache is the same as an empty one
        return None
    return Path(found) if isinstance(found, str) else None


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why the hub endpoint cannot be reached (DNS or TCP), or None when a connection opens."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError as error:
        return error.strerror or str(error)


def _released_source_for(path: Path) -> WeightsSource | None:
    """The released file this path is, judged by size and then sha256 (hashing only plausible files)."""
    size = path.stat().st_size
    for name in available_models():
        source = get_config(name).weights
        if source is not None and source.size_bytes == size and sha256_file(path) == source.sha256:
            return source
    return None


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, a raw state dict, or one under `"model"`/`"state_dict"`."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsNotAvailableError(
            f"checkpoint {path} {what}; give the path of a SAN checkpoint (.pth, .pt or .safetensors)"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointMismatchError(f"{path} is not a readable safetensors file ({error})") from error
    _check_torch_format(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not (trust_pickle or _released_source_for(path) is not None):
            raise UnsafeCheckpointError(
                f"{path} contains pickled Python objects besides tensors, and it is not a released SAN file "
                "(checksum differs), so loading it could run arbitrary code. If you trust its origin, run "
                f"`sanstream weights convert {path} OUT.safetensors --trust` once and use the .safetensors file."
            ) from error
        loaded = _torch_load_or_raise(path, weights_only=False)
    except Exception as error:  # torch's unpickler raises KeyError, IndexError, ... on damaged bytes
        raise _unreadable(path, error) from error
    return _extract_state_dict(loaded, path)


def _check_torch_format(path: Path) -> None:
    """Refuse a file that is neither of torch.save's formats (a zip archive, or legacy pickle protocol 2+)
    before unpickling it, so a text or JSON file is named as such instead of failing deep in pickle."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as error:
        raise WeightsNotAvailableError(f"cannot read {path}: {error.strerror or error}") from error
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    found = "an empty file" if not head else "neither a PyTorch checkpoint nor a .safetensors file"
    raise CheckpointMismatchError(
        f"{path} is {found}; give the official SAN .pth (e.g. san_vit_b_16.pth) or a .safetensors file "
        "written by `sanstream weights convert`"
    )


def _torch_load_or_raise(path: Path, *, weights_only: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # see read_state_dict: any failure here means damaged bytes
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> CheckpointMismatchError:
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return CheckpointMismatchError(
        f"{path} could not be read as a PyTorch checkpoint ({detail}); it may be truncated or damaged — "
        "download it again"
    )


def _extract_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    state: object = loaded
    if isinstance(loaded, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                state = loaded[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(
            f"{path} holds no state dict of tensors (top level: {type(loaded).__name__})"
        )
    return {str(k).removeprefix("module."): v for k, v in state.items()}


@dataclass(frozen=True)
class StateDifferences:
    """How a checkpoint's tensors differ from those a model expects: what a user needs to see to tell a
    truncated file (missing keys) from another model's (wrong shapes) or another layout (unexpected keys)."""

    expected: int
    matching: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, in the file, expected

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self) -> str:
        """How much matches, then one indented line per kind of difference (at most `MAX_LISTED` keys)."""
        shapes = [
            f"{key} is {found} in the file, {wanted} in the model" for key, found, wanted in self.wrong_shape
        ]
        lines = [
            f"  {label} ({len(items)}): {_capped(items)}"
            for label, items in (
                ("missing", self.missing),
                ("unexpected", self.unexpected),
                ("wrong shape", shapes),
            )
            if items
        ]
        return (
            f"({self.matching} of {self.expected} tensors match):\n"
            + "\n".join(lines)
            + "\nThe file may be truncated, damaged, or belong to another model."
        )


def _capped(items: Sequence[str]) -> str:
    listed = ", ".join(items[:MAX_LISTED])
    return listed if len(items) <= MAX_LISTED else f"{listed} and {len(items) - MAX_LISTED} more"


def compare_state(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> StateDifferences:
    """Compare keys and shapes only (works on meta tensors); `REBUILDABLE_KEYS` may be absent."""
    required = {k: tuple(v.shape) for k, v in expected.items() if k in state or k not in REBUILDABLE_KEYS}
    wrong_shape = tuple(
        (k, tuple(state[k].shape), shape)
        for k, shape in required.items()
        if k in state and tuple(state[k].shape) != shape
    )
    missing = tuple(k for k in required if k not in state)
    return StateDifferences(
        expected=len(required),
        matching=len(required) - len(missing) - len(wrong_shape),
        missing=missing,
        unexpected=tuple(k for k in state if k not in expected),
        wrong_shape=wrong_shape,
    )


def _preset_state(name: str) -> dict[str, torch.Tensor]:
    """A preset's keys and shapes, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return SAN(get_config(name)).state_dict()


def infer_model_name(state: Mapping[str, torch.Tensor], origin: str = "the checkpoint") -> str:
    """The preset whose keys and shapes a state dict has, so a bare file needs no --model flag.

    When none fits, the error compares the file with the closest preset (most tensors with the right key
    and shape), naming what is missing, unexpected or of another shape: one dropped key or one resized
    tensor is then visible at once instead of a generic "unknown model".
    """
    compared = {name: compare_state(_preset_state(name), state) for name in available_models()}
    for name, differences in compared.items():
        if not (differences.missing or differences.wrong_shape):
            return name  # unexpected keys are reported by load_state_into, naming this model
    closest, differences = max(
        compared.items(),
        key=lambda item: (item[1].matching, -len(item[1].missing) - len(item[1].wrong_shape)),
    )
    known = ", ".join(available_models())
    if differences.matching == 0:
        raise CheckpointMismatchError(
            f"{origin} matches no known SAN model ({known}): no tensor in it has a SAN key and shape "
            f"(its keys: {_capped(list(state))}). Is it a SAN checkpoint from MendelXu/SAN?"
        )
    raise CheckpointMismatchError(
        f"{origin} matches no known SAN model ({known}) exactly; the closest is {closest} "
        + differences.describe()
    )


def load_state_into(model: SAN, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists what differs."""
    own = model.state_dict()
    differences = compare_state(own, state)
    if not differences.fits:
        raise CheckpointMismatchError(f"{origin} does not fit {model.config.name} " + differences.describe())
    state = dict(state)
    for key in REBUILDABLE_KEYS:
        if key not in state and key in own:
            state[key] = own[key]
    model.load_state_dict(state, strict=True)


@torch.no_grad()
def init_random_weights(model: SAN, seed: int = 0) -> SAN:
    """Deterministic random weights with CLIP-like scales, for tests and benchmarks (masks mean nothing)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("logit_scale"):
            param.fill_(torch.log(torch.tensor(100.0)).item())
        elif (
            param.ndim == 1
            and ("ln" in name or "norm" in name or "input_proj.0" in name)
            and name.endswith("weight")
        ):
            param.fill_(1.0)
        elif param.ndim <= 1 and name.endswith("bias"):
            param.zero_()
        else:
            fan_in = param.shape[-1] if param.ndim >= 2 else param.numel()
            if param.ndim == 4:
                fan_in = param.shape[1] * param.shape[2] * param.shape[3]
            std = 0.02 if ("embed" in name or "embedding" in name) else fan_in**-0.5
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def load_checkpoint(
    name_or_path: str | Path,
    *,
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    trust_pickle: bool = False,
) -> SAN:
    """Build a SAN and load its weights.

    Args:
        name_or_path: a released name ("san_vit_b_16", "san_vit_large_14"), a file (.pth/.pt/.safetensors),
            or "random" for deterministic random weights (only ever used when asked for).
        model: preset name; inferred from the name or from the file's shapes when omitted
            (random weights default to san_vit_b_16).
        device, dtype: where and in which precision the parameters live.
        seed: seed for random weights.
        trust_pickle: allow unpickling arbitrary objects from a file that is not a released checkpoint.
    """
    text = str(name_or_path)
    if text == RANDOM:
        san = init_random_weights(SAN(get_config(model or DEFAULT_MODEL)), seed)
        return san.to(device=device, dtype=dtype).eval()
    looks_like_path = os.sep in text or Path(text).suffix in {".pth", ".pt", ".bin", ".safetensors"}
    if not looks_like_path:
        if text not in available_models():
            raise UnknownModelError(
                f"unknown weights {text!r}: use a released name ({', '.join(available_models())}), "
                "a checkpoint file path, or 'random'"
            )
        path = resolve_released(text)
        model = model or text
    else:
        path = Path(text).expanduser()
    state = read_state_dict(path, trust_pickle=trust_pickle)
    config: SANConfig = get_config(model or infer_model_name(state, str(path)))
    san = SAN(config)
    load_state_into(san, state, str(path))
    return san.to(device=device, dtype=dtype).eval()


def convert_to_safetensors(source: str | Path, target: str | Path, *, trust_pickle: bool = False) -> Path:
    """Write a checkpoint's model weights (official key layout) as safetensors; returns the target path."""
    from safetensors.torch import save_file

    state = read_state_dict(source, trust_pickle=trust_pickle)
    name = infer_model_name(state, str(source))
    san = SAN(get_config(name))
    load_state_into(san, state, str(source))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.tmp")
    tensors = {k: v.contiguous() for k, v in san.state_dict().items()}
    save_file(tensors, str(temp), metadata={"sanstream_model": name, "source": Path(source).name})
    os.replace(temp, target)
    return target
