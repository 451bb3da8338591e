"""Our module tree has the official checkpoint layout; wrong, truncated and unsafe files fail clearly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from pipeline.san import (
    SAN,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsNotAvailableError,
    convert_to_safetensors,
    get_config,
    load_checkpoint,
)
from pipeline.san.weights import read_state_dict

KEYS = json.loads(
    (Path(__file__).resolve().parents[3] / "tests/data/parity/checkpoint_keys.json").read_text()
)


@pytest.mark.parametrize("name", ["san_vit_b_16", "san_vit_large_14"])
def test_state_dict_has_every_official_key_and_shape(name: str) -> None:
    with torch.device("meta"):
        model = SAN(get_config(name))
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    official = [(key, shape) for key, shape, _dtype in KEYS[name]]
    assert ours == official


@pytest.mark.parametrize("name", ["san_vit_b_16", "san_vit_large_14"])
def test_official_layout_loads_strictly_from_a_file(name: str, tmp_path: Path) -> None:
    """A file shaped like the released one (model dict + training state) loads with strict=True."""
    state = {key: torch.full(shape, 0.5) for key, shape, _dtype in KEYS[name]}
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state, "iteration": 59999, "trainer": {"optimizer": {"state": {}}}}, path)
    model = load_checkpoint(path)
    assert model.config.name == name
    assert torch.all(model.side_adapter_network.query_embed == 0.5)
    assert model.ov_classifier.logit_scale.item() == 0.5


def tiny_state() -> dict[str, torch.Tensor]:
    return load_checkpoint("random", model="san_tiny_test").state_dict()


def test_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match=r"cut\.pth.*truncated"):
        load_checkpoint(path, model="san_tiny_test")


def test_wrong_shapes_and_missing_keys_are_listed(tmp_path: Path) -> None:
    state = tiny_state()
    state["side_adapter_network.query_embed"] = torch.zeros(1, 3, 48)
    del state["clip_rec_head.proj"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path, model="san_tiny_test")
    message = str(info.value)
    assert "clip_rec_head.proj" in message and "missing" in message
    assert "side_adapter_network.query_embed is (1, 3, 48) in the file, (1, 10, 48) in the model" in message


def test_unknown_layout_is_rejected_without_model_hint(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"matches no known SAN model.*layer\.weight"):
        load_checkpoint(path)


class Payload:
    """A pickled object that would run code on load if unpickling were unrestricted."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("code ran",))


def test_arbitrary_pickle_is_refused_unless_trusted(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": tiny_state(), "extra": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="--trust"):
        read_state_dict(path)
    assert "side_adapter_network.query_embed" in read_state_dict(path, trust_pickle=True)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_convert_to_safetensors_round_trip(tmp_path: Path) -> None:
    original = load_checkpoint("random", model="san_tiny_test", seed=3)
    source = tmp_path / "tiny.pth"
    torch.save({"model": original.state_dict()}, source)
    target = convert_to_safetensors(source, tmp_path / "tiny.safetensors")
    loaded = load_checkpoint(target)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_path_and_random_is_explicit(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotAvailableError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    first = load_checkpoint("random", model="san_tiny_test", seed=1)
    again = load_checkpoint("random", model="san_tiny_test", seed=1)
    other = load_checkpoint("random", model="san_tiny_test", seed=2)
    assert torch.equal(first.clip_rec_head.proj, again.clip_rec_head.proj)
    assert not torch.equal(first.clip_rec_head.proj, other.clip_rec_head.proj)
